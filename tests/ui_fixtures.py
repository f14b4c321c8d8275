"""Shared fixtures of the dashboard tests: a real DuckDB file made by two tiny pipeline runs.

Import the fixtures into a test module with ``from tests.ui_fixtures import ui_db  # noqa: F401``.
The database is built once per test session in a tmp dir (1-3 minutes on 2 busy CPU cores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_corpus"
APP = str(REPO / "ui" / "app.py")
PAGES = {
    "runs": "app_pages/runs.py",
    "curves": "app_pages/curves.py",
    "evaluation": "app_pages/evaluation.py",
    "predictions": "app_pages/predictions.py",
    "try_it": "app_pages/try_it.py",
    "sql": "app_pages/sql.py",
}


def build_pipeline_db(tmp: Path, n_runs: int = 2) -> dict:
    """ingest -> (train -> evaluate -> predict) x ``n_runs`` on the sample corpus with a tiny encoder."""
    from flows import steps
    from ner_core.config import NERConfig
    from ner_core.encoder import make_tiny_encoder

    texts = [
        json.loads(line)["text"]
        for f in ("train", "dev", "test")
        for line in open(SAMPLE / f"{f}.jsonl", encoding="utf-8")
        if line.strip()
    ]
    raw = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))
    texts += [Path(p).read_text(encoding="utf-8") for p in raw]
    enc = make_tiny_encoder(tmp / "enc", texts)
    db = str(tmp / "ui.duckdb")
    steps.ingest_step(db, "sample", {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")})
    trained, predicted = [], []
    for i in range(n_runs):
        # run 1 (BiLSTM, 3 epochs) learns enough to predict entities; run 2 (BiGRU, 1 epoch) is there to
        # compare against and keeps the fixture short.
        cfg = NERConfig.model_validate(
            {
                "data": {"dataset": "sample", "max_len": 64},
                "encoder": {"name": str(enc)},
                "head": {"type": ("bilstm", "bigru")[i % 2], "rnn_units": 32},
                "training": {
                    "max_epochs": 3 if i == 0 else 1,
                    "batch_size": 16,
                    "learning_rate": 1e-3,
                    "head_learning_rate": 3e-3,
                    "crf_learning_rate": 3e-2,
                    "warmup_ratio": 0.0,
                },
            }
        )
        tr = steps.train_step(db, cfg, str(tmp / "runs"))
        steps.evaluate_step(db, tr["model_dir"], "sample", "test", run_id=tr["run_id"])
        docs, kind, ref = steps.load_prediction_input(db, {"files": raw})
        pr = steps.predict_step(
            db, tr["model_dir"], docs, input_kind=kind, input_ref=ref, run_id=tr["run_id"]
        )
        trained.append(tr)
        predicted.append(pr)
    return {"db": db, "tmp": tmp, "train": trained, "predict": predicted}


def _reuse(db: Path) -> dict:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        train = [
            {"run_id": r[0], "model_dir": r[1]}
            for r in con.execute("SELECT run_id, model_dir FROM runs ORDER BY started_at").fetchall()
        ]
        pred = [
            {"pred_run_id": r[0]}
            for r in con.execute("SELECT pred_run_id FROM prediction_runs ORDER BY started_at").fetchall()
        ]
    return {"db": str(db), "tmp": db.parent, "train": train, "predict": pred}


@pytest.fixture(scope="session")
def ui_db(tmp_path_factory) -> dict:
    """{"db": path, "train": [train_step results], "predict": [predict_step results]} of two runs.

    Developers iterating on the UI can set ``NER_UI_TEST_DB`` to a database made earlier by
    :func:`build_pipeline_db` (model directories included) to skip the training.
    """
    reuse = os.environ.get("NER_UI_TEST_DB")
    if reuse and Path(reuse).is_file():
        return _reuse(Path(reuse))
    return build_pipeline_db(tmp_path_factory.mktemp("ui-db"))
