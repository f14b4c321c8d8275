"""``kill -9`` at chosen moments during ingest, training and batch prediction.

Each stage first runs the command uninterrupted (the reference, and its duration), then per kill: a
fresh copy of the base database, the command started as a child, killed at a moment drawn from the
campaign's seed (spread over the reference duration, plus kills aimed at the writes themselves), then
checked: the file opens, nothing half-written is visible, the re-run (or ``--resume``) completes, and its
result equals the reference by content.

The re-runs call, in this process, the step functions that ``ner ... --no-prefect`` calls
(:mod:`flows.steps`), so a failure shows its traceback here; the reproducer names the command.
"""

from __future__ import annotations

from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import Context, StageResult, stage
from bench.reliability.snapshots import (
    compare_predictions,
    counter_diff,
    dataset_content,
    half_written,
    model_predictions,
    prediction_content,
    prediction_runs,
    versions,
)
from ner_core.artifacts.layout import WEIGHTS


# ----------------------------------------------------------------------------------------- ingest
def _ingest_reference(ctx: Context, res: StageResult, ref_db: Path, name: str, files: dict) -> tuple:
    """Ingest uninterrupted: as a child in the full campaign (its duration), in this process under
    ``--quick`` (None). Raises when it fails."""
    from storage.datasets import ingest_dataset

    if ctx.quick:
        ingest_dataset(ref_db, name, files)
        return None, None
    argv = wb.ingest_argv(ref_db, name, files)
    rc, duration, out, ready = wb.run_marked(argv, ref_db.parent, ref_db.with_suffix(".log"), "reading")
    if rc != 0:
        raise RuntimeError(f"the uninterrupted ingest failed (exit {rc}): {out[-500:]}")
    return duration, ready


