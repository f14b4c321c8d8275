"""``kill -9`` during the issue-26 recipes that run for minutes: ``ner adapt`` (masked-LM adaptation of the
encoder), ``ner train --unlabeled`` (self-training) and ``ner train --teacher`` (distillation). Full campaign
only: each needs a reference run and one child per kill, too long for the quick part the tests run.

As in :mod:`bench.reliability.kills`: the command runs uninterrupted first (the reference, and its
duration), then per kill a fresh copy of the base database, the real ``ner`` command as a child killed at
a moment drawn from the campaign's seed (spread over the reference duration, plus kills aimed at the
files the run leaves on its way: checkpoints, the silver data, the output folder), then ``--resume`` (or a
new run when the killed one had not started its record) and the result compared with the reference:

- adapt: the adapted encoder's weights are bit-identical (a step budget, one thread: the resumed run
  computes the same steps); a step budget rather than a time budget, whose learning rate follows the clock;
- self-training: the silver of round 1 is the reference's (same counts, same file sha256: the teacher it
  came from was the same), the final model tags dev as the reference does, and the run's recorded training
  sources (``run_sources``) name the same corpus and silver; the largest weight difference is reported;
- distillation: the student's weights are bit-identical (fixed epochs, one thread, the teacher a fixed
  folder: the resumed run sees the same batches and the same soft targets), its recorded sources (teacher
  sha256, unlabeled corpus and what was left out) the reference's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import SAMPLE, Context, StageResult, stage
from bench.reliability.snapshots import compare_predictions, half_written, model_predictions

#: the adapt run's step budget and checkpoint interval (steps) in the full campaign
ADAPT_STEPS, ADAPT_EVERY = 60, 10


# ----------------------------------------------------------------------------------------- adapt
def _adapt_argv(ctx: Context, db: Path, out: Path) -> list[str]:
    return ["adapt", "--no-prefect", "--db", str(db), "--encoder", str(wb.tiny_encoder(ctx)), "--dataset",
            "sample", "--split", "train", "--out", str(out), "--max_steps", str(ADAPT_STEPS),
            "--checkpoint_steps", str(ADAPT_EVERY), "--max_len", "64", "--batch_size", "8", "--seed", "7",
            "--num_threads", "1"]  # fmt: skip


def _encoder_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    return load_file(str(files[0])) if files else {}


def _max_difference(a: dict, b: dict) -> float:
    if not a or set(a) != set(b):
        return float("inf")
    return max((float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel()), default=0.0)


@stage("kill -9 during adapt", "faults", quick=False)
def adapt_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over ``ner adapt``, at the first checkpoint after a random moment and during the
    output's write; then ``ner adapt --resume`` and the adapted encoder compared with the uninterrupted
    one, weight by weight."""
    root = ctx.scratch("adapt-kills")
    base = wb.base_db(ctx)
    ref_out = root / "ref" / "encoder"
    argv = _adapt_argv(ctx, base, ref_out)
    rc, seconds, out, ready = wb.run_marked(argv, root, root / "ref.log", "adapt: ")
    if rc != 0:
        raise RuntimeError(f"the uninterrupted adapt failed (exit {rc}):\n{out[-2000:]}")
    ref = _encoder_weights(ref_out)
    res.figures["uninterrupted adapt"] = f"{seconds:.1f} s (a child process), {ADAPT_STEPS} steps"
    rng = ctx.rng("adapt")
    n = ctx.n(8, 2)
    k = max(1, n // 4)
    plans = [("at", t, "") for t in wb.spread_marked(rng, n - 2 * k, ready, seconds)]
    plans += [("checkpoint", rng.uniform(0, 0.8 * seconds), "encoder.adapt/checkpoint.json")] * k
    plans += [("output write", rng.uniform(0, 0.8 * seconds), ".encoder.tmp-*")] * k
    tally = {"resumed": 0, "restarted": 0, "finished": 0, "worst": 0.0}

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        folder = root / f"kill-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        out_dir = folder / "encoder"
        child = _adapt_argv(ctx, base, out_dir)
        proc = wb.start(child, folder, folder / "adapt.log")
        what, after, pattern = plan
        killed = wb.kill_after(proc, after) if what == "at" else wb.kill_when(proc, folder, pattern, after)
        return killed, (folder, out_dir, child)

    def check(plan: tuple, state: tuple) -> None:
        _check_adapt_kill(res, ref, plan, *state, tally)

    early = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7, p[2]))
    res.figures["after the kills"] = (
        f"{tally['resumed']} resumed with --resume, {tally['restarted']} started again (killed before the "
        f"run saved its settings), {tally['finished']} had saved the encoder already; largest weight "
        f"difference from the reference {tally['worst']:.2e}"
    )
    if early:
        res.notes.append(f"{early} children finished before their kill moment (not counted)")


