"""The one record contract: every example row and every rejected row has these columns.

Rows travel through Ray Data as plain dicts / column batches; they are written to Parquet with
EXAMPLE_SCHEMA (kept rows) or REJECTED_SCHEMA (dropped rows). `conform()` fills missing columns with
their defaults, so a stage only sets what it knows.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

# (name, type, default, description). The description is written into the Parquet field metadata,
# so DuckDB / pandas users can see what a column means without reading this file.
_FIELDS = [
    ("id", pa.string(), "", "Deterministic id: hash of the content and lineage (see make_id)."),
    ("instruction", pa.string(), "", "The task instruction."),
    ("input", pa.string(), "", "Optional input for the instruction; empty when the task needs none."),
    ("output", pa.string(), "", "The response."),
    ("system", pa.string(), "", "System message the response was generated with (Orca); empty if none."),
    ("method", pa.string(), "", "Construction method: seed, self_instruct, evol_instruct, orca, backtranslate, flan."),
    ("instruction_id", pa.string(), "", "Id of the instruction this row is an instance of."),
    ("seed_ids", pa.list_(pa.string()), [], "Seed task ids the row descends from (in-context or source)."),
    ("parent_ids", pa.list_(pa.string()), [], "Machine-generated ancestors: in-context ids or the evolved parent."),
    ("round", pa.int32(), 0, "Generation round (Self-Instruct) or evolution depth (Evol-Instruct)."),
    ("operation", pa.string(), "", "Method-specific operation, e.g. output_first, deepen, breadth."),
    ("is_classification", pa.bool_(), None, "Self-Instruct classification flag; null when unknown."),
    ("model", pa.string(), "", "Model that generated the row; empty for rows made without a model."),
    ("template", pa.string(), "", "Name of the prompt template used."),
    ("sampling_params", pa.string(), "", "JSON of the sampling parameters used."),
    ("finish_reason", pa.string(), "", "Engine finish reason of the output: stop, length, ..."),
    ("prompt_tokens", pa.int32(), 0, "Prompt tokens spent on the generation that produced the row."),
    ("output_tokens", pa.int32(), 0, "Output tokens spent on the generation that produced the row."),
    ("rouge_l", pa.float64(), None, "ROUGE-L F to the most similar pool instruction (novelty filter; exact, or a lower bound on kept rows when generate.exact_novelty_scores is false)."),
    ("most_similar", pa.string(), "", "The most similar pool instruction found by the novelty filter."),
    ("score", pa.float32(), None, "Model-judged quality score (back-translation self-curation), if any."),
    ("meta", pa.string(), "{}", "JSON with method-specific extras."),
]
_REJECT_FIELDS = [
    ("stage", pa.string(), "", "Stage that dropped the row (filter name, dedup step, ...)."),
    ("reason", pa.string(), "", "Why the row was dropped."),
    ("duplicate_of", pa.string(), "", "Id of the kept row this row duplicates (dedup stages)."),
]


def _schema(fields) -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, _, d in fields])


EXAMPLE_SCHEMA = _schema(_FIELDS)
REJECTED_SCHEMA = _schema(_FIELDS + _REJECT_FIELDS)
EXAMPLE_COLUMNS = [f[0] for f in _FIELDS]
REJECTED_COLUMNS = EXAMPLE_COLUMNS + [f[0] for f in _REJECT_FIELDS]
DEFAULTS = {n: d for n, _, d, _ in _FIELDS + _REJECT_FIELDS}


def make_id(*parts) -> str:
    """A stable 16-hex id from content and lineage: the same inputs give the same id on any node."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()


def row(**values) -> dict:
    """An example row with defaults filled in; unknown keys are an error (the contract is fixed)."""
    unknown = set(values) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"not in the record schema: {sorted(unknown)}")
    out = {n: (list(d) if isinstance(d, list) else d) for n, d in DEFAULTS.items() if n in EXAMPLE_COLUMNS}
    out.update(values)
    return out


def reject(r: dict, stage: str, reason: str, duplicate_of: str = "") -> dict:
    """The rejected form of a row: same columns plus stage, reason and duplicate_of."""
    out = {k: r.get(k, DEFAULTS[k]) for k in EXAMPLE_COLUMNS}
    out.update(stage=stage, reason=reason, duplicate_of=duplicate_of)
    return out


def to_table(rows: list[dict], rejected: bool = False) -> pa.Table:
    """Rows (dicts) to a table of the exact schema; extra keys are dropped, missing ones defaulted."""
    schema = REJECTED_SCHEMA if rejected else EXAMPLE_SCHEMA
    cols = {n: [r.get(n, DEFAULTS[n]) for r in rows] for n in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)


def conform(table: pa.Table, rejected: bool = False) -> pa.Table:
    """Cast a table to the schema: add missing columns with defaults, drop extras, fix order/types."""
    schema = REJECTED_SCHEMA if rejected else EXAMPLE_SCHEMA
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        else:
            arrays.append(pa.array([DEFAULTS[field.name]] * n, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
