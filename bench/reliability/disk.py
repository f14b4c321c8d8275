"""A full disk during ingest, model save and prediction writes.

Where the machine allows it (root), the files live on a small tmpfs (``mount -t tmpfs``) that a filler
file leaves only a few KiB free: writes fail with ENOSPC exactly as on a full disk. Elsewhere the child
runs under ``RLIMIT_FSIZE`` (``ulimit -f``) with SIGXFSZ ignored, so a write past the limit fails with
EFBIG: the same failed ``write()`` at the same place, another errno (the message then says "File too
large"). Each case: one clear line (exit status 2, no traceback), the earlier data intact, nothing half
written, and the next run, with space again, succeeds.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import Context, StageResult, stage
from bench.reliability.snapshots import (
    compare_predictions,
    counter_diff,
    dataset_content,
    half_written,
    prediction_content,
    prediction_runs,
    versions,
)
from ner_core.artifacts.layout import WEIGHTS


class SmallDisk:
    """A folder whose free space can be taken away: a tmpfs when ``mount`` works, else a file-size limit
    applied to the child."""

    def __init__(self, folder: Path, size_mb: int = 64) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)]
        self.mounted = subprocess.run(cmd, capture_output=True).returncode == 0
        self.filler = folder / ".filler"
        self.method = (
            f"tmpfs of {size_mb} MiB (mount -t tmpfs) filled to leave a few KiB: ENOSPC"
            if self.mounted
            else "RLIMIT_FSIZE in the child (mount -t tmpfs refused), SIGXFSZ ignored: EFBIG"
        )

    def exhaust(self, leave: int, growing: Path | None = None):
        """Leave ``leave`` bytes; returns the child's ``preexec_fn`` (None on tmpfs)."""
        if self.mounted:
            st = os.statvfs(self.folder)
            free = st.f_bavail * st.f_frsize
            with open(self.filler, "wb") as fh:
                chunk = b"\0" * (1 << 20)
                todo = max(0, free - leave)
                while todo > 0:
                    fh.write(chunk[: min(todo, len(chunk))])
                    todo -= len(chunk)
            return None
        limit = (growing.stat().st_size if growing and growing.exists() else 0) + leave

        def preexec() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return preexec

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


def _one_clear_line(res: StageResult, rc: int, out: str, what: str, repro: str) -> None:
    errors = [ln for ln in out.splitlines() if "error:" in ln]
    res.figures[f"{what}: the line"] = errors[-1][:200] if errors else f"(none; exit {rc})"
    if rc != 2 or "Traceback" in out or len(errors) != 1:
        res.fail(f"{what}: expected exit 2 and one error line, got exit {rc}: {out[-600:]}", repro)
    elif not any(
        cause in errors[0] for cause in ("No space left", "File too large", "disk is full", "disk full")
    ):
        res.fail(f"{what}: the line does not say the disk is full: {errors[0][:200]}", repro)


@stage("full disk during ingest, model save, prediction", "faults")
def full_disk(ctx: Context, res: StageResult) -> None:
    disk = SmallDisk(ctx.scratch("disk") / "small")
    res.notes.append(f"full disk made by: {disk.method}")
    try:
        # --quick: the ingest only (each case is a child process of several seconds)
        for case in (_ingest_full,) if ctx.quick else (_ingest_full, _model_save_full, _predict_full):
            if case is _model_save_full and not disk.mounted:
                # a file-size limit would stop the database's writes before the model's
                res.notes.append("model save case skipped: it needs the tmpfs (mount refused)")
                continue
            disk.release()
            failures = len(res.failures)
            res.injected += 1
            case(ctx, res, disk)
            res.survived += len(res.failures) == failures
    finally:
        disk.close()


