"""int8 that keeps accuracy: dev F1 and speed of each int8 variant against fp32 and bf16.

    python -m bench int8 --train-minutes 30                # train what is missing, then score every variant
    python -m bench int8 --datasets resume --layers pt7    # add the per-layer sweep (old scheme)
    python -m bench int8 --variants pc8 --timing-rounds 0  # F1 only, one variant against fp32

For each shared data set (:mod:`bench.splits`: one split rule, fixed seed) a BiLSTM-CRF on m3e-small is
trained in fp32 for ``--train-minutes`` of wall clock (kept under ``--models-root`` and reused), then its
dev split is tagged in fp32, bf16 and each int8 variant of :mod:`ner_core.runtime.quantize`, each int8 one
on a quantised copy tagged at ``fp32`` (the copy already holds its int8 layers; ``w8 bf16-act`` at bf16).

Printed per data set and variant: dev entity F1, its delta against fp32 in points, characters per second
and the relative error of the emissions against fp32's (first dev windows). Speed is the best of
``--timing-rounds`` passes over the first ``--timing-chars`` dev characters, the variants taking turns in
each round, so a machine that other work slows down slows them alike. Per data set also the share of dev
characters whose fp32 tag has a CRF marginal under 0.9: a model with many such near-boundary decisions
loses more F1 to the same emission error. ``--layers pt7`` (the old per-tensor weights, 7-bit
activations) or ``pc8`` (per-channel, 8-bit) adds the sensitivity sweep: one Linear group (attention
q/k/v, attention output, FFN intermediate, FFN output) of one encoder layer quantised, the rest float.
Figures are printed, never asserted. m3e-small: research / non-commercial use only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MAX_LEN = 128


def train_model(dataset: str, out: Path, minutes: float, encoder: str = "m3e-small") -> Path:
    """Train (fp32, ``minutes`` of wall clock) the bench's model for ``dataset`` into ``out``; the model
    directory. A model directory already there is reused."""
    from bench import splits
    from ner_core.artifacts.layout import is_model_dir
    from ner_core.config import NERConfig
    from ner_core.training.loop import train

    if is_model_dir(out / "model"):
        return out / "model"
    train_docs, dev_docs = splits.load(dataset, "train"), splits.load(dataset, "dev")
    labels = sorted({e.label for d in train_docs for e in d.entities})
    cfg = NERConfig.model_validate(
        {
            "data": {"max_len": MAX_LEN},
            "encoder": {"name": encoder},
            "head": {"type": "bilstm"},
            "training": {
                "max_epochs": 50,
                "batch_size": 32,
                "learning_rate": 1e-4,
                "head_learning_rate": 2e-3,
                "crf_learning_rate": 2e-2,
                "max_train_seconds": minutes * 60,
                "early_stop_patience": 3,
                "precision": "fp32",
            },
        }
    )
    res = train(cfg, train_docs, dev_docs, labels, out, progress=False)
    return Path(res.model_dir)


# ------------------------------------------------------------------------------------ the variants
#: name -> (int8_copy keyword arguments, or None for the float model; the precision the tagger runs at)
VARIANTS: dict[str, tuple[dict | None, str]] = {
    "fp32": (None, "fp32"),
    "bf16": (None, "bf16"),
    "int8 shipped": ({"shipped": True}, "fp32"),
    "pt7": ({"per_channel": False, "full_range": False}, "fp32"),
    "pc7": ({"per_channel": True, "full_range": False}, "fp32"),
    "pc8": ({"per_channel": True, "full_range": True}, "fp32"),
    "pc8 keep ffn_out": ({"full_range": True, "keep_float": ["ffn_out"]}, "fp32"),
    "pc8 keep ffn_in": ({"full_range": True, "keep_float": ["ffn_in"]}, "fp32"),
    "pc8 smooth": ({"full_range": True, "smooth": "train"}, "fp32"),
    "pc8 synth": ({"full_range": True, "smooth": "synthetic"}, "fp32"),
    "pc8 smooth keep ffn_out": ({"full_range": True, "smooth": "train", "keep_float": ["ffn_out"]}, "fp32"),
    "pc8 smooth ffn_out bf16": (
        {"full_range": True, "smooth": "train", "keep_float": ["ffn_out"], "kept": "bf16"},
        "fp32",
    ),
    "pc8 synth ffn_out bf16": (
        {"full_range": True, "smooth": "synthetic", "keep_float": ["ffn_out"], "kept": "bf16"},
        "fp32",
    ),
    "pc8 ffn_out bf16": ({"full_range": True, "keep_float": ["ffn_out"], "kept": "bf16"}, "fp32"),
    "w8 bf16-act": ({"activations": "bf16"}, "bf16"),
}
#: training sentences whose activation ranges calibrate the ``smooth`` variant
CALIBRATION_SENTENCES = 256
_SCHEMES = {
    "pt7": {"per_channel": False, "full_range": False},
    "pc8": {"per_channel": True, "full_range": True},
}


def build(model, kwargs: dict | None, calibrate=None, tokenizer=None):
    """The model a variant tags with: the float model itself, or its int8 copy (``calibrate(source)``:
    the activation ranges a ``smooth`` variant needs, from ``train`` texts or ``synthetic`` rows;
    ``int8 shipped``: what ``--precision int8`` tags with, ``ner_core.runtime.precision.int8_copy``; torch's
    plain dynamic int8, shipped before it, is ``pt7``)."""
    from ner_core.runtime import quantize

    if kwargs is None:
        return model
    if kwargs.get("shipped"):
        from ner_core.runtime.precision import int8_copy as shipped

        return shipped(model, tokenizer)
    kwargs = dict(kwargs)
    if kwargs.get("smooth"):
        kwargs["ranges"] = calibrate(kwargs.pop("smooth"))
    return quantize.int8_copy(model, **kwargs)


def calibration(model, tokenizer, ds: str):
    """A function giving the activation ranges of ``model`` on the first training sentences of ``ds``."""
    from bench import splits
    from ner_core.runtime.quantize import activation_ranges, synthetic_batches

    def ranges(source: str):
        if source == "synthetic":
            return activation_ranges(model, synthetic_batches(tokenizer, rows=CALIBRATION_SENTENCES))
        texts = [d.text[:MAX_LEN] for d in splits.load(ds, "train")[:CALIBRATION_SENTENCES] if d.text]
        batches = []
        for i in range(0, len(texts), 32):
            b = tokenizer(texts[i : i + 32], padding=True, return_tensors="pt")
            batches.append((b["input_ids"], b["attention_mask"]))
        return activation_ranges(model, batches)

    return ranges


def score(model, tokenizer, docs, precision: str) -> float:
    """Dev entity F1 of tagging ``docs`` whole at ``precision``."""
    from ner_core.documents import Entity
    from ner_core.inference.tagger import Tagger
    from ner_core.metrics import evaluate

    tagger = Tagger(model, tokenizer, max_len=MAX_LEN, precision=precision)
    preds = tagger.predict([d.text for d in docs], confidence=False)
    ents = [[Entity(start=p.start, end=p.end, label=p.label) for p in ps] for ps in preds]
    return evaluate(docs, ents, scheme=model.config.data.scheme).f1


def speeds(models: dict[str, tuple], tokenizer, texts: list[str], rounds: int) -> dict[str, float]:
    """Characters per second of each ``name -> (model, precision)`` tagging ``texts``: the best of
    ``rounds`` passes, the variants taking turns in each round, so a busy machine slows all alike."""
    from ner_core.inference.tagger import Tagger

    taggers = {n: Tagger(m, tokenizer, max_len=MAX_LEN, precision=p) for n, (m, p) in models.items()}
    for t in taggers.values():
        t.predict(texts[:32], confidence=False)  # kernels built and cached per shape before timing
    chars, best = sum(map(len, texts)), dict.fromkeys(taggers, 0.0)
    for _ in range(rounds):
        for name, t in taggers.items():
            t0 = time.perf_counter()
            t.predict(texts, confidence=False)
            best[name] = max(best[name], chars / (time.perf_counter() - t0))
    return best


def emission_error(model, variant, tokenizer, docs, precision: str) -> float:
    """Relative error ``|E_variant - E_fp32| / |E_fp32|`` of the emissions over the first dev windows:
    how far a variant moves the scores the CRF decodes, whatever the data set."""
    import torch

    from ner_core.runtime.precision import autocast

    texts = [d.text[:MAX_LEN] for d in docs[:128] if d.text]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref, mask = model.emissions(batch["input_ids"], batch["attention_mask"])
        with autocast(precision, "cpu"):
            got, _ = variant.emissions(batch["input_ids"], batch["attention_mask"])
    ref, got = ref[mask].float(), got[mask].float()
    return float((got - ref).norm() / ref.norm())


def uncertain_share(model, tokenizer, docs, below: float = 0.9) -> float:
    """Share of dev characters whose fp32 tag has a CRF marginal under ``below``: how many of a model's
    decisions sit near a boundary that a small change of the emissions can cross."""
    from ner_core.inference.tagger import Tagger

    tagged = Tagger(model, tokenizer, max_len=MAX_LEN).tag_texts([d.text for d in docs], confidence=True)
    probs = [p for _, ps in tagged for p in ps]
    return sum(p < below for p in probs) / max(1, len(probs))


def sweep(scheme: str, n_layers: int) -> dict[str, tuple[dict, str]]:
    """One Linear group of one encoder layer quantised (``scheme``), everything else float."""
    from ner_core.runtime.quantize import GROUPS

    groups = [g for g in GROUPS if g != "pooler"]
    every = [f"{g}@{i}" for g in groups for i in range(n_layers)] + ["pooler"]
    out = {}
    for i in range(n_layers):
        for g in groups:
            keep = [k for k in every if k != f"{g}@{i}"]
            out[f"{scheme} only {g}@{i}"] = ({**_SCHEMES[scheme], "keep_float": keep}, "fp32")
    return out


def bench_dataset(ds: str, model_dir: Path, variants: dict, args) -> list[str]:
    """Score every variant on ``ds``'s dev split, then time those that are not sweep rows; the table's
    rows."""
    from bench import splits
    from ner_core.artifacts.modeldir import load_model_dir

    loaded = load_model_dir(model_dir)
    docs = splits.load(ds, "dev")
    rows: dict[str, dict] = {}
    timed: dict[str, tuple] = {}
    for name, (kwargs, precision) in variants.items():
        tok = loaded.tokenizer
        variant = build(loaded.model, kwargs, calibration(loaded.model, tok, ds), tok)
        f1 = score(variant, loaded.tokenizer, docs, precision)
        err = emission_error(loaded.model, variant, loaded.tokenizer, docs, precision)
        rows[name] = {"f1": f1, "delta": (f1 - rows.get("fp32", {"f1": f1})["f1"]) * 100, "emission_err": err}
        print(f"  {ds} {name}: dev F1 {f1 * 100:.2f} ({rows[name]['delta']:+.2f})", flush=True)
        if " only " not in name:
            timed[name] = (variant, precision)
    share = uncertain_share(loaded.model, loaded.tokenizer, docs)
    texts, size = [], 0
    for d in docs:  # the first dev texts, up to --timing-chars
        if size >= args.timing_chars:
            break
        texts.append(d.text)
        size += len(d.text)
    cps = speeds(timed, loaded.tokenizer, texts, args.timing_rounds) if args.timing_rounds else {}
    lines = []
    for name, r in rows.items():
        speed = f"{cps[name]:8.0f}" if name in cps else f"{'-':>8}"
        lines.append(
            f"| {ds:<13} | {name:<24} | {r['f1'] * 100:6.2f} | {r['delta']:+6.2f} | {speed} "
            f"| {r['emission_err'] * 100:10.2f} |"
        )
        r["chars_per_s"] = cps.get(name)
    print(f"{ds}: uncertain characters (fp32 marginal < 0.9) {share * 100:.1f}%", flush=True)
    print(HEADER + "\n" + "\n".join(lines), flush=True)
    return lines


HEADER = (
    "| data set      | variant                  | dev F1 | delta  |  chars/s | emis err % |\n"
    "|---------------|--------------------------|--------|--------|----------|------------|"
)


def main(argv: list[str] | None = None) -> list[str] | None:
    import torch

    from bench import splits
    from bench.machine import describe

    p = argparse.ArgumentParser(prog="python -m bench int8", description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default=",".join(splits.DATASETS))
    p.add_argument("--models-root", default="runs/bench_int8", help="trained models are kept here and reused")
    p.add_argument("--train-minutes", type=float, default=10.0, help="wall-clock training budget per model")
    p.add_argument("--train-only", action="store_true", help="train what is missing, score nothing")
    p.add_argument("--variants", help=f"comma-separated subset of {', '.join(VARIANTS)} (default all)")
    p.add_argument("--layers", default="", help="per-layer sweeps to add: pt7, pc8 or both (pt7,pc8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    p.add_argument("--timing-rounds", type=int, default=3, help="timed passes per variant, best kept")
    p.add_argument("--timing-chars", type=int, default=20_000, help="dev characters per timed pass")
    args = p.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    print(describe(), flush=True)
    datasets = [d for d in args.datasets.split(",") if d]
    missing = [d for d in datasets if not splits.available(d)]
    if missing:
        print(f"skipped: no shared data for {missing} in {splits.SHARED}")
        return None
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    lines: list[str] = []
    for ds in datasets:
        t0 = time.perf_counter()
        path = train_model(ds, Path(args.models_root) / ds, args.train_minutes)
        print(f"{ds}: model {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.train_only:
            continue
        variants = {n: VARIANTS[n] for n in ["fp32", *names] if n in VARIANTS}
        for scheme in [s for s in args.layers.split(",") if s]:
            variants.update(sweep(scheme, _n_layers(path)))
        lines += bench_dataset(ds, path, variants, args)
    if len(datasets) > 1 and lines:
        print("\nall data sets\n" + HEADER + "\n" + "\n".join(lines), flush=True)
    return lines


def _n_layers(model_dir: Path) -> int:
    from ner_core.artifacts.modeldir import load_model_dir

    return int(load_model_dir(model_dir).model.encoder.config.num_hidden_layers)


if __name__ == "__main__":
    main(sys.argv[1:])