def _check_adapt_kill(res, ref: dict, plan: tuple, folder: Path, out_dir: Path, argv: list, tally) -> None:
    from ner_core.training.adapt import ADAPT_RECORD

    res.injected += 1
    what, after, _ = plan
    note = f"kill -9 it after {after:.2f} s" + (f", at the next {what}" if what != "at" else "")
    work = Path(f"{out_dir}.adapt")
    if (work / ADAPT_RECORD).is_file():
        tally["resumed"] += 1
        again = ["adapt", "--no-prefect", "--out", str(out_dir), "--resume"]
    elif (out_dir / ADAPT_RECORD).is_file():
        tally["finished"] += 1
        again = []
    else:
        tally["restarted"] += 1
        again = argv
    repro = wb.reproducer(argv, f"{note}; then {' '.join(again[:1] + again[-2:]) or 'nothing'}")
    failures = len(res.failures)
    if again:
        rc, _s, out = wb.run(again, folder, folder / "again.log")
        if rc != 0:
            res.fail(
                f"ner {' '.join(again[:1] + again[-1:])} after the kill failed (exit {rc}): {out[-300:]}",
                repro,
            )
    if len(res.failures) == failures:
        worst = _max_difference(ref, _encoder_weights(out_dir))
        tally["worst"] = max(tally["worst"], worst)
        if worst != 0.0:
            res.fail(f"the adapted encoder differs from the uninterrupted one (largest difference "
                     f"{worst:.2e})", repro)  # fmt: skip
        left = [p.name for p in folder.glob(".*.tmp-*")] + [p.name for p in folder.glob(".*.old-*")]
        if left or work.exists():
            res.fail(f"left behind after the run: {left or [work.name]}", repro)
    res.survived += len(res.failures) == failures


# ----------------------------------------------------------------------------------------- self-training
def _raw_unlabeled(ctx: Context) -> Path:
    """The sample corpus's raw texts, one a line: the unlabeled corpus of self-training and distillation."""

    def build() -> Path:
        lines = [ln.strip() for p in sorted((SAMPLE / "raw").glob("*.txt"))
                 for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]  # fmt: skip
        unlabeled = ctx.scratch("unlabeled") / "unlabeled.txt"
        unlabeled.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return unlabeled

    return ctx.once("raw_unlabeled", build)


def _self_train_config(ctx: Context) -> Path:
    """The reliability training config made a self-training run: the sample corpus's raw texts unlabeled,
    one round, thresholds that keep most texts (a tiny random encoder is never sure), 3 epochs a round."""

    def build() -> Path:
        from ner_core.config import NERConfig

        folder = ctx.scratch("self-train-config")
        cfg = NERConfig.model_validate_json(wb.train_config(ctx).read_text(encoding="utf-8"))
        cfg = cfg.with_overrides({
            "training.unlabeled": [str(_raw_unlabeled(ctx))], "training.self_train_rounds": 1,
            "training.hard_epochs": 3, "training.silver_min_confidence": 1e-6,
            "training.silver_max_uncertainty": 100.0,
        })  # fmt: skip
        path = folder / "config.json"
        path.write_text(cfg.to_json(), encoding="utf-8")
        return path

    return ctx.once("self_train_config", build)


def _outcome(db: Path, run_id: str) -> dict:
    """What a finished self-training run must share with the reference: its silver record and recorded
    sources (without the run's own paths), and its model's dev predictions."""
    from storage.runs import get_run, model_lineage

    run = get_run(db, run_id)
    run_dir, model_dir = Path(run["run_dir"]), Path(run["model_dir"])
    silver = json.loads((run_dir / "self-train" / "silver-1.json").read_text(encoding="utf-8"))
    sources = [
        (s["kind"], s["fingerprint"], s["n_docs"]) for s in model_lineage(db, run_id)["sources"]["items"]
    ]
    return {
        "silver": {k: silver[k] for k in ("counts", "selected", "silver_sha256")},
        "sources": sources,
        "model_dir": model_dir,
        "run_dir": run_dir,
        "dev": model_predictions(model_dir, db),
    }


