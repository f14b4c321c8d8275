"""Damaged model directories, pickled checkpoints that would run code, and the security checks.

- model directories: every damage recipe of tests/test_modeldir_checks.py (``DAMAGES``) applied to a copy
  of a saved model directory: ``load_model_dir`` must raise a one-line ``ModelDirError`` naming the folder,
  and ``ner predict`` must exit 2 with one stderr line and no traceback (children in the full campaign, the
  CLI's ``main`` in this process under --quick); a training checkpoint holding a pickle payload that would
  run code is refused and its marker file never appears.
- security: the SQL guard's time limit and refusals, ``ner serve`` / ``ner ui`` on a non-loopback address,
  the API key (full campaign), ``ner datasets delete`` leaving no orphan rows, and ``kill -9`` during
  ``ner datasets delete --yes``: the file opens and holds the whole dataset or none of it.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import REPO, Context, StageResult, stage
from bench.reliability.snapshots import counter_diff, dataset_content, half_written, versions
from storage.db import open_db

_CLI_BATCH = """
import contextlib, io, json, sys
from app import cli
out = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except BaseException as exc:  # any escape is the finding
            rc = f"raised {type(exc).__name__}: {exc}"
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def _cli_batch(argvs: list[list[str]]) -> list[tuple[int | str, str]]:
    """``ner ARGV`` for each of ``argvs``, one after the other in ONE child process (bench may not import
    ``app``, and one torch import for all keeps the quick part short): [(exit status or the exception's
    name, stderr), ...]."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _CLI_BATCH],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    if proc.returncode != 0:
        return [(f"child exited {proc.returncode}", proc.stderr[-500:])] * len(argvs)
    return [(rc, err) for rc, err in json.loads(proc.stdout.strip().splitlines()[-1])]


def _cli(argv: list[str]) -> tuple[int | str, str]:
    """``ner ARGV`` in a child process: (exit status or the exception's name, stderr)."""
    return _cli_batch([argv])[0]


def _one_line_exit_2(rc, err: str) -> str | None:
    """None when the command exited 2 with one stderr line and no traceback; else what was wrong."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc != 2 or len(lines) != 1 or "Traceback" in err:
        return f"exit {rc}, {len(lines)} stderr lines: {err.strip()[-300:]!r}"
    return None


# ----------------------------------------------------------------------------------------- model dirs
def _damages() -> list:
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.test_modeldir_checks import DAMAGES

    return DAMAGES


@stage("model directories (damaged)", "bad input")
def model_dir_damages(ctx: Context, res: StageResult) -> None:
    """Each damage: a one-line ModelDirError from load_model_dir and from ``ner predict`` (exit 2)."""
    from ner_core.artifacts.layout import ModelDirError
    from ner_core.artifacts.modeldir import load_model_dir

    model_dir = wb.reference_training(ctx)["model_dir"]
    root = ctx.scratch("modeldirs")
    db = wb.copy_db(wb.base_db(ctx), root / "p.duckdb")
    cases = []
    for name, damage, _ in _damages():
        d = root / name
        shutil.copytree(model_dir, d)
        damage(d)
        res.cases += 1
        try:
            load_model_dir(d)
            res.fail(
                f"{name}: load_model_dir accepted the damaged folder",
                f"(tests/test_modeldir_checks.py {name})",
            )
        except ModelDirError as exc:
            text = str(exc)
            if "\n" in text or not text.startswith(f"{d}: "):
                res.fail(f"{name}: the message is not one line naming the folder: {text[:300]!r}")
        except Exception as exc:  # noqa: BLE001
            res.tracebacks += 1
            res.fail(f"{name}: load_model_dir raised {type(exc).__name__}: {exc}")
        cases.append((name, ["predict", "--no-prefect", "--db", str(db), "--model-dir", str(d), "--dataset",
                             "sample", "--threads", "1"]))  # fmt: skip

    def via_child(case):
        name, argv = case
        rc, _, out = wb.run(argv, root, root / f"{name}.log")
        return name, argv, rc, out

    if ctx.quick:
        outs = [
            (name, argv, *r) for (name, argv), r in zip(cases, _cli_batch([a for _, a in cases]), strict=True)
        ]
    else:
        with ThreadPoolExecutor(2) as ex:
            outs = list(ex.map(via_child, cases))
    for name, argv, rc, err in outs:
        res.cases += 1
        res.tracebacks += "Traceback" in err
        problem = _one_line_exit_2(rc, err)
        if problem:
            res.fail(f"{name}: ner predict: {problem}", wb.reproducer(argv, f"after the damage {name!r}"))
    how = "a child process each" if not ctx.quick else "the CLI's main in this process"
    res.figures["damages"] = f"{len(cases)} recipes, each through load_model_dir and ner predict ({how})"
    _pickle_payloads(ctx, res)


def _pickle_payloads(ctx: Context, res: StageResult) -> None:
    import builtins
    import subprocess

    import torch

    from ner_core.training.run_state import CheckpointError, load_checkpoint

    class Runs:
        def __init__(self, fn, *args) -> None:
            self.fn, self.args = fn, args

        def __reduce__(self):
            return (self.fn, self.args)

    root = ctx.scratch("pickles")
    refused = 0
    for kind in ("os.system", "eval", "subprocess"):
        marker = root / f"{kind}-ran"
        payload = {
            "os.system": Runs(os.system, f"touch {marker}"),
            "eval": Runs(builtins.eval, f"open({str(marker)!r}, 'w')"),
            "subprocess": Runs(subprocess.call, ["touch", str(marker)]),
        }[kind]
        run_dir = root / kind
        run_dir.mkdir(exist_ok=True)
        torch.save({"model": payload, "state": {"epoch": 1}}, run_dir / "checkpoint.pt")
        res.cases += 1
        try:
            load_checkpoint(run_dir)
            res.fail(f"a checkpoint with a {kind} payload was loaded")
        except CheckpointError as exc:
            refused += "\n" not in str(exc)
        except Exception as exc:  # noqa: BLE001
            res.fail(f"a checkpoint with a {kind} payload raised {type(exc).__name__}: {exc}")
        if marker.exists():
            res.fail(f"the {kind} payload ran: {marker} exists")
    res.figures["pickled checkpoints"] = (
        f"{refused} of 3 payloads (os.system, eval, subprocess) refused, none ran"
    )


# ----------------------------------------------------------------------------------------- security
CROSS_JOIN = "SELECT count(*) FROM range(200000000) a, range(200000000) b WHERE a.range + b.range = -1"
REFUSED_SQL = {
    "read_csv('/etc/passwd')": "SELECT * FROM read_csv('/etc/passwd')",
    "COPY ... TO": "COPY (SELECT 1) TO '/tmp/ner-reliability-copy.csv'",
    "ATTACH": "ATTACH '/tmp/ner-reliability-other.duckdb' AS o",
    "INSTALL": "INSTALL httpfs",
    "LOAD": "LOAD httpfs",
    "SET": "SET enable_external_access = true",
}


def orphans(db: Path) -> dict[str, int]:
    """Rows of every base table keyed by a dataset version, an evaluation, a prediction run or a review
    event whose parent row is gone (as tests/test_datasets_delete.py scans; trained runs are kept)."""
    parents = [
        ({"dataset", "version"}, "", "datasets p WHERE p.name = x.dataset AND p.version = x.version"),
        ({"dataset", "dataset_version"}, "runs",
         "datasets p WHERE p.name = x.dataset AND p.version = x.dataset_version"),
        ({"eval_id"}, "evaluations", "evaluations p WHERE p.eval_id = x.eval_id"),
        ({"pred_run_id"}, "prediction_runs", "prediction_runs p WHERE p.pred_run_id = x.pred_run_id"),
        ({"pred_run_id", "doc_id"}, "predicted_documents",
         "predicted_documents p WHERE p.pred_run_id = x.pred_run_id AND p.doc_id = x.doc_id"),
        ({"dataset", "version", "doc_id"}, "documents",
         "documents p WHERE p.dataset = x.dataset AND p.version = x.version AND p.doc_id = x.doc_id"),
        ({"event_id"}, "review_events", "review_events p WHERE p.event_id = x.event_id"),
    ]  # fmt: skip
    out = {}
    with open_db(db, read_only=True, wait_s=5) as con:
        cols: dict[str, set[str]] = {}
        for t, c in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns JOIN information_schema.tables "
            "USING (table_schema, table_name) WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
        ).fetchall():
            cols.setdefault(t, set()).add(c)
        for t, have in cols.items():
            checks = [
                f"NOT EXISTS (SELECT 1 FROM {p})" for need, skip, p in parents if need <= have and t != skip
            ]
            if checks:
                out[t] = con.execute(f"SELECT count(*) FROM {t} x WHERE {' OR '.join(checks)}").fetchone()[0]
    return out


def _sql_guard(ctx: Context, res: StageResult, db: Path) -> None:
    from storage.query import QueryTimeout, SqlRejected, query

    res.cases += 1
    t0 = time.monotonic()
    try:
        query(db, CROSS_JOIN, time_limit_s=2.0)
        res.fail("the huge cross join finished instead of being stopped")
    except QueryTimeout as exc:
        took = time.monotonic() - t0
        res.figures["SQL time limit"] = f"a huge cross join stopped after {took:.1f} s (limit 2 s): {exc}"
        if took > 3.5:
            res.fail(f"the cross join was stopped only after {took:.1f} s (limit 2 s)")
    refused = []
    for what, sql in REFUSED_SQL.items():
        res.cases += 1
        try:
            query(db, sql, time_limit_s=5.0)
            res.fail(f"the SQL guard let through {what}: {sql}")
        except SqlRejected:
            refused.append(what)
    res.figures["SQL guard refused"] = ", ".join(refused)
    if Path("/tmp/ner-reliability-copy.csv").exists():
        res.fail("COPY wrote /tmp/ner-reliability-copy.csv")


def _bind_checks(ctx: Context, res: StageResult) -> None:
    env = {k: os.environ.pop(k) for k in ("NER_API_KEY",) if k in os.environ}
    try:
        model_dir = str(wb.reference_training(ctx)["model_dir"])
        ui_db = str(ctx.workdir / "u.duckdb")
        for what, argv in (
            (
                "ner serve --host 0.0.0.0 without a key",
                ["serve", "--host", "0.0.0.0", "--model-dir", model_dir],
            ),
            ("ner ui --host 0.0.0.0 without --allow-remote", ["ui", "--host", "0.0.0.0", "--db", ui_db]),
        ):
            res.cases += 1
            rc, err = _cli(argv)
            problem = _one_line_exit_2(rc, err)
            if problem:
                res.fail(f"{what}: {problem}", wb.reproducer(argv))
            else:
                res.figures[what] = f"refused: {err.strip()[:160]}"
    finally:
        os.environ.update(env)
    if not ctx.quick:
        _api_key_check(ctx, res, model_dir)


def _api_key_check(ctx: Context, res: StageResult, model_dir: str) -> None:
    import httpx

    from bench.reliability_load import start_service, stop_service

    key = "reliability-security-key-0123456789"
    svc = start_service(Path(model_dir), ctx.scratch("sec") / "serve.log", "--host", "0.0.0.0",
                        env={"NER_API_KEY": key})  # fmt: skip
    try:
        url = svc["url"]
        got = {
            "/predict without a key": httpx.post(f"{url}/predict", json={"text": "张三"}).status_code,
            "/predict with a wrong key": httpx.post(
                f"{url}/predict", json={"text": "张三"}, headers={"X-API-Key": key + "x"}
            ).status_code,
            "/predict with the key": httpx.post(
                f"{url}/predict", json={"text": "张三"}, headers={"Authorization": f"Bearer {key}"}
            ).status_code,
            "/model without a key": httpx.get(f"{url}/model").status_code,
            "/health without a key": httpx.get(f"{url}/health").status_code,
        }
    finally:
        stop_service(svc)
    want = {"/predict with the key": 200, "/health without a key": 200}
    res.cases += len(got)
    for what, status in got.items():
        if status != want.get(what, 401):
            res.fail(
                f"ner serve --host 0.0.0.0 with a key: {what} answered {status}, "
                f"expected {want.get(what, 401)}"
            )
    res.figures["ner serve --host 0.0.0.0 with a key"] = ", ".join(f"{k}: {v}" for k, v in got.items())


def _delete_checks(ctx: Context, res: StageResult) -> Path:
    """Delete the review export and then 'sample' from a copy of the review database: no orphan rows."""
    from storage.deletion import delete_dataset
    from storage.review_export import export_reviews

    root = ctx.scratch("delete")
    db = wb.copy_db(wb.review_db(ctx), root / "filled.duckdb")
    with wb.quiet():
        export_reviews(db, wb.PRED_RUN, wb.EXPORT_NAME)
    before = orphans(db)
    if any(before.values()):
        res.fail(f"orphan rows before any deletion: {before}")
    filled = wb.copy_db(db, root / "filled-copy.duckdb")
    for name in (wb.EXPORT_NAME, "sample"):
        res.cases += 1
        done = delete_dataset(db, name)
        left = {t: n for t, n in orphans(db).items() if n}
        if left or versions(db, name):
            res.fail(f"ner datasets delete {name}: orphan rows {left}, versions {versions(db, name)}")
    res.figures["datasets delete"] = (
        f"the review export, then 'sample' (runs named: {[m['run_id'] for m in done.models]}), "
        "each followed by an orphan scan of every table"
    )
    return filled


@stage("security checks", "security")
def security_checks(ctx: Context, res: StageResult) -> None:
    from storage.db import connect

    db = ctx.scratch("sql") / "g.duckdb"
    connect(db).close()
    _sql_guard(ctx, res, db)
    _bind_checks(ctx, res)
    filled = _delete_checks(ctx, res)
    _delete_kills(ctx, res, filled)


def _delete_kills(ctx: Context, res: StageResult, filled: Path) -> None:
    """kill -9 during ``ner datasets delete sample --yes``: the whole dataset or none of it, no orphans."""
    root = ctx.scratch("delete-kills")
    name = "sample"
    whole = dataset_content(filled, name)
    ref_db = wb.copy_db(filled, root / "ref.duckdb")
    argv_ref = ["datasets", "delete", name, "--yes", "--db", str(ref_db)]
    duration = None
    if not ctx.quick:
        rc, duration, out = wb.run(argv_ref, root, root / "ref.log")
        if rc != 0:
            raise RuntimeError(f"the uninterrupted delete failed (exit {rc}): {out[-500:]}")
    rng = ctx.rng("delete")
    n = ctx.n(20, 2)
    aimed = n if duration is None else n // 2
    plans = [("at", t) for t in wb.spread(rng, n - aimed, duration)] if duration else []
    plans += [("rewrite" if i % 2 else "wal", 0.0) for i in range(aimed)]
    tally = {"whole": 0, "none": 0}

    def launch(i: int, plan: tuple) -> tuple[bool, tuple]:
        db = wb.copy_db(filled, root / f"kill-{i}.duckdb")
        argv = ["datasets", "delete", name, "--yes", "--db", str(db)]
        proc = wb.start(argv, root, db.with_suffix(".log"))
        how, t = plan
        if how == "at":
            return wb.kill_after(proc, t), (db, argv, plan)
        pattern = f"{db.name}.rewrite" if how == "rewrite" else f"{db.name}.wal"
        return wb.kill_when(proc, root, pattern), (db, argv, plan)

    def check(plan: tuple, state: tuple) -> None:
        db, argv, plan = state
        res.injected += 1
        repro = wb.reproducer(argv, f"kill -9 it ({plan[0]} {plan[1]:.2f} s)")
        failures = len(res.failures)
        half = half_written(db)
        if half:
            res.fail(f"after the kill: {half}", repro)
        elif versions(db, name):
            tally["whole"] += 1
            lost, extra = counter_diff(whole, dataset_content(db, name))
            res.rows_lost += lost
            if lost or extra:
                res.fail(
                    f"after the kill: {name!r} is partly deleted: {lost} rows gone, {extra} extra", repro
                )
        else:
            tally["none"] += 1
            left = {t: n for t, n in orphans(db).items() if n}
            if left:
                res.fail(f"after the kill: {name!r} is gone but orphan rows stay: {left}", repro)
        res.survived += len(res.failures) == failures
        for p in (db, Path(str(db) + ".wal"), Path(str(db) + ".rewrite"), Path(str(db) + ".rewrite.wal")):
            p.unlink(missing_ok=True)

    early = wb.run_kills(ctx, plans, launch, check, lambda p: (p[0], p[1] * 0.7))
    took = f"uninterrupted {duration:.1f} s; " if duration else ""
    res.figures["kill -9 during datasets delete"] = (
        f"{took}{tally['whole']} kills left the whole dataset, {tally['none']} none of it"
    )
    if early:
        res.notes.append(f"{early} children finished before their kill moment (not counted)")
