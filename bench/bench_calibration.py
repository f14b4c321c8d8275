"""Calibrated entity confidence: expected calibration error before and after a temperature fitted on dev,
on dev and on test, per precision.

    python -m bench.bench_calibration                                 # resume and msra, fp32
    python -m bench.bench_calibration --precisions fp32,int8,bf16     # more precisions
    python -m bench.bench_calibration --datasets resume --max-test-docs 200

For each shared data set (:mod:`bench.splits`: one split rule, fixed seed; MSRA's dev split is the 1,000
sentences that rule carves from its train file, which the model did not train on) the model that
``bench/bench_int8.py`` trained and kept (``<models-root>/<data set>/model``; a data set without one is
skipped, nothing is trained here) tags dev once per precision; the temperature is fitted on dev's
predicted entities exactly as at the end of training (:func:`ner_core.inference.calibration.fit_crf`: the
encoder once, forward-backward again per candidate temperature), then test is tagged at that temperature
and its ECE computed raw and calibrated (:func:`ner_core.inference.calibration.calibration_of`), the figure
an evaluation reports. ``--max-dev-docs`` / ``--max-test-docs`` cap the documents (the first of the split,
in its order; none by default). The model directories are read, never written.

Printed per data set and precision: the fitted temperature, dev and test predicted entities, ECE raw ->
calibrated on dev and on test, the dev sample's ECE floor (:func:`ece_floor`: what a perfectly calibrated
model would score on that many entities at those confidences, mean and 97.5th percentile), test entity
F1, seconds; and with ``--bins`` the test reliability table of
each. 10 equal-width bins (:mod:`ner_core.metrics`). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HEADER = (
    "| data set | precision | T | dev entities | dev ECE raw -> cal | dev floor | test entities "
    "| test ECE raw -> cal | test F1 | s |\n|---|---|---|---|---|---|---|---|---|---|"
)


def ece_floor(bins, draws: int = 400, seed: int = 0) -> tuple[float, float]:
    """The ECE a perfectly calibrated model would score on a sample like this one (mean, 97.5th
    percentile): each bin's entities drawn right with probability its mean confidence, ``draws`` times.
    Sampling noise alone keeps a small sample's ECE above zero; a goal below this floor is not measurable
    on that sample."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = sum(b.n for b in bins)
    if not n:
        return 0.0, 0.0
    sims = []
    for _ in range(draws):
        right = [rng.binomial(b.n, b.mean_confidence) for b in bins]
        sims.append(sum(abs(k - b.n * b.mean_confidence) for b, k in zip(bins, right, strict=True)) / n)
    return float(np.mean(sims)), float(np.percentile(sims, 97.5))


def bench_one(loaded, dev, test, precision: str, args) -> tuple[str, list[str]]:
    """Fit on ``dev`` at ``precision``, score ``test`` at the fitted temperature: one table row and the
    test reliability table's lines."""
    from ner_core.documents import Entity
    from ner_core.inference.calibration import calibration_of, fit_crf
    from ner_core.inference.tagger import Tagger
    from ner_core.metrics import evaluate

    t0 = time.perf_counter()
    tagger = Tagger(
        loaded.model,
        loaded.tokenizer,
        max_len=loaded.config.data.max_len,
        batch_size=args.batch_size,
        device="cpu",
        precision=precision,
    )
    dev_report, fit = fit_crf(tagger, dev)
    floor, floor_hi = ece_floor(dev_report.calibration.bins_calibrated)
    tagger.temperature = fit.temperature
    preds = tagger.predict([d.text for d in test])
    ents = [[Entity(start=e.start, end=e.end, label=e.label) for e in p] for p in preds]
    report = evaluate(test, ents, scheme=tagger.scheme)
    cal = calibration_of(
        test, preds, n_gold=report.n_gold, temperature=fit.temperature, fitted_on="dev", precision=precision
    )
    row = (
        f"| {args.dataset} | {precision} | {fit.temperature:.3f}{'' if fit.fitted else ' (not fitted)'} | "
        f"{fit.n_entities} | {fit.ece_raw:.4f} -> {fit.ece_calibrated:.4f} | {floor:.4f} ({floor_hi:.4f}) | "
        f"{cal.n_entities} | "
        f"{cal.ece_raw:.4f} -> {cal.ece_calibrated:.4f} | {report.f1:.4f} | {time.perf_counter() - t0:.0f} |"
    )
    bins = [
        f"test reliability, {args.dataset} {precision} (bin: n, mean confidence, accuracy; raw | calibrated)"
    ]
    for r, c in zip(cal.bins_raw, cal.bins_calibrated, strict=True):
        bins.append(
            f"  [{r.lo:.1f}, {r.hi:.1f}): {r.n:5d} {r.mean_confidence:.3f} {r.accuracy:.3f} | "
            f"{c.n:5d} {c.mean_confidence:.3f} {c.accuracy:.3f}"
        )
    return row, bins


def main(argv: list[str] | None = None) -> list[str] | None:
    import torch

    from bench import splits
    from bench.machine import describe
    from ner_core.artifacts.layout import is_model_dir
    from ner_core.artifacts.modeldir import load_model_dir

    p = argparse.ArgumentParser(prog="python -m bench calibration", description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="resume,msra")
    p.add_argument("--models-root", default="runs/bench_int8", help="where bench_int8 keeps its models")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, int8")
    p.add_argument(
        "--fit-on",
        choices=("dev", "heldout"),
        default="dev",
        help="the split the temperature is fitted and its ECE measured on (heldout: MSRA's unused train "
        "sentences, a sample several times dev's; data sets without one use dev)",
    )
    p.add_argument("--max-dev-docs", type=int, default=None)
    p.add_argument("--max-test-docs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--bins", action="store_true", help="print each test reliability table")
    args = p.parse_args(argv if argv is not None else [])
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe(), flush=True)
    rows: list[str] = []
    for ds in [d for d in args.datasets.split(",") if d]:
        model_dir = Path(args.models_root) / ds / "model"
        if not splits.available(ds) or not is_model_dir(model_dir):
            print(
                f"{ds}: skipped (no shared data, or no model at {model_dir}: python -m bench int8 trains it)"
            )
            continue
        loaded = load_model_dir(model_dir)
        fit_split = args.fit_on if (args.fit_on == "dev" or ds == "msra") else "dev"
        dev = splits.load(ds, fit_split)[: args.max_dev_docs]
        test = splits.load(ds, "test")[: args.max_test_docs]
        print(f"{ds}: {model_dir}, {len(dev)} {fit_split} / {len(test)} test documents", flush=True)
        args.dataset = ds
        for precision in [x for x in args.precisions.split(",") if x]:
            row, bins = bench_one(loaded, dev, test, precision, args)
            rows.append(row)
            print(row, flush=True)
            if args.bins:
                print("\n".join(bins), flush=True)
    if rows:
        print("\n" + HEADER + "\n" + "\n".join(rows), flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