@stage("kill -9 during ingest", "faults")
def ingest_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over the ingest's duration, a quarter aimed at its write transaction (a random delay
    after it prints "writing N documents"); under --quick only the aimed ones."""
    root = ctx.scratch("ingest-kills")
    name, files = wb.ingest_files()
    base = wb.base_db(ctx)
    earlier = dataset_content(base, "sample")
    ref_db = wb.copy_db(base, root / "ref.duckdb")
    duration, ready = _ingest_reference(ctx, res, ref_db, name, files)
    ref = dataset_content(ref_db, name)
    res.figures["uninterrupted ingest"] = (
        f"{duration:.1f} s, " if duration else ""
    ) + f"{sum(ref['docs'].values())} documents from {', '.join(Path(f).name for f in files.values())}"
    rng = ctx.rng("ingest")
    n = ctx.n(20, 2)
    aimed = n if duration is None else n // 4
    plans = [("at", t) for t in wb.spread_marked(rng, n - aimed, ready, duration)] if duration else []
    plans += [("writing", rng.uniform(0, 0.6)) for _ in range(aimed)]

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        db = wb.copy_db(base, root / f"kill-{i}.duckdb")
        argv = wb.ingest_argv(db, name, files)
        log = db.with_suffix(".log")
        proc = wb.start(argv, db.parent, log)
        how, t = plan
        killed = wb.kill_after(proc, t) if how == "at" else wb.kill_on_output(proc, log, "writing", t)
        return killed, (db, argv)

    def check(plan: tuple, state: tuple) -> None:
        _check_ingest_kill(res, *state, name, files, plan, ref, earlier)

    early = wb.run_kills(ctx, plans, launch, check, lambda plan: (plan[0], plan[1] * 0.7))
    if early:
        res.notes.append(f"{early} children finished before their kill moment (not counted, redrawn earlier)")


def _check_ingest_kill(res, db: Path, argv: list, name: str, files: dict, plan: tuple, ref, earlier) -> None:
    from storage.datasets import ingest_dataset

    res.injected += 1
    how, t = plan
    when = f"{t:.2f} s after it starts" if how == "at" else f"{t:.2f} s after it prints 'writing'"
    repro = wb.reproducer(argv, f"kill -9 it {when}, then run it again")
    failures = len(res.failures)
    _check_dataset_after_kill(res, db, name, ref, earlier, repro)
    again = wb.rerun(res, "the re-run of the ingest", lambda: ingest_dataset(db, name, files), repro)
    if again is not None:
        _check_dataset_after_rerun(res, db, name, ref, earlier, repro)
    res.survived += len(res.failures) == failures
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)


def _check_dataset_after_kill(res, db: Path, name: str, ref: dict, earlier: dict, repro: str) -> None:
    half = half_written(db)
    if half:
        res.fail(f"after the kill: {half}", repro)
        return
    have = versions(db, name)
    if have not in ([], [1]):
        res.fail(f"after the kill: dataset {name!r} has versions {have}, expected none or [1]", repro)
    elif have == [1] and counter_diff(ref, dataset_content(db, name)) != (0, 0):
        res.fail(f"after the kill: a visible version 1 of {name!r} differs from the reference", repro)
    if counter_diff(earlier, dataset_content(db, "sample")) != (0, 0):
        res.fail("after the kill: the earlier dataset 'sample' changed", repro)


def _check_dataset_after_rerun(res, db: Path, name: str, ref: dict, earlier: dict, repro: str) -> None:
    have = versions(db, name)
    if have != [1]:
        res.fail(f"after the re-run: dataset {name!r} has versions {have}, expected [1]", repro)
    lost, extra = counter_diff(ref, dataset_content(db, name))
    res.rows_lost += lost
    if lost or extra:
        res.fail(f"after the re-run: {lost} reference rows missing, {extra} rows extra", repro)
    lost, extra = counter_diff(earlier, dataset_content(db, "sample"))
    res.rows_lost += lost
    if lost or extra:
        res.fail(f"after the re-run: earlier dataset 'sample' lost {lost} rows, gained {extra}", repro)


# ----------------------------------------------------------------------------------------- training
_MODEL_WRITE = "*/.model.tmp-*"
_CHECKPOINT_WRITE = "*/.checkpoint*.tmp-*"


def _training_plans(ctx: Context, seconds: float | None, ready: float | None) -> list[tuple[str, float, str]]:
    """(what, seconds to wait, file pattern whose appearance triggers the kill; "" = none)."""
    rng = ctx.rng("train")
    if seconds is None:  # --quick: one kill in each kind of write of the last epoch (2)
        return [
            ("checkpoint write", 0.0, "*/.checkpoint-e0002*.tmp-*"),
            ("model dir write", 0.0, _MODEL_WRITE),
        ]
    n = ctx.n(20, 2)
    k = max(1, n // 5)
    plans = [("at", t, "") for t in wb.spread_marked(rng, n - 2 * k, ready, seconds)]
    plans += [("model dir write", rng.uniform(0, 0.8 * seconds), _MODEL_WRITE) for _ in range(k)]
    plans += [("checkpoint write", rng.uniform(0, 0.8 * seconds), _CHECKPOINT_WRITE) for _ in range(k)]
    return plans


@stage("kill -9 during training", "faults")
def train_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over the run, and aimed at the writes of the model directory and the checkpoint (the
    first one after a random moment); then --resume (or a new run) and the dev predictions compared."""
    ref = wb.reference_training(ctx)
    root = ctx.scratch("train-kills")
    took = f"{ref['seconds']:.1f} s (a child process, start-up included), " if ref["seconds"] else ""
    res.figures["uninterrupted training"] = f"{took}{len(ref['dev']['ents'])} entities predicted on dev"
    tally = {"resumed": 0, "restarted": 0, "early": 0, "leftovers": 0, "weights": 0.0}
    plans = _training_plans(ctx, ref["seconds"], ref["ready"])

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        folder = root / f"kill-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        db = wb.copy_db(wb.base_db(ctx), folder / "k.duckdb")
        runs_root = folder / "runs"
        argv = wb.train_args(ctx, db, runs_root)
        proc = wb.start(argv, folder, folder / "train.log")
        what, after, pattern = plan
        if what == "at":
            return wb.kill_after(proc, after), (db, runs_root, argv)
        first = "*/checkpoint.json" if ctx.quick and pattern == _MODEL_WRITE else ""  # --quick: epoch 2
        return wb.kill_when(proc, runs_root, pattern, after, first=first), (db, runs_root, argv)

    def check(plan: tuple, state: tuple) -> None:
        _check_training_kill(ctx, res, ref, plan, *state, tally)

    tally["early"] = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7, p[2]))
    res.figures["after the kills"] = (
        f"{tally['resumed']} resumed from a checkpoint, {tally['restarted']} started again (killed before "
        f"the first checkpoint or before the run was registered); largest weight difference from the "
        f"reference {tally['weights']:.2e}; temporary files left in run folders: {tally['leftovers']}"
    )
    if tally["early"]:
        res.notes.append(f"{tally['early']} children finished before their kill moment (not counted)")


