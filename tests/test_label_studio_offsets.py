"""Label Studio import decides the offset unit (code points or UTF-16 units) once per task, from the spans
that only one unit explains, falling back to the file's decision: never per span, never by slicing past
the end of the text."""

from __future__ import annotations

import json

from ner_core.data.formats import read_file
from ner_core.data.formats.label_studio import write_label_studio
from ner_core.data.formats.offsets import from_utf16, utf16_table


def span(start: int, end: int, text: str, label: str = "X") -> dict:
    return {"type": "labels", "value": {"start": start, "end": end, "text": text, "labels": [label]}}


def task(text: str, *spans: dict) -> dict:
    return {"data": {"text": text}, "annotations": [{"result": list(spans)}]}


def read(tmp_path, *tasks: dict):
    p = tmp_path / "export.json"
    p.write_text(json.dumps(list(tasks), ensure_ascii=False), encoding="utf-8")
    return read_file(p, format="label_studio")


def entities(res) -> list[list[tuple[int, int, str]]]:
    return [[(e.start, e.end, d.text[e.start : e.end]) for e in d.entities] for d in res.documents]


def test_a_utf16_span_ending_past_the_code_points_is_the_emoji(tmp_path):
    """'深圳👍': [2, 4) in UTF-16 units is the emoji; in code points it would end past the text (3)."""
    res = read(tmp_path, task("深圳👍", span(2, 4, "👍")))
    assert not res.problems, [str(p) for p in res.problems]
    assert entities(res) == [[(2, 3, "👍")]]


def test_a_span_that_fits_both_units_follows_the_task_decision(tmp_path):
    """'😀aa': [2, 3) 'a' fits in both units (the second 'a' in code points, the first in UTF-16 units);
    the task's emoji span [0, 2), which only UTF-16 explains, decides: the first 'a'."""
    res = read(tmp_path, task("😀aa", span(0, 2, "😀"), span(2, 3, "a")))
    assert not res.problems, [str(p) for p in res.problems]
    assert entities(res) == [[(0, 1, "😀"), (1, 2, "a")]]


def test_a_task_without_a_deciding_span_follows_the_file(tmp_path):
    res = read(tmp_path, task("😀aa", span(2, 3, "a")), task("深圳👍", span(2, 4, "👍")))
    assert not res.problems, [str(p) for p in res.problems]
    assert entities(res) == [[(1, 2, "a")], [(2, 3, "👍")]]


def test_without_any_deciding_span_offsets_are_code_points(tmp_path):
    """Label Studio counts code points since 2022: an undecided file is read that way."""
    res = read(tmp_path, task("😀aa", span(2, 3, "a")), task("北京", span(0, 2, "北京")))
    assert not res.problems
    assert entities(res) == [[(2, 3, "a")], [(0, 2, "北京")]]


def test_adjacent_one_character_spans_stay_two_entities(tmp_path):
    """'😀李李' with [2, 3) and [3, 4) in UTF-16 units: the second only fits UTF-16, so both are read
    that way ([1, 2) and [2, 3)), not collapsed into one with a duplicate warning."""
    res = read(tmp_path, task("😀李李", span(2, 3, "李"), span(3, 4, "李")))
    assert not res.problems, [str(p) for p in res.problems]
    assert entities(res) == [[(1, 2, "李"), (2, 3, "李")]]


def test_a_task_mixing_both_units_is_refused_with_one_line(tmp_path):
    text = "😀😀 李四去了上海"
    res = read(
        tmp_path,
        task(text, span(5, 7, "李四", "PER"), span(7, 9, "上海", "LOC")),  # UTF-16, then code points
        task("北京", span(0, 2, "北京")),
    )
    [prob] = res.problems
    assert (prob.code, prob.severity, prob.record) == ("mention_mismatch", "error", 1)
    assert "[7, 9) LOC '上海' fits only in code points" in prob.message
    assert "[5, 7) PER '李四' only in UTF-16 units" in prob.message
    assert res.rejected == 1 and entities(res) == [[(0, 2, "北京")]]


def test_utf16_export_round_trips(tmp_path):
    """What the writer writes in UTF-16 units (for old Label Studio versions) reads back unchanged, the
    three cases above in one file."""
    docs = [
        {"doc_id": "a", "text": "深圳👍", "entities": [{"start": 2, "end": 3, "label": "E"}]},
        {"doc_id": "b", "text": "😀aa", "entities": [{"start": 1, "end": 2, "label": "E"}]},
        {
            "doc_id": "c",
            "text": "😀李李",
            "entities": [{"start": 1, "end": 2, "label": "E"}, {"start": 2, "end": 3, "label": "E"}],
        },
    ]
    p = tmp_path / "tasks.json"
    write_label_studio(p, docs, model_version="m", offsets="utf16")
    tasks = json.loads(p.read_text(encoding="utf-8"))
    for t in tasks:
        t["annotations"] = [{"result": t["predictions"][0]["result"]}]
    p.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    res = read_file(p, format="label_studio")
    assert not res.problems, [str(q) for q in res.problems]
    assert [[(e.start, e.end) for e in d.entities] for d in res.documents] == [
        [(2, 3)],
        [(1, 2)],
        [(1, 2), (2, 3)],
    ]


def test_utf16_table_equals_from_utf16_at_every_offset():
    """The one-pass table the reader uses (instead of a scan of the text per span) is from_utf16."""
    for text in ["", "北京", "😀", "😀aa", "深圳👍", "a😀😀b𠀀c", "😀李李"]:
        units = sum(2 if ord(c) > 0xFFFF else 1 for c in text)
        assert utf16_table(text) == [from_utf16(text, u) for u in range(units + 1)], text
