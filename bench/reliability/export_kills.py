"""``kill -9`` during the review export (``ner review export``) and during checkpoint conversion
(``ner convert-checkpoint``).

Review export: a prediction run over synthetic documents, every one reviewed (accepted, some relabelled,
marked done) in the base database; the uninterrupted export is the reference. Each kill lands at a moment
spread over the child's run or the moment DuckDB's write-ahead log appears (the write in progress). After
it: the file opens, no half dataset version is visible (a visible version equals the reference), the re-run
completes and its gold, documents and recorded events equal the reference's by content.

Checkpoint conversion: a synthetic TF1 bundle (bench/tf_bundle_writer.py; the small fixture under
--quick) converted uninterrupted first; each kill lands at a spread moment or when the temporary sibling
folder appears. After it: ``--out`` is absent or complete (the reference's files, byte-identical weights),
the re-run completes with identical weights file bytes.
"""

from __future__ import annotations

from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import REPO, Context, StageResult, stage
from bench.reliability.snapshots import counter_diff, dataset_content, half_written, versions
from ner_core.artifacts.tf.convert import WEIGHTS as CONVERTED_WEIGHTS
from storage.db import open_db


# ----------------------------------------------------------------------------------------- review export
def _export_events(db: Path) -> set[str]:
    with open_db(db, read_only=True, wait_s=5) as con:
        sql = "SELECT event_id FROM review_exports WHERE dataset = ?"
        return {r[0] for r in con.execute(sql, [wb.EXPORT_NAME]).fetchall()}


def _export_argv(db: Path) -> list[str]:
    return ["review", "export", "--no-prefect", "--db", str(db), "--pred-run", wb.PRED_RUN,
            "--name", wb.EXPORT_NAME]  # fmt: skip