def _check_training_kill(ctx, res, ref: dict, plan: tuple, db: Path, runs_root: Path, argv, tally) -> None:
    res.injected += 1
    what, after, _ = plan
    note = f"kill -9 it after {after:.2f} s" + (f", at the next {what}" if what != "at" else "")
    repro = wb.reproducer(argv, f"{note}; then ner train --resume RUN_ID --db {db} --no-prefect")
    failures = len(res.failures)
    half = half_written(db)
    if half:
        res.fail(f"after the kill: {half}", repro)
    model_dir = _resume_or_restart(ctx, res, ref, db, runs_root, repro, tally)
    if model_dir is not None:
        lost, extra, worst = compare_predictions(ref["dev"], model_predictions(model_dir, db))
        res.rows_lost += lost
        if lost or extra:
            res.fail(
                f"the resumed model's dev predictions differ: {lost} lost, {extra} extra, "
                f"confidence off by up to {worst:.2e}",
                repro,
            )
        tally["weights"] = max(tally["weights"], _weight_difference(ref["model_dir"], model_dir))
        tally["leftovers"] += len(list(runs_root.glob("*/.*.tmp-*"))) + len(
            list(runs_root.glob("*/.*.old-*"))
        )
    res.survived += len(res.failures) == failures


def _resume_or_restart(ctx, res, ref, db: Path, runs_root: Path, repro: str, tally: dict) -> Path | None:
    """``ner train --resume RUN_ID`` when the killed run was registered; a new run when it was not or
    when it has no checkpoint yet (what a user does after "no checkpoint to resume from")."""
    from flows.steps import train_step
    from ner_core.config import NERConfig
    from storage.runs import get_run, list_runs

    config = NERConfig.model_validate_json(get_run(ref["db"], ref["run_id"])["config"])
    runs = list_runs(db)
    out = None
    if runs:
        run_id = runs[0]["run_id"]
        if (Path(get_run(db, run_id)["run_dir"]) / "checkpoint.json").is_file():
            tally["resumed"] += 1
            fn = lambda: train_step(str(db), config, str(runs_root), run_id=run_id, resume=True)  # noqa: E731
            out = wb.rerun(res, f"train --resume {run_id}", fn, repro)
            return Path(out.model_dir) if out is not None else None
    tally["restarted"] += 1
    out = wb.rerun(res, "a new training run", lambda: train_step(str(db), config, str(runs_root)), repro)
    return Path(out.model_dir) if out is not None else None


def _weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb_ = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    if set(wa) != set(wb_):
        return float("inf")
    return max(
        (float((wa[k].float() - wb_[k].float()).abs().max()) for k in wa if wa[k].numel()), default=0.0
    )


# ----------------------------------------------------------------------------------------- prediction
def _prediction_reference(ctx: Context, ref_db: Path, model_dir: Path) -> tuple:
    """Predict uninterrupted: a child in the full campaign (its duration), this process under --quick."""
    from flows.contracts import DatasetSource
    from flows.steps import predict_source

    if ctx.quick:
        with wb.quiet():
            predict_source(str(ref_db), DatasetSource(dataset="sample"), str(model_dir))
        return None, None
    argv = wb.predict_argv(ref_db, model_dir)
    rc, duration, out, ready = wb.run_marked(argv, ref_db.parent, ref_db.with_suffix(".log"), "predict:")
    if rc != 0:
        raise RuntimeError(f"the uninterrupted prediction failed (exit {rc}): {out[-500:]}")
    return duration, ready


