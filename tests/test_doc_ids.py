"""Document ids stay unique when files share a stem (``corpus.train``, ``corpus.dev``, ``corpus.test``),
and ids of files whose stems do not collide are the ones the code always produced."""

from __future__ import annotations

import duckdb
import pytest

from ner_core.data.doc_ids import unique_doc_ids
from ner_core.data.ingest import plan_ingest, prepare_ingest
from storage.datasets import ingest_dataset, load_documents
from tests.conftest import SAMPLE


def _conll(path, sentences: list[str], lead: str = ""):
    """One character per line tagged B-PER / I-PER for its first two characters, O after."""
    body = lead + "\n".join(
        "\n".join(f"{c} {'B-PER' if i == 0 else 'I-PER' if i == 1 else 'O'}" for i, c in enumerate(s)) + "\n"
        for s in sentences
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def test_conll_2003_style_names_are_ingested_together(tmp_path):
    files = [
        _conll(tmp_path / f"corpus.{split}", [f"张三{split}在北京", f"李四{split}去上海"])
        for split in ("train", "dev", "test")
    ]
    report = ingest_dataset(tmp_path / "c.duckdb", "c", files)  # splits from the names
    assert report.created and {s: c["documents"] for s, c in report.counts.items()} == {
        "train": 2,
        "dev": 2,
        "test": 2,
    }
    docs = load_documents(tmp_path / "c.duckdb", "c")
    ids = {d.split: [] for d in docs}
    for d in docs:
        ids[d.split].append(d.doc_id)
    # sentence 1 starts on line 1, sentence 2 on the line after the first one's blank line
    n = len("张三train在北京") + 2
    assert ids["train"] == ["corpus.train:1", f"corpus.train:{n}"]
    assert ids["dev"][0] == "corpus.dev:1" and ids["test"][0] == "corpus.test:1"


def test_equal_file_names_in_different_folders_get_the_folder_too(tmp_path):
    a = _conll(tmp_path / "a" / "train.txt", ["张三在北京"])
    b = _conll(tmp_path / "b" / "train.txt", ["李四去上海"])
    plan = plan_ingest(prepare_ingest("x", {"train": a, "dev": b}))
    assert [r[0] for r in plan.rows] == ["a/train.txt:1", "b/train.txt:1"]
    with pytest.raises(ValueError, match=r"document ids collide across files \(the same file given twice"):
        plan_ingest(prepare_ingest("y", {"train": a, "dev": a}))


def test_shared_stems_whose_ids_do_not_collide_keep_the_ids_they_always_had(tmp_path):
    # the old code stored these (stem ids, no collision: sentences start on different lines)
    a = _conll(tmp_path / "corpus.train", ["张三在北京"], lead="\n")
    b = _conll(tmp_path / "corpus.dev", ["李四去上海"])
    plan = plan_ingest(prepare_ingest("x", [a, b]))
    assert [r[0] for r in plan.rows] == ["corpus:2", "corpus:1"]


def test_ids_of_a_stored_ingest_are_byte_identical_to_the_legacy_database(legacy_db, tmp_path):
    """The legacy fixture was made by the code at 3cc253c from these very sample files."""
    with duckdb.connect(legacy_db, read_only=True) as con:
        old = con.execute(
            "SELECT f.sha256, d.split, d.doc_id, d.text FROM documents d JOIN dataset_files f "
            "ON f.dataset = d.dataset AND f.version = d.version AND f.path = d.source ORDER BY d.ord"
        ).fetchall()
    import hashlib

    files = {s: SAMPLE / f"{s}.jsonl" for s in ("train", "dev", "test")}
    if {hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()} != {r[0] for r in old}:
        pytest.skip("the sample corpus changed since the legacy fixture was made")
    ingest_dataset(tmp_path / "n.duckdb", "sample", files)
    new = [(d.split, d.doc_id, d.text) for d in load_documents(tmp_path / "n.duckdb", "sample")]
    assert len(new) == 560 and new == [r[1:] for r in old]


def test_unique_doc_ids_changes_only_colliding_groups():
    ids = [["corpus:1", "corpus:5"], ["corpus:1"], ["other:1"], ["x:1"]]
    sources = ["d/corpus.train", "d/corpus.dev", "d/other.txt", "e/x.json"]
    out = unique_doc_ids(sources, ids)
    assert out == [["corpus.train:1", "corpus.train:5"], ["corpus.dev:1"], ["other:1"], ["x:1"]]
    assert out[2] is ids[2] and out[3] is ids[3]
    assert unique_doc_ids(["a/t.txt", "a/t.txt"], [["t:1"], ["t:1"]]) == [["t:1"], ["t:1"]]  # same file twice
    with pytest.raises(ValueError, match="one id list per source"):
        unique_doc_ids(["a"], [])


def test_prediction_over_files_sharing_a_stem_keeps_every_document(tmp_path):
    """`ner predict corpus.train corpus.test`: both files' documents keep distinct ids (a collision would
    let the second file's rows overwrite the first's in the prediction run)."""
    from flows.contracts import FilesSource
    from flows.steps import load_prediction_input

    files = [
        _conll(tmp_path / f"corpus.{split}", [f"张三{split}在北京", f"李四{split}去上海"])
        for split in ("train", "test")
    ]
    docs, kind, _ = load_prediction_input(
        str(tmp_path / "p.duckdb"), FilesSource(files=[str(f) for f in files])
    )
    ids = [d.doc_id for d in docs]
    assert kind == "file" and len(ids) == 4 and len(set(ids)) == 4
    assert [d.text for d in docs] == [
        "张三train在北京",
        "李四train去上海",
        "张三test在北京",
        "李四test去上海",
    ]
