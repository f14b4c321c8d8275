"""The reliability campaign as a benchmark: ``python -m bench reliability`` (the full campaign, at most
20 minutes on a 2-core machine). ``python -m bench.reliability --quick`` runs the one-minute part."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from bench.reliability.__main__ import main as run

    rc = run(argv if argv is not None else [])
    if rc:
        print("reliability: failures found (listed above)", file=sys.stderr)
