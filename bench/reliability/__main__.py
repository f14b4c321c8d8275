"""``python -m bench.reliability [--quick] [--seed N] [--only WORD ...] [--keep]``."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the part of at most a minute the tests run")
    p.add_argument("--seed", type=int, default=16, help="seeds every kill moment and fuzz case")
    p.add_argument("--only", nargs="+", metavar="WORD", help="stages whose name contains a word")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from bench.reliability.stages import run_campaign

    results = run_campaign(args.quick, args.seed, args.only, args.keep)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
