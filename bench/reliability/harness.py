"""The campaign's frame: stages registered in a list, their tallies, the runner and the table.

A stage is a small function ``run(ctx: Context, res: StageResult) -> None`` registered with
:func:`stage`; it injects faults (or fuzz cases), counts them in ``res`` and records each failure with a
command that reproduces it. A stage that raises is itself a failure (the traceback is printed, the other
stages still run). Stages planned for later appear in :data:`PLANNED` as rows to be filled.

This module imports no stage (the stages import it): :mod:`bench.reliability.stages` imports every stage
module, which registers them in the table's order, and runs them with :func:`run_stages`.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO.parent / "shared" / "datasets"
SAMPLE = REPO / "sample_corpus"


@dataclass
class Failure:
    """One thing the campaign found wrong: what, and the command that shows it again."""

    stage: str
    what: str
    reproduce: str = ""


@dataclass
class StageResult:
    """The tally of one stage. ``injected``/``survived``/``rows_lost`` for faults; ``cases``/``tracebacks``
    for fuzzing; ``figures`` for measurements (name -> text); ``notes`` for what the reader should know."""

    name: str
    section: str
    injected: int = 0
    survived: int = 0
    rows_lost: int = 0
    cases: int = 0
    tracebacks: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    crashed: bool = False

    def fail(self, what: str, reproduce: str = "") -> None:
        self.failures.append(Failure(self.name, what, reproduce))

    @property
    def ok(self) -> bool:
        return not self.failures and not self.crashed


@dataclass
class Context:
    """What every stage shares: the mode, a seeded RNG per stage, a scratch folder, built artefacts."""

    quick: bool
    seed: int
    workdir: Path
    cache: dict = field(default_factory=dict)

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def scratch(self, name: str) -> Path:
        p = self.workdir / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def once(self, key: str, build: Callable[[], object]):
        """``build()`` the first time ``key`` is asked for, the cached value afterwards."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # "faults", "bad input", "contention", ...
    run: Callable[[Context, StageResult], None]
    quick: bool = True  # part of --quick


STAGES: list[Stage] = []

#: rows of the table that later work fills (stage name, section)
PLANNED: list[tuple[str, str]] = []


def stage(name: str, section: str, *, quick: bool = True) -> Callable:
    """Decorator: register ``run(ctx, res)`` as a stage of the campaign (in registration order)."""

    def decorate(fn: Callable[[Context, StageResult], None]) -> Callable:
        if any(s.name == name for s in STAGES):
            raise ValueError(f"stage {name!r} is registered already")
        STAGES.append(Stage(name, section, fn, quick))
        return fn

    return decorate


def run_stages(
    stages: Sequence[Stage], quick: bool, seed: int = 16, only: list[str] | None = None, keep: bool = False
) -> list[StageResult]:
    """Run ``stages`` in their order (under ``quick`` those marked quick; ``only``: those whose name
    contains one of the words) in a scratch folder; print the table and the failures; return the
    results. ``stages`` is usually :data:`STAGES` once :mod:`bench.reliability.stages` has filled it."""
    if not stages:
        raise ValueError("no stage to run: import bench.reliability.stages, which registers them all")
    workdir = Path(tempfile.mkdtemp(prefix="ner-reliability-"))
    ctx = Context(quick=quick, seed=seed, workdir=workdir)
    results = []
    t0 = time.perf_counter()
    try:
        for st in stages:
            if (quick and not st.quick) or (only and not any(w in st.name for w in only)):
                continue
            results.append(_run_stage(ctx, st))
    finally:
        if keep:
            print(f"scratch kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, time.perf_counter() - t0, quick)
    return results


def _run_stage(ctx: Context, st: Stage) -> StageResult:
    res = StageResult(st.name, st.section)
    print(f"[reliability] {st.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        st.run(ctx, res)
    except Exception:
        res.crashed = True
        res.fail(f"the stage itself raised:\n{traceback.format_exc()}")
    res.seconds = time.perf_counter() - t0
    print(
        f"[reliability] {st.name}: {res.injected or res.cases} done, {len(res.failures)} failures, "
        f"{res.seconds:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return res


def print_table(results: list[StageResult], seconds: float, quick: bool) -> None:
    print(
        f"\nreliability campaign ({'quick' if quick else 'full'}), {seconds:.0f} s, {os.cpu_count()} CPUs\n"
    )
    print("| section | stage | faults injected | survived | rows lost | fuzz cases | tracebacks | failures |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        faults = (str(r.injected), str(r.survived), str(r.rows_lost)) if r.injected else ("", "", "")
        fuzz = (str(r.cases), str(r.tracebacks)) if r.cases else ("", "")
        print(f"| {r.section} | {r.name} | {' | '.join(faults)} | {' | '.join(fuzz)} | {len(r.failures)} |")
    done = {r.name for r in results}
    for name, section in PLANNED:
        if name not in done:
            print(f"| {section} | {name} | (to be added) | | | | | |")
    injected = sum(r.injected for r in results)
    print(
        f"\ntotal: {injected} faults injected, {sum(r.survived for r in results)} survived, "
        f"{sum(r.rows_lost for r in results)} rows lost; {sum(r.cases for r in results)} fuzz cases, "
        f"{sum(r.tracebacks for r in results)} tracebacks; {sum(len(r.failures) for r in results)} failures"
    )
    for r in results:
        for k, v in r.figures.items():
            print(f"  {r.name}: {k}: {' '.join(str(v).split())}")
        for note in r.notes:
            print(f"  {r.name}: note: {note}")
    failures = [f for r in results for f in r.failures]
    if failures:
        print("\nfailures:")
        for f in failures[:60]:
            print(f"- [{f.stage}] {f.what}" + (f"\n    reproduce: {f.reproduce}" if f.reproduce else ""))
        if len(failures) > 60:
            print(f"... and {len(failures) - 60} more")
