"""Near-dedup benchmark: seedforge's Ray Data MinHash LSH vs. single-process datasketch.

    python bench/dedup.py --rows 100000 1000000

For each size it writes a corpus of instruction-like rows with planted near duplicates (word
edits, case and punctuation changes, swapped sentences) to Parquet, then on the same files runs
  - ours: curate.read_shards (a read task per file) -> dedup.add_keys -> dedup.near_dedup (signatures,
    LSH buckets, verification, connected components, split) on a local Ray cluster of --cpus CPUs,
    results materialized;
  - baseline: one process reads the Parquet with pyarrow, and per row builds datasketch.MinHash
    with update() per shingle, queries a MinHashLSH and inserts the row (a row is a duplicate
    when the query finds an earlier row). Above --baseline-max rows it runs on a sample of whole
    planted groups, and says so.
Both use the same shingles (word 3-grams of the normalised text), threshold, num_perm and LSH
bands/rows. Truth: exact Jaccard of shingle sets >= threshold between rows of a planted group,
connected components, all but the smallest id are duplicates (rows of different groups are
random text). Peak memory is the largest sum of PSS over the process tree (driver, raylet, GCS,
workers; PSS counts the shared object store once), sampled every 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import minhash  # noqa: E402

COLS = ["instruction", "input", "output"]
TEMPLATES = ["Explain {} in simple terms.", "Write a short story about {}.", "Summarize the text about {}.",
             "Give three tips for {}.", "Classify the sentiment of this review of {}.",
             "Translate the following sentence about {} into French.", "What are the pros and cons of {}?",
             "Rewrite the paragraph about {} in a formal tone.", "List five facts about {}.",
             "Generate a question a student might ask about {}."]


class PeakMemory:
    """Largest sum of PSS over a process (default: this one) and its descendants, sampled in a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.5):
        self.pid, self.interval, self.peak, self._stop = pid, interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        try:
            me, total = psutil.Process(self.pid), 0
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, OSError):
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


# ---- corpus --------------------------------------------------------------------------------------

def _vary(rng: random.Random, words: list[str], row: dict) -> dict:
    kind = rng.random()
    out = dict(row)
    if kind < 0.55:  # word edits in the output: 1-3 usually, 6 or 10 sometimes (mostly below the threshold)
        w = row["output"].split()
        for _ in range(rng.choice([1, 1, 2, 2, 3, 3, 6, 10])):
            i = rng.randrange(len(w))
            op = rng.random()
            if op < 0.6:
                w[i] = rng.choice(words)
            elif op < 0.8:
                w.insert(i, rng.choice(words))
            elif len(w) > 5:
                del w[i]
        out["output"] = " ".join(w)
    elif kind < 0.8:  # case and punctuation
        out = {k: (v.upper() if rng.random() < 0.5 else v.lower()).replace(".", "!").replace(",", " ,")
               for k, v in row.items()}
    else:  # two sentences swapped
        s = re.split(r"(?<=[.!]) ", row["output"])
        if len(s) > 1:
            i = rng.randrange(len(s) - 1)
            s[i], s[i + 1] = s[i + 1], s[i]
        out["output"] = " ".join(s)
    return out


