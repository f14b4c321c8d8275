"""``ner bench [NAME ...]``: the benchmarks in ``bench/``, which print their figures (also ``make bench``)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from app.commands.shared import ROOT


def add_parser(sub) -> None:
    sp = sub.add_parser("bench", help="run the benchmarks in bench/ and print their figures")
    sp.add_argument("only", nargs="*", help="benchmark module names (default: all)")
    sp.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "bench", *args.only], cwd=ROOT)
