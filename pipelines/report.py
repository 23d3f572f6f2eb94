"""`seedforge report RUN_DIR`: RUN_DIR/report.html, one self-contained page of plots and samples.

Sections: funnel (rows in/out of every stage, filter and reject reason), word lengths of kept rows,
leading verb -> direct object of instructions (Self-Instruct's diversity figure, from an offline
word-list heuristic), ROUGE-L to the nearest pool instruction, tokens per kept row, training, and
samples of kept and rejected rows. PNGs are embedded as data URIs (the page works on its own) and
also written to RUN_DIR/report/. A missing piece (no curate or train stage yet, empty tables)
renders a note instead.
"""
from __future__ import annotations

import base64
import html
import numbers
import re
from collections import Counter
from io import BytesIO
from pathlib import Path

import matplotlib
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipelines import io

TEXT = ["id", "instruction", "input", "output", "method", "rouge_l"]
REJ = TEXT + ["stage", "reason", "duplicate_of"]

# ---- leading verb -> direct object (heuristic, no model) ------------------------------------------
_VERBS = set("""add analyze answer arrange ask assign brainstorm build calculate categorize change check choose
classify combine come compare compile complete compose compute construct convert correct count create debug decide
define delete describe design detect determine develop devise draft draw edit elaborate estimate evaluate explain
extract fill find finish fix format formulate generate give guess highlight identify illustrate imagine implement
improve infer insert interpret invent label list locate make match merge modify name order organize outline
paraphrase pick plan predict prepare produce propose provide rank rate read recommend reformat remove rename reorder
rephrase replace respond restate reverse review revise rewrite score select separate shorten show simplify solve sort
specify split state suggest summarize tag teach tell transform translate turn update use verify write""".split())
_PARTICLES = {"up", "out", "down", "in"}
_SKIP = set("""me us him them you a an the this that these those some any each every all my your our his her their
its one two three four five six seven eight nine ten few several many more most another other such both given
following above below same different new short long brief simple detailed good best great creative funny
interesting random possible appropriate correct main key list""".split()) - {"list"}
_STOP = set("""of for to in on about with from by into that which who whom whose where when why how what whether if
and or but as than based using via at so it is are be""".split())
_LEAD = re.compile(r"^(?:(?:please|kindly|now|then|also|next|first|finally)\b[\s,]*|(?:can|could|would|will) you "
                   r"(?:please )?|i (?:want|need|would like) you to |your task is to |you (?:should|must|need to) )*")
_SUBORDINATE = {"given", "for", "using", "based", "in", "after", "from", "with", "if", "when", "considering",
                "assuming", "suppose", "here"}
_TOKEN = re.compile(r"[a-z][a-z'-]*|\d+|[^\sa-z\d]")


def _singular(w: str) -> str:
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def _parse(clause: str) -> tuple[str, str] | None:
    toks = _TOKEN.findall(_LEAD.sub("", clause.strip().lower()))
    if not toks or toks[0] not in _VERBS:
        return None
    verb, i = toks[0], 1
    while i < len(toks) and toks[i] in _PARTICLES:  # come up with, fill in, find out
        verb, i = f"{verb} {toks[i]}", i + 1
        if toks[i - 1] == "up" and i < len(toks) and toks[i] == "with":
            verb, i = f"{verb} with", i + 1
    while i < len(toks) and toks[i] in {"me", "us", "him", "them", "you"}:
        i += 1
    chunk = []
    for t in toks[i:i + 8]:
        if t in _STOP or not t[0].isalpha() or len(chunk) == 4 or (chunk and t.endswith(("ing", "ed"))):
            break
        if t not in _SKIP:
            chunk.append(t)
    return verb, _singular(chunk[-1]) if chunk else ""


