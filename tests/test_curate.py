"""The curate stage end to end on Parquet files with extra and missing columns, on a real Ray cluster."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from pipelines import schema
from pipelines.config import CurateConfig
from pipelines.curate import curate, curate_command, curate_dataset

LONG = ("The committee met on Tuesday to discuss the budget for the new library wing and after a long "
        "debate the members agreed to fund the construction with money from the city reserve while the "
        "mayor promised to review the spending plan again next spring before any contracts are signed")



def _rows():
    """(file a: no id or other schema columns, an extra int column; file b: ids, more schema columns, the
    extra column as strings)."""
    a = [{"instruction": i, "input": "", "output": o, "extra": n} for n, (i, o) in enumerate([
        ("Summarise the following news story.", LONG),
        ("Describe the image of a sunset.", "It is orange and calm."),
        ("Give me advice about saving money.", "As an AI language model, I can't."),
        ("SUMMARISE the following news story!", LONG.upper() + "."),
        ("Name three primary colours please.", "Red, yellow and blue.")])]
    b = [
        {"id": "b-keep", "instruction": "Translate 'good morning' into French.", "input": "",
         "output": "Bonjour.", "finish_reason": "stop", "round": 2, "extra": "x"},
        {"id": "b-trunc", "instruction": "Write a long essay on the history of Rome.", "input": "",
         "output": "Rome was founded", "finish_reason": "length", "round": 1, "extra": "y"},
        {"id": "zz-near", "instruction": "Summarise the following news story.", "input": "",
         "output": LONG.replace("Tuesday", "Wednesday"), "finish_reason": "stop", "round": 1, "extra": "z"},
        {"id": "b-empty", "instruction": "Say nothing at all here.", "input": "", "output": "  ",
         "finish_reason": "stop", "round": 1, "extra": "w"},
    ]
    return a, b


def _write_inputs(d, split: bool):
    a, b = _rows()
    d.mkdir()
    if split:
        pq.write_table(pa.Table.from_pylist(a), d / "a.parquet")
        pq.write_table(pa.Table.from_pylist(b[:2]), d / "b.parquet")
        pq.write_table(pa.Table.from_pylist(b[2:]), d / "c.parquet")
    else:  # one file with the union of the columns (nulls where a row lacks one)
        rows = [dict(r, extra=str(r["extra"])) for r in a] + b
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), d / "all.parquet")
    return d


def _read(d, pattern):
    files = sorted(d.glob(pattern))
    return files, pa.concat_tables([pq.read_table(f) for f in files])


def test_curate_end_to_end(ray_session, tmp_path):
    inp = _write_inputs(tmp_path / "in", split=True)
    out = tmp_path / "out"
    (out / "rejected").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"other": {"kept": True}}))
    # the lead's generate stage writes its own rejected shards beside ours
    pq.write_table(schema.to_table([], rejected=True), out / "rejected" / "generate-00000.parquet")

    funnel = curate(inp, out, CurateConfig())

    data_files, data = _read(out / "data", "part-*.parquet")
    rej_files, rej = _read(out / "rejected", "curate-*.parquet")
    assert data.schema.equals(schema.EXAMPLE_SCHEMA) and rej.schema.equals(schema.REJECTED_SCHEMA)
    a, b = _rows()
    first_id = schema.make_id(a[0]["instruction"], "", a[0]["output"])
    kept = {r["id"]: r for r in data.to_pylist()}
    assert set(kept) == {first_id, schema.make_id(a[4]["instruction"], "", a[4]["output"]), "b-keep"}
    assert kept["b-keep"]["round"] == 2 and kept["b-keep"]["finish_reason"] == "stop"
    got = {(r["id"], r["stage"], r["duplicate_of"]) for r in rej.to_pylist()}
    assert got == {
        (schema.make_id(a[1]["instruction"], "", a[1]["output"]), "blacklist", ""),
        (schema.make_id(a[2]["instruction"], "", a[2]["output"]), "refusals", ""),
        ("b-trunc", "truncated", ""),
        ("b-empty", "length", ""),
        (schema.make_id(a[3]["instruction"], "", a[3]["output"]), "exact_dedup", first_id)
        if schema.make_id(a[3]["instruction"], "", a[3]["output"]) > first_id else
        (first_id, "exact_dedup", schema.make_id(a[3]["instruction"], "", a[3]["output"])),
        ("zz-near", "near_dedup", min(first_id, schema.make_id(a[3]["instruction"], "", a[3]["output"]))),
    }
    reasons = {r["stage"]: r["reason"] for r in rej.to_pylist()}
    assert "'image'" in reasons["blacklist"] and "Jaccard" in reasons["near_dedup"]
    assert (funnel["rows_in"], funnel["rows_out"]) == (9, 3)
    assert funnel["dropped"] == {"length": 1, "truncated": 1, "template_markers": 0, "blacklist": 1, "echo": 0,
                                 "refusals": 1, "non_alpha": 0, "repetition": 0, "exact_dedup": 1, "near_dedup": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["other"] == {"kept": True} and manifest["curate"]["rows_out"] == 3
    assert (out / "rejected" / "generate-00000.parquet").exists()

    # a rerun, and the same rows in one file, give the same files
    curate(inp, out, CurateConfig())
    assert _read(out / "data", "part-*.parquet")[1].equals(data)
    assert _read(out / "rejected", "curate-*.parquet")[1].equals(rej)
    one = _write_inputs(tmp_path / "one", split=False)
    curate(one, tmp_path / "out2", CurateConfig())
    assert _read(tmp_path / "out2" / "data", "part-*.parquet")[1].equals(data)
    assert _read(tmp_path / "out2" / "rejected", "curate-*.parquet")[1].equals(rej)


def test_shards_are_canonical_and_stale_ones_removed(ray_session, tmp_path):
    rows = [{"instruction": f"Write a haiku about the number {i} today.", "input": "", "output": f"Number {i} sits quietly, counting autumn leaves."}
            for i in range(40)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "x.parquet")
    out = tmp_path / "out"
    curate(tmp_path / "in", out, CurateConfig(rows_per_shard=7, minhash={"enabled": False}))
    files, data = _read(out / "data", "part-*.parquet")
    assert data.num_rows == 40 and 3 <= len(files) <= 6
    for f in files:
        ids = pq.read_table(f)["id"].to_pylist()
        assert ids == sorted(ids)
    curate(tmp_path / "in", out, CurateConfig(minhash={"enabled": False}))
    assert [f.name for f in out.glob("data/part-*.parquet")] == ["part-00000.parquet"]


def test_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"instruction": ["a b c"], "input": [""]}), tmp_path / "in" / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet.*'output'"):
        curate(tmp_path / "in", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        curate(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ValueError, match="inside the output"):
        curate(tmp_path / "out" / "data", tmp_path / "out")


def test_curate_command_overrides(ray_session, tmp_path, capsys):
    inp = _write_inputs(tmp_path / "in", split=True)
    funnel = curate_command(str(inp), str(tmp_path / "out"), ["minhash.enabled=false", "filters.blacklist=false"])
    assert funnel["rows_out"] == 5 and "near_dedup" not in funnel["dropped"] and "blacklist" not in funnel["dropped"]
    assert "5 kept" in capsys.readouterr().out


def test_curate_dataset_in_memory(ray_session):
    a, b = _rows()
    ds = ray.data.from_items([{k: v for k, v in r.items() if k != "extra"} for r in b]).repartition(2)
    kept, rejected, funnel = curate_dataset(ds, CurateConfig())
    assert kept.schema().base_schema.equals(schema.EXAMPLE_SCHEMA)
    assert sorted(r["id"] for r in kept.take_all()) == ["b-keep", "zz-near"]
    assert sorted((r["id"], r["stage"]) for r in rejected.take_all()) == [("b-empty", "length"),
                                                                           ("b-trunc", "truncated")]
    assert funnel["rows_in"] == 4 and funnel["rows_out"] == 2
