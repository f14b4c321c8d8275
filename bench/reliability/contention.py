"""Contention on one database file: two writers, and the dashboard's reads while writers come and go.

- Two writers: a child holds the write lock (a connection from :func:`storage.db.open_db`, held open);
  a second writer must wait its ``wait_s`` and then fail with :class:`storage.db.DatabaseLockedError`
  naming the holder's PID (in this process; in the full campaign also as ``ner ingest``: one line).
- The dashboard's reads (storage's ``*_frame`` functions, each on its own short read-only connection,
  as ui/queries.py calls them) in a loop while a ``ner predict`` (a transaction per batch) and then a
  ``ner ingest`` (one transaction for the whole version) write to the file: every read's latency, the
  longest reported (goal: under 200 ms each), and the writer still completes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import Context, StageResult, stage

_HOLD = textwrap.dedent(
    """
    import sys, time
    from storage.db import open_db
    with open_db(sys.argv[1]) as con:
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _holder(db: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(db), str(seconds)],
        env=wb.child_env(db.parent),
        stdout=subprocess.PIPE,
        text=True,
    )
    proc.stdout.readline()  # "holding"
    return proc


@stage("contention: two writers, dashboard reads", "contention")
def contention(ctx: Context, res: StageResult) -> None:
    root = ctx.scratch("contention")
    db = wb.copy_db(wb.reference_training(ctx)["db"], root / "c.duckdb")
    _two_writers(ctx, res, db)
    if ctx.quick:  # the read latencies are figures, measured in the full campaign
        return
    model_dir = wb.reference_training(ctx)["model_dir"]
    name, files = wb.ingest_files()
    for what, argv in (
        ("ner predict", wb.predict_argv(db, model_dir)),
        ("ner ingest", wb.ingest_argv(db, name, files)),
    ):
        _reads_while_writing(res, db, what, argv)


def _two_writers(ctx: Context, res: StageResult, db: Path) -> None:
    from storage.db import DatabaseLockedError, open_db

    res.injected += 1
    holder = _holder(db, 3.0 if ctx.quick else 14.0)
    try:
        t0 = time.perf_counter()
        try:
            with open_db(db, wait_s=1.5):
                res.fail("a second writer opened the file while another process held it")
        except DatabaseLockedError as exc:
            waited = time.perf_counter() - t0
            named = str(holder.pid) in str(exc)
            res.figures["second writer (open_db, wait_s=1.5)"] = f"failed after {waited:.1f} s: {exc}"[:300]
            if not named:
                res.fail(f"the lock error does not name the holder's PID {holder.pid}: {exc}")
        if not ctx.quick:
            name, files = wb.ingest_files()
            argv = wb.ingest_argv(db, name, files)
            rc, seconds, out = wb.run(argv, db.parent, db.parent / "second-writer.log")
            line = [ln for ln in out.splitlines() if "error:" in ln]
            res.figures["second writer (ner ingest)"] = (
                f"exit {rc} after {seconds:.1f} s: {line[-1] if line else out[-200:]}"[:300]
            )
            if rc != 2 or "Traceback" in out or not line or str(holder.pid) not in line[-1]:
                res.fail(
                    "`ner ingest` as second writer: expected exit 2 and one line naming the holder",
                    wb.reproducer(argv, "while another process holds the file"),
                )
        res.survived += not res.failures
    finally:
        holder.kill()
        holder.wait()


def _dashboard_reads(db: Path) -> list:
    from storage.evaluations import evaluations_frame
    from storage.predictions import prediction_runs_frame
    from storage.query import relations_frame
    from storage.runs import models_frame, runs_frame

    return [runs_frame, prediction_runs_frame, models_frame, evaluations_frame, relations_frame]


def _reads_while_writing(res: StageResult, db: Path, what: str, argv: list[str]) -> None:
    from storage.db import DatabaseLockedError

    reads = _dashboard_reads(db)
    for fn in reads:  # warm: imports and first-call costs are not what is measured
        fn(db, wait_s=10.0)
    times: list[float] = []
    errors: list[str] = []
    proc = wb.start(argv, db.parent, db.parent / f"{what.split()[-1]}-writer.log")
    t_start = time.perf_counter()
    i = 0
    while proc.poll() is None:
        fn = reads[i % len(reads)]
        i += 1
        t0 = time.perf_counter()
        try:
            fn(db, wait_s=10.0)
        except DatabaseLockedError as exc:
            errors.append(str(exc)[:200])
        except Exception as exc:  # noqa: BLE001  (a read that fails otherwise is a finding)
            errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}"[:200])
        times.append(time.perf_counter() - t0)
        time.sleep(0.02)
    writer_s = time.perf_counter() - t_start
    rc = proc.wait()
    slow = sum(t > 0.2 for t in times)
    res.figures[f"dashboard reads during {what}"] = (
        f"{len(times)} reads over {writer_s:.1f} s; longest {max(times) * 1000:.0f} ms, median "
        f"{statistics.median(times) * 1000:.0f} ms, {slow} over 200 ms; writer exit {rc}"
        if times
        else f"no read (writer exit {rc})"
    )
    if rc != 0:
        tail = (db.parent / f"{what.split()[-1]}-writer.log").read_text(errors="replace")[-300:]
        res.fail(f"{what} failed while the dashboard read (exit {rc}): {tail}", wb.reproducer(argv))
    if errors:
        res.fail(f"{len(errors)} dashboard reads failed during {what}, e.g. {errors[0]}")
    if slow:
        res.notes.append(f"{slow} dashboard reads over 200 ms during {what} (goal: none)")
