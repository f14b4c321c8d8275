"""What main at 0b85e1b wrote (tests/fixtures/main-0b85e1b, made by its make.py) loads and behaves as it did:
its DuckDB file migrates and answers the same, its model directory tags the same, its interrupted run resumes,
its seed model_configs.json names the same model, and the import paths of that code still resolve."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "main-0b85e1b"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
RUNS = EXPECTED["runs"]


@pytest.fixture
def old_main(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture as the working directory (paths inside are relative), the database unzipped."""
    dst = tmp_path / "old-main"
    shutil.copytree(FIXTURE, dst)
    with gzip.open(dst / "ner.duckdb.gz") as src, open(dst / "ner.duckdb", "wb") as out:
        shutil.copyfileobj(src, out)
    monkeypatch.chdir(dst)
    return dst


def _model_dir(run: str) -> Path:
    return Path("runs") / run / "model"


def test_the_database_migrates_and_answers_as_the_old_code_did(old_main):
    import duckdb

    from storage import reviews
    from storage.db import open_db

    with open_db("ner.duckdb") as con:  # migrates to this code's schema
        pass
    pred = EXPECTED["pred_run_id"]
    got = []
    for doc in sorted({row[0] for row in EXPECTED["review_current"]}):
        got += [
            [doc, e["start"], e["end"], e["label"], e["state"]]
            for e in reviews.current_entities("ner.duckdb", pred, doc, wait_s=0)
        ]
    assert got == EXPECTED["review_current"]
    with duckdb.connect("ner.duckdb", read_only=True) as con:
        assert (
            con.execute("SELECT count(*) FROM dropped_spans").fetchone()[0] == EXPECTED["dropped_spans"] > 0
        )


def test_the_plus_runs_lineage_survives_the_migration(old_main):
    from storage.runs import model_lineage, trained_on

    lineage = model_lineage("ner.duckdb", RUNS["plus"])
    assert lineage["datasets"] == EXPECTED["lineage_plus"]
    assert [d["role"] for d in lineage["datasets"]] == ["base", "plus"]
    plus = EXPECTED["lineage_plus"][1]
    assert trained_on("ner.duckdb", "sample", 1, plus["dataset"], plus["version"]) == RUNS["plus"]


def test_the_model_directory_loads_and_tags_as_before(old_main):
    from ner_core.artifacts.modeldir import load_model_dir, read_precision_record
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger

    loaded = load_model_dir(_model_dir(RUNS["completed"]))
    tagger = Tagger.from_loaded(loaded, PredictionConfig(precision="fp32"))
    ((tags, _),) = tagger.tag_texts([EXPECTED["probe_text"]], confidence=False)
    assert tags == EXPECTED["probe_tags_fp32"]
    record = read_precision_record(_model_dir(RUNS["completed"]))
    assert record is not None and record.dev_f1 == EXPECTED["precision_record"]["dev_f1"]
    assert record.trained_in == EXPECTED["precision_record"]["trained_in"]


def test_the_interrupted_run_resumes_to_its_last_epoch(old_main, one_thread):
    from flows import steps
    from storage.runs import get_run

    out = steps.train_step("ner.duckdb", None, "runs", run_id=RUNS["interrupted"], resume=True)
    history = json.loads((Path("runs") / RUNS["interrupted"] / "history.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in history] == [1, 2, 3]  # epoch 1 from the old checkpoint, 2 and 3 resumed
    assert get_run("ner.duckdb", RUNS["interrupted"])["status"] == "completed"
    assert Path(out.model_dir).resolve() == _model_dir(RUNS["interrupted"]).resolve()


def test_the_seed_model_configs_names_the_same_model(old_main):
    from app.seed_commands import resolve_model_configs

    got = resolve_model_configs("runs/model_configs.json")
    assert Path(got).resolve() == _model_dir(RUNS["completed"]).resolve()


@pytest.mark.parametrize(
    "old, name, new",
    [
        ("ner_core.predict", "Tagger", "ner_core.inference.tagger"),
        ("ner_core.modeldir", "load_model_dir", "ner_core.artifacts.modeldir"),
        ("ner_core.modeldir", "ModelDirError", "ner_core.artifacts.layout"),
        ("ner_core.model", "NERModel", "ner_core.model.network"),
        ("ner_core.training", "train", "ner_core.training.loop"),
    ],
)
def test_the_old_import_paths_resolve_and_warn_once(old, name, new):
    import importlib

    from ner_core import _moved

    _moved._WARNED.discard(f"{old}.{name}")
    module = importlib.import_module(old)
    with pytest.warns(FutureWarning, match=f"{old}.{name} moved to {new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second use is silent
        assert getattr(module, name) is value
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018


def test_old_paths_keep_the_submodules_of_the_new_packages_importable():
    """``ner_core.model`` and ``ner_core.training`` are packages now: a shim must not hide a submodule."""
    from ner_core.model import crf, network  # noqa: F401
    from ner_core.training import loop, run_state  # noqa: F401
