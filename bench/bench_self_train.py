"""Self-training (issue 26) on Resume NER with few gold sentences: does the silver round help, and should
the student start from the encoder or from the teacher's weights?

    python -m bench self_train [--seed 7]          # 200 gold, 600 unlabeled, 250 dev/test sentences
    python -m bench self_train --gold 32 --unlabeled 64 --eval-limit 32 --max-epochs 2   # a quick proof

Resume NER (../shared/datasets/resume-ner): the first ``--gold`` training sentences keep their labels, the
next ``--unlabeled`` ones are given as text only; dev (``--eval-limit``) early-stops every round, test
scores the saved models. Rows:

- ``teacher``: round 0, gold only (what ``ner train`` without ``--unlabeled`` gives);
- ``student, from the encoder``: round 1 of :func:`ner_core.training.self_training.self_train` (gold +
  the teacher's silver at ``--silver-weight``), trained from the pretrained encoder like the teacher: what
  ``ner train --unlabeled`` does;
- ``student, from the teacher``: the same data, the model initialised with the teacher's weights.

Epoch budgets, not time budgets, so the F1 figures do not depend on the machine's speed (the seconds do).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _config(args: argparse.Namespace, unlabeled: bool):
    from ner_core.config import NERConfig

    training = {"max_epochs": args.max_epochs, "early_stop_patience": 2, "seed": args.seed}
    training["learning_rate"] = args.learning_rate
    if args.threads:
        training["num_threads"] = args.threads
    if unlabeled:
        training.update(unlabeled=["(bench texts)"], silver_weight=args.silver_weight)
        training.update(silver_min_confidence=args.min_confidence)
    return NERConfig.model_validate(
        {"data": {"max_len": args.max_len}, "encoder": {"name": args.encoder}, "training": training}
    )


def _score(model_dir: Path, test, max_len: int) -> float:
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.evaluate import evaluate_model

    loaded = load_model_dir(model_dir)
    return evaluate_model(loaded.model, loaded.tokenizer, test, max_len=max_len).f1


def _from_teacher(config, data: dict, silver, teacher: Path, run_dir: Path):
    """Train gold + silver with the model initialised from ``teacher``'s weights (after the seeded build,
    so everything else is as in the other student's run)."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.training import loop

    weights = load_model_dir(teacher).model.state_dict()
    plain = loop._set_up

    def set_up(*a, **kw):
        run = plain(*a, **kw)
        run.model.load_state_dict(weights)
        return run

    loop._set_up = set_up
    try:
        return loop.train(
            config, data["gold"], data["dev"], data["labels"], run_dir, progress=False, silver=silver
        )
    finally:
        loop._set_up = plain


def run(args: argparse.Namespace, data: dict, tmp: Path) -> list[dict]:
    from ner_core.training.self_training import self_train, text_hash

    t0 = time.perf_counter()
    config = _config(args, unlabeled=True)
    held_out = {text_hash(d.text) for d in data["dev"] + data["test"]}
    out = self_train(config, data["gold"], data["dev"], data["labels"], tmp / "scratch", data["texts"],
                     held_out=held_out, source={"bench": "resume"}, progress=False)  # fmt: skip
    scratch_s = time.perf_counter() - t0
    rnd = out.lineage["rounds"][0]
    teacher = tmp / "scratch" / rnd["teacher"]
    silver = _silver_docs(tmp / "scratch" / rnd["silver"])
    t1 = time.perf_counter()
    warm = _from_teacher(config, data, silver, teacher, tmp / "warm")
    warm_s = time.perf_counter() - t1
    print(f"  silver: {rnd['selected']} of {len(data['texts'])} texts; counts {rnd['counts']}", flush=True)
    return [
        {"row": "teacher (gold only)", "f1": _score(teacher, data["test"], args.max_len), "seconds": None},
        {
            "row": "student, from the encoder",
            "f1": _score(out.result.model_dir, data["test"], args.max_len),
            "seconds": scratch_s,
            "epochs": len(out.result.history),
        },  # fmt: skip
        {
            "row": "student, from the teacher",
            "f1": _score(warm.model_dir, data["test"], args.max_len),
            "seconds": warm_s,
            "epochs": len(warm.history),
        },  # fmt: skip
    ]


def _silver_docs(path: Path):
    from ner_core.documents import Document

    return [
        Document.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line
    ]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench self_train", description=__doc__.split("\n")[0])
    p.add_argument("--gold", type=int, default=200, help="labelled training sentences (200)")
    p.add_argument("--unlabeled", type=int, default=600, help="the following sentences, as text only (600)")
    p.add_argument("--eval-limit", type=int, default=250, help="the first N dev and test sentences (250)")
    p.add_argument("--encoder", default="m3e-small")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=10, help="per round, early-stopped on dev (10)")
    p.add_argument(
        "--learning-rate",
        type=float,
        default=2e-4,
        help="encoder learning rate (2e-4: at 5e-5, 8 epochs of "
        "100 sentences left a teacher too unsure for any silver at 0.9)",
    )
    p.add_argument("--silver-weight", type=float, default=0.5)
    p.add_argument("--min-confidence", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the physical cores)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict] | None:
    from bench.bench_train import load_resume
    from bench.machine import describe

    args = _parse(argv if argv is not None else [])
    print(describe(), flush=True)
    splits = load_resume()
    if splits is None:
        return None
    train_docs, dev, test = splits
    lim = args.eval_limit
    data = {
        "gold": train_docs[: args.gold],
        "texts": [d.text for d in train_docs[args.gold : args.gold + args.unlabeled]],
        "dev": dev[:lim] if lim else dev,
        "test": test[:lim] if lim else test,
        "labels": sorted({e.label for d in train_docs for e in d.entities}),
    }
    print(
        f"Resume NER: {args.gold} gold + {len(data['texts'])} unlabeled train sentences, "
        f"{len(data['dev'])} dev, {len(data['test'])} test; {args.encoder}, max_len {args.max_len}, "
        f"up to {args.max_epochs} epochs a round, lr {args.learning_rate:g}, "
        f"silver weight {args.silver_weight}, min confidence {args.min_confidence}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args, data, Path(tmp))
    print("seconds: the self_train run (teacher, tagging, student) / the warm student's training alone")
    print("| model | test F1 | epochs | seconds |\n|---|---:|---:|---:|")
    for r in rows:
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        print(f"| {r['row']} | {r['f1'] * 100:.2f} | {r.get('epochs', '-')} | {secs} |", flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
