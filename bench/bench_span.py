"""Span decoder against the CRF, same encoder (m3e-small) and head (BiLSTM); figures printed, never asserted.

1. Prediction speed (``speed``): characters per second tagging the first ``--n-texts`` finance test texts
   (``keras-bert-ner-finance/test.txt``, as :mod:`bench.bench_predict` loads them) with an untrained CRF
   model and an untrained span model, window 128, batch 32, fp32, each text's entities with their
   confidence; the span model's time over the CRF's against the goal (<= 1.2x). The span model's label
   biases are set to -8 so that, as for a trained model, almost no cell reaches the threshold (an untrained
   one puts about half of all spans above 0.5, and turning those thousands into entities would be timed
   instead of the scoring). A third row scores the span model the way it did before the band
   (dense ``(B, C, L, L)`` scores, then read on the band), to show what the band wins.
2. Training (``train``): both decoders with the same budget (``--minutes``), encoder, head, window and
   settings on Resume NER, MSRA (10k-sentence train subset) and People's Daily (splits of
   :mod:`bench.splits`) and on the nested fixture (``scripts/make_nested_corpus.py``): test entity F1
   (and on the fixture the outer and nested levels' F1, :func:`ner_core.metrics.level_prf`), training
   sentences/s and prediction chars/s on the test texts; a Markdown table. The CRF trains on the outermost
   spans (it has one tag per character), the span model on every span.

The CPU may be shared with other work: the load average is printed with the machine line.
``speed --tiny`` swaps in a tiny random encoder without a head (8 labels, 150 texts of 400 characters), so
the decoders' own cost is what is timed.
``train --concurrent`` trains the two decoders of a data set at the same time, each a process of one torch
thread, so that other work on a shared machine slows both alike (the figures are then one core's each).
Run: ``python -m bench.bench_span speed [--n-texts 100] [--tiny]`` and
``python -m bench.bench_span train [--minutes 10] [--datasets resume,msra,peoples-daily,nested]
[--concurrent]``.
m3e-small: research / non-commercial use only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FINANCE_TEST = REPO.parent / "shared" / "datasets" / "keras-bert-ner-finance" / "test.txt"
FINANCE_LABELS = ["FIN", "LOC", "ORG", "PER"]
TINY_LABELS = [f"L{k}" for k in range(8)]
GOAL = 1.2  # the span path's prediction time at most this many times the CRF path's
DATASETS = ("resume", "msra", "peoples-daily", "nested")
WINDOW = 128


def machine_line() -> str:
    from bench.machine import describe

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{describe()}; load average {load} (1/5/15 min; the CPU is shared)"


def finance_texts(n: int) -> list[str]:
    raw = json.loads(FINANCE_TEST.read_text(encoding="utf-8"))
    texts = [t if isinstance(t, str) else str(t[0]) for t in raw]
    return [t for t in texts if t.strip()][:n]


def _config(decoder: str, max_span_len: int | None, encoder="m3e-small", head="bilstm", **training):
    from ner_core.config import NERConfig

    dec = {"type": decoder} if decoder == "crf" else {"type": "span", "max_span_len": max_span_len}
    return NERConfig.model_validate(
        {
            "data": {"max_len": WINDOW},
            "encoder": {"name": encoder},
            "head": {"type": head},
            "decoder": dec,
            **({"training": training} if training else {}),
        }
    )


def speed_models(max_span_len: int, tiny: Path | None = None):
    """An untrained CRF model and span model on the same encoder weights (m3e-small + BiLSTM; with
    ``tiny``, a tiny random encoder built in that folder and no head, so the decoders' own cost shows)."""
    import torch

    from ner_core.model.encoder import load_encoder, make_tiny_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    where = {}
    if tiny is not None:
        where = {"encoder": str(make_tiny_encoder(tiny, finance_texts(1000))), "head": "none"}
    labels = FINANCE_LABELS if tiny is None else TINY_LABELS
    crf_cfg, span_cfg = _config("crf", None, **where), _config("span", max_span_len, **where)
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(crf_cfg.encoder)
    crf = NERModel(crf_cfg, tag_set(labels, "BIOES"), encoder).eval()
    torch.manual_seed(0)
    span = NERModel(span_cfg, list(labels), load_encoder(span_cfg.encoder)[0]).eval()
    with torch.no_grad():
        span.span.bias.bias[:] = -8.0  # see the module's doc: few cells above the threshold
    return crf, span, tokenizer


def tiny_texts(n: int = 150, size: int = 400) -> list[str]:
    """``n`` texts of ``size`` characters cut from the finance test texts (the tiny-encoder setting)."""
    joined = "".join(finance_texts(10_000))
    return [joined[k * size : (k + 1) * size] for k in range(n)]


class _DenseScoring:
    """The span model as it scored before the band: dense ``(B, C, L, L)`` scores, then read on the band."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, input_ids, attention_mask):
        from ner_core.model.span import band_width, to_band

        dense, char_mask = self.model.span_logits(input_ids, attention_mask)
        return to_band(dense, band_width(dense.shape[-1], self.model.max_span_len)), char_mask


def bench_speed(n_texts: int, max_span_len: int, repeats: int, batch_size: int, tiny: bool = False) -> dict:
    """Best-of-``repeats`` wall time of each tagger over the same texts, rounds interleaved."""
    from ner_core.inference.tagger import Tagger

    texts = tiny_texts() if tiny else finance_texts(n_texts)
    n_chars = sum(len(t) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        crf, span, tok = speed_models(max_span_len, Path(tmp) if tiny else None)
    taggers = {
        "crf": Tagger(crf, tok, max_len=WINDOW, batch_size=batch_size),
        "span": Tagger(span, tok, max_len=WINDOW, batch_size=batch_size),
        "span, dense scores (before)": Tagger(span, tok, max_len=WINDOW, batch_size=batch_size),
    }
    what = "tiny random encoder, no head" if tiny else "m3e-small + BiLSTM"
    print(
        f"speed: {len(texts)} finance test texts, {n_chars} chars, {what}, window {WINDOW}, "
        f"batch {batch_size}, fp32, {len(span.labels)} labels, span max_span_len {max_span_len}, "
        f"strides crf {taggers['crf'].stride} / span {taggers['span'].stride}; best of {repeats}",
        flush=True,
    )
    best = {name: float("inf") for name in taggers}
    found = {}
    for tagger in taggers.values():
        tagger.predict(texts[:2])  # warm-up
    for r in range(repeats):  # the order turns each round: a load that drifts favours no row
        names = list(taggers)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            tagger = taggers[name]
            dense = name.startswith("span, dense")
            if dense:
                tagger.model.span_band = _DenseScoring(tagger.model)
            t0 = time.perf_counter()
            preds = tagger.predict(texts)
            best[name] = min(best[name], time.perf_counter() - t0)
            if dense:
                del tagger.model.span_band  # the instance attribute; the method again
            found[name] = sum(len(p) for p in preds)
    rows = {n: {"s": s, "chars_per_s": n_chars / s, "entities": found[n]} for n, s in best.items()}
    for n, r in rows.items():
        print(f"  {n:<28} {r['s']:7.2f} s {r['chars_per_s']:9,.0f} chars/s  {r['entities']} entities")
    ratio = best["span"] / best["crf"]
    print(
        f"  span time / crf time: {ratio:.2f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'}); "
        f"before the band {best['span, dense scores (before)'] / best['crf']:.2f}x",
        flush=True,
    )
    return {"texts": len(texts), "chars": n_chars, "rows": rows, "ratio": ratio}


# ------------------------------------------------------------------ training
def nested_splits(out: Path) -> dict[str, list]:
    """The nested fixture (every span, nested ones included) from ``scripts/make_nested_corpus.py``."""
    from ner_core.documents import Document, Entity

    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_nested_corpus.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    splits = {}
    for split in ("train", "dev", "test"):
        docs = []
        for i, line in enumerate((out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()):
            rec = json.loads(line)
            ents = [Entity(start=e["start"], end=e["end"], label=e["label"]) for e in rec["entities"]]
            docs.append(Document(doc_id=f"{split}-{i}", text=rec["text"], entities=ents))
        splits[split] = docs
    return splits


def load_dataset(name: str, tmp: Path) -> dict[str, list] | None:
    from bench import splits

    if name == "nested":
        return nested_splits(tmp / "nested")
    if not splits.available(name):
        return None
    return {s: list(splits.load(name, s)) for s in ("train", "dev", "test")}


def train_one(decoder: str, data: dict[str, list], minutes: float, out: Path) -> dict:
    """Train ``decoder`` within the budget, then score the test set and time tagging it."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.inference.tagger import Tagger
    from ner_core.training.loop import train

    labels = sorted({e.label for d in data["train"] for e in d.entities})
    cfg = _config(
        decoder,
        None,
        max_epochs=50,
        batch_size=32,
        learning_rate=1e-4,
        head_learning_rate=2e-3,
        crf_learning_rate=2e-2,
        max_train_seconds=minutes * 60,
        early_stop_patience=3,
        precision="fp32",
    )
    res = train(cfg, data["train"], data["dev"], labels, out / decoder, progress=False)
    loaded = load_model_dir(res.model_dir)
    report = evaluate_model(loaded.model, loaded.tokenizer, data["test"], max_len=WINDOW)
    texts = [d.text for d in data["test"]]
    tagger = Tagger(loaded.model, loaded.tokenizer, max_len=WINDOW)
    tagger.predict(texts[:2])
    t0 = time.perf_counter()
    tagger.predict(texts)
    pred_s = time.perf_counter() - t0
    levels = {t.label: t.f1 for t in report.levels}
    seen = sum(h.sentences_per_second * h.seconds for h in res.history)
    return {
        "decoder": decoder,
        "f1": report.f1,
        "outer_f1": levels.get("outer"),
        "nested_f1": levels.get("nested"),
        "epochs": len(res.history),
        "train_s": sum(h.seconds for h in res.history),
        "sent_per_s": seen / max(1e-9, sum(h.seconds for h in res.history)),
        "pred_chars_per_s": sum(len(t) for t in texts) / pred_s,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _concurrent_pair(name: str, minutes: float, tmp: Path) -> list[dict]:
    """Both decoders of one data set at once, each a process of one torch thread (``train-one``), so that
    whatever else loads the machine loads both alike; their rows, CRF first."""
    procs = {}
    for decoder in ("crf", "span"):
        out = tmp / f"{name}-{decoder}.json"
        cmd = [sys.executable, "-m", "bench.bench_span", "train-one", "--dataset", name, "--decoder", decoder]
        cmd += ["--minutes", str(minutes), "--json", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs[decoder] = (subprocess.Popen(cmd, cwd=REPO, env=env), out)
    rows = []
    for decoder, (proc, out) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} / {decoder}: the training process failed (exit {proc.returncode})")
        rows.append(json.loads(out.read_text(encoding="utf-8")))
    return rows


def _train_one_cli(dataset: str, decoder: str, minutes: float, out_json: str) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(dataset, Path(tmp))
        if data is None:
            raise SystemExit(f"{dataset}: not in ../shared/datasets")
        row = {"dataset": dataset, **train_one(decoder, data, minutes, Path(tmp) / dataset)}
    Path(out_json).write_text(json.dumps(row), encoding="utf-8")


def bench_train(datasets: list[str], minutes: float, concurrent: bool = False) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in datasets:
            if concurrent:
                print(f"{name}: crf and span at once, one thread each, {minutes} min ...", flush=True)
                print(f"  {machine_line()}", flush=True)
                rows += _concurrent_pair(name, minutes, Path(tmp))
                print(f"  {rows[-2]}\n  {rows[-1]}\n  {machine_line()}", flush=True)
                continue
            data = load_dataset(name, Path(tmp))
            if data is None:
                print(f"{name}: not in ../shared/datasets, skipped", flush=True)
                continue
            for decoder in ("crf", "span"):
                print(f"{name} / {decoder}: training {minutes} min ...", flush=True)
                row = {"dataset": name, **train_one(decoder, data, minutes, Path(tmp) / name)}
                rows.append(row)
                print(f"  {row}", flush=True)
    print()
    how = "at once, one torch thread each" if concurrent else "one after the other"
    print(
        f"training: same budget {minutes} min each ({how}), m3e-small + BiLSTM, window {WINDOW}, fp32, "
        "batch 32"
    )
    print("| data set | decoder | test F1 | outer F1 | nested F1 | epochs | train sent/s | predict chars/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['decoder']} | {_pct(r['f1'])} | {_pct(r['outer_f1'])} | "
            f"{_pct(r['nested_f1'])} | {r['epochs']} | {r['sent_per_s']:.1f} | {r['pred_chars_per_s']:,.0f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed", help="prediction chars/s, CRF vs span")
    sp.add_argument("--n-texts", type=int, default=100)
    sp.add_argument("--max-span-len", type=int, default=12)
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random encoder, no head, 8 labels, 150 texts of 400 chars: the decoders' own cost",
    )
    tr = sub.add_parser("train", help="F1, training sentences/s and prediction chars/s per decoder")
    tr.add_argument("--minutes", type=float, default=10.0)
    tr.add_argument("--datasets", default=",".join(DATASETS))
    tr.add_argument(
        "--concurrent",
        action="store_true",
        help="train both decoders at once, one torch thread each (fair on a shared machine)",
    )
    one = sub.add_parser("train-one", help="(used by train --concurrent) one decoder, one data set")
    one.add_argument("--dataset", choices=DATASETS, required=True)
    one.add_argument("--decoder", choices=("crf", "span"), required=True)
    one.add_argument("--minutes", type=float, required=True)
    one.add_argument("--json", required=True, help="where the row is written")
    args = ap.parse_args(argv)
    if args.what == "train-one":
        _train_one_cli(args.dataset, args.decoder, args.minutes, args.json)
        return
    print(machine_line(), flush=True)
    if args.what == "speed":
        bench_speed(args.n_texts, args.max_span_len, args.repeats, args.batch_size, args.tiny)
    else:
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
        bad = [n for n in names if n not in DATASETS]
        if bad:
            ap.error(f"unknown data set(s) {bad}: choose from {', '.join(DATASETS)}")
        bench_train(names, args.minutes, args.concurrent)
    print(machine_line(), flush=True)


if __name__ == "__main__":
    main()
