"""Readers: detection, every format, and one crafted bad file per problem code (tests/data/bad)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ner_core.data.formats
from ner_core.data.formats import (
    FORMATS,
    ParseResult,
    Problem,
    detect_format,
    format_names,
    get_reader,
    read_file,
    registry,
)
from ner_core.data.formats import problems as problems_module
from ner_core.data.formats.problems import CODES
from ner_core.data.formats.registry import register
from ner_core.documents import Document

BAD = Path(__file__).resolve().parent / "data" / "bad"


def _spans(doc: Document) -> list[tuple[int, int, str]]:
    return [(e.start, e.end, e.label) for e in doc.entities]


# (file, code, severity, line, record, doc_ids kept under repair, doc_ids kept under strict)
CASES = [
    ("length_mismatch.json", "length_mismatch", "error", 3, 2, ["length_mismatch:1"], ["length_mismatch:1"]),
    ("unknown_tag.conll", "unknown_tag", "error", 4, 2, ["unknown_tag:1"], ["unknown_tag:1"]),
    (
        "invalid_transition.conll",
        "invalid_transition",
        None,
        5,
        2,
        ["invalid_transition:1", "invalid_transition:4"],
        ["invalid_transition:1"],
    ),
    (
        "span_out_of_range.jsonl",
        "span_out_of_range",
        "error",
        2,
        2,
        ["span_out_of_range:1"],
        ["span_out_of_range:1"],
    ),
    (  # repair keeps the record and drops the nested span (tests/test_overlaps.py); strict rejects it
        "span_overlap.jsonl",
        {"repair": "overlap_dropped", "strict": "span_overlap"},
        None,
        1,
        1,
        ["span_overlap:1", "span_overlap:2"],
        ["span_overlap:2"],
    ),
    ("empty_text.jsonl", "empty_text", "error", 2, 2, ["empty_text:1"], ["empty_text:1"]),
    (
        "duplicate_text.txt",
        "duplicate_text",
        "warning",
        3,
        3,
        ["duplicate_text:1", "duplicate_text:2", "duplicate_text:3"],
        ["duplicate_text:1", "duplicate_text:2", "duplicate_text:3"],
    ),
    ("missing_char.conll", "missing_char", "warning", 2, 1, ["missing_char:1"], ["missing_char:1"]),
    ("missing_tag.conll", "missing_tag", "error", 2, 1, ["missing_tag:4"], ["missing_tag:4"]),
    (
        "invalid_utf8.conll",
        "invalid_utf8",
        "error",
        3,
        None,
        ["invalid_utf8:1", "invalid_utf8:5"],
        ["invalid_utf8:1", "invalid_utf8:5"],
    ),
    (
        "invalid_json_line.jsonl",
        "invalid_json",
        "error",
        2,
        2,
        ["invalid_json_line:1"],
        ["invalid_json_line:1"],
    ),
    ("invalid_json.json", "invalid_json", "error", 4, 2, [], []),
    ("bad_record.json", "bad_record", "error", 3, 2, ["bad_record:1"], ["bad_record:1"]),
    (
        "multi_char_token.conll",
        "multi_char_token",
        "warning",
        1,
        1,
        ["multi_char_token:1"],
        ["multi_char_token:1"],
    ),
    (
        "duplicate_entity.json",
        "duplicate_entity",
        "warning",
        1,
        1,
        ["duplicate_entity:1"],
        ["duplicate_entity:1"],
    ),
]


@pytest.mark.parametrize("policy", ["repair", "strict"])
@pytest.mark.parametrize("fname,code,severity,line,record,kept_repair,kept_strict", CASES)
def test_bad_file_reports_code_and_line(
    fname, code, severity, line, record, kept_repair, kept_strict, policy
):
    res = read_file(BAD / fname, policy=policy)
    code = code[policy] if isinstance(code, dict) else code
    found = [p for p in res.problems if p.code == code]
    assert found, f"{fname}: expected a {code} problem, got {[str(p) for p in res.problems]}"
    p = found[0]
    assert p.line == line
    assert p.record == record
    assert p.file == str(BAD / fname)
    expected_sev = severity or ("warning" if policy == "repair" else "error")
    assert p.severity == expected_sev
    kept = kept_repair if policy == "repair" else kept_strict
    assert [d.doc_id for d in res.documents] == kept
    assert res.rejected == sum(1 for q in {(q.record, q.line) for q in res.errors}) or res.fatal


def test_every_problem_code_has_a_crafted_file():
    codes = {k for c in CASES for k in (c[1].values() if isinstance(c[1], dict) else [c[1]])}
    codes |= {"mention_mismatch"}
    documented = set(CODES) - {"duplicate_across_splits"}  # found by the ingest: tests/test_storage.py
    documented -= {"unannotated"}  # Label Studio tasks: tests/test_interop.py
    assert documented == {
        "invalid_utf8",
        "invalid_json",
        "bad_record",
        "empty_text",
        "length_mismatch",
        "missing_tag",
        "unknown_tag",
        "invalid_transition",
        "span_out_of_range",
        "span_overlap",
        "mention_mismatch",
        "missing_char",
        "multi_char_token",
        "duplicate_entity",
        "duplicate_text",
        "overlap_dropped",
    }
    assert documented <= codes


def test_problem_codes_are_documented_once():
    """CODES is the table of the problems module, row by row; severities are error and/or warning."""
    rows = re.findall(r"^([a-z0-9_]+) +(error|warning)\b", problems_module.__doc__, re.M)
    assert tuple(code for code, _ in rows) == CODES
    assert Problem(file="f", line=2, code="empty_text", severity="error", message="m").severity == "error"


def test_registry_lists_exactly_the_documented_formats():
    documented = re.findall(r"^``(\w+)``", ner_core.data.formats.__doc__, re.M)
    assert FORMATS == format_names() == tuple(documented)
    assert [get_reader(name).name for name in FORMATS] == list(FORMATS)
    assert get_reader("bmes").read is get_reader("conll").read  # one reader, two tag families
    assert {name for name in FORMATS if get_reader(name).tagged} == {"seed_json", "conll", "bmes"}
    with pytest.raises(ValueError, match="unknown format 'xml'; registered formats: .*'seed_json'"):
        get_reader("xml")


def test_a_new_format_is_one_registration(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # registrations end with the test

    @register("shouting")
    def read_shouting(ctx, data: bytes) -> bool:
        for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            ctx.add(n, line.upper(), [], n, n)
        return True

    p = _write(tmp_path, "loud.txt", "ab\ncd\n")
    res = read_file(p, "shouting")
    assert isinstance(res, ParseResult) and res.format == "shouting" and res.scheme is None
    assert [(d.doc_id, d.text) for d in res.documents] == [("loud:1", "AB"), ("loud:2", "CD")]
    assert "shouting" in format_names() and "shouting" not in FORMATS
    with pytest.raises(ValueError, match="registered already"):
        register("shouting")(read_shouting)
    with pytest.raises(ValueError, match="format must be one of"):
        read_file(p, "whispering")
    # ingest takes it by name too
    from ner_core.data.ingest import plan_ingest, prepare_ingest

    plan = plan_ingest(prepare_ingest("loud", {"train": p}, format="shouting"))
    assert [f.format for f in plan.files] == ["shouting"]


def test_fatal_json_file_has_no_documents():
    res = read_file(BAD / "invalid_json.json")
    assert res.fatal and res.documents == [] and res.format == "seed_json"


def test_mention_mismatch_repair_moves_span_or_rejects():
    rep = read_file(BAD / "mention_mismatch.json", policy="repair")
    assert [d.doc_id for d in rep.documents] == ["mention_mismatch:1", "mention_mismatch:2"]
    assert _spans(rep.documents[1]) == [(2, 4, "address")]  # moved from [1, 3) onto '北京'
    moved = [p for p in rep.problems if p.code == "mention_mismatch" and p.severity == "warning"]
    assert [p.line for p in moved] == [2]
    gone = [p for p in rep.problems if p.code == "mention_mismatch" and p.severity == "error"]
    assert [p.line for p in gone] == [3]
    strict = read_file(BAD / "mention_mismatch.json", policy="strict")
    assert [d.doc_id for d in strict.documents] == ["mention_mismatch:1"]


def test_repaired_transition_gives_b_span():
    res = read_file(BAD / "invalid_transition.conll", policy="repair")
    assert _spans(res.documents[1]) == [(1, 3, "LOC")]
    assert res.documents[1].text == "在京城"


def test_missing_char_becomes_space_and_keeps_offsets():
    res = read_file(BAD / "missing_char.conll")
    doc = res.documents[0]
    assert doc.text == "中 国" and _spans(doc) == [(2, 3, "LOC")]


def test_multi_char_token_spreads_tag():
    doc = read_file(BAD / "multi_char_token.conll").documents[0]
    assert doc.text == "IBM公司" and _spans(doc) == [(0, 5, "ORG")]


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_detect_each_format(tmp_path):
    files = {
        "seed_json": json.dumps([["中国", "B I"]], ensure_ascii=False),
        "seed_texts": json.dumps(["中国", "北京"], ensure_ascii=False),
        "conll": "中 B-LOC\n国 I-LOC\n\n人 O\n",
        "bmes": "张 B-NAME\n三 E-NAME\n\n好 S-PER\n",
        "cluener": json.dumps({"text": "北京", "label": {"address": {"北京": [[0, 1]]}}}, ensure_ascii=False),
        "jsonl": json.dumps({"text": "北京", "entities": []}, ensure_ascii=False),
        "text": "今天天气很好。\n北京欢迎你。\n",
        "label_studio": json.dumps([{"data": {"text": "北京"}, "annotations": []}], ensure_ascii=False),
        "doccano": json.dumps({"text": "北京", "label": [[0, 2, "LOC"]]}, ensure_ascii=False),
    }
    assert set(files) == set(FORMATS)
    for fmt, content in files.items():
        assert detect_format(_write(tmp_path, f"f_{fmt}.dat", content)) == fmt


def test_detect_undecidable_names_file(tmp_path):
    p = _write(tmp_path, "weird.json", "[ 42, 43 ]")
    with pytest.raises(ValueError, match="weird.json"):
        detect_format(p)
    empty = _write(tmp_path, "empty.txt", "")
    with pytest.raises(ValueError, match="empty.txt.*empty file"):
        detect_format(empty)


def test_seed_json_untyped_label_and_doc_ids(tmp_path):
    p = _write(
        tmp_path, "train.txt", json.dumps([["A中国人", "O B I O"], ["北京", "B I"]], ensure_ascii=False)
    )
    res = read_file(p, untyped_label="FIN", split="train")
    assert res.format == "seed_json" and res.labels == ["FIN"]
    assert [d.doc_id for d in res.documents] == ["train:1", "train:2"]
    assert _spans(res.documents[0]) == [(1, 3, "FIN")]
    assert res.documents[0].split == "train" and res.documents[0].source == str(p)
    assert res.documents[1].line == 1  # a one-line JSON array: every record on line 1


def test_seed_json_record_lines(tmp_path):
    p = _write(tmp_path, "d.json", '[\n  ["中国", "B I"],\n  ["北京",\n "B I"],\n  ["好", "O"]\n]\n')
    res = read_file(p)
    assert [d.line for d in res.documents] == [2, 3, 5]


def test_seed_texts(tmp_path):
    p = _write(tmp_path, "test.txt", json.dumps(["第一篇", "第二篇"], ensure_ascii=False))
    res = read_file(p)
    assert res.format == "seed_texts" and [d.text for d in res.documents] == ["第一篇", "第二篇"]
    assert all(d.entities == [] for d in res.documents)


def test_conll_tab_extra_columns_and_tag_column(tmp_path):
    p = _write(tmp_path, "x.conll", "中\tNR\tB-LOC\n国\tNR\tI-LOC\n人\tNN\tO\n")
    assert _spans(read_file(p).documents[0]) == [(0, 2, "LOC")]
    q = _write(tmp_path, "y.conll", "中\tB-LOC\tNR\n国\tI-LOC\tNR\n")
    assert _spans(read_file(q, "conll", tag_column=1).documents[0]) == [(0, 2, "LOC")]


def test_conll_space_char_crlf_and_multiple_blank_lines(tmp_path):
    p = _write(tmp_path, "s.conll", "A\tB-ORG\n \tI-ORG\nB\tI-ORG\r\n\r\n\n\n北\tB-LOC\n")
    res = read_file(p)
    assert [d.text for d in res.documents] == ["A B", "北"]
    assert [d.line for d in res.documents] == [1, 7]
    assert _spans(res.documents[0]) == [(0, 3, "ORG")]


def test_iob1_scheme(tmp_path):
    p = _write(tmp_path, "iob1.conll", "张\tI-PER\n三\tI-PER\n李\tB-PER\n四\tI-PER\n在\tO\n京\tI-LOC\n")
    res = read_file(p, "conll", scheme="IOB1")
    assert _spans(res.documents[0]) == [(0, 2, "PER"), (2, 4, "PER"), (5, 6, "LOC")]
    assert res.problems == []


def test_bmes_and_bioes(tmp_path):
    p = _write(tmp_path, "r.char.bmes", "张 B-NAME\n小 M-NAME\n三 E-NAME\n是 O\n汉 S-RACE\n")
    res = read_file(p)
    assert res.format == "bmes" and res.scheme == "BMES"
    assert _spans(res.documents[0]) == [(0, 3, "NAME"), (4, 5, "RACE")]
    q = _write(tmp_path, "b.conll", "张 B-PER\n小 I-PER\n三 E-PER\n汉 S-X\n")
    res = read_file(q)
    assert res.format == "bmes" and res.scheme == "BIOES"
    assert _spans(res.documents[0]) == [(0, 3, "PER"), (3, 4, "X")]


def test_cluener_inclusive_end_and_no_label(tmp_path):
    lines = [
        {
            "text": "浙商银行企业信贷部叶老桂博士",
            "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}},
        },
        {"text": "没有标签的测试文本"},
    ]
    p = _write(tmp_path, "dev.json", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    res = read_file(p)
    assert res.format == "cluener" and res.labels == ["company", "name"]
    assert _spans(res.documents[0]) == [(0, 4, "company"), (9, 12, "name")]
    assert res.documents[1].entities == [] and res.problems == []


def test_jsonl_half_open(tmp_path):
    p = _write(
        tmp_path,
        "a.jsonl",
        json.dumps(
            {"text": "我在北京", "entities": [{"start": 2, "end": 4, "label": "LOC", "text": "北京"}]},
            ensure_ascii=False,
        )
        + "\n\n",
    )
    res = read_file(p)
    assert _spans(res.documents[0]) == [(2, 4, "LOC")] and res.problems == []


def test_text_format_one_doc_per_line(tmp_path):
    p = _write(tmp_path, "raw.txt", "第一行\r\n第二行 with English 123\n")
    res = read_file(p, "text")
    assert [d.text for d in res.documents] == ["第一行", "第二行 with English 123"]
    assert [d.doc_id for d in res.documents] == ["raw:1", "raw:2"]


def test_invalid_arguments(tmp_path):
    p = _write(tmp_path, "raw.txt", "x\n")
    with pytest.raises(ValueError, match="format must be one of"):
        read_file(p, "xml")
    with pytest.raises(ValueError, match="policy must be one of"):
        read_file(p, policy="lenient")
    with pytest.raises(ValueError, match="scheme must be one of"):
        read_file(p, "conll", scheme="BILOU")
    with pytest.raises(ValueError, match="untyped_label"):
        read_file(p, untyped_label="A B")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_file(tmp_path / "nope.txt")