def _self_train_plans(ctx: Context, seconds: float, ready: float) -> list[tuple[str, float, str]]:
    """(what, seconds to wait, glob under the runs folder that triggers the kill; "" = none)."""
    rng = ctx.rng("self-train")
    n = ctx.n(10, 3)
    k = max(1, n // 5)
    plans = [("at", t, "") for t in wb.spread_marked(rng, n - 3 * k, ready, seconds)]
    for what, pattern in (  # files that stay: a tiny model's writes are too short to be caught in the act
        ("teacher checkpoint", "*/self-train/round-0/checkpoint.json"),
        ("silver file (before or just after its record)", "*/self-train/silver-1.jsonl"),
        ("student checkpoint", "*/checkpoint.json"),
    ):
        plans += [(what, rng.uniform(0, 0.3 * seconds), pattern) for _ in range(k)]
    return plans


@stage("kill -9 during self-training", "faults", quick=False)
def self_train_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over ``ner train --unlabeled`` (two rounds) and at the teacher's first checkpoint
    after a random moment, when the silver file appears, and at the student's first checkpoint; then
    ``--resume`` (or a new run) and the silver, the recorded sources and the dev predictions compared with
    the uninterrupted run's (the largest weight difference reported)."""
    _train_kills(ctx, res, _SELF_TRAIN)


# ----------------------------------------------------------------------------------------- distillation
#: the student's epochs (each a checkpoint) and the teacher's, in the full campaign
DISTILL_EPOCHS, TEACHER_EPOCHS = 4, 2


def _distill_config(ctx: Context) -> Path:
    """The reliability training config made a distillation: a tiny teacher model directory trained here
    (in this process, on the sample corpus, the tiny encoder), the sample's raw texts as unlabeled texts."""

    def build() -> Path:
        from flows.steps import train_step
        from ner_core.config import NERConfig

        folder = ctx.scratch("distill-config")
        cfg = NERConfig.model_validate_json(wb.train_config(ctx).read_text(encoding="utf-8"))
        db = wb.copy_db(wb.base_db(ctx), folder / "teacher.duckdb")
        with wb.quiet():
            teacher = train_step(str(db), cfg.with_overrides({"training.hard_epochs": TEACHER_EPOCHS}),
                                 str(folder / "teacher"))  # fmt: skip
        cfg = cfg.with_overrides({
            "training.teacher": str(Path(teacher.model_dir).resolve()),
            "training.unlabeled": [str(_raw_unlabeled(ctx))], "training.hard_epochs": DISTILL_EPOCHS,
        })  # fmt: skip
        path = folder / "config.json"
        path.write_text(cfg.to_json(), encoding="utf-8")
        return path

    return ctx.once("distill_config", build)


def _distill_outcome(db: Path, run_id: str) -> dict:
    """What a finished distillation must share with the reference: its recorded sources (the teacher's
    sha256, the unlabeled corpus with what was left out) and its model's dev predictions."""
    from storage.runs import get_run, model_lineage

    model_dir = Path(get_run(db, run_id)["model_dir"])
    sources = [
        (s["kind"], s["fingerprint"], s["n_docs"], json.dumps(s["detail"].get("left_out"), sort_keys=True))
        for s in model_lineage(db, run_id)["sources"]["items"]
    ]
    return {"sources": sorted(sources), "model_dir": model_dir, "dev": model_predictions(model_dir, db)}


def _distill_plans(ctx: Context, seconds: float, ready: float) -> list[tuple[str, float, str]]:
    """(what, seconds to wait, glob under the runs folder that triggers the kill; "" = none)."""
    from ner_core.training.distillation import RECORD

    rng = ctx.rng("distill")
    n = ctx.n(8, 3)
    k = max(1, n // 4)
    plans = [("at", t, "") for t in wb.spread_marked(rng, n - 2 * k, ready, seconds)]
    for what, pattern, share in (  # files that stay: a tiny model's writes are too short to catch in the act
        ("distillation record (teacher and corpus recorded)", f"*/{RECORD}", 0.3),
        ("checkpoint", "*/checkpoint.json", 0.7),
    ):
        plans += [(what, rng.uniform(0, share * seconds), pattern) for _ in range(k)]
    return plans


@stage("kill -9 during distillation", "faults", quick=False)
def distill_kills(ctx: Context, res: StageResult) -> None:
    """Kills spread over ``ner train --teacher DIR --unlabeled FILE``, just after the run records its
    teacher and corpus, and at a checkpoint after a random moment; then ``--resume`` (or a new run) and the
    student's weights (bit for bit), recorded sources and dev predictions compared with the uninterrupted
    run's."""
    _train_kills(ctx, res, _DISTILL)


# ----------------------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class _Recipe:
    """What differs between the ``ner train`` recipes killed here."""

    what: str  # "self-training", "distillation"
    config: Callable[[Context], Path]  # the run's config file
    outcome: Callable[[Path, str], dict]  # what a finished run must share with the reference
    plans: Callable[[Context, float, float], list[tuple[str, float, str]]]
    same: tuple[str, ...]  # outcome keys that must equal the reference's
    exact_weights: bool  # a weight difference fails (else it is reported)
    detail: Callable[[dict], str]  # the reference run's figure, after its seconds


_SELF_TRAIN = _Recipe(
    "self-training", _self_train_config, _outcome, _self_train_plans, ("silver", "sources"), False,
    lambda ref: f"{ref['silver']['selected']} silver documents",
)  # fmt: skip
_DISTILL = _Recipe(
    "distillation", _distill_config, _distill_outcome, _distill_plans, ("sources",), True,
    lambda ref: f"{DISTILL_EPOCHS} epochs",
)  # fmt: skip


def _train_argv(ctx: Context, recipe: _Recipe, db: Path, runs_root: Path) -> list[str]:
    return ["train", "--no-prefect", "--db", str(db), "--runs-root", str(runs_root), "--config",
            str(recipe.config(ctx))]  # fmt: skip


def _train_kills(ctx: Context, res: StageResult, recipe: _Recipe) -> None:
    """The uninterrupted run, then one child per planned kill, each resumed and compared."""
    from storage.runs import list_runs

    root = ctx.scratch(f"{recipe.what}-kills")
    base = wb.base_db(ctx)
    ref_db = wb.copy_db(base, root / "ref" / "ref.duckdb")
    argv = _train_argv(ctx, recipe, ref_db, root / "ref" / "runs")
    rc, seconds, out, ready = wb.run_marked(argv, root / "ref", root / "ref" / "train.log", " train / ")
    if rc != 0:
        raise RuntimeError(f"the uninterrupted {recipe.what} failed (exit {rc}):\n{out[-2000:]}")
    ref = recipe.outcome(ref_db, list_runs(ref_db)[0]["run_id"])
    res.figures[f"uninterrupted {recipe.what}"] = (
        f"{seconds:.1f} s (a child process), {recipe.detail(ref)}, {len(ref['dev']['ents'])} entities "
        "predicted on dev"
    )
    tally = {"resumed": 0, "restarted": 0, "weights": 0.0}

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        folder = root / f"kill-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        db, runs_root = wb.copy_db(base, folder / "k.duckdb"), folder / "runs"
        argv = _train_argv(ctx, recipe, db, runs_root)
        proc = wb.start(argv, folder, folder / "train.log")
        what, after, pattern = plan
        killed = wb.kill_after(proc, after) if what == "at" else wb.kill_when(proc, runs_root, pattern, after)
        return killed, (db, runs_root, argv)

    def check(plan: tuple, state: tuple) -> None:
        _check_train_kill(ctx, res, recipe, ref, plan, *state, tally)

    plans = recipe.plans(ctx, seconds, ready)
    early = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7, p[2]))
    res.figures["after the kills"] = (
        f"{tally['resumed']} resumed with --resume, {tally['restarted']} started again (killed before the "
        f"run was registered); largest weight difference from the reference {tally['weights']:.2e}"
    )
    if early:
        res.notes.append(f"{early} of {len(plans)} children finished before their kill moment (not counted)")


