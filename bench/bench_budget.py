"""Training on a time budget: does the faster precision buy epochs and F1?

    python -m bench budget --minutes 30          # the comparison the README reports (30 min per run)
    python -m bench budget --minutes 2           # a quick proof that it runs

Resume NER (../shared/datasets/resume-ner), BiLSTM-CRF on m3e-small (or ``--encoder``), max_len 128: the
same run twice, at ``auto`` (what this machine picks: bf16 on CPUs with bf16 units) and at ``fp32``, each
for ``--minutes`` of wall-clock training; each reports Resume NER test entity F1 (fp32 evaluation, so
the two are scored alike) and the epochs reached. The platform's long-term aim on this split is 95.7
(BERT-base + CRF's published score); the distance is printed, not judged. Figures are printed, never
asserted; timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: BERT-base + CRF on Resume NER test, the published score the issue names as the long-term aim
PUBLISHED_F1 = 95.7


def main(argv: list[str] | None = None) -> dict | None:
    from bench.bench_train import load_split, run_ours
    from bench.machine import describe

    p = argparse.ArgumentParser(prog="python -m bench budget", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per run (default 30)")
    p.add_argument("--encoder", default="m3e-small")
    p.add_argument("--head", default="bilstm")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--train-limit", type=int, help="use only the first N training sentences")
    p.add_argument(
        "--precisions",
        default="auto,fp32",
        help="which runs, comma-separated (default auto,fp32); one per process lets the two run side by side",
    )
    args = p.parse_args(argv if argv is not None else [])
    print(describe(), flush=True)
    train_docs = load_split("resume", "train")
    if train_docs is None:
        print("skipped: no Resume NER data in ../shared/datasets/resume-ner")
        return None
    train_docs = train_docs[: args.train_limit] if args.train_limit else train_docs
    dev_docs, test_docs = load_split("resume", "dev"), load_split("resume", "test")
    print(
        f"Resume NER: {len(train_docs)} train / {len(dev_docs)} dev / {len(test_docs)} test sentences; "
        f"{args.head}-CRF on {args.encoder}, max_len {args.max_len}, {args.minutes:g} min per run",
        flush=True,
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            r = run_ours(
                args.head,
                args.encoder,
                train_docs,
                dev_docs,
                test_docs,
                args.minutes,
                args.max_len,
                Path(tmp),
                precision,
            )
            rows[precision] = r
            print(
                f"  {precision:<4} (ran {r['precision']}): test F1 {r['f1'] * 100:.2f}, {r['epochs']} epochs "
                f"(best {r['best_epoch']}), {r['mean_sent_per_s']:.1f} sent/s, {r['train_s']:.0f} s; "
                f"{PUBLISHED_F1 - r['f1'] * 100:.2f} points from the published {PUBLISHED_F1}",
                flush=True,
            )
    if not {"auto", "fp32"} <= set(rows):
        return rows
    gain = (rows["auto"]["f1"] - rows["fp32"]["f1"]) * 100
    print(
        f"  auto - fp32: {gain:+.2f} F1 points, {rows['auto']['epochs'] - rows['fp32']['epochs']:+d} epochs "
        "in the same budget",
        flush=True,
    )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
