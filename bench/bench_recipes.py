"""Training recipes (issue 26) against the current defaults, at the same minutes per row.

    python -m bench recipes --minutes 30                 # the comparison for the README (30 min per row)
    python -m bench recipes --minutes 0.2 --train-limit 64 --eval-limit 32    # a quick proof that it runs

Resume NER (../shared/datasets/resume-ner), the default model (BiLSTM-CRF on m3e-small, or ``--encoder``),
``max_len`` 128, every training option at its default except the row's recipe:

- ``defaults``: the configuration as ``ner train`` builds it today;
- ``llrd``: ``layer_lr_decay`` (``--llrd``, default 0.8);
- ``fgm``: ``adversarial fgm``, ``adv_epsilon`` (``--adv-epsilon``, default 1.0);
- ``pgd``: ``adversarial pgd``, the same ``adv_epsilon``, ``adv_steps`` (``--adv-steps``, default 3) and
  ``adv_alpha`` its default (epsilon / steps); each batch costs 1 + steps forward and backward passes, so
  in the same minutes it sees fewer batches than ``fgm`` (1 + 1);
- ``lr_auto``: ``learning_rate auto`` (the encoder's rate by its size: 1e-4 for m3e-small's 24M parameters);
- ``ema``: ``ema_decay`` (``--ema``, default 0.999);
- ``adapt``: ``adapt_seconds`` = ``--adapt-share`` of the row's minutes (masked-LM on the training texts),
  the rest training on the adapted encoder; so this row, too, spends the same minutes in all;
- ``all``: llrd + fgm + ema together.

Each row trains on a wall-clock budget (``max_train_seconds``) and reports Resume NER test entity F1 of the
model it saved (dev F1 chose the epoch), its epochs and wall-clock seconds (setup, adapting and evaluation
included), as one Markdown table with the machine line above it. Figures are printed, never asserted; they
depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROWS = ("defaults", "llrd", "fgm", "pgd", "ema", "lr_auto", "adapt", "all")


def _overrides(row: str, args: argparse.Namespace, seconds: float) -> tuple[dict, float]:
    """The row's training overrides, and the seconds it adapts first (0: none)."""
    llrd = {"training.layer_lr_decay": args.llrd}
    fgm = {"training.adversarial": "fgm", "training.adv_epsilon": args.adv_epsilon}
    pgd = {**fgm, "training.adversarial": "pgd", "training.adv_steps": args.adv_steps}
    ema = {"training.ema_decay": args.ema}
    adapt_s = seconds * args.adapt_share if row == "adapt" else 0.0
    table = {
        "defaults": {},
        "llrd": llrd,
        "fgm": fgm,
        "pgd": pgd,
        "ema": ema,
        "lr_auto": {"training.learning_rate": "auto"},
        "adapt": {},
        "all": {**llrd, **fgm, **ema},
    }
    return {**table[row], "training.max_train_seconds": seconds - adapt_s}, adapt_s


def _settings(overrides: dict, adapt_s: float) -> str:
    budget = "training.max_train_seconds"
    shown = {k.removeprefix("training."): v for k, v in overrides.items() if k != budget}
    if adapt_s:
        shown["adapt_seconds"] = round(adapt_s)
    return ", ".join(f"{k} {v}" for k, v in shown.items()) or "-"