def _check_train_kill(ctx, res, recipe: _Recipe, ref: dict, plan, db: Path, runs_root: Path, argv, tally):
    """One killed child: nothing half-written, then resumed (or run again) and compared with ``ref``."""
    from bench.reliability.kills import _weight_difference
    from flows.steps import train_step
    from ner_core.config import NERConfig
    from storage.runs import list_runs

    res.injected += 1
    what, after, _ = plan
    note = f"kill -9 it after {after:.2f} s" + (f", at the next {what}" if what != "at" else "")
    repro = wb.reproducer(argv, f"{note}; then ner train --resume RUN_ID --db {db} --no-prefect")
    failures = len(res.failures)
    half = half_written(db)
    if half:
        res.fail(f"after the kill: {half}", repro)
    runs = list_runs(db)
    if runs:
        tally["resumed"] += 1
        run_id = runs[0]["run_id"]
        fn = lambda: train_step(str(db), NERConfig(), str(runs_root), run_id=run_id, resume=True)  # noqa: E731
    else:
        tally["restarted"] += 1
        config = NERConfig.model_validate_json(recipe.config(ctx).read_text(encoding="utf-8"))
        fn = lambda: train_step(str(db), config, str(runs_root))  # noqa: E731
    done = wb.rerun(res, f"the resumed {recipe.what}" if runs else f"a new {recipe.what} run", fn, repro)
    if done is not None:
        got = recipe.outcome(db, done.run_id)
        for key in recipe.same:
            if got[key] != ref[key]:
                res.fail(f"after the kill: the run's {key} differ: {got[key]} vs {ref[key]}", repro)
        worst = _weight_difference(ref["model_dir"], got["model_dir"])
        tally["weights"] = max(tally["weights"], worst)
        if recipe.exact_weights and worst != 0.0:
            res.fail(f"the final model's weights differ from the uninterrupted run's ({worst:.2e})", repro)
        lost, extra, diff = compare_predictions(ref["dev"], got["dev"])
        res.rows_lost += lost
        if lost or extra:
            res.fail(
                f"the final model's dev predictions differ: {lost} lost, {extra} extra ({diff:.2e})", repro
            )
    res.survived += len(res.failures) == failures
