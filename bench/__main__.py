"""Run every benchmark (or the ones named) and print their figures: ``python -m bench [name ...]``.

Benchmarks print numbers; they never assert timings. Each module in bench/ named ``bench_*.py`` exposes
``main()``; one that needs absent data or packages prints why it skipped. Options after one benchmark's
name go to its ``main(argv)``: ``python -m bench active --quick``. ``python -m bench scaling`` draws the cost
curves (``bench_scaling.py``: PNG and tables in ``runs/bench-scaling``). The GPU check is not one of them:
it runs apart, on a machine with CUDA (``bench/gpu_check.sh`` or ``make gpu-check``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    # ``python -m bench budget --minutes 2``: options after one name go to that benchmark
    first_opt = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    argv, options = argv[:first_opt], argv[first_opt:]
    if options and len(argv) != 1:
        print("options go to one benchmark: python -m bench NAME [--option ...]", file=sys.stderr)
        return 2
    wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv] or names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choices: {names}", file=sys.stderr)
        return 2
    if options and len(wanted) != 1:
        print(f"options {options} need exactly one benchmark named before them", file=sys.stderr)
        return 2
    failed = 0
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main(*([options] if options else []))
        except Exception:  # one broken benchmark must not hide the others' figures
            failed += 1
            traceback.print_exc()
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