def verb_object(instruction: str) -> tuple[str, str] | None:
    """(leading verb, head noun of its direct object or "") of an imperative instruction, else None.
    Also looks past a leading "Given ..., " clause and into later sentences ("You are given X. Sort it.")."""
    text = " ".join(str(instruction or "").split())
    clauses = [text]
    head, _, rest = text.partition(", ")
    if rest and head.split(" ", 1)[0].lower() in _SUBORDINATE:
        clauses.append(rest)
    clauses += re.split(r"(?<=[.!?:])\s+", text)[1:4]
    for c in clauses:
        got = _parse(c)
        if got:
            return got
    return None


# ---- reading ----------------------------------------------------------------------------------
def _read(files: list[Path], columns: list[str]) -> pd.DataFrame:
    frames = []
    for f in files:
        names = pq.read_schema(f).names
        df = pq.read_table(f, columns=[c for c in columns if c in names]).to_pandas()
        df["_file"] = f.name
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"_file": []})
    for c in columns:
        if c not in df:
            df[c] = None
    for c in (set(columns) | {"_file"}) - {"rouge_l"}:
        df[c] = df[c].fillna("").astype(str)
    return df


def reason_kind(reason: str) -> str:
    """A reject reason without its particulars: 'rouge_l 0.769 > 0.7' -> 'rouge_l N > N', 'engine_error: x' -> 'engine_error'."""
    r = str(reason or "").split(": ", 1)[0]
    r = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", r)
    return re.sub(r"\d+(?:\.\d+)?", "N", r).strip()[:70] or "(no reason)"


def _source(rej: pd.DataFrame, curate_stages: set) -> pd.Series:
    """generate or curate: by file prefix (generate-*, curate-*), else by stage name."""
    prefix = rej["_file"].str.split("-").str[0]
    by_stage = rej["stage"].isin(curate_stages).map({True: "curate", False: "generate"})
    return prefix.where(prefix.isin(["generate", "curate"]), by_stage)


def funnel(manifest: dict, rej: pd.DataFrame, kept_rows: int | None, generated_rows: int | None) -> list[dict]:
    """Steps {label, kind: total|drop, n, out} of the run; each stage starts with its own total."""
    st = manifest.get("stages") or {}
    gen, cur = st.get("generate") or {}, st.get("curate") or manifest.get("curate") or {}
    steps = []

    def stage(name, rows_in, drops, rows_out):
        left = rows_in if rows_in is not None else (rows_out or 0) + sum(n for _, n in drops)
        steps.append(dict(label=f"{name}: rows in", kind="total", n=left, out=left))
        for label, n in drops:
            left -= n
            steps.append(dict(label=f"{name} − {label}", kind="drop", n=n, out=left))
        if rows_out is not None and left > rows_out:  # counts that neither rejected/ nor the manifest explain
            steps.append(dict(label=f"{name} − unaccounted", kind="drop", n=left - rows_out, out=rows_out))
        rows_out = left if rows_out is None else rows_out
        steps.append(dict(label=f"{name}: rows out", kind="total", n=rows_out, out=rows_out))

    g = rej[rej["_src"] == "generate"]
    if gen or generated_rows is not None or len(g):
        by = g.groupby(["stage", "kind"]).size().sort_values(ascending=False)
        drops = [(f"{s}: {k}", int(n)) for (s, k), n in by.items()]
        if len(drops) > 10:
            drops = drops[:9] + [("other reasons", sum(n for _, n in drops[9:]))]
        out = gen.get("rows", generated_rows)
        stage("generate", out + (len(g) or gen.get("rejected_rows", 0)) if out is not None else None, drops, out)
    c = rej[rej["_src"] == "curate"]
    if cur or kept_rows is not None or len(c):
        dropped = cur.get("dropped") or c.groupby("stage").size().to_dict()
        stage("curate", cur.get("rows_in"), [(k, int(v)) for k, v in dropped.items() if v], cur.get("rows_out", kept_rows))
    return steps


# ---- plots and HTML -------------------------------------------------------------------------------
def _t(s) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(s).replace("$", r"\$")


