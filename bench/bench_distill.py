"""Distillation (issue 26) on Resume NER: a student trained with a teacher's soft targets vs the same student
without them, in the same minutes.

    python -m bench.bench_distill --minutes 10                  # teacher: runs/bench_int8/resume/model
    python -m bench.bench_distill --minutes 10 --teacher DIR    # any CRF model directory on Resume NER
    python -m bench.bench_distill --minutes 0.5 --gold 64 --unlabeled 64 --eval-limit 32   # a quick proof

Resume NER (../shared/datasets/resume-ner): the first ``--gold`` training sentences keep their labels, the
next ``--unlabeled`` ones are given as text only (the distilled student trains on them with the teacher's
targets; the plain student cannot use them). Both students train for ``--minutes`` on the same encoder
(``--encoder``, m3e-small) and seed, early-stop on dev (``--eval-limit`` sentences) and are scored on test.
The teacher: ``--teacher`` if given, else ``runs/bench_int8/resume/model`` when present, else one trained
here on all the gold for ``--teacher-minutes`` (default three times ``--minutes``).

What it can show: whether a teacher that trained longer (or on more gold) passes what it learnt to a student
of the same size in the same minutes. What it cannot: the case the feature is for, a base-size teacher
distilled into a small CPU student: no encoder larger than m3e-small is available offline here, so teacher
and student share the encoder. One seed per run; figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TEACHER = Path("runs/bench_int8/resume/model")


def _config(args: argparse.Namespace, minutes: float, teacher: Path | None, unlabeled: bool):
    from ner_core.config import NERConfig

    training = {"max_epochs": 50, "max_train_seconds": minutes * 60, "seed": args.seed}
    training["learning_rate"] = args.learning_rate
    if args.threads:
        training["num_threads"] = args.threads
    if teacher is not None:
        training.update(teacher=str(teacher), distill_alpha=args.alpha, distill_temperature=args.temperature)
        if unlabeled:
            training["unlabeled"] = ["(bench texts)"]
    return NERConfig.model_validate(
        {"data": {"max_len": args.max_len}, "encoder": {"name": args.encoder}, "training": training}
    )


def _score(model_dir: Path, test, max_len: int) -> float:
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.evaluate import evaluate_model

    loaded = load_model_dir(model_dir)
    return evaluate_model(loaded.model, loaded.tokenizer, test, max_len=max_len).f1


def _teacher(args: argparse.Namespace, data: dict, tmp: Path) -> tuple[Path, str]:
    from ner_core.training.loop import train

    if args.teacher:
        return Path(args.teacher), "given"
    if DEFAULT_TEACHER.is_dir():
        return DEFAULT_TEACHER, "runs/bench_int8/resume"
    minutes = args.teacher_minutes or 3 * args.minutes
    config = _config(args, minutes, None, False)
    result = train(config, data["all_gold"], data["dev"], data["labels"], tmp / "teacher", progress=False)
    return result.model_dir, f"trained here, {minutes:g} min on {len(data['all_gold'])} sentences"


def run(args: argparse.Namespace, data: dict, tmp: Path) -> list[dict]:
    from ner_core.training.distillation import distill
    from ner_core.training.loop import train
    from ner_core.training.self_training import text_hash

    teacher, origin = _teacher(args, data, tmp)
    rows = [{"row": f"teacher ({origin})", "f1": _score(teacher, data["test"], args.max_len)}]
    t0 = time.perf_counter()
    plain = train(_config(args, args.minutes, None, False), data["gold"], data["dev"], data["labels"],
                  tmp / "plain", progress=False)  # fmt: skip
    rows.append({"row": "student, gold only", "result": plain, "seconds": time.perf_counter() - t0})
    held_out = {text_hash(d.text) for d in data["dev"] + data["test"]}
    t0 = time.perf_counter()
    config = _config(args, args.minutes, teacher, bool(data["texts"]))
    out = distill(config, data["gold"], data["dev"], data["labels"], tmp / "distilled", data["texts"],
                  teacher_dir=teacher, source={"bench": "resume"} if data["texts"] else None,
                  held_out=held_out, progress=False)  # fmt: skip
    name = (
        f"student, distilled (alpha {args.alpha:g}, T {args.temperature:g}, +{len(data['texts'])} unlabeled)"
    )
    rows.append({"row": name, "result": out.result, "seconds": time.perf_counter() - t0})
    for r in rows[1:]:
        r["f1"] = _score(r["result"].model_dir, data["test"], args.max_len)
        r["epochs"] = len(r["result"].history)
    return rows


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_distill", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes per student (10)")
    p.add_argument("--teacher", help="a CRF model directory trained on Resume NER's labels")
    p.add_argument(
        "--teacher-minutes", type=float, help="a teacher trained here: its minutes (3 x --minutes)"
    )
    p.add_argument("--gold", type=int, default=0, help="labelled training sentences (0: all)")
    p.add_argument("--unlabeled", type=int, default=0, help="the following train sentences, as text only")
    p.add_argument("--eval-limit", type=int, default=0, help="the first N dev and test sentences (0: all)")
    p.add_argument("--encoder", default="m3e-small")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=1.0)
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
    lim, n = args.eval_limit, args.gold or len(train_docs)
    data = {
        "all_gold": train_docs,
        "gold": train_docs[:n],
        "texts": [d.text for d in train_docs[n : n + args.unlabeled]],
        "dev": dev[:lim] if lim else dev,
        "test": test[:lim] if lim else test,
        "labels": sorted({e.label for d in train_docs for e in d.entities}),
    }
    print(
        f"Resume NER: {len(data['gold'])} gold + {len(data['texts'])} unlabeled train sentences, "
        f"{len(data['dev'])} dev, {len(data['test'])} test; {args.encoder}, max_len {args.max_len}, "
        f"{args.minutes:g} min per student, lr {args.learning_rate:g}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args, data, Path(tmp))
    print("| model | test F1 | epochs | seconds |\n|---|---:|---:|---:|")
    for r in rows:
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        print(f"| {r['row']} | {r['f1'] * 100:.2f} | {r.get('epochs', '-')} | {secs} |", flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
