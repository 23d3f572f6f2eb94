"""Training data: find and check the Parquet files, split train/eval, render and tokenise examples.

An example is rendered as one conversation (system? user assistant ...). The prompt/response boundary
is found on the token ids of that one rendered text, via the tokenizer's character offsets: a token
belongs to a response if it starts inside the character span an assistant turn adds to the text.
Tokenising the prompt on its own and assuming it is a prefix of the full ids breaks whenever BPE
merges across the boundary, so it is never done.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

SCHEMA_REQUIRED = ("instruction", "output")
SCHEMA_OPTIONAL = ("id", "input", "system")
PLAIN_SYSTEM, PLAIN_USER, PLAIN_INPUT, PLAIN_RESPONSE = "", "### Instruction:\n", "\n\n### Input:\n", "### Response:\n"


# ----------------------------------------------------------------------------- files and splits
def parquet_files(data_dir: str) -> list[str]:
    p = Path(data_dir)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {data_dir}")
    return [str(f) for f in files]


def check_columns(files: list[str]) -> tuple[str, list[str]]:
    """('messages' | 'schema', columns to read); every file must be usable, and all of one kind."""
    kinds, optional = set(), set(SCHEMA_OPTIONAL)
    for f in files:
        names = set(pq.read_schema(f).names)
        if "messages" in names:
            kinds.add("messages")
            continue
        missing = [c for c in SCHEMA_REQUIRED if c not in names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing}; training needs either a `messages` column "
                             f"(list of {{role, content}}) or columns {list(SCHEMA_REQUIRED)} "
                             f"(optionally {list(SCHEMA_OPTIONAL)})")
        kinds.add("schema")
        optional &= names  # read an optional column only if every file has it
    if len(kinds) > 1:
        raise ValueError(f"{files[0]}...: mixes files with a `messages` column and instruction/output files")
    kind = kinds.pop()
    cols = ["messages"] if kind == "messages" else list(SCHEMA_REQUIRED) + sorted(optional)
    return kind, cols


def eval_bucket(row: dict) -> float:
    """A number in [0, 1) fixed by the row's id (or content): the same row lands in the same split."""
    key = row.get("id") or json.dumps({k: row.get(k) for k in sorted(row) if k != "id"}, default=str,
                                      sort_keys=True)
    return int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "big") / 2 ** 64


def is_eval(row: dict, fraction: float) -> bool:
    return eval_bucket(row) < fraction


def split_batch(t, fraction: float, eval_side: bool):
    """The rows of a pyarrow batch on one side of the split. A batch function, not ds.filter(fn):
    Ray Data warns on every row-function filter ("Use 'expr' instead of 'fn'"), and this
    predicate, a hash of each row, has no expression form."""
    import pyarrow as pa

    return t.filter(pa.array([is_eval(r, fraction) == eval_side for r in t.to_pylist()], pa.bool_()))


def load_datasets(data_dir: str, eval_fraction: float) -> dict:
    """Lazy Ray datasets {"train": ..., "eval"?: ...}; nothing is read on the driver but file footers."""
    import ray.data

    files = parquet_files(data_dir)
    _, cols = check_columns(files)
    ds = ray.data.read_parquet(files).select_columns(cols)

    def side(eval_side):
        return ds.map_batches(split_batch, batch_format="pyarrow",
                              fn_kwargs={"fraction": eval_fraction, "eval_side": eval_side})
    return {"train": side(False), **({"eval": side(True)} if eval_fraction > 0 else {})}


# ----------------------------------------------------------------------------- formatting
def to_messages(row: dict) -> list[dict]:
    """A row of either kind as chat messages; `system` (Orca) becomes the system message if non-empty."""
    if "messages" in row and row["messages"] is not None:
        return [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in row["messages"]]
    msgs = []
    if row.get("system"):
        msgs.append({"role": "system", "content": row["system"]})
    instr, inp = row["instruction"] or "", row.get("input") or ""
    # instruction/input ride along for the plain template's separate ### Input block.
    msgs.append({"role": "user", "content": f"{instr}\n\n{inp}" if inp else instr, "instruction": instr, "input": inp})
    if "output" in row:
        msgs.append({"role": "assistant", "content": row["output"] or ""})
    return msgs


def resolve_template(tokenizer, template: str) -> str:
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "chat" and not has_chat:
        raise ValueError("template=chat but the tokenizer has no chat template; use plain or auto")
    return "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"


def _plain(messages: list[dict], add_generation_prompt: bool, eos: str) -> str:
    """Alpaca-style text; a user turn made from instruction + input shows the input in ### Input."""
    text = ""
    for m in messages:
        if m["role"] == "system":
            text += m["content"] + "\n\n"
        elif m["role"] == "assistant":
            text += PLAIN_RESPONSE + m["content"] + eos + "\n\n"
        else:
            instr, inp = (m["instruction"], m["input"]) if "instruction" in m else (m["content"], "")
            text += PLAIN_USER + instr + (PLAIN_INPUT + inp if inp else "") + "\n\n"
    return text + (PLAIN_RESPONSE if add_generation_prompt else "")


def render(tokenizer, messages: list[dict], kind: str, add_generation_prompt: bool = False) -> str:
    if kind == "chat":
        plain_msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        return tokenizer.apply_chat_template(plain_msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    return _plain(messages, add_generation_prompt, tokenizer.eos_token)


def prompt_text(tokenizer, row: dict, kind: str) -> str:
    """The generation prompt for a row without its answer (used by the ROUGE-L evaluation)."""
    msgs = [m for m in to_messages(row) if m["role"] != "assistant"]
    return render(tokenizer, msgs, kind, add_generation_prompt=True)


def response_spans(tokenizer, messages: list[dict], kind: str) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character span each assistant turn adds to it."""
    full = render(tokenizer, messages, kind)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], kind, add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[:i + 1], kind)
        if not (full.startswith(before) and full.startswith(upto)):
            raise ValueError("chat template is not prefix-stable; cannot locate the assistant turns")
        spans.append((len(before), len(upto)))
    # The sequence must end on EOS counted as response: drop template whitespace after a final EOS.
    eos = tokenizer.eos_token
    if spans and full.rstrip().endswith(eos):
        full = full.rstrip()
        spans[-1] = (spans[-1][0], min(spans[-1][1], len(full)))
    return full, spans


def tokenize(tokenizer, row: dict, kind: str, max_seq_len: int) -> dict | None:
    """{"input_ids", "response"} (response: 1 per response token incl. EOS), or None if nothing to learn."""
    messages = to_messages(row)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"row has no assistant turn: {messages!r:.200}")
    full, spans = response_spans(tokenizer, messages, kind)
    enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=(kind == "plain"))
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    resp = [0] * len(ids)
    for i, (a, b) in enumerate(offsets):
        if b > a and any(s <= a < e for s, e in spans):
            resp[i] = 1
    if ids[-1] != tokenizer.eos_token_id:  # template without EOS: append it, as response
        ids.append(tokenizer.eos_token_id)
        resp.append(1)
    ids, resp = ids[:max_seq_len], resp[:max_seq_len]
    if not any(resp):
        return None  # the prompt alone fills max_seq_len
    return {"input_ids": ids, "response": resp}