class _Page:
    def __init__(self, out_dir: Path):
        self.out_dir, self.parts = out_dir, []

    def add(self, s: str):
        self.parts.append(s)

    def note(self, s: str):
        self.add(f'<p class="note">{html.escape(s)}</p>')

    def fig(self, fig: Figure, name: str, alt: str):
        buf = BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        (self.out_dir / f"{name}.png").write_bytes(buf.getvalue())
        b64 = base64.b64encode(buf.getvalue()).decode()
        self.add(f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}" data-file="report/{name}.png">')

    def table(self, rows: list | pd.DataFrame, columns: list[str] | None = None, cut: int = 300):
        """An HTML table; every cell is escaped and cut to `cut` characters; no header row without columns."""
        if isinstance(rows, pd.DataFrame):
            rows, columns = list(rows.itertuples(index=False)), list(rows.columns)
        head = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>" if columns else ""
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, cut))}</td>" for v in r) + "</tr>" for r in rows)
        self.add(f"<table>{head}{body}</table>")


def _cell(v, cut: int) -> str:
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        v = float(v)
        v = "" if v != v else (f"{v:,.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.4g}")
    v = str(v)
    return v if len(v) <= cut else v[:cut] + " …"


def _sample_rejected(rej: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """Round-robin over (stage, reason kind) so every kind of drop shows up."""
    groups = [g for _, g in rej.sort_values("id").groupby(["stage", "kind"], sort=True)]
    picked = [g.iloc[i] for i in range(n) for g in groups if i < len(g)][:n]
    return pd.DataFrame(picked)[["stage", "reason", "instruction", "input", "output", "duplicate_of"]] if picked else rej


def write_report(run_dir) -> str:
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    manifest = io.read_json(run / "manifest.json", {}) or {}
    out_dir = run / "report"
    out_dir.mkdir(exist_ok=True)
    for name in ("funnel", "lengths", "verbs", "rouge", "tokens", "train"):  # plots of an earlier report
        (out_dir / f"{name}.png").unlink(missing_ok=True)
    st = manifest.get("stages") or {}
    cur = st.get("curate") or manifest.get("curate") or {}
    data_files, gen_files = io.shard_files(run / "data"), io.shard_files(run / "stages" / "generate")
    kept = _read(data_files, TEXT)
    generated = _read(gen_files, TEXT) if gen_files else None
    rej = _read(io.shard_files(run / "rejected"), REJ)
    rej["kind"] = rej["reason"].map(reason_kind)
    rej["_src"] = _source(rej, set(cur.get("dropped") or {}) | {"exact_dedup", "near_dedup"})
    p = _Page(out_dir)
    p.add(f"<h1>seedforge report: {html.escape(str(run.resolve()))}</h1>")
    cfg = manifest.get("config") or {}
    p.table([("status", manifest.get("status", "(no manifest)")), ("model", cfg.get("model", "")),
             ("methods", ", ".join((cfg.get("generate") or {}).get("methods", []))),
             ("kept rows (data/)", len(kept)), ("rejected rows (rejected/)", len(rej))])
    rows_label = "kept rows (data/)"
    if not data_files:
        if generated is not None and len(generated):
            kept, rows_label = generated, "generated rows (stages/generate; not curated yet)"
        p.note("No curated data yet (data/ is empty): length, verb and ROUGE-L plots use generated rows where they exist.")

    p.add('<h2 id="funnel">1. Funnel</h2>')
    steps = funnel(manifest, rej, len(kept) if data_files else None, len(generated) if generated is not None else None)
    if steps:
        fig = Figure(figsize=(10, 0.42 * len(steps) + 1))
        ax = fig.subplots()
        for y, s in enumerate(steps):
            left = s["out"] if s["kind"] == "drop" else 0
            ax.barh(y, s["n"], left=left, color="#d9534f" if s["kind"] == "drop" else "#337ab7")
            ax.text(left + s["n"], y, f" {s['n']}", va="center", fontsize=8)
        ax.set_yticks(range(len(steps)), [_t(s["label"]) for s in steps], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        ax.set_title("rows in and out of every stage (blue) and what each filter dropped (red)")
        p.fig(fig, "funnel", "funnel")
        p.table([(s["label"], s["n"] if s["kind"] == "drop" else "", s["out"]) for s in steps],
                ["step", "dropped", "rows after"])
    else:
        p.note("No stages recorded in manifest.json and no rows found: nothing to count.")

    p.add(f'<h2 id="lengths">2. Length distributions ({html.escape(rows_label)})</h2>')
    if len(kept):
        fig = Figure(figsize=(10, 3.2))
        for ax, col in zip(fig.subplots(1, 2), ["instruction", "output"]):
            words = kept[col].str.split().str.len()
            ax.hist(words, bins=30, color="#5cb85c")
            ax.set(title=f"{col}: median {words.median():.0f} words", xlabel="words", ylabel="rows")
        p.fig(fig, "lengths", "length distributions")
    else:
        p.note("No rows yet: no length distributions.")

    p.add('<h2 id="verbs">3. Leading verbs and their direct objects (distinct instructions)</h2>')
    instructions = kept["instruction"].drop_duplicates()
    pairs = [vo for vo in map(verb_object, instructions) if vo]
    if pairs:
        verbs = Counter(v for v, _ in pairs).most_common(15)
        objects = {v: Counter(o for vv, o in pairs if vv == v and o).most_common(4) for v, _ in verbs}
        cmap, total = matplotlib.colormaps["tab20"], sum(n for _, n in verbs)
        label = lambda text, n: _t(text) if n / total >= 0.03 else ""  # small wedges: see the table
        outer, olabels, ocolors = [], [], []
        for i, (v, n) in enumerate(verbs):
            outer += [m for _, m in objects[v]] + [n - sum(m for _, m in objects[v])]
            olabels += [label(o, m) for o, m in objects[v]] + [""]
            ocolors += [cmap(i % 20)] * len(objects[v]) + ["#f4f4f4"]
        fig = Figure(figsize=(9, 9))
        ax = fig.subplots()
        ring = dict(rotatelabels=True, startangle=90, counterclock=False)  # labels along the radius
        for text in ax.pie([n for _, n in verbs], radius=0.62, labels=[label(v, n) for v, n in verbs], labeldistance=0.65,
                           colors=[cmap(i % 20) for i in range(len(verbs))], **ring,
                           wedgeprops=dict(width=0.42, edgecolor="white"), textprops=dict(fontsize=9))[1]:
            text.set(ha="center", va="center", rotation_mode="anchor")
        for text in ax.pie(outer, radius=1.0, labels=olabels, labeldistance=0.81, colors=ocolors, **ring,
                           wedgeprops=dict(width=0.38, edgecolor="white", alpha=0.75), textprops=dict(fontsize=8))[1]:
            text.set(ha="center", va="center", rotation_mode="anchor")
        ax.set_title(f"top verbs (inner) and their top objects (outer): {len(pairs)} of {len(instructions)} "
                     "instructions start with a verb")
        p.fig(fig, "verbs", "verb-object sunburst")
        p.table([(v, n, ", ".join(f"{o} ({m})" for o, m in objects[v])) for v, n in verbs],
                ["verb", "instructions", "top objects"])
    else:
        p.note(f"None of {len(instructions)} distinct instructions starts with a known imperative verb.")

    p.add('<h2 id="rouge">4. ROUGE-L to the nearest pool instruction (distinct instructions)</h2>')
    rk = kept.drop_duplicates("instruction")["rouge_l"].dropna()
    rr = rej.drop_duplicates("instruction")["rouge_l"].dropna()
    if len(rk) or len(rr):
        fig = Figure(figsize=(10, 3.2))
        ax = fig.subplots()
        ax.hist([rk, rr], bins=[i / 20 for i in range(21)], label=[f"kept ({len(rk)})", f"rejected ({len(rr)})"],
                color=["#5cb85c", "#d9534f"], stacked=True)
        thr = (cfg.get("generate") or {}).get("rouge_threshold")
        if thr is not None:
            ax.axvline(thr, color="black", ls="--", label=f"threshold {thr}")
        ax.set(xlabel="ROUGE-L F", ylabel="instructions", xlim=(0, 1))
        ax.legend()
        p.fig(fig, "rouge", "ROUGE-L distribution")
    else:
        p.note("No rouge_l values (no novelty filter ran on these rows).")

    p.add('<h2 id="tokens">5. Tokens spent per kept row</h2>')
    gen = st.get("generate") or {}
    n_kept = len(kept) if data_files else 0
    denoms = [(f"per generated row ({gen.get('rows', 0)})", gen.get("rows", 0)), (f"per kept row ({n_kept})", n_kept)]
    denoms = [(k, d) for k, d in denoms if d]
    if gen.get("prompt_tokens") or gen.get("output_tokens"):
        if denoms:
            fig = Figure(figsize=(8, 2.6))
            ax = fig.subplots()
            labels = [k for k, _ in denoms]
            pt = [gen.get("prompt_tokens", 0) / d for _, d in denoms]
            ot = [gen.get("output_tokens", 0) / d for _, d in denoms]
            ax.barh(labels, pt, color="#f0ad4e", label="prompt tokens")
            ax.barh(labels, ot, left=pt, color="#337ab7", label="output tokens")
            for y, (a, b) in enumerate(zip(pt, ot)):
                ax.text(a + b, y, f" {a + b:,.0f}", va="center")
            ax.set_xlabel("tokens")
            ax.legend()
            p.fig(fig, "tokens", "tokens per kept row")
        else:
            p.note("No rows kept yet: tokens per kept row is undefined.")
        per = [(f"tokens {k}", (gen.get("prompt_tokens", 0) + gen.get("output_tokens", 0)) / d) for k, d in denoms]
        p.table([(k, gen[k]) for k in ("prompt_tokens", "output_tokens", "requests", "output_tokens_per_s",
                                       "generation_seconds") if k in gen] + per, ["generate", ""])
    else:
        p.note("The manifest has no generate stage token counts.")

    p.add('<h2 id="train">6. Training</h2>')
    tr = st.get("train") or manifest.get("train") or {}
    hist = [h for h in tr.get("history") or [] if h.get("loss") is not None]
    if hist:
        fig = Figure(figsize=(8, 3))
        ax = fig.subplots()
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], marker="o", label="train loss")
        ev = [h for h in hist if h.get("eval_loss") is not None]
        if ev:
            ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], marker="s", label="eval loss")
        ax.set(xlabel="step", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        p.fig(fig, "train", "training loss")
    if tr:
        p.table([(k, v) for k, v in tr.items() if not isinstance(v, (dict, list))], ["train", ""])
    else:
        p.note("No train stage in this run.")

    p.add(f'<h2 id="kept">7. Sample of {html.escape(rows_label)}</h2>')
    if len(kept):
        p.table(kept.sample(min(10, len(kept)), random_state=0)[["method", "instruction", "input", "output", "rouge_l"]])
    else:
        p.note("No kept rows yet.")
    p.add('<h2 id="rejected">8. Sample of rejected rows</h2>')
    if len(rej):
        p.table(_sample_rejected(rej))
    else:
        p.note("No rejected rows.")

    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} img{max-width:100%;display:block}"
             "table{border-collapse:collapse;font-size:13px;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 6px;"
             "vertical-align:top;white-space:pre-wrap;text-align:left} .note{color:#8a6d3b;background:#fcf8e3;padding:.5em}")
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>seedforge report</title><style>{style}</style>'
            f"</head><body>{''.join(p.parts)}</body></html>")
    path = run / "report.html"
    tmp = path.with_name(".tmp-report.html")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return str(path)
