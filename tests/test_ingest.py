"""Ingest planning (ner_core.data.ingest): arguments, splits, parsing, leakage, fingerprint; no database."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ner_core.data.ingest import (
    IngestError,
    IngestPlan,
    IngestReport,
    check_dataset_name,
    plan_ingest,
    prepare_ingest,
)

BAD = Path(__file__).resolve().parent / "data" / "bad"
REPO = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path):
    train = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "我在北京工作", "entities": [{"start": 2, "end": 4, "label": "LOC"}]},
            {"text": "张三去了上海", "entities": [{"start": 0, "end": 2, "label": "PER"}]},
        ],
    )
    dev = _jsonl(tmp_path / "dev.jsonl", [{"text": "我在北京工作", "entities": []}])
    return {"train": train, "dev": dev}


def test_module_imports_no_database():
    tree = ast.parse((REPO / "ner_core" / "data" / "ingest.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"duckdb", "pyarrow", "storage"}
    code = (
        "import sys, ner_core.data.ingest; "
        "print(sorted(m for m in ('duckdb', 'pyarrow', 'storage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plan_is_built_without_a_database(tmp_path, corpus):
    before = set(tmp_path.iterdir())
    request = prepare_ingest("toy", corpus)
    assert [(f.split, f.path) for f in request.files] == [("train", corpus["train"]), ("dev", corpus["dev"])]
    assert request.files[0].sha256 == hashlib.sha256(corpus["train"].read_bytes()).hexdigest()
    plan = plan_ingest(request)
    assert isinstance(plan, IngestPlan) and set(tmp_path.iterdir()) == before  # nothing written
    assert plan.dataset == "toy" and plan.fingerprint == request.fingerprint
    assert [r[:3] for r in plan.rows] == [
        ("train:1", "我在北京工作", [(2, 4, "LOC")]),
        ("train:2", "张三去了上海", [(0, 2, "PER")]),
        ("dev:1", "我在北京工作", []),
    ]
    assert plan.splits == ["train", "train", "dev"] and [r[0] for r in plan.split_rows("dev")] == ["dev:1"]
    assert plan.counts == {
        "train": {"documents": 2, "entities": 2, "characters": 12},
        "dev": {"documents": 1, "entities": 0, "characters": 6},
    }
    assert plan.labels == ["LOC", "PER"] and plan.format == "jsonl" and plan.scheme is None
    assert (plan.n_documents, plan.n_entities, plan.n_characters) == (3, 2, 18)
    (f_train, f_dev) = plan.files
    assert (f_train.split, f_train.format, f_train.documents) == ("train", "jsonl", 2)
    assert f_dev.size == corpus["dev"].stat().st_size and f_dev.sha256 == request.files[1].sha256
    (leak,) = plan.problems
    assert leak.code == "duplicate_across_splits" and leak.severity == "warning"
    assert leak.message == "dev:1 (dev) has the same text as train:1 (train)"
    report = plan.report(version=4, created=True)
    assert isinstance(report, IngestReport) and report.version == 4 and report.files[1]["documents"] == 1


def test_fingerprint_and_stored_options_keep_their_format(tmp_path):
    """Stored fingerprints must stay comparable: a re-ingest of identical files against a database
    written by earlier code is recognised as unchanged only if the payload stays exactly this."""
    f = tmp_path / "train.jsonl"
    f.write_bytes('{"text": "北京", "entities": []}\n'.encode())
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    request = prepare_ingest("fp", [f], scheme="BIO")
    options = {
        "format": None,
        "policy": "repair",
        "untyped_label": "ENT",
        "scheme": "BIO",
        "split_ratios": None,
        "seed": None,
        "tag_column": -1,
    }
    assert json.dumps(request.options.as_dict()) == json.dumps(options)  # the stored JSON, key order too
    payload = json.dumps({"files": [["train", sha]], "options": options}, sort_keys=True)
    assert request.fingerprint == hashlib.sha256(payload.encode()).hexdigest()
    # computed by the code before ner_core.data.ingest existed (storage.datasets at e4d67d1)
    assert request.fingerprint == "c950a5a2dee19a8cc0b967838877bcdfb61e14832ea6a245be2f3d1ce28e3e92"
    ratios = prepare_ingest("fp", [f], split_ratios=(0.5, 0.5), seed=3).options.as_dict()
    assert ratios["split_ratios"] == [0.5, 0.5] and ratios["seed"] == 3


def test_ratio_splits_are_seeded(tmp_path):
    f = _jsonl(tmp_path / "all.jsonl", [{"text": f"文本{i}号", "entities": []} for i in range(100)])
    a = plan_ingest(prepare_ingest("r", [f], split_ratios=(0.8, 0.1, 0.1), seed=5))
    b = plan_ingest(prepare_ingest("r", [f], split_ratios=(0.8, 0.1, 0.1), seed=5))
    c = plan_ingest(prepare_ingest("r", [f], split_ratios=(0.8, 0.1, 0.1), seed=6))
    assert {k: v["documents"] for k, v in a.counts.items()} == {"train": 80, "dev": 10, "test": 10}
    assert a.splits == b.splits != c.splits and a.files[0].split is None


def test_plan_refuses_what_must_not_be_stored(tmp_path, corpus):
    with pytest.raises(IngestError) as info:
        plan_ingest(prepare_ingest("s", {"train": BAD / "length_mismatch.json"}, policy="strict"))
    assert info.value.report.version is None and info.value.report.n_errors == 1
    with pytest.raises(IngestError, match="cannot read"):
        plan_ingest(prepare_ingest("f", {"train": corpus["train"], "dev": BAD / "invalid_json.json"}))
    with pytest.raises(IngestError, match="no valid record"):
        plan_ingest(prepare_ingest("e", {"train": _jsonl(tmp_path / "e.jsonl", [{"text": " "}])}))
    with pytest.raises(ValueError, match="document ids collide"):
        plan_ingest(prepare_ingest("d", {"train": corpus["train"], "dev": corpus["train"]}))


def test_prepare_checks_arguments(tmp_path, corpus):
    assert check_dataset_name("msra.v2") == "msra.v2"
    for bad in ("bad name", "-x", "", None):
        with pytest.raises(ValueError, match="dataset name"):
            prepare_ingest(bad, corpus)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format must be one of"):
        prepare_ingest("x", corpus, format="xml")
    with pytest.raises(ValueError, match="policy must be one of"):
        prepare_ingest("x", corpus, policy="lenient")
    with pytest.raises(ValueError, match="split_ratios applies to a list"):
        prepare_ingest("x", corpus, split_ratios=(0.5, 0.5))
    with pytest.raises(ValueError, match="cannot tell the split"):
        prepare_ingest("x", [_jsonl(tmp_path / "misc.jsonl", [{"text": "a"}])])
    with pytest.raises(ValueError, match="same split"):
        prepare_ingest("x", [corpus["train"], _jsonl(tmp_path / "train_2.jsonl", [{"text": "a"}])])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        prepare_ingest("x", {"train": tmp_path / "nope.jsonl"})
