"""Benchmark: seedforge's novelty filter vs the Self-Instruct reference (rouge-score, all pairs).

    python bench/novelty.py --sizes 10000 50000 200000

Per N: the 175 seed tasks form the pool; N generated instructions are streamed through filter_novel
(threshold 0.7) in --rounds equal rounds, --stream-repeat times on fresh indexes (medians
reported; after an untimed warm-up that loads the compiled functions). "stream-bound" is the
filter alone: the decisions, with lower-bound scores on kept rows, the sequential part of a round.
"stream-exact", the pipeline's default (generate.exact_novelty_scores), adds after each round the
pass that makes its kept rows' scores exact (NoveltyIndex.best_before at each row's position);
serial here, while the pipeline runs it in Ray tasks beside the classification pass, so each
round's pass is also timed on --workers forked processes. --bound-only skips the pass,
for pools past 200k. The time per instruction over the last rounds/2 rounds ("second half") is the
marginal cost at a pool of ~N/2..N, index upkeep (segment merges) included. Then, on the index
with all of the stream indexed, --probe new candidates are filtered against the pool of that size
("probe"), and with the exact pass added ("probe-exact"), each --repeat times on fresh copies of
the index, the median time reported (a 50k probe takes ~0.1 s, within this box's noise).
The reference is Self-Instruct's loop: per candidate a multiprocessing Pool maps
`partial(scorer.score, candidate)` over every pool instruction (+ the ones kept before it) and
drops it if max F > 0.7. It runs on the same candidates against the same pool state, in full when
that is estimated under 10 minutes, else on candidates spread evenly over the batch for
--ref-budget seconds, the total extrapolated as mean time per sampled candidate x
candidates ("~", "sample"). Both probe rows (both stream rows) are compared with the same reference
run. "differing decisions" must be 0; "differing rows" compares (kept, score, most similar): 0
expected in exact mode, while lower-bound kept rows carry a lower-bound score.

The last line is the verdict: the speed-up at N=50000 against the 1000x target, the growth of the
per-instruction cost from N=50000 to 200000 against log growth (log 200000 / log 50000 = 1.128),
and the differing decisions in total; the exit status is 1 if any decision differs. Growth is given
for three measures of that cost: the whole stream (the filter's time over the N built
instructions, the benchmark as the issue words it), the stream's second half (the marginal cost at
a pool of N/2..N, index upkeep amortised) and the probe (2000 candidates against the pool of N: a
spot measure; which segment merges its ~2 chunks set off depends on where the binary counter of
segments stands: under cProfile, ~12 us per instruction in merges for one 50k pool, none for one
200k pool).

Instructions: imperative openers + a word-bigram chain over the Self-Instruct data in
../shared/data/self-instruct or $SELF_INSTRUCT_DATA (built-in word lists only with
--allow-fallback), rare "entity" words from a Zipf-like law over a 10^6 pseudo-word lexicon (the vocabulary
keeps growing with N, as in real data), ~25% near-paraphrases of earlier instructions (word
drops/inserts/swaps/substitutions, case, punctuation) and ~2% exact repeats.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rouge_score import rouge_scorer  # noqa: E402

from pipelines.config import GenerateConfig  # noqa: E402
from pipelines.novelty import NoveltyIndex, filter_novel, with_exact_scores  # noqa: E402

PIPELINE_EXACT = GenerateConfig().exact_novelty_scores  # the mode `seedforge run` uses by default
_SHARED = None  # (index, texts, before, parts) for the forked processes of parallel_stream
TARGET_SPEEDUP, SMALL_N, LARGE_N = 1000, 50000, 200000

DATA = Path(os.environ.get("SELF_INSTRUCT_DATA", Path(__file__).resolve().parents[2] / "shared/data/self-instruct"))
OPENERS = ["Write", "Generate", "Give me", "Explain", "Create", "List", "Describe", "Find",
           "Classify", "Summarize", "Rewrite", "Translate", "Suggest", "Tell me", "Given",
           "What is", "How can I", "Identify", "Come up with", "Make a list of", "Design",
           "Compose", "Provide", "Compare", "Convert", "Write a function that", "Plan"]
FALLBACK = ("a the of to and in for with about that is on your this an by from as be it can "
            "write story poem email essay list reasons steps tips way ways people time day new "
            "first best simple short long good make use work find help need text sentence word "
            "following given input output example question answer data python code function "
            "number numbers string table user product customer company team project plan "
            "city country food health money school student teacher book movie music game").split()
SYL = ["ka", "lo", "mi", "ver", "tan", "shu", "re", "gol", "pi", "dra", "nex", "ul", "bo", "sen",
       "tri", "za", "quo", "fi", "mar", "el", "os", "wen", "ti", "cra", "ju", "pha", "ni", "dor"]


def seeds_and_corpus() -> tuple[list[str], list[str]]:
    seeds, sents = [], []
    def add(t):
        sents.extend(s for s in t.replace("\n", ". ").split(". ") if len(s.split()) >= 3)
    if (DATA / "seed_tasks.jsonl").exists():
        for line in open(DATA / "seed_tasks.jsonl"):
            d = json.loads(line)
            seeds.append(d["instruction"])
            add(d["instruction"])
            for i in d["instances"]:
                add(i["input"]); add(i["output"])
        for f in [DATA / "user_oriented_instructions.jsonl", *sorted((DATA / "human_eval").glob("*.jsonl"))]:
            for line in open(f):
                d = json.loads(line)
                for key in ("instruction", "input", "response", "target"):
                    add(d.get(key) or "")
    if not seeds:
        r = random.Random(0)
        seeds = [f"{r.choice(OPENERS)} " + " ".join(r.choices(FALLBACK, k=r.randint(5, 15)))
                 for _ in range(175)]
        sents = [" ".join(random.Random(k).choices(FALLBACK, k=20)) for k in range(2000)]
    return seeds, sents


class Generator:
    def __init__(self, corpus: list[str], seed: int = 0):
        self.rng = random.Random(seed)
        self.next: dict[str, list[str]] = defaultdict(list)
        for s in corpus:
            w = s.split()
            for a, b in zip(w, w[1:]):
                self.next[a.lower()].append(b)
        self.starts = [s.split()[0] for s in corpus]
        self.out: list[str] = []

    def entity(self) -> str:
        k = int(self.rng.paretovariate(0.4)) % 1_000_000  # Zipf-like rank
        w = ""
        while True:
            w += SYL[k % len(SYL)]
            k //= len(SYL)
            if not k:
                return w.capitalize()

    def fresh(self) -> str:
        r = self.rng
        words = r.choice(OPENERS).split()
        n = max(4, int(r.lognormvariate(2.65, 0.45)))
        while len(words) < n:
            nxt = self.next.get(words[-1].lower())
            w = r.choice(nxt) if nxt else r.choice(self.starts).lower()
            words.append(self.entity() if len(w) > 3 and r.random() < 0.25 else w)
        return " ".join(words).rstrip(".,;:") + r.choice([".", ".", ".", "?", ":", ""])

    def paraphrase(self, src: str) -> str:
        r, w = self.rng, src.split()
        for _ in range(r.choice([1, 1, 2, 2, 3, 4])):
            op = r.random()
            if op < 0.25 and len(w) > 3:
                del w[r.randrange(len(w))]
            elif op < 0.5:
                w.insert(r.randrange(len(w) + 1), r.choice(self.next.get(r.choice(w).lower()) or w))
            elif op < 0.65 and len(w) > 2:
                i = r.randrange(len(w) - 1)
                w[i], w[i + 1] = w[i + 1], w[i]
            elif op < 0.9:
                w[r.randrange(len(w))] = r.choice(self.next.get(r.choice(w).lower()) or w)
            else:
                w = [x.lower() if r.random() < 0.5 else x.upper() for x in w]
        return " ".join(w).replace(" ,", ",") + r.choice(["", "!", "."])

    def make(self, n: int) -> list[str]:
        res = []
        for _ in range(n):
            u = self.rng.random()
            if self.out and u < 0.02:
                t = self.rng.choice(self.out)
            elif self.out and u < 0.27:
                t = self.paraphrase(self.rng.choice(self.out[-5000:] if u < 0.15 else self.out))
            else:
                t = self.fresh()
            self.out.append(t)
            res.append(t)
        return res


_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _ref_one(workers, pool: list[str], cand: str, thr: float):
    """Self-Instruct: rouge_scores = p.map(partial(scorer.score, inst), all_instructions);
    dropped if max > thr. Most similar = first instruction at the max."""
    scores = [s["rougeL"].fmeasure for s in workers.map(partial(_SCORER.score, cand), pool)]
    best = max(scores, default=0.0)
    return best <= thr, best, (pool[scores.index(best)] if pool else "")


def reference(workers, pool0, cands, ours, thr, budget):
    """The reference on candidates (in an order spread evenly over the batch), each against pool0
    plus the candidates kept before it; in full if that is estimated under 10 minutes, else until
    `budget` seconds. Returns the results by index, seconds, pairs run, estimated total seconds."""
    before, n = [], len(pool0)
    for k, _, _ in ours:
        before.append(n)
        n += k
    kept = [c for (k, _, _), c in zip(ours, cands) if k]
    res, pairs, t0 = {}, 0, time.perf_counter()
    for i in _spread(len(cands)):
        res[i] = _ref_one(workers, pool0 + kept[:before[i] - len(pool0)], cands[i], thr)
        pairs += before[i]
        el = time.perf_counter() - t0
        if el > budget and el / len(res) * len(cands) > 600:
            break
    sec = time.perf_counter() - t0
    return res, sec, pairs, sec / len(res) * len(cands)  # systematic sample: mean time x count


def _spread(n):
    """0..n-1 in an order whose every prefix is spread evenly over the range."""
    seen, step = set(), 1 << max(0, (n - 1).bit_length())
    while step:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                yield i
        step //= 2


def compare(ref, ours):
    """(differing decisions, differing (kept, score, most similar) rows, kept rows with the exact
    score) over the candidates the reference ran on."""
    dec = sum(ref[i][0] != ours[i][0] for i in ref)
    rows = sum(ref[i] != ours[i] for i in ref)
    exact_kept = sum(ref[i] == ours[i] for i in ref if ref[i][0])
    return dec, rows, exact_kept, sum(ref[i][0] for i in ref)


def _mode(exact: bool) -> str:
    return "exact" if exact else "bound"


def verdict(rows, marginal) -> tuple[str, bool]:
    """The closing line, and whether every decision matched the reference. rows: (N, batch name,
    candidates, our seconds, reference seconds, ...) as main() collects them; marginal: (N, stream
    name) -> seconds per instruction over the stream's second half."""
    cost = {(n, name): t_ours / m for n, name, m, t_ours, *_ in rows}  # stream rows: the whole stream
    cost.update({(n, name + " 2nd half"): sec for (n, name), sec in marginal.items()})
    speedup = {(n, name): t_ref / t_ours for n, name, m, t_ours, t_ref, *_ in rows}
    parts = []
    streams = sorted({name for _, name in cost if name.startswith("stream") and not name.endswith(" 2nd half")})
    for name in streams + [s + " 2nd half" for s in streams] + ["probe-exact", "probe"]:
        if (SMALL_N, name) in speedup:
            up = speedup[SMALL_N, name]
            parts.append(f"{name} speed-up at N={SMALL_N}: {up:.0f}x ({'meets' if up >= TARGET_SPEEDUP else 'MISSES'} "
                         f"the {TARGET_SPEEDUP}x target)")
        if (SMALL_N, name) in cost and (LARGE_N, name) in cost:
            growth, log_growth = cost[LARGE_N, name] / cost[SMALL_N, name], math.log(LARGE_N) / math.log(SMALL_N)
            parts.append(f"{name} cost per instruction N={SMALL_N}->{LARGE_N}: x{growth:.3f} vs log growth "
                         f"x{log_growth:.3f} ({'within' if growth <= log_growth else 'ABOVE'})")
    if not parts:
        parts.append(f"speed-up and growth need --sizes with {SMALL_N} and {LARGE_N}")
    differing = sum(r[7] for r in rows)
    parts.append(f"differing decisions in total: {differing}")
    return "verdict: " + "; ".join(parts), differing == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 200000])
    ap.add_argument("--probe", type=int, default=2000, help="candidates filtered against the pool of size ~N")
    ap.add_argument("--repeat", type=int, default=5, help="probe runs (fresh index copies); the median is reported")
    ap.add_argument("--allow-fallback", action="store_true",
                    help="run on built-in word lists when the Self-Instruct data is missing (numbers not comparable)")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--workers", type=int, default=2, help="reference multiprocessing Pool size")
    ap.add_argument("--stream-repeat", type=int, default=3,
                    help="stream runs (fresh indexes); the medians of the whole stream and of its "
                         "second half are reported")
    ap.add_argument("--ref-budget", type=float, default=120.0, help="reference seconds per sampled measurement")
    ap.add_argument("--rounds", type=int, default=8,
                    help="the stream is filtered in this many rounds (even), each followed by the exact pass over "
                         "its kept rows, as in the pipeline; the second half is the last rounds/2")
    ap.add_argument("--bound-only", action="store_true",
                    help="skip the exact-score pass over the stream's kept rows (for pools past 200k, where "
                         "it takes tens of minutes); the probes still run in both modes")
    a = ap.parse_args()
    seeds, corpus = seeds_and_corpus()
    if not (DATA / "seed_tasks.jsonl").exists() and not a.allow_fallback:
        sys.exit(f"bench/novelty.py: {DATA / 'seed_tasks.jsonl'} not found: set SELF_INSTRUCT_DATA to the "
                 "Self-Instruct data folder (or --allow-fallback for built-in word lists, whose numbers "
                 "are not comparable with runs on the real data)")
    print(f"seed pool: {len(seeds)} instructions; bigram corpus: {len(corpus)} sentences; threshold {a.threshold}; "
          f"reference: rouge-score + multiprocessing Pool({a.workers}) (created once); {os.cpu_count()} CPUs")
    warm_up(seeds, corpus, a.threshold)
    rows, marginal = [], {}  # marginal: (N, stream) -> seconds per instruction over its second half
    names = ["stream-exact", "stream-bound"] if PIPELINE_EXACT else ["stream-bound", "stream-exact"]
    names = [x for x in names if not (a.bound_only and x == "stream-exact")]
    label = f"{names[0]}, the pipeline default" if names[0].endswith(_mode(PIPELINE_EXACT)) else names[0]
    with mp.get_context("fork").Pool(a.workers) as workers:
        for n in a.sizes:
            gen = Generator(corpus, seed=n)
            stream, probe = gen.make(n), gen.make(a.probe)
            idx, res, secs = timed_stream(seeds, stream, a.threshold, a.stream_repeat, not a.bound_only, a.rounds)
            streams = [(name, res[name], secs[name][0]) for name in names]
            for name in names:
                marginal[n, name] = secs[name][1] / (n - n // 2)
            if not a.bound_only:
                t_par = parallel_stream(seeds, stream, a.threshold, a.rounds, a.workers, res["stream-exact"])
                print(f"N={n}: the exact passes after the {a.rounds} rounds: {secs['pass'][0]:.1f}s in this process, "
                      f"{t_par:.1f}s on {a.workers} forked processes (same scores)", flush=True)
            pool = list(idx._texts)
            (res_p, t_probe), reps_p = timed_probe(idx, probe, exact=False, repeat=a.repeat)
            (res_x, t_exact), reps_x = timed_probe(idx, probe, exact=True, repeat=a.repeat)
            print(f"N={n}: probe seconds per repeat {reps_p}, probe-exact {reps_x} (median used)", flush=True)
            mem = index_bytes(idx) / len(idx)
            res, t_stream = streams[0][1], streams[0][2]
            print(f"\nN={n}: stream ({label}) kept "
                  f"{sum(k for k, _, _ in res)}/{n} in {t_stream:.1f}s; pool {len(pool)}, "
                  f"vocabulary {len(idx._ids)} elements, {len(idx._segs)} segments, ~{mem:.0f} bytes/instruction "
                  f"(index arrays + token codes, texts excluded)", flush=True)
            for name, _, _ in streams:
                print(f"  {name}, second half (pool ~{n // 2}..{n}, index upkeep included): "
                      f"{marginal[n, name] * 1e6:.0f} us/instr", flush=True)
            batches = [("probe", pool, probe, res_p, t_probe), ("probe-exact", pool, probe, res_x, t_exact)]
            batches += [(name, seeds, stream, r, t) for name, r, t in streams]
            for k, (name, p0, cands, ours, t_ours) in enumerate(batches):
                if k in (0, 2):  # one reference run per candidate batch (probe, stream)
                    ref, sec, pairs, t_ref = reference(workers, p0, cands, ours, a.threshold, a.ref_budget)
                full = len(ref) == len(cands)
                dec, diff_rows, exact_kept, kept = compare(ref, ours)
                print(f"  {name:<12}: ours {t_ours:.2f}s ({t_ours / len(cands) * 1e6:.0f} us/instr); reference on "
                      f"{len(ref)}/{len(cands)} candidates ({pairs} pairs) {sec:.0f}s -> "
                      f"{'measured' if full else 'extrapolated'} {t_ref:.0f}s; differing decisions {dec}; "
                      f"differing rows {diff_rows}; kept rows with the exact score {exact_kept}/{kept}", flush=True)
                rows.append((n, name, len(cands), t_ours, t_ref, full, len(ref), dec, diff_rows))
    print("\n      N  batch         cands | ours       us/instr | reference          | speed-up | ref ran on   "
          "| differing decisions | differing rows")
    for n, name, m, t_ours, t_ref, full, done, dec, diff_rows in rows:
        print(f"{n:>7}  {name:<12} {m:>7} | {t_ours:8.2f}s {t_ours / m * 1e6:8.0f} | "
              f"{('' if full else '~') + f'{t_ref:.0f}s':>9} {'full' if full else 'sample':>7}  | {t_ref / t_ours:7.0f}x | "
              f"{done:>5}/{m:<6} | {dec:>19} | {diff_rows:>5}")
    line, same = verdict(rows, marginal)
    print("\n" + line)
    return 0 if same else 1


def timed_stream(seeds, stream, threshold: float, repeat: int, exact: bool, rounds: int):
    """The stream filtered into a fresh index of the seeds in `rounds` equal rounds, each (exact)
    followed by the exact pass over its kept rows, as a pipeline round does; `repeat` times (a 50k
    stream takes ~2 s, and one run was seen 25% slow): (the last index, {name: results}, {name:
    (median seconds of the whole stream, of its second half)}) for "stream-bound" (the filter),
    "pass" and "stream-exact" (both). Every repeat must give the same results."""
    runs = []
    cuts = [len(stream) * k // rounds for k in range(rounds + 1)]
    for _ in range(repeat):
        idx = NoveltyIndex(threshold)
        for s in seeds:
            idx.add(s)
        res = {"stream-bound": [], "stream-exact": []}
        secs = {name: [0.0, 0.0] for name in ("stream-bound", "pass", "stream-exact")}
        for k in range(rounds):
            n0, t0 = len(idx), time.perf_counter()
            got = filter_novel(idx, stream[cuts[k]:cuts[k + 1]])  # equal to one call (tests/test_novelty.py)
            if k == rounds - 1:
                idx._flush()  # the stream's last additions are indexed as part of the stream
            t1 = time.perf_counter()
            res["stream-bound"] += got
            parts = {"stream-bound": t1 - t0}
            if exact:
                res["stream-exact"] += with_exact_scores(idx, got, n0)
                parts["pass"] = time.perf_counter() - t1
                parts["stream-exact"] = parts["stream-bound"] + parts["pass"]
            for name, t in parts.items():
                secs[name][0] += t
                secs[name][1] += t if 2 * k >= rounds else 0.0
        runs.append({name: (res.get(name), *secs[name]) for name in secs if name in parts})
    for name in runs[0]:
        assert all(r[name][0] == runs[0][name][0] for r in runs), f"repeats of one stream gave different {name}"
        print(f"  {name} seconds per repeat {[round(r[name][1], 2) for r in runs]} (median used)", flush=True)
    med = {name: (statistics.median(r[name][1] for r in runs), statistics.median(r[name][2] for r in runs))
           for name in runs[0]}
    return idx, {name: runs[0][name][0] for name in runs[0]}, med


def _pass_part(k):
    idx, texts, before, parts = _SHARED
    lo, hi = len(texts) * k // parts, len(texts) * (k + 1) // parts
    return idx.best_before(texts[lo:hi], before[lo:hi])


def parallel_stream(seeds, stream, threshold: float, rounds: int, workers: int, expected) -> float:
    """The stream once more, round by round, each round's exact pass split over `workers` forked
    processes (each reads the index, as the pipeline's Ray tasks do, without Ray): the passes'
    wall seconds, pool start-ups included. Checks the scores against `expected`."""
    idx, got, secs = NoveltyIndex(threshold), [], []
    for s in seeds:
        idx.add(s)

    def forked(texts, before):
        global _SHARED
        idx._flush()  # before the fork: the children only read the index
        _SHARED = (idx, texts, before, workers)
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(workers) as pool:
            out = [x for part in pool.map(_pass_part, range(workers)) for x in part]
        secs.append(time.perf_counter() - t0)
        _SHARED = None
        return out

    cuts = [len(stream) * k // rounds for k in range(rounds + 1)]
    for k in range(rounds):
        n0 = len(idx)
        got += with_exact_scores(idx, filter_novel(idx, stream[cuts[k]:cuts[k + 1]]), n0, score=forked)
    assert got == expected, "the parallel exact passes gave other scores"
    return sum(secs)


def warm_up(seeds, corpus, threshold: float):
    """Filter a small stream and run the exact pass once, untimed: the first call in a process
    loads the compiled (numba) functions from their cache, a one-off cost that would land in the
    first stream's time."""
    small = Generator(corpus, seed=-1).make(5000)
    idx = NoveltyIndex(threshold)
    with_exact_scores(idx, filter_novel(idx, seeds + small), 0)


def timed_probe(idx, probe, exact: bool, repeat: int):
    """((results, median seconds), all seconds): filter_novel of the probe (and with exact, the
    exact pass over its kept rows) on `repeat` fresh copies of the index (one probe at 50k takes
    ~0.1 s: a single run is at the mercy of this box's noise). Every repeat must give the same
    results."""
    runs = []
    for _ in range(repeat):
        c = copy.deepcopy(idx)
        t0 = time.perf_counter()
        n0 = len(c)
        res = filter_novel(c, probe)
        if exact:
            res = with_exact_scores(c, res, n0)
        runs.append((res, time.perf_counter() - t0))
    assert all(r == runs[0][0] for r, _ in runs), "repeats of one probe gave different results"
    secs = sorted(t for _, t in runs)
    return (runs[0][0], secs[len(secs) // 2]), [round(t, 3) for _, t in runs]


def index_bytes(idx) -> int:
    """Bytes of the index's arrays (not the caller's texts)."""
    arrays = [idx._els.a, idx._off.a, idx._len.a, idx._h.a, idx._codes.a, idx._sig.a]
    for s in idx._segs:
        arrays += [s.key, s.rid] + ([s.pkey, s.prid, s.psig] if hasattr(s, "pkey") else [])
    return sum(x.nbytes for x in arrays)


if __name__ == "__main__":
    sys.exit(main())
