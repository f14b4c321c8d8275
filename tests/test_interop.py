"""Label Studio and doccano: export a prediction run, edit the file as a reviewer would, ingest it back,
and find exactly the edits as gold; offsets across an emoji; bad files name the code and the record."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest

from app import cli
from app.commands.export import add_parser, export_prediction_run
from ner_core.data.formats import detect_format, read_file
from ner_core.data.formats.offsets import from_utf16, to_utf16
from ner_core.inference.tagger import PredictedEntity
from storage.datasets import ingest_dataset, load_documents
from storage.interop import prediction_run_export
from storage.predictions import finish_prediction_run, start_prediction_run, write_predictions

EMOJI = "😀"  # one code point, two UTF-16 units
# (doc_id, text, predicted [(start, end, label)]) in code points
DOCS = [
    ("d1", "张三在北京工作", [(0, 2, "PER"), (3, 5, "LOC")]),
    ("d2", f"{EMOJI}{EMOJI} 李四去了上海", [(3, 5, "PER")]),
    ("d3", "王五在腾讯上班", [(0, 2, "PER"), (3, 5, "ORG")]),
]
# what the reviewer leaves: d1 北京 relabelled GPE, d2 上海 added after the emoji, d3 腾讯 deleted
GOLD = {
    "张三在北京工作": [(0, 2, "PER"), (3, 5, "GPE")],
    f"{EMOJI}{EMOJI} 李四去了上海": [(3, 5, "PER"), (7, 9, "LOC")],
    "王五在腾讯上班": [(0, 2, "PER")],
}


@pytest.fixture
def pred_db(tmp_path) -> Path:
    db = tmp_path / "ner.duckdb"
    start_prediction_run(
        db,
        "pr1",
        model_dir="m",
        run_id=None,
        input_kind="texts",
        input_ref="t",
        config_json=None,
        replace=True,
    )
    write_predictions(
        db,
        "pr1",
        [(i, t, [PredictedEntity(s, e, lab, t[s:e], 0.9) for s, e, lab in ents]) for i, t, ents in DOCS],
    )
    finish_prediction_run(db, "pr1", status="completed", seconds=0.1)
    return db


def _gold(db: Path, name: str) -> dict[str, list[tuple[int, int, str]]]:
    return {d.text: [(e.start, e.end, e.label) for e in d.entities] for d in load_documents(db, name)}


def _export_cli(db: Path, fmt: str, out: Path, *extra: str) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["export", "--pred-run", "pr1", "--format", fmt, "--out", str(out), "--db", str(db), *extra]
    )
    assert args.func(args) == 0


# -------------------------------------------------------------------------------------------- offsets
def test_utf16_offsets_across_an_emoji():
    text = f"a{EMOJI}北京"
    assert [to_utf16(text, i) for i in range(len(text) + 1)] == [0, 1, 3, 4, 5]
    assert [from_utf16(text, u) for u in range(6)] == [0, 1, None, 2, 3, 4]  # 2 splits the emoji
    assert from_utf16(text, 6) is None and from_utf16(text, -1) is None
    assert from_utf16("北京", 2) == 2  # no astral character: the same offsets


# -------------------------------------------------------------------------------------- Label Studio
def test_label_studio_round_trip(pred_db, tmp_path, capsys):
    out = tmp_path / "tasks.json"
    _export_cli(pred_db, "label-studio", out, "--label-config", str(tmp_path / "config.xml"))
    assert "3 documents, 5 entities as label-studio" in capsys.readouterr().out
    assert '<Label value="PER"/>' in (tmp_path / "config.xml").read_text(encoding="utf-8")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    by_doc = {t["data"]["doc_id"]: t for t in tasks}
    li_si = by_doc["d2"]["predictions"][0]["result"][0]["value"]
    assert (li_si["start"], li_si["end"], li_si["text"]) == (3, 5, "李四")  # code points, as Label Studio
    assert by_doc["d1"]["predictions"][0]["model_version"] == "pr1"

    for t in tasks:  # the reviewer submits the predictions with their corrections
        t["annotations"] = [{"result": copy.deepcopy(t["predictions"][0]["result"]), "was_cancelled": False}]
    by_doc["d1"]["annotations"][0]["result"][1]["value"]["labels"] = ["GPE"]
    by_doc["d2"]["annotations"][0]["result"].append(
        {"type": "labels", "from_name": "label", "to_name": "text",
         "value": {"start": 7, "end": 9, "text": "上海", "labels": ["LOC"]}}
    )  # fmt: skip
    del by_doc["d3"]["annotations"][0]["result"][1]
    by_doc["d3"]["annotations"].append(  # a later annotation, cancelled: not the gold
        {"result": [], "was_cancelled": True, "updated_at": "2099-01-01T00:00:00Z"}
    )
    tasks.append({"data": {"text": "赵六在杭州"}, "predictions": tasks[0]["predictions"], "annotations": []})
    out.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")

    assert detect_format(out) == "label_studio"
    report = ingest_dataset(pred_db, "reviewed_ls", {"train": out})
    assert _gold(pred_db, "reviewed_ls") == GOLD  # the unannotated task is not a document
    [skipped] = [p for p in report.problems if p.code == "unannotated"]
    assert (skipped.severity, skipped.record) == ("warning", 4)


def test_label_studio_old_utf16_offsets_are_converted(tmp_path):
    """Label Studio before 2022 counted UTF-16 units: ``value.text`` tells which unit a task is in."""
    text = f"{EMOJI}{EMOJI} 李四去了上海"
    result = [
        {"type": "labels", "value": {"start": 5, "end": 7, "text": "李四", "labels": ["PER"]}},
        {"type": "labels", "value": {"start": 9, "end": 11, "text": "上海", "labels": ["LOC"]}},
    ]  # UTF-16 units
    p = tmp_path / "old.json"
    p.write_text(
        json.dumps([{"data": {"text": text}, "annotations": [{"result": result}]}]), encoding="utf-8"
    )
    res = read_file(p)
    assert [(e.start, e.end, e.label) for e in res.documents[0].entities] == [(3, 5, "PER"), (7, 9, "LOC")]
    assert not res.problems


def test_label_studio_latest_annotation_wins(tmp_path):
    def ann(label, when):
        value = {"start": 0, "end": 2, "text": "北京", "labels": [label]}
        return {"result": [{"type": "labels", "value": value}], "updated_at": when}

    p = tmp_path / "two.json"
    task = {
        "data": {"text": "北京"},
        "annotations": [ann("GPE", "2024-05-02T00:00:00Z"), ann("LOC", "2024-05-01T00:00:00Z")],
    }
    p.write_text(json.dumps([task]), encoding="utf-8")
    assert read_file(p).documents[0].entities[0].label == "GPE"


def test_label_studio_bad_task_names_code_and_record(tmp_path):
    good = {"data": {"text": "北京"}, "annotations": [{"result": []}]}
    bad_value = {
        "data": {"text": "北京"},
        "annotations": [{"result": [{"type": "labels", "value": {"start": "0"}}]}],
    }
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([good, {"predictions": []}, bad_value, good]), encoding="utf-8")
    res = read_file(p, format="label_studio")
    assert [(q.code, q.record, q.severity) for q in res.problems] == [
        ("bad_record", 2, "error"),
        ("bad_record", 3, "error"),
        ("duplicate_text", 4, "warning"),
    ]
    assert str(res.problems[0]).startswith(f"{p}:1 (record 2): error bad_record: expected a task")
    assert len(res.documents) == 2 and res.rejected == 2

    db = tmp_path / "ner.duckdb"
    rc = cli.main(
        ["ingest", "--db", str(db), "--name", "x", "--train", str(p), "--policy", "strict", "--no-prefect"]
    )
    assert rc == 2


# -------------------------------------------------------------------------------------------- doccano
def test_doccano_round_trip(pred_db, tmp_path, capsys):
    out = tmp_path / "doccano.jsonl"
    _export_cli(pred_db, "doccano", out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_doc = {r["doc_id"]: r for r in lines}
    assert by_doc["d2"]["label"] == [[5, 7, "PER"]]  # UTF-16 units, as doccano's annotator counts
    assert by_doc["d1"]["label"] == [[0, 2, "PER"], [3, 5, "LOC"]]

    by_doc["d1"]["label"][1][2] = "GPE"
    by_doc["d2"]["label"].append([9, 11, "LOC"])  # 上海, selected in doccano after the two emoji
    del by_doc["d3"]["label"][1]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    capsys.readouterr()

    assert detect_format(out) == "doccano"
    argv = ["ingest", "--db", str(pred_db), "--name", "reviewed_dc", "--train", str(out), "--no-prefect"]
    assert cli.main(argv) == 0
    assert _gold(pred_db, "reviewed_dc") == GOLD


def test_doccano_entities_export_with_relations(tmp_path):
    """Newer doccano exports (projects with relations) give ``entities`` with start_offset/end_offset."""
    rec = {
        "id": 3,
        "text": "张三在北京",
        "entities": [{"id": 1, "label": "PER", "start_offset": 0, "end_offset": 2}],
        "relations": [],
    }
    p = tmp_path / "rel.jsonl"
    p.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    assert detect_format(p) == "doccano"
    assert [(e.start, e.end, e.label) for e in read_file(p).documents[0].entities] == [(0, 2, "PER")]


def test_doccano_bad_lines_name_code_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = [
        json.dumps({"text": "北京", "label": [[0, 2, "LOC"]]}),
        json.dumps({"text": f"{EMOJI}北京", "label": [[1, 4, "LOC"]]}),  # 1 is inside the emoji
        "{not json",
        json.dumps({"text": "上海", "label": [[0, "2", "LOC"]]}),
    ]
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = read_file(p, format="doccano")
    assert [(q.code, q.line) for q in res.problems] == [
        ("span_out_of_range", 2),
        ("invalid_json", 3),
        ("bad_record", 4),
    ]
    assert "inside a character" in res.problems[0].message
    assert [d.text for d in res.documents] == ["北京"]


# ------------------------------------------------------------------------------------------ export
def test_export_unknown_run_and_missing_folder_write_nothing(pred_db, tmp_path):
    with pytest.raises(KeyError, match="no prediction run 'nope'"):
        export_prediction_run(pred_db, "nope", "doccano", tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_prediction_run(pred_db, "pr1", "doccano", tmp_path / "no" / "x.jsonl")
    assert not list(tmp_path.glob("x.jsonl*")) and not (tmp_path / "no").exists()
    run = prediction_run_export(pred_db, "pr1")
    assert run["labels"] == ["LOC", "ORG", "PER"]
    assert [d["doc_id"] for d in run["documents"]] == ["d1", "d2", "d3"]
