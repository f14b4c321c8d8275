"""Real corpora in ../shared/datasets: counts must equal SOURCES.md (slow; skipped when absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ner_core.data.formats import read_file
from storage.datasets import ingest_dataset, load_documents

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real datasets not found at {DATA}"),
]


def _labels(res) -> Counter:
    return Counter(e.label for d in res.documents for e in d.entities)


def test_msra_counts():
    train = read_file(DATA / "msra" / "msra_train_bio")
    assert train.format == "conll" and len(train.documents) == 45000
    assert _labels(train) == {"LOC": 36860, "ORG": 20584, "PER": 17615}
    # the 57 lines '0<TAB>' become a space tagged O, with a warning each (SOURCES: 2,171,516 chars + 57)
    assert Counter(p.code for p in train.problems) == {"missing_char": 57}
    assert sum(len(d.text) for d in train.documents) == 2_171_516 + 57
    test = read_file(DATA / "msra" / "msra_test_bio")
    assert len(test.documents) == 3442 and sum(len(d.text) for d in test.documents) == 172_601
    assert _labels(test) == {"LOC": 2886, "ORG": 1331, "PER": 1973}
    assert not test.errors


def test_peoples_daily_counts():
    dev = read_file(DATA / "peoples-daily" / "example.dev")
    test = read_file(DATA / "peoples-daily" / "example.test")
    assert (len(dev.documents), len(test.documents)) == (2318, 4636)
    assert sum(len(d.text) for d in dev.documents) == 109_870
    assert sum(len(d.text) for d in test.documents) == 219_197
    assert _labels(dev) == {"LOC": 1951, "ORG": 984, "PER": 884}
    assert _labels(test) == {"LOC": 3658, "ORG": 2185, "PER": 1864}


def test_resume_counts():
    sizes = {}
    for split in ("train", "dev", "test"):
        res = read_file(DATA / "resume-ner" / f"{split}.char.bmes")
        assert res.format == "bmes" and res.scheme == "BMES" and not res.errors
        sizes[split] = len(res.documents)
        if split == "train":
            train = res
    assert sizes == {"train": 3821, "dev": 463, "test": 477}
    assert sum(len(d.text) for d in train.documents) == 124_099
    # SOURCES counts B-/S- tags. Two ORG mentions are cut by a sentence break (M-ORG ending one sentence,
    # M-ORG starting the next): repair turns each half into an entity, 4 warnings, so ORG is 4611 + 2.
    fixes = [p for p in train.problems if p.code == "invalid_transition"]
    assert len(fixes) == 4 and all(p.severity == "warning" for p in fixes)
    assert _labels(train) == {
        "TITLE": 6308,
        "ORG": 4611 + 2,
        "NAME": 952,
        "EDU": 858,
        "PRO": 287,
        "CONT": 260,
        "RACE": 115,
        "LOC": 47,
    }
    strict = read_file(DATA / "resume-ner" / "train.char.bmes", policy="strict")
    assert len(strict.documents) == 3821 - 4


def test_finance_counts():
    train = read_file(DATA / "keras-bert-ner-finance" / "train.txt")
    dev = read_file(DATA / "keras-bert-ner-finance" / "dev.txt")
    test = read_file(DATA / "keras-bert-ner-finance" / "test.txt")
    assert (train.format, dev.format, test.format) == ("seed_json", "seed_json", "seed_texts")
    assert len(train.documents) == 4240 and sum(len(d.entities) for d in train.documents) == 32026
    assert sum(len(d.text) for d in train.documents) == 3_648_422
    assert len(dev.documents) == 471 and sum(len(d.entities) for d in dev.documents) == 3508
    assert len(test.documents) == 4998 and all(not d.entities for d in test.documents)
    assert train.labels == ["ENT"] and not train.errors


def test_resume_ingest_and_reload(tmp_path):
    db = tmp_path / "real.duckdb"
    files = {s: DATA / "resume-ner" / f"{s}.char.bmes" for s in ("train", "dev", "test")}
    rep = ingest_dataset(db, "resume", files)
    assert {k: v["documents"] for k, v in rep.counts.items()} == {"train": 3821, "dev": 463, "test": 477}
    again = ingest_dataset(db, "resume", files)
    assert not again.created and again.version == 1
    docs = load_documents(db, "resume", "train")
    ref = read_file(files["train"]).documents
    assert [(d.doc_id, d.text, d.entities) for d in docs] == [
        (d.doc_id, d.text, d.sorted_entities()) for d in ref
    ]
