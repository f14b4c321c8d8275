"""Batch prediction benchmarks (figures printed, never asserted).

1. Speed: characters per second tagging the first ``--n-texts`` (default 100) texts of the seed's finance test
   set (``keras-bert-ner-finance/test.txt``, tagged whole) with an untrained NERModel built
   from the real m3e-small encoder (BiLSTM head + CRF over 17 tags, with CRF marginals for confidence),
   against HF ``pipeline("token-classification")`` on the same encoder with an untrained
   ``AutoModelForTokenClassification`` head, same texts, same process, batch 32 for both. Both sides run
   at two window settings with the same overlap of 64 characters: the seed's 128 characters, and the
   encoder's full 512 positions (the pipeline's own default window, ``model_max_length``); ours also with
   the int8 encoder, and the pipeline as called without ``batch_size`` (its default, 1). The table
   prints every pair, so the speed-up from settings and the one from the implementation are told apart,
   and the ceiling of any tagger on this encoder (its forward pass alone, every character encoded once),
   which bounds what any implementation can gain over the pipeline. Goal: >= 3x.
2. Quality: entity F1 on Resume NER dev with whole-text tagging (window >= the longest text), with a
   window smaller than the longest text (``--window``, stride window // 2; goal: within 0.2 F1 points),
   with wider strides (3/4 and 7/8 of the window) and with the int8 encoder. Needs a trained model:
   ``--model-dir`` or one trained here quickly (tiny random encoder, IDCNN, ``--train-seconds`` on CPU).

The machine's cores may be shared with other work: timings are noisy; CPU time is printed next to wall
time. Run: ``python -m bench.bench_predict [--n-texts 100] [--skip-hf] [--skip-f1] [--model-dir DIR]``.
Two implementations can be compared in one run of the F1 part: ``--compare-with FILE.py`` loads another
``predict.py`` (e.g. ``git show REV:ner_core/inference/tagger.py > /tmp/old_predict.py``) and prints its F1
beside.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FINANCE_TEST = DATASETS / "keras-bert-ner-finance" / "test.txt"
RESUME = DATASETS / "resume-ner"


def _finance_texts(n: int) -> list[str]:
    raw = json.loads(FINANCE_TEST.read_text(encoding="utf-8"))
    texts = [t if isinstance(t, str) else str(t[0]) for t in raw]
    return [t for t in texts if t.strip()][:n]


#: (name, window, stride, precision, batch) of our tagger in the speed table; the window and overlap of the
#: first two equal those of the first two HF rows, so those pairs compare implementations, not settings.
#: The others are our own settings: short windows keep the attention matrices in cache, and an overlap of
#: 16 encodes few characters twice (``bench_window_f1`` measures what the overlap costs in F1).
OURS = [
    ("ours 128/64", 128, 64, "fp32", None),
    ("ours 510/446", 510, 446, "fp32", None),
    ("ours 128/112", 128, 112, "fp32", None),
    ("ours 128/112 b16", 128, 112, "fp32", 16),
    ("ours 128/112 b16 bf16", 128, 112, "bf16", 16),
    ("ours 128/112 b16 int8", 128, 112, "int8", 16),
    ("ours 510/446 int8", 510, 446, "int8", None),
    ("ours 128/128 b16", 128, 128, "fp32", 16),
    ("ours 128/128 b16 bf16", 128, 128, "bf16", 16),
    ("ours 128/128 b16 int8", 128, 128, "int8", 16),
]
#: the per-precision rows: the default setting (window 128, stride = window, windows spread evenly; batch
#: 16) at each precision
PER_PRECISION = {"fp32": "ours 128/128 b16", "bf16": "ours 128/128 b16 bf16", "int8": "ours 128/128 b16 int8"}
#: each per-precision row's ceiling: the encoder alone at that precision
CEILING_OF = {
    "fp32": "encoder only 128/128 b16",
    "bf16": "encoder only 128/128 b16 bf16",
    "int8": "encoder only 128/128 b16 int8",
}
#: The ceiling of any tagger built on this encoder: the encoder's forward pass alone over windows of 128
#: characters that do not overlap (every character encoded once, no head, no CRF, no merging), fp32 and int8.
CEILINGS = [
    ("encoder only 128/128 b16", 128, "fp32", 16),
    ("encoder only 128/128 b16 bf16", 128, "bf16", 16),
    ("encoder only 128/128 b16 int8", 128, "int8", 16),
]
#: (name, window incl. [CLS]/[SEP] = tokenizer model_max_length, overlap = the pipeline's ``stride``)
#: the last row is the pipeline as called without a batch_size (its default, 1)
HF = [
    ("HF pipeline 130/64", 130, 64, None),
    ("HF pipeline 512/64", 512, 64, None),
    ("HF pipeline 512/64 b1", 512, 64, 1),
]


def _encoder_only(tagger, texts: list[str]) -> None:
    """The encoder's forward pass over the tagger's windows (stride = window), nothing else."""
    import torch

    from ner_core.data.batching import EncodedChunk, collate, sliding_windows

    al = tagger.aligner
    n = tagger.max_len
    wins = sorted(
        ((t, s, e) for t in texts for s, e in sliding_windows(len(t), n, n)), key=lambda w: w[2] - w[1]
    )
    from ner_core.runtime.precision import autocast

    with torch.inference_mode(), autocast(tagger.precision, "cpu"):
        for b in range(0, len(wins), tagger.batch_size):
            part = wins[b : b + tagger.batch_size]
            items = [EncodedChunk(None, al.char_ids(t[s:e]), None) for t, s, e in part]
            enc = collate(items, al.cls_id, al.sep_id, al.pad_id)
            tagger.model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])


def bench_speed(n_texts: int, batch_size: int, skip_hf: bool, threads: int | None) -> dict:
    import torch

    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    if threads:
        torch.set_num_threads(threads)
    texts = _finance_texts(n_texts)
    n_chars = sum(len(t) for t in texts)
    print(
        f"speed: {len(texts)} finance test texts, {n_chars} chars (mean {n_chars / len(texts):.0f}, "
        f"max {max(len(t) for t in texts)}), m3e-small, batch {batch_size}, torch threads "
        f"{torch.get_num_threads()}; ours = windows + BiLSTM + whole-text CRF "
        "Viterbi + CRF marginals (confidence)",
        flush=True,
    )
    cfg = NERConfig.model_validate({"data": {"max_len": 128}, "encoder": {"name": "m3e-small"}})
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    model = NERModel(cfg, tag_set(["PER", "ORG", "LOC", "FIN"], "BIOES"), encoder)  # 17 tags, untrained
    rows: dict[str, dict] = {}

    def report(name: str, wall: float, cpu: float, extra: str = "") -> None:
        rows[name] = {"s": wall, "cpu_s": cpu, "chars_per_s": n_chars / wall}
        print(
            f"  {name:<22} {wall:7.2f} s wall {cpu:7.2f} s CPU {n_chars / wall:9,.0f} chars/s  {extra}",
            flush=True,
        )

    _time_ours(model, tokenizer, texts, batch_size, report)
    if not skip_hf:
        _time_hf_pipeline(texts, batch_size, report)
        _print_speedups(rows)
    rows["breakdown"] = _time_breakdown(model, tokenizer, texts)
    return {"texts": len(texts), "chars": n_chars, "rows": rows}


def _time_ours(model, tokenizer, texts: list[str], batch_size: int, report) -> None:
    """Our tagger at every OURS setting, then the CEILINGS (the encoder's forward pass alone)."""
    from ner_core.inference.tagger import Tagger

    for name, window, stride, precision, our_batch in OURS:
        tagger = Tagger(
            model,
            tokenizer,
            max_len=window,
            stride=stride,
            batch_size=our_batch or batch_size,
            device="cpu",
            precision=precision,
        )
        tagger.predict(texts[:2])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        preds = tagger.predict(texts)
        report(
            name,
            time.perf_counter() - t0,
            time.process_time() - c0,
            f"{sum(len(p) for p in preds)} entities (untrained model)",
        )
    for name, window, precision, our_batch in CEILINGS:
        tagger = Tagger(
            model,
            tokenizer,
            max_len=window,
            stride=window,
            batch_size=our_batch,
            device="cpu",
            precision=precision,
        )
        _encoder_only(tagger, texts[:2])
        t0, c0 = time.perf_counter(), time.process_time()
        _encoder_only(tagger, texts)
        report(name, time.perf_counter() - t0, time.process_time() - c0, "(no head, CRF or overlap)")


def _time_hf_pipeline(texts: list[str], batch_size: int, report) -> None:
    """HF ``pipeline("token-classification")`` on the same encoder at every HF setting."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from ner_core.model.encoder import resolve_encoder

    where = resolve_encoder("m3e-small")
    hf_model = AutoModelForTokenClassification.from_pretrained(where, num_labels=17).eval()
    for name, window, overlap, hf_batch in HF:
        hf_tok = AutoTokenizer.from_pretrained(where)
        hf_tok.model_max_length = window
        pipe = pipeline(
            "token-classification",
            model=hf_model,
            tokenizer=hf_tok,
            device=-1,
            aggregation_strategy="simple",
            stride=overlap,
        )
        pipe(texts[:2])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        hf_out = pipe(texts, batch_size=hf_batch or batch_size)
        report(
            name,
            time.perf_counter() - t0,
            time.process_time() - c0,
            f"{sum(len(o) for o in hf_out)} entities (untrained head)",
        )


def _print_speedups(rows: dict[str, dict]) -> None:
    """Ours against the pipeline: the pairs with the same window and overlap, then every row against the
    pipeline's fastest setting here."""
    best_hf = min((n for n, *_ in HF), key=lambda n: rows[n]["s"])
    pairs = [("ours 128/64", "HF pipeline 130/64"), ("ours 510/446", "HF pipeline 512/64")]
    pairs += [(a, best_hf) for a in [n for n, *_ in OURS] + [n for n, *_ in CEILINGS]]
    print(f"  speed-ups (wall; goal >= 3x; the pipeline's fastest setting here: {best_hf}):")
    for a, b in pairs:
        rows[f"{a} vs {b}"] = {"speedup": rows[b]["s"] / rows[a]["s"]}
        print(f"    {a:<30} vs {b:<22} {rows[b]['s'] / rows[a]['s']:5.2f}x", flush=True)
    print(f"  per precision (128/128, the default stride, batch 16) vs {best_hf} in fp32, same run:")
    for p, name in PER_PRECISION.items():
        speedup = rows[best_hf]["s"] / rows[name]["s"]
        print(f"    {p:<5} {rows[name]['chars_per_s']:9,.0f} chars/s  {speedup:5.2f}x", flush=True)
    for p, name in PER_PRECISION.items():
        share = rows[name]["chars_per_s"] / rows[CEILING_OF[p]]["chars_per_s"]
        rows[f"{name} of ceiling"] = {"share": share}
        print(f"    {p:<5} ours at {share:6.1%} of the encoder alone at {p} (goal >= 90%)", flush=True)


def _time_breakdown(model, tokenizer, texts: list[str]) -> dict:
    """Where the time goes at the precision ``auto`` picks here (no record: the fastest timed, printed with
    its figures; cached per machine and model shape, ``NER_PRECISION_AUTO`` pins it): encoder, head (+
    classifier), CRF (Viterbi + marginals), and everything else (windowing, stitching, decoding
    spans), as shares of one ``predict`` call's wall time."""
    from ner_core.inference.tagger import Tagger

    t0 = time.perf_counter()
    tagger = Tagger(model, tokenizer, max_len=128, stride=128, batch_size=16, device="cpu", precision="auto")
    timing = tagger.precision_choice.timing
    print(
        f"  calibration for auto ({time.perf_counter() - t0:.1f} s to build the tagger): "
        + (timing.describe() if timing else "none, nothing to choose between here"),
        flush=True,
    )
    spent = {"encoder": 0.0, "head": 0.0, "crf": 0.0}

    def timed(part: str, fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[part] += time.perf_counter() - t0

        return run

    m = tagger.model
    m.encoder.forward = timed("encoder", m.encoder.forward)
    m.head.forward = timed("head", m.head.forward)
    m.classifier.forward = timed("head", m.classifier.forward)
    m.crf.viterbi_tensor = timed("crf", m.crf.viterbi_tensor)
    m.crf.marginals = timed("crf", m.crf.marginals)
    tagger.predict(texts[:2])
    spent.update(encoder=0.0, head=0.0, crf=0.0)
    t0 = time.perf_counter()
    tagger.predict(texts)
    wall = time.perf_counter() - t0
    shares = {k: v / wall for k, v in spent.items()}
    shares["everything else"] = max(0.0, 1.0 - sum(shares.values()))
    print(
        f"  where the time goes at {tagger.precision} (auto here: {tagger.precision_choice.reason}), "
        f"{wall:.2f} s wall: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()) + " (goal: else <= 5%)",
        flush=True,
    )
    calibration = timing.to_dict() if timing else None
    return {"precision": str(tagger.precision), "wall_s": wall, "calibration": calibration, **shares}


def _train_small_model(out: Path, seconds: float) -> Path:
    from ner_core.config import NERConfig
    from ner_core.data.formats import read_file
    from ner_core.model.encoder import make_tiny_encoder
    from ner_core.training.loop import train

    tr = read_file(RESUME / "train.char.bmes").documents
    dev = read_file(RESUME / "dev.char.bmes").documents
    labels = sorted({e.label for d in tr for e in d.entities})
    enc = make_tiny_encoder(
        out / "encoder", [d.text for d in tr + dev], hidden_size=64, num_heads=2, intermediate_size=128
    )
    cfg = NERConfig.model_validate(
        {
            "data": {"dataset": "resume", "max_len": 128},
            "encoder": {"name": str(enc)},
            "head": {"type": "idcnn", "cnn_filters": 64},
            "training": {
                "max_epochs": 8,
                "batch_size": 16,
                "learning_rate": 3e-3,
                "head_learning_rate": 5e-3,
                "crf_learning_rate": 5e-2,
                "warmup_ratio": 0.0,
                "max_train_seconds": seconds,
            },
        }
    )
    print(
        f"  training a small model on Resume NER train ({len(tr)} sentences, budget {seconds:.0f} s) ...",
        flush=True,
    )
    res = train(cfg, tr, dev, labels, out / "run", progress=False)
    print(
        f"  trained: best epoch {res.best_epoch}, dev F1 {res.best_dev_f1}, {res.seconds:.0f} s", flush=True
    )
    return Path(res.model_dir)


def _load_predict_module(path: str):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("other_predict", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--compare-with {path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def bench_window_f1(
    model_dir: str | None, windows: list[int], train_seconds: float, compare_with: str | None = None
) -> dict | None:
    """Resume NER dev entity F1: whole texts against windows smaller than the longest text (strides of 1/2,
    3/4 and 7/8 of the window), and the int8 encoder against the whole-text float model. With
    ``compare_with``, the same figures from another implementation of ``ner_core/inference/tagger.py``."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.data.formats import read_file
    from ner_core.documents import Entity
    from ner_core.inference import tagger as ours
    from ner_core.metrics import evaluate

    other = _load_predict_module(compare_with) if compare_with else None
    dev = read_file(RESUME / "dev.char.bmes").documents
    longest = max(len(d.text) for d in dev)
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(model_dir) if model_dir else _train_small_model(Path(tmp), train_seconds)
        loaded = load_model_dir(md)
        whole_len = min(510, max(longest, 8))

        def f1(mod, ml: int, st: int, precision: str) -> float:
            tagger = mod.Tagger(  # the constructor: the same in both predict.py versions compared
                loaded.model,
                loaded.tokenizer,
                max_len=ml,
                stride=st,
                batch_size=32,
                device="cpu",
                precision=precision,
            )
            preds = tagger.predict([d.text for d in dev], confidence=False)
            ents = [[Entity(start=p.start, end=p.end, label=p.label) for p in ps] for ps in preds]
            return evaluate(dev, ents, scheme=loaded.scheme).f1 * 100

        variants = [("whole", whole_len, whole_len, "fp32")]
        for w in windows:
            variants += [
                (f"window {w} stride {st}", w, st, "fp32")
                for st in dict.fromkeys((max(1, w // 2), max(1, w * 3 // 4), max(1, w * 7 // 8), w))
            ]
        variants.append(("whole, bf16", whole_len, whole_len, "bf16"))
        variants.append(("whole, int8", whole_len, whole_len, "int8"))
        for name, ml, st, precision in variants:
            t0 = time.perf_counter()
            res[name] = f1(ours, ml, st, precision)
            secs = time.perf_counter() - t0
            n_long = sum(len(d.text) > ml for d in dev)
            line = (
                f"  {name:<24} entity F1 {res[name]:6.2f} ({res[name] - res['whole']:+.2f}), {n_long:>3} of "
                f"{len(dev)} texts longer than the window, {secs:4.1f} s"
            )
            if other is not None:
                res[f"{name} (other)"] = o = f1(other, ml, st, precision)
                line += f"   | {compare_with}: {o:6.2f} ({o - res['whole (other)']:+.2f})"
            print(line, flush=True)
    windowed = [k for k in res if k.startswith("window") and not k.endswith("(other)")]
    diffs = {k: abs(res["whole"] - res[k]) for k in windowed}
    print(
        f"  goal: within 0.2 points of whole at a window smaller than the longest text ({longest} chars): "
        + ", ".join(f"{k}: {d:.2f}" for k, d in diffs.items()),
        flush=True,
    )
    return {**res, "longest": longest}


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_predict", description=__doc__.split("\n")[0])
    p.add_argument("--n-texts", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int)
    p.add_argument("--skip-hf", action="store_true", help="time only our tagger")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-f1", action="store_true")
    p.add_argument("--model-dir", help="trained Resume NER model for the F1 comparison (else trained here)")
    p.add_argument(
        "--window",
        default="96,48",
        help="windows for the windowed F1 runs, comma-separated (default %(default)s)",
    )
    p.add_argument(
        "--compare-with", help="another ner_core/inference/tagger.py whose F1 is printed beside ours"
    )
    p.add_argument("--train-seconds", type=float, default=150.0)
    args = p.parse_args(argv if argv is not None else [])
    from bench.machine import describe

    print(describe(), flush=True)
    out: dict = {}
    if not args.skip_speed:
        if not FINANCE_TEST.is_file():
            print(f"speed: skipped, {FINANCE_TEST} not found")
        else:
            try:
                out["speed"] = bench_speed(args.n_texts, args.batch_size, args.skip_hf, args.threads)
            except ValueError as exc:  # m3e-small not installed
                print(f"speed: skipped, {exc}")
    if not args.skip_f1:
        if not (RESUME / "dev.char.bmes").is_file():
            print(f"F1: skipped, {RESUME} not found")
        else:
            print("windowed vs whole-text prediction on Resume NER dev:", flush=True)
            windows = [int(w) for w in str(args.window).split(",") if w.strip()]
            out["f1"] = bench_window_f1(args.model_dir, windows, args.train_seconds, args.compare_with)
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
