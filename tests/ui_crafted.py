"""Hostile data for the dashboard tests: ids, texts, file names and SQL that are Markdown, written through
the platform's own write paths (no training), so the pages must show them as data.

:func:`add_crafted_rows` adds them to a database (a fresh one, or a copy of the pipeline database the
browser test serves); :data:`CRAFTED` names what was added.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Markdown that would load an external image, render a fake link, bold text, a Streamlit colour directive,
#: a Material icon and LaTeX, if a page rendered it as Markdown; ``example.invalid`` never resolves
PAYLOAD = (
    "![pwn](http://example.invalid/pwn.png) [Session expired - log in again](http://example.invalid/login) "
    "**bold** :red[red] :material/warning: $x^2$"
)
#: a run id made of Markdown (ids are data: a dataset name or an old database may hold anything)
RUN_ID = "run-**bold**-[login](http://example.invalid/r)"
#: a dataset name (names are letters, digits, '_', '.' and '-'): Markdown emphasis when not escaped
DATASET = "c__crafted__"
#: the crafted ingest file's name: a Markdown link
FILE_NAME = "[Session expired](http:example.invalid).jsonl"
#: what :func:`add_crafted_rows` made: ids and texts the tests look for
CRAFTED = {"run_id": RUN_ID, "dataset": DATASET, "file": FILE_NAME, "payload": PAYLOAD}


def add_crafted_rows(db: str | Path, model_dir: str | Path, work: Path) -> dict:
    """Add to ``db``: dataset :data:`DATASET` from a file named :data:`FILE_NAME` (one good record with
    :data:`PAYLOAD` as its text, one bad record: a problem); a completed one-epoch training run
    :data:`RUN_ID` on it whose model directory is ``model_dir`` stored the old way, relative to the
    database's folder (code before absolute paths stored ``runs/<id>/model`` relative to the folder a
    command ran in); and a prediction run of that model over a SQL source whose text (the run's input) and
    only document are :data:`PAYLOAD`. Returns ``{"pred_run_id", "model_dir" (as stored), **CRAFTED}``."""
    from ner_core.config import NERConfig
    from ner_core.inference.tagger import PredictedEntity
    from storage import runs as runs_db
    from storage.datasets import ingest_dataset
    from storage.db import connect
    from storage.predictions import PredictionRunWriter

    connect(db).close()  # the schema, when the file is new
    work.mkdir(parents=True, exist_ok=True)
    data = work / FILE_NAME
    good = {"text": f"张伟说：{PAYLOAD}", "entities": [{"start": 0, "end": 2, "label": "PER"}]}
    data.write_text(json.dumps(good, ensure_ascii=False) + "\n{not json\n", encoding="utf-8")
    ingest_dataset(db, DATASET, {"train": data})
    config = NERConfig.model_validate({"data": {"dataset": DATASET}}).to_json()
    stored_dir = os.path.relpath(Path(model_dir).resolve(), Path(db).resolve().parent)
    runs_db.create_run(db, RUN_ID, dataset=DATASET, dataset_version=1, config_json=config, run_dir=work)
    runs_db.record_epoch(db, RUN_ID, {"epoch": 1, "train_loss": 3.5, "dev_f1": 0.25, "is_best": True})
    runs_db.finish_run(
        db, RUN_ID, status="completed", best_epoch=1, best_dev_f1=0.25, seconds=1.0, stopped_reason=PAYLOAD
    )
    with connect(db) as con:  # the old way: relative, as stored before absolute paths (no function does it)
        con.execute("UPDATE runs SET model_dir = ? WHERE run_id = ?", [stored_dir, RUN_ID])
    text = PAYLOAD
    with PredictionRunWriter(
        db,
        "pred-crafted",
        model_dir=model_dir,
        run_id=RUN_ID,
        input_kind="sql",
        input_ref=f"SELECT 'd' AS doc_id, '{PAYLOAD}' AS text",
        replace=True,
    ) as run:
        run.write([(f"doc-{PAYLOAD}", text, [PredictedEntity(0, 6, "PER", text[0:6], 0.5)], 1.0)])
    return {"pred_run_id": run.pred_run_id, "model_dir": stored_dir, **CRAFTED}