def _ingest_full(ctx: Context, res: StageResult, disk: SmallDisk) -> None:
    from storage.datasets import ingest_dataset

    name, files = wb.ingest_files()
    base = wb.base_db(ctx)
    earlier = dataset_content(base, "sample")
    ref_db = wb.copy_db(base, ctx.scratch("disk") / "ingest-ref.duckdb")
    ingest_dataset(ref_db, name, files)
    ref = dataset_content(ref_db, name)
    db = wb.copy_db(base, disk.folder / "ingest.duckdb")
    argv = wb.ingest_argv(db, name, files)
    preexec = disk.exhaust(32 * 1024, db)
    rc, _, out = wb.run(argv, disk.folder.parent, disk.folder.parent / "ingest.log", preexec=preexec)
    disk.release()
    repro = wb.reproducer(argv, "with the disk full")
    _one_clear_line(res, rc, out, "ingest", repro)
    half = half_written(db)
    if half or versions(db, name) or counter_diff(earlier, dataset_content(db, "sample")) != (0, 0):
        res.fail(f"after the full disk: half-written {half}, versions {versions(db, name)}", repro)
        return
    fn = lambda: ingest_dataset(db, name, files)  # noqa: E731
    if wb.rerun(res, "the ingest with space again", fn, repro) is not None:
        lost, extra = counter_diff(ref, dataset_content(db, name))
        res.rows_lost += lost
        if lost or extra:
            res.fail(f"the ingest with space again: {lost} rows lost, {extra} extra", repro)


def _model_save_full(ctx: Context, res: StageResult, disk: SmallDisk) -> None:
    from flows.steps import train_step
    from ner_core.config import NERConfig
    from storage.runs import list_runs

    cfg = json.loads(wb.train_config(ctx).read_text(encoding="utf-8"))
    cfg["training"]["hard_epochs"] = 1
    cfg_path = ctx.scratch("disk") / "train-1-epoch.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    db = wb.copy_db(wb.base_db(ctx), ctx.scratch("disk") / "train.duckdb")
    runs_root = disk.folder / "runs"
    argv = [
        "train",
        "--no-prefect",
        "--db",
        str(db),
        "--runs-root",
        str(runs_root),
        "--config",
        str(cfg_path),
    ]
    preexec = disk.exhaust(16 * 1024)
    rc, _, out = wb.run(argv, disk.folder.parent, disk.folder.parent / "train.log", preexec=preexec)
    disk.release()
    repro = wb.reproducer(argv, "with the runs folder's disk full")
    _one_clear_line(res, rc, out, "model save", repro)
    runs = list_runs(db)
    if [r["status"] for r in runs] != ["failed"]:
        res.fail(f"after the full disk: runs {[r['status'] for r in runs]}, expected one 'failed'", repro)
    half = [p for p in runs_root.glob("*/model*")] + [p for p in runs_root.glob("*/.model*")]
    if half:
        res.fail(f"after the full disk: a model directory (or its temporary) is left: {half}", repro)
    config = NERConfig.model_validate(cfg)
    fn = lambda: train_step(str(db), config, str(runs_root))  # noqa: E731
    out = wb.rerun(res, "training with space again", fn, repro)
    if out is not None and not (Path(out.model_dir) / WEIGHTS).is_file():
        res.fail("training with space again: no model saved", repro)


def _predict_full(ctx: Context, res: StageResult, disk: SmallDisk) -> None:
    from flows.contracts import DatasetSource
    from flows.steps import predict_source

    model_dir = wb.reference_training(ctx)["model_dir"]
    base = wb.base_db(ctx)
    ref_db = wb.copy_db(base, ctx.scratch("disk") / "predict-ref.duckdb")
    with wb.quiet():
        predict_source(str(ref_db), DatasetSource(dataset="sample"), str(model_dir))
    ref = prediction_content(ref_db, prediction_runs(ref_db)[0]["pred_run_id"])
    db = wb.copy_db(base, disk.folder / "predict.duckdb")
    earlier = dataset_content(db, "sample")
    argv = wb.predict_argv(db, model_dir)
    preexec = disk.exhaust(32 * 1024, db)
    rc, _, out = wb.run(argv, disk.folder.parent, disk.folder.parent / "predict.log", preexec=preexec)
    disk.release()
    repro = wb.reproducer(argv, "with the disk full")
    _one_clear_line(res, rc, out, "prediction writes", repro)
    half = half_written(db)
    completed = [r for r in prediction_runs(db) if r["status"] == "completed"] if not half else []
    if half or completed or counter_diff(earlier, dataset_content(db, "sample")) != (0, 0):
        res.fail(f"after the full disk: half-written {half}, completed runs {completed}", repro)
        return
    fn = lambda: predict_source(str(db), DatasetSource(dataset="sample"), str(model_dir))  # noqa: E731
    if wb.rerun(res, "the prediction with space again", fn, repro) is not None:
        lost, extra, _ = compare_predictions(
            ref, prediction_content(db, prediction_runs(db)[0]["pred_run_id"])
        )
        res.rows_lost += lost
        if lost or extra:
            res.fail(f"the prediction with space again: {lost} rows lost, {extra} extra", repro)
