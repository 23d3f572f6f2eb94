"""The curate stage: Parquet shards -> quality filters -> exact dedup -> near dedup -> Parquet.

`curate_dataset` works on Ray datasets (what `seedforge run` calls); `curate` reads and writes
directories; `curate_command` is `seedforge curate --input DIR --output DIR [key=value ...]`.
Kept rows go to output/data/part-*.parquet, dropped rows to output/rejected/curate-*.parquet with
stage (filter name, exact_dedup or near_dedup), reason and duplicate_of; the funnel goes to
output/manifest.json under "curate". Shards are hash buckets of the id, each sorted, so the files
are the same for any number of input files or blocks, and on a rerun.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from pipelines import dedup, filters, io, schema
from pipelines.config import CurateConfig, load_config
from pipelines.stages import check_free_cpu, quiet_ray_data_console

_TEXT = ("instruction", "input", "output", "finish_reason")  # what the filters read


def _prepare(t: pa.Table, cfg: CurateConfig) -> pa.Table:
    """Conform a batch to the schema, fill ids, run the filters, add the dedup keys."""
    missing = [c for c in cfg.columns if c not in t.column_names]
    if missing:
        raise ValueError(f"input has no column {missing[0]!r} (curate.columns = {cfg.columns})")
    extra = [c for c in cfg.columns if c not in schema.EXAMPLE_COLUMNS]
    out = schema.conform(t)
    for c in extra:
        out = out.append_column(c, t[c].cast(pa.string()))
    for f in out.schema:  # a null is a missing value: the schema default (text columns: "")
        default = "" if f.name in cfg.columns else schema.DEFAULTS.get(f.name)
        if default is not None and out[f.name].null_count:
            out = _set(out, f.name, pc.fill_null(out[f.name], pa.scalar(default, f.type)))
    rows = out.select(list(dict.fromkeys([*_TEXT, *cfg.columns, "id"]))).to_pylist()
    ids = [r["id"] or schema.make_id(*(r[c] for c in cfg.columns)) for r in rows]
    out = _set(out, "id", pa.array(ids, pa.string()))
    active = filters.active(cfg.filters)
    fails = [filters.first_failure(r, cfg.filters, active) or ("", "") for r in rows]
    out = out.append_column("_stage", pa.array([f[0] for f in fails], pa.string()))
    out = out.append_column("_reason", pa.array([f[1] for f in fails], pa.string()))
    return dedup.add_keys(out, cfg.columns)


def _set(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


def _as_rejected(t: pa.Table, stage: str = "", reason: str = "") -> pa.Table:
    """Rows with `_stage`/`_reason` (filters) or `_dup` (dedup) as REJECTED_SCHEMA rows."""
    n, out = t.num_rows, schema.conform(t, rejected=True)
    out = _set(out, "stage", pa.array([stage] * n, pa.string()) if stage else t["_stage"])
    out = _set(out, "reason", pa.array([reason] * n, pa.string()) if reason else t["_reason"])
    return _set(out, "duplicate_of", t["_dup"] if "_dup" in t.column_names else pa.array([""] * n, pa.string()))


def _value_counts(t: pa.Table, column: str) -> pa.Table:
    vc = pc.value_counts(t[column])
    return pa.table({"v": vc.field(0), "n": vc.field(1)})


def _count_by(ds, column: str) -> dict:
    """Value counts of a column of a materialized dataset (per-block counts summed on the driver)."""
    per_block = dedup.each_block(ds, _value_counts, column=column).take_all()
    total = Counter()
    for r in per_block:
        total[r["v"]] += r["n"]
    return dict(total)


def curate_dataset(ds, cfg: CurateConfig | None = None):
    """Filters -> exact dedup -> near dedup on a Ray dataset with the text columns (any other schema
    columns optional). Returns (kept, rejected, funnel): materialized datasets of EXAMPLE_SCHEMA and
    REJECTED_SCHEMA rows (row order unspecified), and {rows_in, rows_out, dropped: {stage: rows},
    near_dedup: {...}, seconds: {...}}."""
    cfg = cfg or CurateConfig()
    secs, t0 = {}, time.time()
    rows = dedup.each_block(dedup.spread(ds), _prepare, 1024, cfg=cfg).materialize()
    rows_in = rows.count()
    bad = dedup.each_block(rows.filter(expr=col("_reason") != ""), _as_rejected).materialize()
    counts = _count_by(bad, "stage") if bad.count() else {}
    dropped = {name: counts.get(name, 0) for name, _ in filters.active(cfg.filters)}
    rejected, kept = [bad], rows.filter(expr=col("_reason") == "").materialize()
    del rows
    secs["filters"] = time.time() - t0
    funnel = {"rows_in": rows_in}
    if cfg.exact_dedup and kept.count():
        t0 = time.time()
        kept, dups = dedup.exact_dedup(kept, cfg.num_partitions)
        rejected.append(dedup.each_block(dups, _as_rejected, stage="exact_dedup",
                                         reason="exact duplicate of the normalised text").materialize())
        dropped["exact_dedup"] = rejected[-1].count()
        secs["exact_dedup"] = time.time() - t0
    if cfg.minhash.enabled and kept.count():
        t0 = time.time()
        m = cfg.minhash
        kept, dups, funnel["near_dedup"] = dedup.near_dedup(kept, m, cfg.columns, cfg.num_partitions)
        why = (f"near duplicate of duplicate_of: linked to it by rows of estimated Jaccard >= {m.threshold} "
               f"({m.shingle} {m.ngram}-grams, MinHash LSH)" if m.verify else
               "near duplicate of duplicate_of: linked to it by rows sharing a MinHash LSH band")
        rejected.append(dedup.each_block(dups, _as_rejected, stage="near_dedup", reason=why).materialize())
        dropped["near_dedup"] = rejected[-1].count()
        secs["near_dedup"] = time.time() - t0
    kept = dedup.each_block(kept, schema.conform).materialize()
    rejected = rejected[0].union(*rejected[1:]).materialize() if len(rejected) > 1 else rejected[0]
    funnel.update(rows_out=kept.count(), dropped=dropped, seconds={k: round(v, 2) for k, v in secs.items()})
    return kept, rejected, funnel


# ---- files --------------------------------------------------------------------------------------

@ray.remote
def _read_file(path: str, columns: list[str]) -> pa.Table:
    return pq.read_table(path, columns=columns)


def read_shards(files: list[Path], columns: list[str]):
    """One dataset (a block per file, read by parallel tasks) of Parquet files whose schemas may
    differ: only schema and text columns are read, each file must have the text columns."""
    refs = []
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{f}: missing column {missing[0]!r} (curate.columns = {columns})")
        refs.append(_read_file.remote(str(f), [n for n in names if n in schema.EXAMPLE_COLUMNS or n in columns]))
    return ray.data.from_arrow_refs(refs)


def _shard_of(t: pa.Table, shards: int) -> pa.Table:
    part = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") % shards
            for i in t["id"].to_pylist()]
    return t.append_column("_part", pa.array(part, pa.int64()))


def _write_parts(t: pa.Table, directory: str, prefix: str, rejected: bool) -> pa.Table:
    sortable = [(f.name, "ascending") for f in t.schema if f.name != "_part" and not pa.types.is_list(f.type)]
    files, counts = [], []
    for p in pc.unique(t["_part"]).to_pylist():
        part = t.filter(pc.equal(t["_part"], p)).drop_columns(["_part"]).sort_by(sortable)
        path = io.write_table(schema.conform(part, rejected=rejected), Path(directory) / f"{prefix}-{p:05d}.parquet")
        files.append(path.name)
        counts.append(part.num_rows)
    return pa.table({"file": pa.array(files, pa.string()), "rows": pa.array(counts, pa.int64())})


def write_dataset(ds, directory, prefix: str, rows_per_shard: int, rejected: bool = False) -> list[str]:
    """Write rows as `{prefix}-NNNNN.parquet` shards (atomic files); remove stale shards of the prefix."""
    directory = Path(directory)
    n = ds.count()
    shards = max(1, math.ceil(n / rows_per_shard))
    if n == 0:
        empty = schema.conform(pa.table({"id": pa.array([], pa.string())}), rejected=rejected)
        names = [io.write_table(empty, directory / f"{prefix}-00000.parquet").name]
    else:
        parts = dedup.each_block(ds, _shard_of, shards=shards)
        written = dedup.by_key(parts, "_part", _write_parts, shards, directory=str(directory),
                               prefix=prefix, rejected=rejected)
        names = sorted(r["file"] for r in written.take_all())
    for stale in directory.glob(f"{prefix}-*.parquet"):
        if stale.name not in names:
            stale.unlink()
    return names


def _inputs(input_dir, output_dir) -> list[Path]:
    p, out = Path(input_dir).resolve(), Path(output_dir).resolve()
    for d in (out / "data", out / "rejected"):
        if p == d or d in p.parents:
            raise ValueError(f"input {input_dir} is inside the output's {d.name}/ directory, which curate rewrites")
    files = [p] if p.is_file() else io.shard_files(p)
    if not files:
        raise FileNotFoundError(f"no Parquet shards in {input_dir}")
    return files


def curate(input_dir, output_dir, cfg: CurateConfig | None = None) -> dict:
    """Curate the Parquet shards of input_dir into output_dir; returns the funnel (also in the manifest)."""
    cfg = cfg or CurateConfig()
    files = _inputs(input_dir, output_dir)
    if not ray.is_initialized():  # keep idle workers: Ray Data's shuffles otherwise restart theirs each time
        ray.init(address="local", _system_config={"idle_worker_killing_time_threshold_ms": 600_000})
        quiet_ray_data_console()  # seedforge curate's own command: ~15 Ray Data executions, each logged
    check_free_cpu()
    t0 = time.time()
    kept, rejected, funnel = curate_dataset(read_shards(files, cfg.columns), cfg)
    out = Path(output_dir)
    funnel["files"] = {"data": write_dataset(kept, out / "data", "part", cfg.rows_per_shard),
                       "rejected": write_dataset(rejected, out / "rejected", "curate", cfg.rows_per_shard, True)}
    funnel["rejected_rows"] = rejected.count()
    funnel["wall_seconds"] = round(time.time() - t0, 2)
    manifest = io.read_json(out / "manifest.json", {}) or {}
    manifest["curate"] = funnel
    io.write_json(manifest, out / "manifest.json")
    return funnel


def curate_command(input, output, overrides: list[str] = ()) -> dict:
    """`seedforge curate`: overrides are key=value with keys of the curate section (minhash.threshold=0.8)."""
    cfg = load_config(None, [f"curate.{o}" for o in overrides]).curate
    funnel = curate(input, output, cfg)
    print(f"curate: {funnel['rows_in']} rows in -> {funnel['rows_out']} kept ({output}/data), "
          f"{funnel['rejected_rows']} rejected ({output}/rejected)")
    for stage, n in funnel["dropped"].items():
        print(f"  dropped by {stage}: {n}")
    return funnel
