"""``ner test``: score a model on a stored dataset split or a labelled file (character, sentence and entity
reports: JSON + Markdown + DuckDB); ``-test_data FILE`` the seed's way (files out, no database)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.shared import (
    add_common,
    add_model_and_data,
    check_seed_io,
    print_json,
    run_flow_or_step,
    seed_outputs,
)
from app.options import chosen_model


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("test", help="evaluate a model on a dataset split"))
    add_model_and_data(sp, split="test")
    sp.add_argument("--file", help="evaluate on this labelled file (any supported format) instead")
    sp.set_defaults(func=cmd_test)


def cmd_test(args: argparse.Namespace) -> int:
    from flows import steps

    check_seed_io(args, "test")
    if args.test_data:
        return seed_outputs("test", args)
    model_dir, run_id = chosen_model(args)
    if args.file and not Path(args.file).is_file():
        raise FileNotFoundError(f"{args.file}: no such file")
    out = run_flow_or_step(
        args,
        "evaluate_flow",
        steps.evaluate_step,
        db_path=args.db,
        model_dir=model_dir,
        dataset=None if args.file else args.dataset,
        split=None if args.file else args.split,
        run_id=run_id,
        **({"file": args.file} if args.file else {}),
    )
    if args.no_prefect:
        print(out.markdown)
    print_json(out)
    return 0