def make_corpus(n: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """n rows (id, instruction, input, output) and their planted group numbers."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    vocab = [f"{''.join(rng.choice('bcdfghklmnprstvz') + rng.choice('aeiou') for _ in range(rng.randint(1, 4)))}"
             for _ in range(30000)]
    zipf = 1 / np.arange(1, len(vocab) + 1) ** 0.8
    zipf /= zipf.sum()
    pool: list[int] = []

    def words(k):
        if len(pool) < k:
            pool.extend(nrng.choice(len(vocab), size=1 << 20, p=zipf).tolist())
        return " ".join(vocab[pool.pop()] for _ in range(k))
    rows, groups, g = [], [], 0
    while len(rows) < n:
        row = {"instruction": rng.choice(TEMPLATES).format(words(rng.randint(1, 3))) + " " + words(rng.randint(0, 6)),
               "input": words(rng.randint(10, 25)) if rng.random() < 0.4 else "",
               "output": ". ".join(words(rng.randint(8, 18)) for _ in range(rng.randint(3, 6))) + "."}
        rows.append(row)
        groups.append(g)
        if rng.random() < 0.25:
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                if len(rows) < n:
                    rows.append(_vary(rng, vocab, rows[-1] if rng.random() < 0.3 else row))
                    groups.append(g)
        g += 1
    order = nrng.permutation(n)  # ids random w.r.t. group order
    ids = [f"{x:016x}" for x in nrng.integers(0, 2 ** 63, n)]
    table = pa.table({"id": [ids[i] for i in range(n)], **{c: [rows[i][c] for i in order] for c in COLS}})
    return table, np.asarray(groups)[order]


def truth(table: pa.Table, groups: np.ndarray, threshold: float) -> tuple[set, list]:
    """Ids brute force removes (exact Jaccard within planted groups -> components), and the planted
    pairs as (id, id, Jaccard)."""
    ids, texts = table["id"].to_pylist(), list(zip(*(table[c].to_pylist() for c in COLS)))
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        by_group.setdefault(g, []).append(i)
    removed, sims = set(), []
    for members in by_group.values():
        if len(members) < 2:
            continue
        sets = {ids[i]: set(minhash.shingles(minhash.normalize(" ".join(texts[i])))) for i in members}
        parent = {k: k for k in sets}

        def find(x):
            while parent[x] != x:
                x = parent[x]
            return x
        keys = sorted(sets)
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                j = len(sets[keys[a]] & sets[keys[b]]) / max(1, len(sets[keys[a]] | sets[keys[b]]))
                sims.append((keys[a], keys[b], j))
                if j >= threshold:
                    ra, rb = find(keys[a]), find(keys[b])
                    parent[max(ra, rb)] = min(ra, rb)
        removed |= {k for k in keys if find(k) != k}
    return removed, sims


def score(pred: set, true: set) -> tuple[float, float]:
    hit = len(pred & true)
    return hit / max(1, len(true)), hit / max(1, len(pred))


# ---- the two methods ------------------------------------------------------------------------------

def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    try:
        me = psutil.Process(pid)
        procs = [me, *me.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def run_ours(path: Path, cfg) -> tuple[set, float, int, dict, float]:
    from pipelines import dedup
    from pipelines.curate import read_shards

    with PeakMemory() as mem:
        t0, c0 = time.time(), cpu_seconds()
        ds = dedup.each_block(read_shards(sorted(path.glob("*.parquet")), COLS), dedup.add_keys, columns=COLS)
        kept, dups, stats = dedup.near_dedup(ds, cfg, COLS)
        dups = dups.materialize()
        secs, cpu = time.time() - t0, cpu_seconds() - c0
    removed = {r["id"]: r["_dup"] for r in dups.select_columns(["id", "_dup"]).take_all()}
    return removed, secs, mem.peak, stats, cpu


def _baseline(path: str, sample_file: str | None, threshold: float, num_perm: int, params, out: str) -> None:
    """The baseline, in its own process: writes (seconds, rows, removed ids) to `out`."""
    from datasketch import MinHash, MinHashLSH

    t0, c0 = time.time(), sum(os.times()[:2])
    table = pq.read_table(path, columns=["id", *COLS])
    if sample_file:
        keep = set(Path(sample_file).read_text().split())
        table = table.filter(pa.array([i in keep for i in table["id"].to_pylist()]))
    table = table.sort_by("id")
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=params)
    removed = []
    for row in table.to_pylist():
        m = MinHash(num_perm=num_perm)
        for s in minhash.shingles(minhash.normalize(" ".join(row[c] for c in COLS))):
            m.update(s)
        if lsh.query(m):
            removed.append(row["id"])
        lsh.insert(row["id"], m)
    secs = time.time() - t0
    cpu = sum(os.times()[:2]) - c0
    Path(out).write_text(f"{secs} {table.num_rows} {cpu}\n" + "\n".join(removed))


def run_baseline(path: Path, sample: set | None, threshold: float, num_perm: int, params) -> tuple[set, float, int, int, float]:
    """Run `_baseline` in a fresh process (so its memory excludes Ray's) and read its results."""
    import multiprocessing as mp

    sample_file = None
    if sample is not None:
        sample_file = str(path.parent / f"{path.name}-baseline-sample.txt")
        Path(sample_file).write_text("\n".join(sorted(sample)))
    out = str(path.parent / f"{path.name}-baseline-result.txt")
    proc = mp.get_context("spawn").Process(target=_baseline, args=(str(path), sample_file, threshold, num_perm,
                                                                    params, out))
    proc.start()
    with PeakMemory(proc.pid) as mem:
        proc.join()
    if proc.exitcode:
        raise RuntimeError(f"baseline failed with exit code {proc.exitcode}")
    head, *removed = Path(out).read_text().split("\n")
    secs, rows, cpu = head.split()
    return set(x for x in removed if x), float(secs), mem.peak, int(rows), float(cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--fn-weight", type=float, default=None,
                    help="false-negative weight of the LSH parameter choice (default: MinHashConfig's)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (ours)")
    ap.add_argument("--baseline-max", type=int, default=100_000, help="sample the baseline above this many rows")
    ap.add_argument("--workdir", default="/tmp/seedforge-bench-dedup")
    args = ap.parse_args(argv)

    import ray
    from pipelines.config import MinHashConfig

    cfg = MinHashConfig(threshold=args.threshold, num_perm=args.num_perm,
                        **({"fn_weight": args.fn_weight} if args.fn_weight is not None else {}))
    params = minhash.lsh_params(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows, cfg.fn_weight)  # both use these
    # idle workers kept (as curate() does): Ray Data's shuffles otherwise restart their worker pool each time
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             _system_config={"idle_worker_killing_time_threshold_ms": 600_000})
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"threshold {cfg.threshold}, num_perm {cfg.num_perm}, LSH bands x rows {params} (fn_weight "
          f"{cfg.fn_weight}), word 3-grams; "
          f"ours on {args.cpus} Ray CPUs, baseline on 1 core; host has {os.cpu_count()} cores", flush=True)
    work = Path(args.workdir)
    results = {}
    for n in [1000, *args.rows]:  # 1000: warm-up (starts Ray's worker pools), not reported
        d = work / str(n)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.time()
        table, groups = make_corpus(n, seed=n)
        for i, s in enumerate(range(0, n, max(1, n // 10))):
            pq.write_table(table.slice(s, max(1, n // 10)), d / f"shard-{i:03d}.parquet")
        true, sims = truth(table, groups, cfg.threshold)
        sample = None
        if n > args.baseline_max:  # whole planted groups, ~baseline_max rows
            keep = (groups % max(1, round(n / args.baseline_max))) == 0
            sample = set(np.asarray(table["id"].to_pylist())[keep].tolist()) or None
        del table, groups  # the driver's memory counts as ours
        gen = time.time() - t0
        load = os.getloadavg()[0]
        ours, o_secs, o_mem, stats, o_cpu = run_ours(d, cfg)
        if n == 1000:
            continue
        base, b_secs, b_mem, b_rows, b_cpu = run_baseline(d, sample, cfg.threshold, cfg.num_perm, params)
        b_true = true if sample is None else true & sample
        r_o, p_o = score(set(ours), true)
        r_b, p_b = score(base, b_true)
        bands = [(cfg.threshold, 0.8), (0.8, 0.9), (0.9, 1.01)]
        found = {b: [ours.get(x, x) == ours.get(y, y) for x, y, j in sims if b[0] <= j < b[1]] for b in bands}
        sims = np.asarray([j for _, _, j in sims])
        pos = sims[sims >= cfg.threshold]
        print(f"\n== {n:,} rows: corpus made in {gen:.0f}s; {len(true):,} true duplicates; planted pairs at "
              f"J>=t: {len(pos):,} (J in [t,0.8): {np.mean(pos < 0.8):.0%}, [0.8,0.9): "
              f"{np.mean((pos >= 0.8) & (pos < 0.9)):.0%}, >=0.9: {np.mean(pos >= 0.9):.0%}); below t: "
              f"{int((sims < cfg.threshold).sum()):,}", flush=True)
        print(f"   ours stats: {stats}")
        print("   ours, planted pairs at J >= t that end in one component, by J: " + ", ".join(
            f"[{lo:.1f},{min(hi, 1):.1f}{']' if hi > 1 else ')'} {np.mean(f):.3f}" for (lo, hi), f in found.items() if f))
        o_rate, b_rate = n / o_secs, b_rows / b_secs
        print(f"   {'method':<9} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'cores':>5} {'rows/s/core':>11} "
              f"{'CPU s':>7} {'rows/CPU-s':>10} {'peak GiB':>8} {'recall':>6} {'precision':>9}")
        print(f"   {'ours':<9} {n:>9,} {o_secs:>8.1f} {o_rate:>8.0f} {args.cpus:>5} {o_rate / args.cpus:>11.0f} "
              f"{o_cpu:>7.1f} {n / o_cpu:>10.0f} {o_mem / 2 ** 30:>8.2f} {r_o:>6.3f} {p_o:>9.3f}")
        print(f"   {'baseline':<9} {b_rows:>9,} {b_secs:>8.1f} {b_rate:>8.0f} {1:>5} {b_rate:>11.0f} "
              f"{b_cpu:>7.1f} {b_rows / b_cpu:>10.0f} {b_mem / 2 ** 30:>8.2f} {r_b:>6.3f} {p_b:>9.3f}"
              + (f"   (baseline on a sample of whole planted groups: {b_rows:,} of {n:,} rows)" if sample else ""))
        ratio = (o_rate / args.cpus) / b_rate
        cpu_ratio = (n / o_cpu) / (b_rows / b_cpu)
        print(f"   per-core speed-up: {ratio:.1f}x by wall clock (rows/s per core), {cpu_ratio:.1f}x by CPU time "
              f"(rows per CPU-second); 1-min load average at the start: {load:.1f} on {os.cpu_count()} cores",
              flush=True)
        results[n] = dict(secs_per_row=o_secs / n, cpu_per_row=o_cpu / n, ratio=ratio, cpu_ratio=cpu_ratio,
                          mem=o_mem, recall=r_o, precision=p_o)
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        growth = results[hi]["secs_per_row"] / results[lo]["secs_per_row"]
        cpu_growth = results[hi]["cpu_per_row"] / results[lo]["cpu_per_row"]
        print(f"\ntime per row at {hi:,} / at {lo:,}: {growth:.2f}x wall clock, {cpu_growth:.2f}x CPU time")
    print("\ntargets: >=5x baseline rows/s per core, recall & precision >= 0.95, time per row at 1M within "
          "1.3x of 100k, peak memory < 8 GiB at 1M")
    for n, r in results.items():
        print(f"   {n:>9,}: speed-up {r['ratio']:.1f}x wall {'ok' if r['ratio'] >= 5 else 'MISSED'}, "
              f"{r['cpu_ratio']:.1f}x CPU {'ok' if r['cpu_ratio'] >= 5 else 'MISSED'}; recall "
              f"{r['recall']:.3f} precision {r['precision']:.3f} "
              f"{'ok' if min(r['recall'], r['precision']) >= 0.95 else 'MISSED'}; peak {r['mem'] / 2 ** 30:.2f} GiB "
              f"{'ok' if r['mem'] < 8 * 2 ** 30 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
