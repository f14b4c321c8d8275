"""Format detection from a file's first bytes (the built-in formats)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ner_core.data.formats.registry import format_names

_TAG_LINE_RE = re.compile(r"^([A-Za-z]{1,2}-\S+|[OBIMES])$")  # tag-like last column


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path`` from its content (first 64 KiB). Raises ``ValueError`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    with p.open("rb") as fh:
        head_bytes = fh.read(65536)
    head = head_bytes.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = head.lstrip()
    if not stripped:
        raise ValueError(
            f"{p}: cannot detect the format of an empty file; pass format= one of {format_names()}"
        )
    if stripped[0] == "[":
        rest = stripped[1:].lstrip()
        if rest.startswith("["):
            return "seed_json"
        if rest.startswith('"') or rest.startswith("]"):
            return "seed_texts"
        if rest.startswith("{"):
            return "label_studio"  # an array of task objects: Label Studio's JSON export
        raise ValueError(
            f"{p}: a JSON array, but its first element is neither a [text, tags] pair, a string nor a "
            f"Label Studio task (starts {rest[:20]!r}); pass format= one of {format_names()}"
        )
    if stripped[0] == "{":
        first = stripped.split("\n", 1)[0].strip()
        try:
            obj = json.loads(first)
        except RecursionError:
            raise ValueError(
                f"{p}: line 1: invalid_json: JSON nested too deeply to read; pass format= one of "
                f"{format_names()}"
            ) from None
        except json.JSONDecodeError:
            raise ValueError(
                f"{p}: starts with '{{' but its first line is not a complete JSON object "
                f"(JSON lines expected: one object per line); pass format= one of {format_names()}"
            ) from None
        if isinstance(obj, dict) and "text" in obj:
            if "label" in obj and isinstance(obj["label"], dict):
                return "cluener"
            if _is_doccano(obj):
                return "doccano"
            return "jsonl"
        raise ValueError(
            f"{p}: JSON object on the first line lacks a 'text' key; pass format= one of {format_names()}"
        )
    lines = [ln.rstrip("\r") for ln in head.split("\n")[:400]]
    nonblank = [ln for ln in lines if ln.strip()]
    if len(head_bytes) == 65536 and nonblank:
        nonblank = nonblank[:-1]  # the last line may be cut
    tagged = 0
    prefixes: set[str] = set()
    for ln in nonblank:
        parts = ln.split("\t") if "\t" in ln else [x for x in ln.split(" ") if x]
        if len(parts) >= 2 and len(parts[0]) <= 2 and _TAG_LINE_RE.match(parts[-1]):
            tagged += 1
            prefixes.add(parts[-1][0])
    if p.suffix.lower() == ".bmes" and tagged:
        return "bmes"
    if nonblank and tagged >= 0.6 * len(nonblank):
        return "bmes" if prefixes & {"M", "E", "S"} else "conll"
    return "text"


def _is_doccano(obj: dict) -> bool:
    """doccano's sequence labelling: ``label`` as a list of triples, or ``entities`` with offsets."""
    if isinstance(obj.get("label"), list):
        return True
    ents = obj.get("entities")
    return isinstance(ents, list) and bool(ents) and isinstance(ents[0], dict) and "start_offset" in ents[0]