def run_row(row: str, args: argparse.Namespace, data: dict, out: Path) -> dict:
    """Train one row (adapting first for ``adapt``) and score its saved model on the test split."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import NERConfig
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.training.adapt import AdaptConfig, adapt
    from ner_core.training.loop import train

    config = NERConfig.model_validate(
        {"data": {"max_len": args.max_len}, "encoder": {"name": args.encoder}, "training": {"max_epochs": 50}}
    )
    if args.threads:
        config = config.with_overrides({"training.num_threads": args.threads})
    overrides, adapt_s = _overrides(row, args, args.minutes * 60)
    config = config.with_overrides(overrides)
    t0 = time.perf_counter()
    if adapt_s:
        enc = out / row / "adapted-encoder"
        cfg = AdaptConfig(
            encoder=args.encoder, max_train_seconds=adapt_s, max_len=args.max_len, num_threads=args.threads
        )
        adapt(cfg, [d.text for d in data["train"]], out / row / "adapt-work", enc, progress=False)
        config = config.with_overrides({"encoder.name": str(enc)})
    res = train(config, data["train"], data["dev"], data["labels"], out / row, progress=False)
    seconds = time.perf_counter() - t0
    used = NERConfig.from_file(res.run_dir / "config.json").training.learning_rate  # "auto" resolved
    loaded = load_model_dir(res.model_dir)
    report = evaluate_model(loaded.model, loaded.tokenizer, data["test"], max_len=args.max_len)
    return {
        "row": row,
        "settings": _settings(overrides, adapt_s).replace(
            "learning_rate auto", f"learning_rate auto ({used:g})"
        ),
        "f1": report.f1,
        "p": report.precision,
        "r": report.recall,
        "epochs": len(res.history),
        "best_epoch": res.best_epoch,
        "seconds": seconds,
        "precision": res.precision,
    }


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, the defaults' F1 as the reference for the difference column."""
    base = next((r["f1"] for r in rows if r["row"] == "defaults"), None)
    lines = [
        "| recipe | settings | test F1 | vs defaults | P | R | epochs (best) | seconds | precision |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        diff = f"{(r['f1'] - base) * 100:+.2f}" if base is not None else "-"
        lines.append(
            f"| {r['row']} | {r['settings']} | {r['f1'] * 100:.2f} | {diff} | {r['p'] * 100:.2f} | "
            f"{r['r'] * 100:.2f} | {r['epochs']} ({r['best_epoch']}) | {r['seconds']:.0f} | "
            f"{r['precision']} |"
        )
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench recipes", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="minutes per row, adapting included (30)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--encoder", default="m3e-small")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--llrd", type=float, default=0.8, help="layer_lr_decay of the llrd and all rows")
    p.add_argument("--adv-epsilon", type=float, default=1.0, help="adv_epsilon of the fgm, pgd and all rows")
    p.add_argument("--adv-steps", type=int, default=3, help="adv_steps of the pgd row")
    p.add_argument("--ema", type=float, default=0.999, help="ema_decay of the ema and all rows")
    p.add_argument("--adapt-share", type=float, default=0.3, help="share of the adapt row's minutes adapting")
    p.add_argument("--train-limit", type=int, help="only the first N training sentences (quick proofs)")
    p.add_argument("--eval-limit", type=int, help="only the first N dev and test sentences (quick proofs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the physical cores)")
    args = p.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choices: {', '.join(ROWS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict] | None:
    from bench.bench_train import load_resume
    from bench.machine import describe

    args = _parse(argv if argv is not None else [])
    print(describe(), flush=True)
    splits = load_resume()
    if splits is None:
        return None
    train_docs, dev, test = splits
    data = {
        "train": train_docs[: args.train_limit] if args.train_limit else train_docs,
        "dev": dev[: args.eval_limit] if args.eval_limit else dev,
        "test": test[: args.eval_limit] if args.eval_limit else test,
        "labels": sorted({e.label for d in train_docs for e in d.entities}),
    }
    print(
        f"Resume NER: {len(data['train'])} train / {len(data['dev'])} dev / {len(data['test'])} test "
        f"sentences; {args.encoder}, max_len {args.max_len}, {args.minutes:g} min per row",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            rows.append(run_row(row, args, data, Path(tmp)))
            r = rows[-1]
            line = f"  {row}: test F1 {r['f1'] * 100:.2f}, {r['epochs']} epochs, {r['seconds']:.0f} s"
            print(line, flush=True)
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