@stage("kill -9 during batch prediction", "faults")
def predict_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over the run (under --quick: a random moment after the progress bar shows), then the
    re-run, which resumes a run left 'running'."""
    model_dir = wb.reference_training(ctx)["model_dir"]
    root = ctx.scratch("predict-kills")
    base = wb.base_db(ctx)
    ref_db = wb.copy_db(base, root / "ref.duckdb")
    duration, ready = _prediction_reference(ctx, ref_db, model_dir)
    (run,) = prediction_runs(ref_db)
    ref = prediction_content(ref_db, run["pred_run_id"])
    took = f"{duration:.1f} s, " if duration else ""
    res.figures["uninterrupted prediction"] = (
        f"{took}{len(ref['docs'])} documents, {len(ref['ents'])} entities"
    )
    rng = ctx.rng("predict")
    if duration is None:
        plans = [("predict", rng.uniform(0, 1.0)) for _ in range(ctx.n(20, 2))]
    else:
        plans = [("at", t) for t in wb.spread_marked(rng, ctx.n(20, 2), ready, duration)]
    tally = {"resumed": 0, "early": 0, "completed_seen": 0, "worst": 0.0}

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        db = wb.copy_db(base, root / f"kill-{i}.duckdb")
        argv = wb.predict_argv(db, model_dir)
        log = db.with_suffix(".log")
        proc = wb.start(argv, db.parent, log)
        how, t = plan
        return (wb.kill_after(proc, t) if how == "at" else wb.kill_on_output(proc, log, how, t)), (db, argv)

    def check(plan: tuple, state: tuple) -> None:
        _check_prediction_kill(res, *state, model_dir, plan, ref, tally)

    tally["early"] = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7))
    res.figures["after the kills"] = (
        f"{tally['resumed']} re-runs resumed a run left 'running'; {tally['completed_seen']} kills came "
        f"after the run was marked completed; largest confidence difference {tally['worst']:.2e}"
    )
    if tally["early"]:
        res.notes.append(f"{tally['early']} children finished before their kill moment (not counted)")


def _check_prediction_kill(res, db: Path, argv: list, model_dir: Path, plan: tuple, ref: dict, tally) -> None:
    from flows.contracts import DatasetSource
    from flows.steps import predict_source

    how, t = plan
    res.injected += 1
    when = f"{t:.2f} s after it starts" if how == "at" else f"{t:.2f} s after its progress bar shows"
    repro = wb.reproducer(argv, f"kill -9 it {when}, then run it again")
    failures = len(res.failures)
    half = half_written(db)
    if half:
        res.fail(f"after the kill: {half}", repro)
    for run in prediction_runs(db) if not half else []:
        if run["status"] == "completed":
            tally["completed_seen"] += 1
            if compare_predictions(ref, prediction_content(db, run["pred_run_id"]))[:2] != (0, 0):
                res.fail("after the kill: a run marked completed differs from the reference", repro)
    fn = lambda: predict_source(str(db), DatasetSource(dataset="sample"), str(model_dir))  # noqa: E731
    out = wb.rerun(res, "the re-run of the prediction", fn, repro)
    if out is not None:
        tally["resumed"] += bool(out.resumed)
        runs = prediction_runs(db)
        if len(runs) != 1 or runs[0]["status"] != "completed":
            res.fail(f"after the re-run: prediction runs {runs}, expected one completed", repro)
        else:
            lost, extra, worst = compare_predictions(ref, prediction_content(db, runs[0]["pred_run_id"]))
            res.rows_lost += lost
            tally["worst"] = max(tally["worst"], worst)
            if lost or extra:
                res.fail(f"after the re-run: {lost} rows lost, {extra} extra (confidence {worst:.2e})", repro)
    res.survived += len(res.failures) == failures
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
