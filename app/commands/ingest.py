"""``ner ingest``: parse and validate labelled (or raw) files, store them as a dataset version."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.shared import add_common, print_json


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("ingest", help="load labelled or raw files into DuckDB"))
    sp.add_argument("--name", required=True, help="dataset name")
    sp.add_argument("--train"), sp.add_argument("--dev"), sp.add_argument("--test")
    sp.add_argument("files", nargs="*", help="files to split with --split-ratios")
    sp.add_argument("--split-ratios", nargs=3, type=float, metavar=("TRAIN", "DEV", "TEST"))
    sp.add_argument(
        "--format",
        help="override format detection (seed_json, seed_texts, conll, bmes, cluener, jsonl, text)",
    )
    sp.add_argument("--policy", choices=["repair", "strict"], default="repair")
    sp.add_argument(
        "--untyped-label", default="ENT", help="label for untyped B/I/O tags (default %(default)s)"
    )
    sp.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from flows import steps

    if args.train or args.dev or args.test:
        files: dict[str, str] | list[str] = {
            k: v for k, v in (("train", args.train), ("dev", args.dev), ("test", args.test)) if v
        }
    elif args.files:
        files = list(args.files)
    else:
        raise ValueError("give --train/--dev/--test files or FILES with --split-ratios")
    for f in files.values() if isinstance(files, dict) else files:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file")
    if args.no_prefect or args.split_ratios:
        out = steps.ingest_step(
            args.db,
            args.name,
            files,
            format=args.format,
            policy=args.policy,
            untyped_label=args.untyped_label,
            split_ratios=tuple(args.split_ratios) if args.split_ratios else None,
        )
    else:
        from flows.pipeline import ingest_flow

        out = ingest_flow(args.db, args.name, files, args.format, args.policy, args.untyped_label)
    print_json(out)
    return 0
