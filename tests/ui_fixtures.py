"""Shared fixtures of the dashboard tests: a real DuckDB file made by two tiny pipeline runs.

Import the fixtures into a test module with ``from tests.ui_fixtures import ui_db  # noqa: F401``.
The database is built once per test session (about half a minute on 2 CPU cores) in a tmp dir.
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
    from flows import pipeline, steps
    from ner_core.config import NERConfig
    from ner_core.encoder import make_tiny_encoder

    texts = [json.loads(line)["text"] for f in ("train", "dev", "test")
             for line in open(SAMPLE / f"{f}.jsonl", encoding="utf-8") if line.strip()]
    raw = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))
    texts += [Path(p).read_text(encoding="utf-8") for p in raw]
    enc = make_tiny_encoder(tmp / "enc", texts)
    db = str(tmp / "ui.duckdb")
    steps.ingest_step(db, "sample", {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")})
    trained, predicted = [], []
    for i in range(n_runs):
        cfg = NERConfig.model_validate({
            "data": {"dataset": "sample", "max_len": 64},
            "encoder": {"name": str(enc)},
            "head": {"type": ("bilstm", "bigru")[i % 2], "rnn_units": 16},
            "training": {"max_epochs": 2, "batch_size": 32, "learning_rate": 1e-3, "seed": 42 + i},
        })
        tr = steps.train_step(db, cfg, str(tmp / "runs"))
        steps.evaluate_step(db, tr["model_dir"], "sample", "test", run_id=tr["run_id"])
        docs, kind, ref = pipeline.load_prediction_input(db, {"files": raw})
        pr = steps.predict_step(db, tr["model_dir"], docs, input_kind=kind, input_ref=ref, run_id=tr["run_id"])
        trained.append(tr)
        predicted.append(pr)
    return {"db": db, "tmp": tmp, "train": trained, "predict": predicted}


@pytest.fixture(scope="session")
def ui_db(tmp_path_factory) -> dict:
    """{"db": path, "train": [train_step results], "predict": [predict_step results]} of two runs."""
    return build_pipeline_db(tmp_path_factory.mktemp("ui-db"))
