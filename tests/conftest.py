"""Test-wide environment: offline Hugging Face, a private Prefect home, no telemetry.

Set before anything imports prefect or transformers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="ner-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ``--precision auto`` takes fp32 without timing anything (tests/test_calibrate.py unsets it to time)
os.environ.setdefault("NER_PRECISION_AUTO", "fp32")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
SAMPLE = REPO / "sample_corpus"


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    import json

    texts = []
    for split in ("train", "dev", "test"):
        with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    texts.extend(p.read_text(encoding="utf-8") for p in sorted((SAMPLE / "raw").glob("*.txt")))
    return texts


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, sample_texts) -> Path:
    """A random-init BERT whose vocabulary covers the sample corpus; built in code, no download."""
    from ner_core.model.encoder import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), sample_texts)


# ----------------------------------------------------------------------------------------------------------
# Dashboard fixtures (tests/test_ui_*.py, tests/test_storage.py); their helpers are in tests/ui_fixtures.py.
@pytest.fixture(scope="session")
def ui_db(tmp_path_factory) -> dict:
    """A real database made by two tiny pipeline runs (slow: it trains two small models), built once per
    session: {"db": path, "train": [train_step results], "predict": [predict_step results]}.

    Developers iterating on the UI can set ``NER_UI_TEST_DB`` to a database made earlier by
    :func:`tests.ui_fixtures.build_pipeline_db` (model directories included) to skip the training.
    """
    from tests.ui_fixtures import build_pipeline_db, reuse_pipeline_db

    reuse = os.environ.get("NER_UI_TEST_DB")
    if reuse and Path(reuse).is_file():
        return reuse_pipeline_db(Path(reuse))
    return build_pipeline_db(tmp_path_factory.mktemp("ui-db"))


@pytest.fixture
def legacy_db(tmp_path) -> str:
    """A fresh copy of tests/fixtures/legacy-3cc253c/ner.duckdb.gz, gunzipped: the DuckDB file written by
    the code at commit 3cc253c."""
    from tests.ui_fixtures import unpack_legacy_db

    return str(unpack_legacy_db(tmp_path / "legacy"))


# ------------------------------------------------------------------ model fixtures
# (tests of ner_core's model, CRF and model directories; the tiny encoder above is theirs too)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster and immune to a busy machine's oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-3cc253c"


@pytest.fixture
def legacy_dir(tmp_path, monkeypatch) -> Path:
    """A copy of the artefacts written by main at 3cc253c (see its README), as the working directory:
    paths inside are relative (the runs' encoder is ``enc``)."""
    import shutil

    dst = tmp_path / "legacy"
    shutil.copytree(LEGACY, dst)
    monkeypatch.chdir(dst)
    return dst
