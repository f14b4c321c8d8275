"""``ner adapt``: continued masked-language-model pretraining of an encoder on the user's unlabeled text
(files, one text a line or any supported format, or a stored dataset's texts); the adapted encoder is a
Hugging Face folder, used as ``--encoder`` by ``ner train``. ``--resume`` continues a killed run with the
settings and corpus it started with (they are saved in ``<out>.adapt``).
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from app.commands.shared import CLIError, add_common, print_json
from ner_core.training.adapt import AdaptConfig

#: AdaptConfig fields offered as flags (``--encoder`` and the budgets are added on their own)
_TUNABLE = (
    "max_len",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "grad_clip",
    "mask_prob",
    "masking",
    "seed",
    "checkpoint_seconds",
    "checkpoint_steps",
    "eval_windows",
    "num_threads",
    "device",
    "precision",
)
_BUDGETS = ("max_train_seconds", "max_steps")


def _flag(g, name: str) -> None:
    """``--name`` for an AdaptConfig field: its type, choices, description and default (flags left out are
    ``None`` here, so that ``--resume`` can tell a flag given from a default)."""
    field = AdaptConfig.model_fields[name]
    kind = field.annotation
    if typing.get_origin(kind) is not typing.Literal:  # ``X | None``: X
        kind = next(a for a in (*typing.get_args(kind), kind) if a is not type(None))
    kw: dict = {"choices": list(typing.get_args(kind))} if typing.get_origin(kind) is typing.Literal else {}
    kw.setdefault("type", kind if kind in (int, float) else str)
    default = "none" if field.default is None else field.default
    help_text = f"{field.description or name} (default {default})".replace("%", "%%")
    g.add_argument(
        f"--{name}", default=None, metavar=None if "choices" in kw else name.upper(), help=help_text, **kw
    )


def add_parser(sub) -> None:
    sp = add_common(
        sub.add_parser(
            "adapt",
            help="continue MLM pretraining of an encoder on your unlabeled text (an encoder for --encoder)",
        )
    )
    sp.add_argument(
        "--encoder", help="encoder to adapt: short name, folder or cached hub id (default m3e-small)"
    )
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--corpus", nargs="+", metavar="FILE", help="text files: one text a line, or any format")
    src.add_argument("--dataset", help="a stored dataset's texts (--db), all splits unless --split")
    sp.add_argument("--split", help="with --dataset: only this split's texts")
    sp.add_argument(
        "--out", required=True, metavar="DIR", help="the adapted encoder's folder (must not exist)"
    )
    sp.add_argument(
        "--work-dir", metavar="DIR", help="settings and checkpoints while running (default DIR.adapt)"
    )
    sp.add_argument("--resume", action="store_true", help="continue the killed run of --out")
    budget = sp.add_argument_group("budget (one or both)")
    for name in _BUDGETS:
        _flag(budget, name)
    tuning = sp.add_argument_group("training")
    for name in _TUNABLE:
        _flag(tuning, name)
    sp.set_defaults(func=cmd_adapt)


def _given(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("encoder", *_BUDGETS, *_TUNABLE) if getattr(args, k) is not None}


def _plan(args: argparse.Namespace, work: str) -> tuple[AdaptConfig, dict]:
    """The run's settings and corpus: from the flags, or (``--resume``) from the saved record."""
    from flows.adapt import resumed_source

    if args.resume:
        given = [f"--{k}" for k in _given(args)] + [
            f for f in ("--corpus", "--dataset") if getattr(args, f[2:])
        ]
        if given:
            raise CLIError(
                f"--resume continues with the run's saved settings and corpus: drop {' '.join(given)}"
            )
        return resumed_source(work)
    if not args.corpus and not args.dataset:
        raise CLIError("give the text to adapt on: --corpus FILE... or --dataset NAME")
    if args.max_train_seconds is None and args.max_steps is None:
        raise CLIError("give a budget: --max_train_seconds S (or --max_steps N)")
    for f in args.corpus or []:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such file")
    source = (
        {"files": args.corpus}
        if args.corpus
        else {"dataset": args.dataset, "split": args.split, "db": args.db}
    )
    return AdaptConfig(**_given(args)), source


def cmd_adapt(args: argparse.Namespace) -> int:
    from flows.adapt import adapt_flow, adapt_step, default_work_dir
    from ner_core.model.encoder import check_encoder

    work = args.work_dir or default_work_dir(args.out)
    config, source = _plan(args, work)
    check_encoder(config.encoder)
    kwargs = {
        "config": config,
        "out": args.out,
        "corpus": source.get("files"),
        "dataset": source.get("dataset"),
        "split": source.get("split"),
        "db_path": source.get("db") or args.db,
        "work_dir": work,
        "resume": args.resume,
    }
    result = adapt_step(**kwargs) if args.no_prefect else adapt_flow(**kwargs)
    print(f"adapted encoder: {result.out_dir} (use it as --encoder {result.out_dir})", file=sys.stderr)
    print_json(result)
    return 0
