"""``ner convert-checkpoint``: a TF1 BERT / ALBERT / ELECTRA / RoFormer checkpoint -> an HF model folder.

The flags are the seed's (``-bert_config``, ``-bert_checkpoint``, ``-bert_vocab``, ``-albert``; one or
two dashes) plus ``--out``, ``--gelu`` (how the config's ``gelu`` is read: ``tanh``, what Google's code and
the seed ran, or ``erf``, bert4keras' default) and ``--family`` (RoFormer shares BERT's variable names
with NEZHA, so it must be named). The folder can then be given anywhere an encoder is (``--encoder DIR``).
Bad input gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from ner_core.artifacts.tf.convert import FAMILIES, GELU, WEIGHTS, TFCheckpointError, convert_checkpoint
from ner_core.settings import settings

__all__ = ["add_family_args", "add_parser", "cmd_convert"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``convert-checkpoint`` to an argparse ``subparsers`` object; return its parser."""
    sp = subparsers.add_parser(
        "convert-checkpoint",
        help="convert a TF1 BERT/ALBERT/ELECTRA/RoFormer checkpoint into a Hugging Face model folder "
        "(no TensorFlow)",
        description=(
            "Read bert_model.ckpt.index + .data-* with bert_config.json and vocab.txt (Google's release "
            "layout, also RoBERTa-wwm, factorised-embedding BERT, Google-format ALBERT, brightmart's "
            f"albert_zh, ELECTRA discriminators and RoFormer) and write config.json, {WEIGHTS}, "
            "the tokenizer files and conversion_report.json into --out."
        ),
    )
    sp.add_argument("--bert_config", "-bert_config", required=True, metavar="FILE", help="bert_config.json")
    sp.add_argument(
        "--bert_checkpoint",
        "-bert_checkpoint",
        required=True,
        metavar="PREFIX",
        help="checkpoint prefix (.../bert_model.ckpt), its .index file, or its folder",
    )
    sp.add_argument("--bert_vocab", "-bert_vocab", required=True, metavar="FILE", help="vocab.txt")
    sp.add_argument(
        "--albert",
        "-albert",
        action="store_true",
        help="the checkpoint is Google-format ALBERT (as the seed's -albert); checked against its variables",
    )
    add_family_args(sp)
    sp.add_argument(
        "--out", "-out", required=True, metavar="DIR", help="new folder to write (must not exist)"
    )
    sp.set_defaults(func=cmd_convert)
    return sp


def add_family_args(p) -> None:
    """``--gelu`` and ``--family``: here and among the seed's train flags (which convert too)."""
    p.add_argument(
        "--gelu",
        "-gelu",
        choices=tuple(GELU),
        default="tanh",
        help="how the config's hidden_act gelu is computed: tanh (the approximation Google's BERT code "
        "and the seed used; default) or erf (exact; bert4keras' default); the conversion report says "
        "which",
    )
    p.add_argument(
        "--family",
        "-family",
        choices=FAMILIES,
        help="the checkpoint's family when its variable names cannot tell (RoFormer and NEZHA share "
        "BERT's names); checked against the variables; default: detected",
    )


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        report = convert_checkpoint(
            args.bert_config,
            args.bert_checkpoint,
            args.bert_vocab,
            args.out,
            albert=bool(args.albert),
            family=args.family,
            gelu=args.gelu,
        )
    except (TFCheckpointError, OSError) as exc:
        if settings().debug:
            raise
        msg = " ".join(str(exc).split("\n"))
        print(f"ner convert-checkpoint: error: {msg}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