@stage("kill -9 during review export", "faults")
def review_export_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over ``ner review export`` and aimed at its write (the WAL file appearing)."""
    from storage.review_export import export_reviews

    base = wb.review_db(ctx)
    root = ctx.scratch("review-kills")
    ref_db = wb.copy_db(base, root / "ref.duckdb")
    duration = ready = None
    if ctx.quick:
        with wb.quiet():
            export_reviews(ref_db, wb.PRED_RUN, wb.EXPORT_NAME)
    else:
        rc, duration, out, ready = wb.run_marked(_export_argv(ref_db), root, root / "ref.log", "dataset")
        if rc != 0:
            raise RuntimeError(f"the uninterrupted review export failed (exit {rc}): {out[-500:]}")
    ref, ref_events = dataset_content(ref_db, wb.EXPORT_NAME), _export_events(ref_db)
    earlier = dataset_content(base, "sample")
    res.figures["uninterrupted review export"] = (f"{duration:.1f} s, " if duration else "") + (
        f"{sum(ref['docs'].values())} documents, {sum(ref['ents'].values())} gold entities, "
        f"{len(ref_events)} review events"
    )
    rng = ctx.rng("review-export")
    n = ctx.n(20, 2)
    aimed = n if duration is None else n // 2
    plans = [("at", t) for t in wb.spread(rng, n - aimed, duration)] if duration else []
    plans += [("wal", rng.uniform(0, 0.05)) for _ in range(aimed)]
    tally = {"early": 0, "visible_after_kill": 0}

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        db = wb.copy_db(base, root / f"kill-{i}.duckdb")
        argv = _export_argv(db)
        proc = wb.start(argv, root, db.with_suffix(".log"))
        how, t = plan
        if how == "at":
            return wb.kill_after(proc, t), (db, argv)
        return wb.kill_when(proc, root, f"{db.name}.wal", after_s=t), (db, argv)

    def check(plan: tuple, state: tuple) -> None:
        _check_export_kill(res, *state, plan, ref, ref_events, earlier, tally)

    tally["early"] = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7))
    res.figures["after the kills"] = f"{tally['visible_after_kill']} kills came after the version was stored"
    if tally["early"]:
        res.notes.append(f"{tally['early']} children finished before their kill moment (not counted)")


def _check_export_kill(res, db: Path, argv, plan, ref, ref_events, earlier, tally) -> None:
    from storage.review_export import export_reviews

    res.injected += 1
    how, t = plan
    when = f"{t:.2f} s after it starts" if how == "at" else f"when {db.name}.wal appears ({t:.2f} s on)"
    repro = wb.reproducer(argv, f"kill -9 it {when}, then run it again")
    failures = len(res.failures)
    half = half_written(db)
    if half:
        res.fail(f"after the kill: {half}", repro)
    else:
        have = versions(db, wb.EXPORT_NAME)
        if have not in ([], [1]):
            res.fail(f"after the kill: {wb.EXPORT_NAME!r} has versions {have}, expected none or [1]", repro)
        elif have == [1]:
            tally["visible_after_kill"] += 1
            if counter_diff(ref, dataset_content(db, wb.EXPORT_NAME)) != (0, 0):
                res.fail("after the kill: a visible version 1 differs from the reference", repro)
    fn = lambda: export_reviews(db, wb.PRED_RUN, wb.EXPORT_NAME)  # noqa: E731
    if wb.rerun(res, "the re-run of the review export", fn, repro) is not None:
        have = versions(db, wb.EXPORT_NAME)
        lost, extra = counter_diff(ref, dataset_content(db, wb.EXPORT_NAME))
        res.rows_lost += lost
        if have != [1] or lost or extra:
            res.fail(f"after the re-run: versions {have}, {lost} rows missing, {extra} extra", repro)
        got = _export_events(db)
        if got != ref_events:
            res.fail(
                f"after the re-run: {len(ref_events - got)} review events missing from the export, "
                f"{len(got - ref_events)} extra",
                repro,
            )
        if counter_diff(earlier, dataset_content(db, "sample")) != (0, 0):
            res.fail("after the re-run: the earlier dataset 'sample' changed", repro)
    res.survived += len(res.failures) == failures
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- conversion
TINY_TF = REPO.parent / "shared" / "fixtures" / "tf-checkpoints" / "tf-bert-tiny"


def _bundle(ctx: Context) -> dict:
    """{"config", "checkpoint", "vocab", "what"}: the fixture under --quick (a small synthetic bundle when
    it is absent), a 4-layer, hidden-256 synthetic BERT (about 40 MB) in the full campaign."""

    def build() -> dict:
        from bench.bench_convert import write_synthetic

        if ctx.quick and (TINY_TF / "bert_model.ckpt.index").is_file():
            folder, what = TINY_TF, "the tf-bert-tiny fixture"
        else:
            folder = ctx.scratch("tf-bundle")
            size = dict(layers=1, hidden=64, vocab=2000) if ctx.quick else dict(layers=4, hidden=256)
            write_synthetic(folder, **size)
            what = "a synthetic TF1 bundle ({})".format(", ".join(f"{k} {v}" for k, v in size.items()))
        return {
            "config": str(folder / "bert_config.json"),
            "checkpoint": str(folder / "bert_model.ckpt"),
            "vocab": str(folder / "vocab.txt"),
            "what": what,
        }

    return ctx.once("tf_bundle", build)


def _convert_argv(b: dict, out: Path) -> list[str]:
    return ["convert-checkpoint", "--bert_config", b["config"], "--bert_checkpoint", b["checkpoint"],
            "--bert_vocab", b["vocab"], "--out", str(out)]  # fmt: skip


def _folder_state(out: Path) -> tuple[set[str], bytes]:
    return {p.name for p in out.iterdir()}, (out / CONVERTED_WEIGHTS).read_bytes()


@stage("kill -9 during checkpoint conversion", "faults")
def conversion_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over ``ner convert-checkpoint`` and aimed at its temporary folder's appearance."""
    b = _bundle(ctx)
    root = ctx.scratch("convert-kills")
    ref_out = root / "ref"
    duration = ready = None
    if ctx.quick:
        from ner_core.artifacts.tf.convert import convert_checkpoint

        with wb.quiet():
            convert_checkpoint(b["config"], b["checkpoint"], b["vocab"], ref_out)
    else:
        rc, duration, out, ready = wb.run_marked(_convert_argv(b, ref_out), root, root / "ref.log", "\n")
        if rc != 0:
            raise RuntimeError(f"the uninterrupted conversion failed (exit {rc}): {out[-500:]}")
    ref = _folder_state(ref_out)
    res.figures["uninterrupted conversion"] = (f"{duration:.1f} s, " if duration else "") + (
        f"{b['what']}, {CONVERTED_WEIGHTS} {len(ref[1]) / 1e6:.1f} MB"
    )
    rng = ctx.rng("convert")
    n = ctx.n(20, 2)
    aimed = n if duration is None else n // 2
    plans = [("at", t) for t in wb.spread(rng, n - aimed, duration)] if duration else []
    plans += [("tmp", 0.0) for _ in range(aimed)]
    tally = {"early": 0, "complete_after_kill": 0, "leftover_tmp": 0}

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        folder = root / f"kill-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = _convert_argv(b, folder / "out")
        proc = wb.start(argv, folder, folder / "convert.log")
        how, t = plan
        killed = wb.kill_after(proc, t) if how == "at" else wb.kill_when(proc, folder, ".out.tmp-*")
        return killed, (folder, argv)

    def check(plan: tuple, state: tuple) -> None:
        _check_conversion_kill(res, *state, plan, b, ref, tally)

    tally["early"] = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7))
    res.figures["after the kills"] = (
        f"{tally['complete_after_kill']} kills came after the folder was in place; temporary sibling "
        f"folders left by the kills: {tally['leftover_tmp']} (hidden, .out.tmp-*; never read as a model)"
    )
    if tally["early"]:
        res.notes.append(f"{tally['early']} children finished before their kill moment (not counted)")


def _check_conversion_kill(res, folder: Path, argv, plan, b: dict, ref, tally) -> None:
    from ner_core.artifacts.tf.convert import convert_checkpoint

    res.injected += 1
    how, t = plan
    when = f"{t:.2f} s after it starts" if how == "at" else "when its .out.tmp-* folder appears"
    repro = wb.reproducer(argv, f"kill -9 it {when}, then run it again")
    failures = len(res.failures)
    out = folder / "out"
    tally["leftover_tmp"] += len(list(folder.glob(".out.tmp-*")))
    if out.exists():
        tally["complete_after_kill"] += 1
        try:
            state = _folder_state(out)
        except OSError as exc:
            state = (set(), str(exc).encode())
        if state != ref:
            res.fail(f"after the kill: {out} exists but is not complete ({sorted(state[0])})", repro)
    else:
        fn = lambda: convert_checkpoint(b["config"], b["checkpoint"], b["vocab"], out)  # noqa: E731
        if wb.rerun(res, "the re-run of the conversion", fn, repro) is not None and _folder_state(out) != ref:
            res.fail(f"after the re-run: the folder's files or {CONVERTED_WEIGHTS} bytes differ", repro)
    res.survived += len(res.failures) == failures
