"""prefetch(a, i) for numba code: a hint that a[i] will be read soon (LLVM's llvm.prefetch).

The novelty index's compiled loops read a few random places per step in arrays far larger than
the cache (postings, token codes); a plain load stalls when the loop's next step needs it. Asking
for those lines a few steps ahead lets the misses overlap. It changes no result: a prefetch of
any address is harmless, even past an array's end, and it is a no-op where the target has no
such instruction.
"""
from __future__ import annotations

import llvmlite.ir as ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, idx):
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        # read (0), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, idx), codegen
