"""``ner demo``: the whole pipeline on the bundled sample corpus, into ``--out`` (8 epochs unless
``--max_epochs`` says otherwise)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.config_options import CONFIG_FLAGS, add_config_args, build_config
from app.commands.pipeline import run_pipeline
from app.commands.shared import ROOT, add_common
from ner_core.settings import DEFAULT_DB

SAMPLE = ROOT / "sample_corpus"
DEMO_EPOCHS = 8


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("demo", help="the whole pipeline on the bundled sample corpus"), db=False)
    sp.add_argument(
        "--out", default="demo_out", help="folder for the DuckDB file and runs (default %(default)s)"
    )
    add_config_args(sp)
    sp.set_defaults(func=cmd_demo, **{CONFIG_FLAGS.flag_of("training.max_epochs").dest: DEMO_EPOCHS})


def cmd_demo(args: argparse.Namespace) -> int:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.db = str(Path(args.out) / DEFAULT_DB)
    args.runs_root = str(Path(args.out) / "runs")
    config = build_config(args)
    raw = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))
    print(
        "Demo: sample corpus -> DuckDB -> train (m3e-small encoder: research / non-commercial use only) "
        "-> evaluate -> predict",
        flush=True,
    )
    return run_pipeline(
        args, config, str(SAMPLE / "train.jsonl"), str(SAMPLE / "dev.jsonl"), str(SAMPLE / "test.jsonl"), raw
    )
