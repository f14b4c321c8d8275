"""The delete stage: after ``ner datasets delete NAME --yes``, no file the platform wrote holds the texts.

A dataset whose every text carries a unique marker is copied everywhere the platform copies a text, each
time by the platform's own code: the DuckDB file; ``ner test`` as a Prefect flow (evaluation reports
``eval-*.json`` / ``.md`` in the run folder, the artifact ``run-report-<dataset>`` with its collection row
and event in Prefect's database); the seed's ``ner test -test_data FILE -output_path DIR``; a prediction run
over a file holding the same texts under other doc ids; a prediction run over the dataset, reviewed and
exported as a derived dataset; the review spool (a refused decision, whose reason quotes the text, and a
pending one); DuckDB's spill files, left by a query killed while over its memory limit. The stage checks
that each copy is there, runs ``ner datasets delete NAME --yes`` as a child, then greps every file below the
folder the platform wrote into (database, write-ahead log, spools, run folders, reports, Prefect's home,
``TMPDIR``, logs) for the marker in every encoding a copy takes (UTF-8, JSON escapes, UTF-16) and for the
texts' sha1 / sha256 (what the documents table and the spool keep): 0 hits is the pass. The other dataset
in the database must keep every document.

Figures: files and bytes grepped, hits, the copies found before, and the files below that folder which
:func:`storage.footprint.platform_files` does not list (the list the deletion reads).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.reliability import workbench as wb
from bench.reliability.harness import SAMPLE, Context, StageResult, stage

#: copies the stage makes and must find before the deletion (path below the platform's folder, a glob)
PLACES = {
    "the database": "ner.duckdb",
    "evaluation reports (JSON)": "runs/*/eval-*.json",
    "evaluation reports (Markdown)": "runs/*/eval-*.md",
    "Prefect's database (artifact run-report)": ".prefect/prefect.db*",
    "seed -output_path files": "test_outputs/*",
    "review spool": "ner.duckdb.review-spool.jsonl",
    "refused review spool": "ner.duckdb.review-spool.jsonl.refused",
    "DuckDB spill files": "ner.duckdb.tmp/*",
}
_N_DOCS = 12
_SPILL = (
    "import duckdb, sys, time\n"
    "con = duckdb.connect(sys.argv[1], read_only=True)\n"
    "con.execute(\"SET memory_limit = '32MB'\"); con.execute('SET threads = 1')\n"
    "con.execute(\"CREATE TEMP TABLE s AS SELECT text || repeat('x', 1500) || r.range AS t \"\n"
    '            "FROM documents d, range(6000) r WHERE d.dataset = ?", [sys.argv[2]])\n'
    "print('spilled', flush=True); time.sleep(300)\n"
)


def _marked_texts(marker: str) -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{**r, "text": f"{r['text']}{marker}{i}"} for i, r in enumerate(rows[:_N_DOCS])]


def _env(home: Path) -> dict[str, str]:
    """A child's environment: everything it writes lands below ``home`` (Prefect's home, temporary files)."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **wb.child_env(home),
        "TMPDIR": str(home / "tmp"),
        "NER_NO_PREFECT": "0",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def _start(argv: list[str], home: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in _env(home).items() if k != "PREFECT_API_URL"}
    with open(log, "wb") as fh:
        return subprocess.Popen(
            wb.ner_argv(argv), cwd=home, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(res: StageResult, proc: subprocess.Popen, argv: list[str], log: Path) -> bool:
    rc = proc.wait(timeout=600)
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        res.fail(f"ner {' '.join(argv[:2])} exited {rc}:\n{tail}", wb.reproducer(argv))
    return rc == 0


def _build(ctx: Context, home: Path, inputs: Path, marker: str) -> dict:
    """The database (dataset 'sample' from the base database, dataset 'cv' of marked texts) and a run
    folder holding the reference model, registered as run ``r-ref``."""
    from storage.datasets import ingest_dataset
    from storage.runs import create_run, finish_run

    rows = _marked_texts(marker)
    cv = inputs / "cv.jsonl"
    cv.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    same = inputs / "same-texts.txt"  # the same texts under this file's own doc ids, and one more
    same.write_text("".join(r["text"] + "\n" for r in rows) + "张三在北京\n", encoding="utf-8")
    db = wb.copy_db(wb.base_db(ctx), home / "ner.duckdb")
    with wb.quiet():
        ingest_dataset(db, "cv", {"train": cv})  # train: a review export leaves dev/test texts out
    run_dir = home / "runs" / "r-ref"
    shutil.copytree(wb.reference_training(ctx)["model_dir"], run_dir / "model")
    cfg = '{"encoder": {"name": "enc"}, "head": {"type": "bilstm"}, "data": {"scheme": "BIOES"}}'
    create_run(db, "r-ref", dataset="sample", dataset_version=1, config_json=cfg, run_dir=run_dir)
    finish_run(db, "r-ref", status="completed", model_dir=run_dir / "model")
    return {"db": db, "cv": cv, "same": same, "model": run_dir / "model", "texts": [r["text"] for r in rows]}


def _in_process_copies(built: dict, marker: str) -> None:
    """A prediction run over the file of the same texts, one over the dataset, reviewed and exported
    (``cv-reviewed``), and the review spool: a refused decision and a pending one."""
    from flows import steps
    from ner_core.data.formats import read_file
    from storage import reviews
    from storage.datasets import load_documents
    from storage.footprint import review_spool
    from storage.review_export import export_reviews

    db, model = built["db"], str(built["model"])
    with wb.quiet():
        docs = read_file(built["same"]).documents
        steps.predict_step(
            str(db), model, docs, input_kind="file", input_ref=str(built["same"]), progress=False
        )
        cv_docs = load_documents(db, "cv", "train")
        pred = steps.predict_step(
            str(db), model, cv_docs, input_kind="dataset", input_ref="cv/train", progress=False
        ).pred_run_id
    reviews.record_events(
        db, [reviews.new_event(pred, d.doc_id, reviews.text_hash(d.text), "bench", "done") for d in cv_docs]
    )
    export_reviews(db, pred, "cv-reviewed")
    d0 = cv_docs[0]
    k = d0.text.index(marker)
    ev = functools.partial(reviews.new_event, pred, d0.doc_id, reviews.text_hash(d0.text), "bench", "add")
    spool = reviews.ReviewSpool(review_spool(db))
    spool.submit(db, [ev(start=k, end=k + 4, label="PER"), ev(start=k + 2, end=k + 6, label="PER")])
    spool.add([ev(start=k + 4, end=k + 6, label="LOC")])


def _spill(home: Path, db: Path, res: StageResult) -> None:
    """A query over its memory limit spills rows holding the texts into ``<db>.tmp``; kill -9 it there."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SPILL, str(db), "cv"], stdout=subprocess.PIPE, text=True, env=_env(home)
    )
    try:
        if proc.stdout.readline().strip() != "spilled":
            res.fail("the spilling query did not get to spill")
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()


def _needles(marker: str, texts: list[str]) -> list[bytes]:
    from storage.footprint import byte_forms

    digests = [
        hashlib.new(a, t.encode("utf-8")).hexdigest().encode() for t in texts for a in ("sha1", "sha256")
    ]
    return [*byte_forms(marker), *digests]


def _grep(home: Path, needles: list[bytes]) -> tuple[list[Path], int, dict[Path, int]]:
    """Every file below ``home``: the list, their bytes, and the hits per file that has any."""
    from storage.footprint import files_below, hits

    files = list(files_below(home))
    return files, sum(p.stat().st_size for p in files), hits(files, needles)


def _copies_before(res: StageResult, home: Path, found: dict[Path, int]) -> int:
    """How many of :data:`PLACES` hold the marker; a place without it is a failure of the stage's setup."""
    held = 0
    for what, glob in PLACES.items():
        if any(p in found for p in home.glob(glob)):
            held += 1
        else:
            res.fail(f"setup: {what} ({glob}) did not hold the marker before the deletion")
    return held


def _children(res: StageResult, home: Path, logs: Path, built: dict) -> None:
    """``ner test`` as a Prefect flow (reports, artifact) and the seed's ``ner test -test_data``, at once
    (the second does not open the database)."""
    db, model = str(built["db"]), str(built["model"])
    flow = ["test", "--dataset", "cv", "--split", "train", "--model-dir", model, "--db", db]
    seed = ["test", "-test_data", str(built["cv"]), "-model_configs", model, "-output_path",
            str(home / "test_outputs"), "--db", db, "--no-prefect"]  # fmt: skip
    procs = [(argv, _start(argv, home, logs / f"{name}.log"), logs / f"{name}.log")
             for name, argv in (("test-flow", flow), ("test-seed", seed))]  # fmt: skip
    for argv, proc, log in procs:
        _finish(res, proc, argv, log)


def _wait_for_prefect_event(home: Path, limit_s: float = 30.0) -> None:
    """The artifact's event reaches Prefect's database a moment after the flow run."""
    import sqlite3

    path, t_end = home / ".prefect" / "prefect.db", time.monotonic() + limit_s
    while time.monotonic() < t_end and path.is_file():
        with sqlite3.connect(path) as con:
            sql = "SELECT count(*) FROM events WHERE event LIKE 'prefect.artifact-collection%'"
            if con.execute(sql).fetchone()[0]:
                return
        time.sleep(0.5)


# not in --quick: the test suite checks the same deletion in tests/test_datasets_delete.py
@stage("dataset deletion leaves no copy", "personal data", quick=False)
def erasure(ctx: Context, res: StageResult) -> None:
    from storage.datasets import list_datasets

    root = ctx.scratch("erasure")
    home, inputs, logs = root / "home", root / "inputs", root / "logs"
    for d in (home, inputs, logs):
        d.mkdir(parents=True, exist_ok=True)
    marker = f"隐私标记{ctx.rng('erasure').getrandbits(32):08X}"
    built = _build(ctx, home, inputs, marker)
    _children(res, home, logs, built)
    _wait_for_prefect_event(home)
    _in_process_copies(built, marker)
    _spill(home, built["db"], res)
    needles = _needles(marker, built["texts"])
    files_before, _, before = _grep(home, needles)
    res.injected = _copies_before(res, home, before)
    sample_docs = {d["name"]: d["n_documents"] for d in list_datasets(built["db"])}["sample"]
    argv = ["datasets", "delete", "cv", "--yes", "--db", str(built["db"])]
    if not _finish(res, _start(argv, home, logs / "delete.log"), argv, logs / "delete.log"):
        return
    files, n_bytes, after = _grep(home, needles)
    res.survived = res.injected - sum(any(p in after for p in home.glob(g)) for g in PLACES.values())
    for p, n in sorted(after.items()):
        res.fail(f"after the deletion {p.relative_to(home)} holds the marker or a text's hash {n} times",
                 wb.reproducer(argv, "then grep the folder for the marker"))  # fmt: skip
    left = {d["name"]: d["n_documents"] for d in list_datasets(built["db"])}
    if left != {"sample": sample_docs}:
        res.fail(f"after the deletion the datasets are {left}, expected only 'sample' with {sample_docs}")
    from storage.deletion import report_folders
    from storage.footprint import platform_files

    listed = set(platform_files(built["db"], report_folders(built["db"]), home / ".prefect"))
    unlisted = sorted(str(p.relative_to(home)) for p in files if p.resolve() not in listed)
    res.figures["after ner datasets delete cv --yes"] = (
        f"{len(files)} files ({n_bytes / 1e6:.1f} MB) grepped below the platform's folder, "
        f"{sum(after.values())} hits in {len(after)} files; before: {len(files_before)} files, "
        f"{sum(before.values())} hits in {len(before)} files, {res.injected} of {len(PLACES)} kinds of copy"
    )
    res.figures["files the footprint does not list"] = f"{len(unlisted)}: {', '.join(unlisted[:8]) or '-'}"
