"""Helpers of the dashboard tests: the app's paths, the pipeline-database builder and the legacy database.

Plain functions and constants; the fixtures that use them (``ui_db``, ``legacy_db``) are in
tests/conftest.py, so test modules take them as arguments and import nothing for them.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

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
    "review": "app_pages/review.py",
    "problems": "app_pages/problems.py",
}
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-3cc253c"  # see its README.md


def build_pipeline_db(tmp: Path, n_runs: int = 2) -> dict:
    """ingest -> (train -> evaluate -> predict) x ``n_runs`` on the sample corpus with a tiny encoder.

    Returns ``{"db": path, "tmp": tmp, "train": [train_step results], "predict": [predict_step results]}``.
    """
    from flows import steps
    from flows.contracts import FilesSource
    from ner_core.config import NERConfig
    from ner_core.model.encoder import make_tiny_encoder

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
        steps.evaluate_step(db, tr.model_dir, "sample", "test", run_id=tr.run_id)
        docs, kind, ref = steps.load_prediction_input(db, FilesSource(files=raw))
        pr = steps.predict_step(db, tr.model_dir, docs, input_kind=kind, input_ref=ref, run_id=tr.run_id)
        trained.append(tr.model_dump())
        predicted.append(pr.model_dump())
    return {"db": db, "tmp": tmp, "train": trained, "predict": predicted}


def reuse_pipeline_db(db: Path) -> dict:
    """The same shape as :func:`build_pipeline_db`'s result, read back from a database it made earlier
    (``train`` and ``predict`` hold only the ids and model directories)."""
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


def unpack_legacy_db(dest: Path) -> Path:
    """Copy the legacy artefacts (the database made by the code at commit 3cc253c, its encoder) into ``dest``
    and gunzip the database there; returns the DuckDB file's path. Paths inside it are relative to
    ``dest`` (``runs/<run_id>/model``; the model directories themselves were not kept)."""
    shutil.copytree(LEGACY, dest, dirs_exist_ok=True)
    db = dest / "ner.duckdb"
    with gzip.open(dest / "ner.duckdb.gz", "rb") as src, open(db, "wb") as out:
        shutil.copyfileobj(src, out)
    return db


# ------------------------------------------------------------------------------------------ review
REVIEW_RUN, REVIEW_OTHER = "pred-review-a", "pred-review-b"
EMOJI_DOC = "d-emoji"
EMOJI_TEXT = "张伟说😀阿里巴巴在杭州开会，王芳也来了。"  # 😀 is one code point, two UTF-16 units
# doc_id -> (text, uncertainty, entities of REVIEW_RUN, entities of REVIEW_OTHER); entities (start, end,
# label, confidence). Uncertain order: d-emoji, d-beijing-1, d-beijing-2b, d-old (no entropy stored), then
# d-beijing-2 (a near-duplicate of d-beijing-2b, less uncertain).
REVIEW_DOCS = {
    EMOJI_DOC: (
        EMOJI_TEXT,
        9.0,
        [(0, 2, "PER", 0.9), (4, 8, "LOC", 0.6), (11, 13, "ORG", 0.4)],
        [(0, 2, "PER", 0.9), (4, 8, "ORG", 0.7), (9, 11, "LOC", 0.8)],
    ),
    "d-beijing-1": ("李雷在北京工作。", 5.0, [(0, 2, "PER", 0.9), (3, 5, "ORG", 0.5)], [(0, 2, "PER", 0.9)]),
    "d-beijing-2": ("韩梅梅也去北京出差。", 4.0, [(0, 3, "PER", 0.9), (5, 7, "ORG", 0.5)], []),
    "d-beijing-2b": ("韩梅梅也去北京出差！", 4.5, [(0, 3, "PER", 0.9), (5, 7, "ORG", 0.5)], []),
    "d-old": ("上海的天气很好。", None, [(0, 2, "LOC", 0.3)], [(0, 2, "LOC", 0.3)]),
}


def build_review_db(tmp: Path) -> str:
    """A database holding two prediction runs of :data:`REVIEW_DOCS` (no training: rows written through
    :class:`storage.predictions.PredictionRunWriter`), and a model directory with just its label set."""
    from ner_core.inference.tagger import PredictedEntity
    from storage.db import connect
    from storage.predictions import PredictionRunWriter

    db = str(tmp / "review.duckdb")
    connect(db).close()
    model = tmp / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "labels.json").write_text(json.dumps({"labels": ["LOC", "ORG", "PER"]}), encoding="utf-8")
    for i, run in enumerate((REVIEW_RUN, REVIEW_OTHER)):
        rows = []
        for doc_id, (text, unc, *ents) in REVIEW_DOCS.items():
            found = [PredictedEntity(s, e, lb, text[s:e], c) for s, e, lb, c in ents[i]]
            rows.append((doc_id, text, found, unc))
        with PredictionRunWriter(
            db, run, model_dir=str(model), run_id=None, input_kind="texts", input_ref=run, replace=True
        ) as w:
            w.write(rows)
    return db
