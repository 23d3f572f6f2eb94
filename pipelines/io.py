"""Atomic files: Parquet shards, JSON, and the run manifest.

Every write goes to a temporary name in the same directory and is renamed into place, so a crash
never leaves a half-written file under a final name. Readers only look at final names
(`*.parquet`), never at `.tmp-*` files.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema


class InputError(ValueError):
    """Bad user input (seed file, data file): the message names the file and line or column."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write one Parquet file atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_rows(rows: list[dict], path: str | Path, rejected: bool = False) -> Path:
    """Rows (dicts) to one Parquet file of the record schema, atomically."""
    return write_table(schema.to_table(rows, rejected=rejected), path)


def write_json(obj, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | Path, default=None):
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def shard_files(directory: str | Path) -> list[Path]:
    """Committed Parquet shards of a directory, in name order (temp files excluded)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith("."))


def read_rows(directory_or_file: str | Path, rejected: bool = False) -> list[dict]:
    """All rows of a shard directory (or one file) as dicts, conformed to the schema."""
    p = Path(directory_or_file)
    files = [p] if p.is_file() else shard_files(p)
    if not files:
        return []
    tables = [schema.conform(pq.read_table(f), rejected=rejected) for f in files]
    return pa.concat_tables(tables).to_pylist()


def write_shards(rows: list[dict], directory: str | Path, prefix: str = "part",
                 rows_per_shard: int = 100_000, rejected: bool = False) -> list[Path]:
    """Write rows as numbered shards `{prefix}-00000.parquet`, each atomically."""
    out = []
    for i in range(0, max(len(rows), 1), rows_per_shard):
        chunk = rows[i:i + rows_per_shard]
        if not chunk and out:
            break
        out.append(write_rows(chunk, Path(directory) / f"{prefix}-{i // rows_per_shard:05d}.parquet", rejected))
    return out
