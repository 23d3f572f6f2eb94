"""Generation methods by name: each takes the rows so far and returns (new rows, rejected, stats).

Methods chain in the order of `generate.methods`: Self-Instruct makes instructions and instances
from the seeds, Evol-Instruct evolves the rows so far, Orca re-answers them with system messages;
back-translation and FLAN bring their own inputs. Every method but Self-Instruct (which commits
round by round) commits its output under stages/<method>/, so a rerun does not redo it.
"""
from __future__ import annotations

from pathlib import Path

from pipelines import io


def _self_instruct(rows, ctx):
    from pipelines.seeds import load_seed_tasks
    from pipelines.self_instruct import SelfInstruct

    cfg = ctx.cfg
    seeds = load_seed_tasks(cfg.seed_file)
    return SelfInstruct(seeds, ctx.engine, cfg.generate, cfg.model, ctx.run_dir, cfg.seed, ctx.log,
                        on_commit=ctx.sync).run()


def _evol(rows, ctx):
    from pipelines.evol import run_evol

    return run_evol(rows, ctx.engine, ctx.cfg.evol, ctx.cfg.model, ctx.cfg.seed)


def _orca(rows, ctx):
    from pipelines.orca import run_orca

    return run_orca(rows, ctx.engine, ctx.cfg.orca, ctx.cfg.model, ctx.cfg.seed)


def _backtranslate(rows, ctx):
    from pipelines.backtranslate import run_backtranslate

    return run_backtranslate(ctx.engine, ctx.cfg.backtranslate, ctx.cfg.model, ctx.cfg.seed)


def _flan(rows, ctx):
    from pipelines.flan import run_flan

    return run_flan(ctx.cfg.flan, ctx.cfg.seed)


METHODS = {"self_instruct": _self_instruct, "evol_instruct": _evol, "orca": _orca,
           "backtranslate": _backtranslate, "flan": _flan}


def stage_names(methods: list[str]) -> list[str]:
    """One name per entry of generate.methods: the method, then method-2, method-3 for repeats
    (e.g. evol_instruct twice evolves the evolved rows again), each its own commit directory."""
    seen: dict[str, int] = {}
    out = []
    for m in methods:
        seen[m] = seen.get(m, 0) + 1
        out.append(m if seen[m] == 1 else f"{m}-{seen[m]}")
    return out


def run_method(method: str, rows: list[dict], ctx, name: str | None = None) -> tuple[list[dict], list[dict], dict]:
    if method == "self_instruct":
        return _self_instruct(rows, ctx)
    done = Path(ctx.run_dir) / "stages" / (name or method)
    if (done / "stats.json").exists():  # committed by an earlier attempt of this run
        ctx.log(f"{name or method}: already committed, reusing its rows")
        return io.read_rows(done / "rows.parquet"), io.read_rows(done / "rejected.parquet", rejected=True), \
            io.read_json(done / "stats.json")
    new, bad, stats = METHODS[method](rows, ctx)
    io.write_rows(new, done / "rows.parquet")
    io.write_rows(bad, done / "rejected.parquet", rejected=True)
    io.write_json(stats, done / "stats.json")  # written last: its presence marks the commit
    ctx.sync()
    return new, bad, stats
