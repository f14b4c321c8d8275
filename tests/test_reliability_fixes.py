"""Fixes for what the reliability campaign (bench/reliability) found: each test fails without its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ner_core.formats import detect_format, read_file

DEEP = 100_000  # far past Python's recursion limit


def _deep(n: int = DEEP) -> str:
    return "[" * n + "]" * n


# ---------------------------------------------------------------- 1. deeply nested JSON


@pytest.mark.parametrize("fmt", ["jsonl", "cluener", "doccano"])
def test_deep_json_line_is_invalid_json_with_its_line(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / "d.jsonl"
    first = {"doccano": '{"text": "ab", "label": []}', "cluener": '{"text": "ab", "label": {}}'}
    p.write_text(
        first.get(fmt, '{"text": "ab", "entities": []}')
        + "\n"
        + '{"text": "a", "entities": '
        + _deep()
        + "}\n"
    )
    res = read_file(p, fmt)
    assert [(x.code, x.line, x.record) for x in res.problems] == [("invalid_json", 2, 2)]
    assert "nested too deeply" in res.problems[0].message
    assert len(res.records) == 1  # the good first line is kept


@pytest.mark.parametrize("fmt", ["seed_json", "seed_texts", "label_studio"])
def test_deep_json_array_element_is_invalid_json(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / "d.json"
    p.write_text('[\n"first",\n' + _deep() + "\n]\n")
    res = read_file(p, fmt)
    assert res.fatal
    assert [(x.code, x.line, x.record) for x in res.problems] == [("invalid_json", 3, 2)]


def test_detect_deep_first_line_names_file_and_code(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "entities": ' + _deep() + "}\n")
    with pytest.raises(ValueError, match=r"d\.jsonl: line 1: invalid_json: JSON nested too deeply"):
        detect_format(p)
