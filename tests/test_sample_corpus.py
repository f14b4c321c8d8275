"""The bundled synthetic corpus: parses, valid offsets, README counts, determinism."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from ner_core.documents import Document, Entity

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "sample_corpus"
SCRIPT = ROOT / "scripts" / "make_sample_corpus.py"
SPLITS = ("train", "dev", "test")
LABELS = ("PER", "ORG", "LOC", "FIN")
EXPECTED_SIZES = {"train": 400, "dev": 80, "test": 80}


def _load(split: str) -> list[dict]:
    path = CORPUS / f"{split}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {s: _load(s) for s in SPLITS}


def test_files_parse_into_documents(splits):
    for split, docs in splits.items():
        assert len(docs) == EXPECTED_SIZES[split]
        for i, d in enumerate(docs):
            assert set(d) == {"text", "entities"}, f"{split}:{i + 1}"
            Document(doc_id=f"{split}-{i}", text=d["text"], entities=[Entity(**e) for e in d["entities"]])


def test_offsets_valid_and_non_overlapping(splits):
    for split, docs in splits.items():
        for i, d in enumerate(docs):
            text = d["text"]
            ents = sorted(d["entities"], key=lambda e: e["start"])
            for e in ents:
                assert 0 <= e["start"] < e["end"] <= len(text), f"{split}:{i + 1} {e}"
                mention = text[e["start"] : e["end"]]
                assert mention.strip() == mention and mention, f"{split}:{i + 1} {e} {mention!r}"
                assert e["label"] in LABELS
            for a, b in pairwise(ents):
                assert a["end"] <= b["start"], f"{split}:{i + 1} overlap {a} {b}"


def test_every_type_in_every_split_and_some_sentences_without_entities(splits):
    for split, docs in splits.items():
        counts = Counter(e["label"] for d in docs for e in d["entities"])
        assert all(counts[label] >= 10 for label in LABELS), (split, counts)
        assert any(not d["entities"] for d in docs), split


def test_average_length_and_mixed_scripts(splits):
    for split, docs in splits.items():
        avg = sum(len(d["text"]) for d in docs) / len(docs)
        assert 30 <= avg <= 80, (split, avg)
    texts = [d["text"] for docs in splits.values() for d in docs]
    assert any(re.search(r"[A-Za-z]", t) for t in texts)
    assert any(re.search(r"[0-9]", t) for t in texts)
    # Latin letters inside entity mentions too (e.g. ABC资本, e路贷)
    mentions = [
        d["text"][e["start"] : e["end"]] for docs in splits.values() for d in docs for e in d["entities"]
    ]
    assert any(re.search(r"[A-Za-z]", m) for m in mentions)


def test_dev_and_test_contain_names_unseen_in_train(splits):
    known = {d["text"][e["start"] : e["end"]] for d in splits["train"] for e in d["entities"]}
    for split in ("dev", "test"):
        mentions = [d["text"][e["start"] : e["end"]] for d in splits[split] for e in d["entities"]]
        unseen = [m for m in mentions if m not in known]
        seen = [m for m in mentions if m in known]
        assert unseen and seen, split


def _readme_table() -> dict[str, dict[str, int]]:
    text = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert "synthetic" in text.lower()
    assert "python scripts/make_sample_corpus.py" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| split |")]
    assert len(lines) == 1, "README needs exactly one counts table"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, int]] = {}
    for ln in text.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if ln.startswith("| ") and cells[0] in SPLITS:
            rows[cells[0]] = {
                h: float(c) if "." in c else int(c) for h, c in zip(header[1:], cells[1:], strict=True)
            }
    return rows


def test_readme_counts_match(splits):
    table = _readme_table()
    assert set(table) == set(SPLITS)
    for split, docs in splits.items():
        row = table[split]
        counts = Counter(e["label"] for d in docs for e in d["entities"])
        assert row["sentences"] == len(docs)
        assert row["characters"] == sum(len(d["text"]) for d in docs)
        assert row["no-entity"] == sum(1 for d in docs if not d["entities"])
        for label in LABELS:
            assert row[label] == counts[label], (split, label)


def test_raw_texts():
    files = sorted((CORPUS / "raw").glob("*.txt"))
    assert 5 <= len(files) <= 6
    texts = {f.name: f.read_text(encoding="utf-8") for f in files}
    assert all(t.strip() for t in texts.values())
    long = [t for t in texts.values() if len(t) > 2000]
    assert len(long) == 1
    t = long[0]
    assert re.search(r"[A-Za-z]{3,}", t), "Latin words"
    assert re.search(r"[0-9]", t), "digits"
    assert " " in t, "spaces"
    for ch in "，。：“”（）":
        assert ch in t, f"full-width punctuation {ch}"
    assert any(unicodedata.category(c) == "So" and ord(c) > 0xFFFF for c in t), "an emoji"
    assert sum(1 for c in t if "\u4e00" <= c <= "\u9fff") > 1000, "mostly Chinese"


def test_generator_is_deterministic(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--seed", "20240601"],
        check=True,
        capture_output=True,
    )
    committed = sorted(p.relative_to(CORPUS) for p in CORPUS.rglob("*") if p.is_file())
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == generated
    for rel in committed:
        assert (CORPUS / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_generator_seed_changes_output(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--seed", "7"], check=True, capture_output=True
    )
    assert (tmp_path / "train.jsonl").read_bytes() != (CORPUS / "train.jsonl").read_bytes()


def test_no_sentence_repeats_within_or_across_splits():
    import json as _json

    seen: dict[str, str] = {}
    for split in ("train", "dev", "test"):
        with open(CORPUS / f"{split}.jsonl", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                text = _json.loads(line)["text"]
                assert text not in seen, f"{split}:{i} repeats a sentence of {seen[text]}"
                seen[text] = f"{split}:{i}"
