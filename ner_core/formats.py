"""Readers for every input format, with validation that records each problem it finds.

Formats (:data:`FORMATS`), detected from the content by :func:`detect_format` or named explicitly:

``seed_json``  one JSON array of ``[text, "B I O ..."]`` pairs (one space-separated tag per character;
               untyped ``B``/``I``/``O`` get ``untyped_label``), the seed project's training files.
``seed_texts`` one JSON array of plain strings (texts to predict, no entities).
``conll``      one character and its tag per line, TAB or SPACE separated, blank line between sentences,
               extra columns allowed (``tag_column``); BIO (default) or IOB1 (``scheme="IOB1"``).
``bmes``       the same layout with BMES tags (B-/M-/E-/S-/O, Resume NER) or BIOES; converted to spans.
``cluener``    JSON lines ``{"text": ..., "label": {type: {mention: [[start, end_inclusive], ...]}}}``.
``jsonl``      JSON lines ``{"text": ..., "entities": [{"start": s, "end": e, "label": l}, ...]}``, half-open.
``text``       plain text, one document per line.

Every problem is a :class:`Problem` with the file, the line and/or record number, a code and a message.
Error-severity problems reject the record (it is not in ``documents``); warnings keep it. Codes:

==================== ======== =================================================================
code                 severity meaning
==================== ======== =================================================================
invalid_utf8         error    bytes that are not UTF-8 (line formats: that record; JSON array: file)
invalid_json         error    not parseable JSON (JSON array formats: fatal for the file)
bad_record           error    a record of the wrong shape (not a pair, no ``text``, wrong types, ...)
empty_text           error    a record whose text is empty or only whitespace
length_mismatch      error    number of tags differs from number of characters
missing_tag          error    a CoNLL line without a tag column
unknown_tag          error    a tag whose prefix/label the scheme does not know
invalid_transition   error in ``strict``; warning in ``repair`` (the tags are repaired, e.g. a stray
                              ``I-X`` becomes ``B-X``)
span_out_of_range    error    an entity outside the text, or with end <= start
span_overlap         error    two entities of a record overlap (nested or crossing)
mention_mismatch     error in ``strict`` or when the mention does not occur in the text; warning when
                              ``repair`` moved the span to the nearest occurrence of the mention
missing_char         warning  a CoNLL line lacking its character. MSRA's train file has 57 lines ``0<TAB>``
                              where a whitespace character was lost upstream (``<ADDREX TYPE=...``): the
                              character is restored as a space tagged ``O``, so sentence and entity counts
                              stay as in SOURCES.md (the text gains those 57 spaces).
multi_char_token     warning  a CoNLL token longer than one character: its tag is spread over its characters
duplicate_entity     warning  the same span and label listed twice (kept once)
duplicate_text       warning  the same text occurs earlier in the file (kept; the message names that line)
==================== ======== =================================================================

Tags are only validated here; span extraction, validation messages and repairs for records that are not
clean come from :mod:`ner_core.schemes`. Clean records (the vast majority) take a fast single-pass path
whose spans are tested equal to ``schemes.tags_to_spans``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ner_core import schemes
from ner_core.documents import Document, Entity
from ner_core.schemes import Scheme

FORMATS = ("seed_json", "seed_texts", "conll", "bmes", "cluener", "jsonl", "text")
POLICIES = ("strict", "repair")
_MAX_TAG_PROBLEMS_PER_RECORD = 5


class Problem(BaseModel):
    """One validation finding. ``line`` is 1-based in the file; ``record`` is the 1-based record number."""

    file: str
    line: int | None = None
    record: int | None = None
    code: str
    severity: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.record is not None:
            where += f" (record {self.record})"
        return f"{where}: {self.severity} {self.code}: {self.message}"


# One accepted record, before it becomes a Document: (doc_id, text, spans [(start, end, label)], line).
Record = tuple[str, str, list[tuple[int, int, str]], "int | None"]


@dataclass
class ParseResult:
    """What a reader returns. ``fatal`` means the file could not be read at all (no documents).

    ``records`` is the light internal form (``(doc_id, text, [(start, end, label)], line)``) that storage
    writes without building pydantic objects; ``documents`` builds :class:`Document` objects from it on
    first access (cached).
    """

    records: list[Record]
    problems: list[Problem]
    format: str
    labels: list[str]
    source: str
    sha256: str
    split: str | None = None
    scheme: Scheme | None = None
    fatal: bool = False
    rejected: int = 0  # records rejected by error-severity problems
    _documents: list[Document] | None = field(default=None, repr=False)

    @property
    def documents(self) -> list[Document]:
        if self._documents is None:
            self._documents = [_doc(i, t, sp, self.split, self.source, ln) for i, t, sp, ln in self.records]
        return self._documents

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


# --------------------------------------------------------------------------------------------- helpers


def _problem(
    file: str, line: int | None, record: int | None, code: str, severity: str, message: str
) -> Problem:
    return Problem.model_construct(
        file=file, line=line, record=record, code=code, severity=severity, message=message
    )


def _doc(
    doc_id: str,
    text: str,
    spans: list[tuple[int, int, str]],
    split: str | None,
    source: str,
    line: int | None,
) -> Document:
    ents = [Entity.model_construct(start=s, end=e, label=lab) for s, e, lab in spans]
    return Document.model_construct(
        doc_id=doc_id, text=text, entities=ents, split=split, source=source, line=line
    )


def _normalise_scheme(scheme: Scheme | str | None, default: Scheme) -> Scheme:
    """``scheme`` by its name in any case (``"bio"``; no other alias), or ``default`` for ``None``."""
    if scheme is None:
        return default
    name = str(getattr(scheme, "value", scheme)).upper()
    if name not in Scheme.__members__:
        raise ValueError(f"scheme must be one of {tuple(s.value for s in Scheme)}, got {scheme!r}")
    return Scheme[name]


_TAG_LINE_RE = re.compile(r"^([A-Za-z]{1,2}-\S+|[OBIMES])$")  # tag-like last column


# ------------------------------------------------------------------------------------------ detection


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
        raise ValueError(f"{p}: cannot detect the format of an empty file; pass format= one of {FORMATS}")
    if stripped[0] == "[":
        rest = stripped[1:].lstrip()
        if rest.startswith("["):
            return "seed_json"
        if rest.startswith('"') or rest.startswith("]"):
            return "seed_texts"
        raise ValueError(
            f"{p}: a JSON array, but its first element is neither a [text, tags] pair nor a string "
            f"(starts {rest[:20]!r}); pass format= one of {FORMATS}"
        )
    if stripped[0] == "{":
        first = stripped.split("\n", 1)[0].strip()
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            raise ValueError(
                f"{p}: starts with '{{' but its first line is not a complete JSON object (JSON lines expected: "
                f"one object per line); pass format= one of {FORMATS}"
            ) from None
        if isinstance(obj, dict) and "text" in obj:
            if "label" in obj and isinstance(obj["label"], dict):
                return "cluener"
            return "jsonl"
        raise ValueError(
            f"{p}: JSON object on the first line lacks a 'text' key; pass format= one of {FORMATS}"
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


# ----------------------------------------------------------------------------------------- tag decoding


def _decode_tags(
    tags: list[str],
    scheme: Scheme,
    policy: str,
    file: str,
    record: int | None,
    line_of: Any,
    problems: list[Problem],
) -> list[tuple[int, int, str]] | None:
    """Spans of ``tags``; ``None`` when the record must be rejected (problems appended).

    ``line_of(position)`` gives the file line of a tag position (or ``None``).
    """
    spans = schemes.fast_spans(tags, scheme)
    if spans is not None:
        return spans
    found = schemes.validate_tags(tags, scheme)
    unknown = [tp for tp in found if tp.code == "unknown_tag"]
    bad = [tp for tp in found if tp.code != "unknown_tag"]
    if unknown:
        for tp in unknown[:_MAX_TAG_PROBLEMS_PER_RECORD]:
            problems.append(_problem(file, line_of(tp.position), record, "unknown_tag", "error", tp.message))
        if len(unknown) > _MAX_TAG_PROBLEMS_PER_RECORD:
            problems.append(
                _problem(
                    file,
                    line_of(unknown[0].position),
                    record,
                    "unknown_tag",
                    "error",
                    f"... and {len(unknown) - _MAX_TAG_PROBLEMS_PER_RECORD} more unknown tags",
                )
            )
        return None
    if not bad:  # the fast path is stricter than the scheme: trust the scheme module
        return [(e.start, e.end, e.label) for e in schemes.tags_to_spans(tags, scheme)]
    if policy == "strict":
        for tp in bad[:_MAX_TAG_PROBLEMS_PER_RECORD]:
            problems.append(
                _problem(
                    file, line_of(tp.position), record, tp.code, "error", f"{tp.message} (strict: rejected)"
                )
            )
        return None
    repaired, warnings = schemes.repair_tags(tags, scheme)
    for w in warnings or bad:
        pos = getattr(w, "position", None)
        msg = getattr(w, "message", None) or str(w)
        problems.append(
            _problem(
                file,
                line_of(pos) if pos is not None else line_of(0),
                record,
                "invalid_transition",
                "warning",
                f"repaired {msg}",
            )
        )
    return [(e.start, e.end, e.label) for e in schemes.tags_to_spans(repaired, scheme)]


def _type_untyped(tags: list[str], untyped_label: str) -> list[str]:
    """``B``/``I``/``E``/``S``/``M`` without a type get ``untyped_label``; other tags are left alone."""
    out = tags
    for i, t in enumerate(tags):
        if len(t) == 1 and t != "O" and t in "BIMES":
            if out is tags:
                out = list(tags)
            out[i] = f"{t}-{untyped_label}"
    return out


# ------------------------------------------------------------------------------------------- readers


class _Ctx:
    def __init__(self, path: Path, split: str | None, policy: str, untyped_label: str, scheme: Scheme):
        self.file = str(path)
        self.stem = path.stem
        self.split = split
        self.policy = policy
        self.untyped_label = untyped_label
        self.scheme = scheme
        self.records: list[Record] = []
        self.problems: list[Problem] = []
        self.rejected = 0
        self.seen_text: dict[str, int] = {}

    def add(
        self, key: int, text: str, spans: list[tuple[int, int, str]], line: int | None, record: int | None
    ) -> None:
        prev = self.seen_text.get(text)
        if prev is not None:
            self.problems.append(
                _problem(
                    self.file,
                    line,
                    record,
                    "duplicate_text",
                    "warning",
                    f"same text as {self.stem}:{prev} (kept)",
                )
            )
        else:
            self.seen_text[text] = key
        self.records.append((f"{self.stem}:{key}", text, spans, line))

    def err(self, line: int | None, record: int | None, code: str, message: str) -> None:
        self.problems.append(_problem(self.file, line, record, code, "error", message))

    def warn(self, line: int | None, record: int | None, code: str, message: str) -> None:
        self.problems.append(_problem(self.file, line, record, code, "warning", message))


def _decode_lines(ctx: _Ctx, data: bytes) -> list[str | None]:
    """Lines of the file; ``None`` for a line that is not UTF-8 (an ``invalid_utf8`` problem is recorded)."""
    try:
        text = data.decode("utf-8")
        bad = False
    except UnicodeDecodeError:
        bad = True
    if not bad:
        lines: list[str | None] = text.lstrip("\ufeff").split("\n")  # type: ignore[assignment]
    else:
        lines = []
        for i, raw in enumerate(data.split(b"\n"), start=1):
            try:
                lines.append(raw.decode("utf-8").lstrip("\ufeff") if i == 1 else raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                ctx.err(
                    i,
                    None,
                    "invalid_utf8",
                    f"byte {exc.object[exc.start : exc.start + 1]!r} at column {exc.start + 1} is not UTF-8",
                )
                lines.append(None)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_json_array(ctx: _Ctx, data: bytes) -> list[tuple[int, int, Any]] | None:
    """Elements of a top-level JSON array with their (record, line); ``None`` (fatal problem) if unreadable."""
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        ctx.err(
            line,
            None,
            "invalid_utf8",
            f"byte {data[exc.start : exc.start + 1]!r} is not UTF-8; file not read",
        )
        return None
    dec = json.JSONDecoder()
    n = len(text)
    ws = " \t\r\n"
    i = 0
    while i < n and text[i] in ws:
        i += 1
    if i >= n or text[i] != "[":
        ctx.err(text.count("\n", 0, i) + 1, None, "invalid_json", "expected a JSON array starting with '['")
        return None
    i += 1
    line, pos = 1, 0
    out: list[tuple[int, int, Any]] = []
    record = 0
    while True:
        while i < n and text[i] in ws:
            i += 1
        if i < n and text[i] == "]" and record == 0:
            i += 1
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            ctx.err(exc.lineno, record + 1, "invalid_json", f"{exc.msg} (column {exc.colno}); file not read")
            return None
        record += 1
        line += text.count("\n", pos, i)
        pos = i
        out.append((record, line, obj))
        i = end
        while i < n and text[i] in ws:
            i += 1
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "]":
            i += 1
            break
        ctx.err(
            text.count("\n", 0, i) + 1,
            record,
            "invalid_json",
            "expected ',' or ']' after an element; file not read",
        )
        return None
    while i < n and text[i] in ws:
        i += 1
    if i < n:
        ctx.err(
            text.count("\n", 0, i) + 1,
            None,
            "invalid_json",
            "extra content after the JSON array; file not read",
        )
        return None
    return out


def _parse_seed_json(ctx: _Ctx, data: bytes) -> bool:
    items = _read_json_array(ctx, data)
    if items is None:
        return False
    for record, line, obj in items:
        if not (
            isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], str)
        ):
            ctx.err(line, record, "bad_record", f"expected a [text, tags] pair of strings, got {_short(obj)}")
            ctx.rejected += 1
            continue
        text, tag_str = obj
        if not text.strip():
            ctx.err(line, record, "empty_text", "the text is empty")
            ctx.rejected += 1
            continue
        tags = tag_str.split()
        if len(tags) != len(text):
            ctx.err(line, record, "length_mismatch", f"{len(text)} characters but {len(tags)} tags")
            ctx.rejected += 1
            continue
        tags = _type_untyped(tags, ctx.untyped_label)
        spans = _decode_tags(
            tags, ctx.scheme, ctx.policy, ctx.file, record, lambda _p, _l=line: _l, ctx.problems
        )
        if spans is None:
            ctx.rejected += 1
            continue
        ctx.add(record, text, spans, line, record)
    return True


def _parse_seed_texts(ctx: _Ctx, data: bytes) -> bool:
    items = _read_json_array(ctx, data)
    if items is None:
        return False
    for record, line, obj in items:
        if not isinstance(obj, str):
            ctx.err(line, record, "bad_record", f"expected a string, got {_short(obj)}")
            ctx.rejected += 1
        elif not obj.strip():
            ctx.err(line, record, "empty_text", "the text is empty")
            ctx.rejected += 1
        else:
            ctx.add(record, obj, [], line, record)
    return True


def _short(obj: Any) -> str:
    s = json.dumps(obj, ensure_ascii=False)
    return f"{type(obj).__name__} {s[:60]}{'...' if len(s) > 60 else ''}"


def _parse_conll(ctx: _Ctx, data: bytes, tag_column: int) -> bool:
    """Sentences split at blank lines. Clean blocks (``c<sep>tag`` lines) take a C-speed path: the block
    is flattened with one ``split`` and sliced into characters and tags; anything else goes line by line."""
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        _conll_lines(ctx, _decode_lines(ctx, data), 1, tag_column, [0])
        return True
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if _WS_LINE_RE.search(text):  # whitespace-only lines are sentence breaks too
        text = _WS_LINE_RE.sub("", text)
    fast = tag_column in (-1, 1)
    counter = [0]
    start = 1
    for piece in text.split("\n\n"):
        n_lines = piece.count("\n") + 1
        block = piece.strip("\n")
        if block:
            first = start + len(piece) - len(piece.lstrip("\n"))
            if not (fast and _conll_block_fast(ctx, block, first, counter)):
                _conll_lines(ctx, block.split("\n"), first, tag_column, counter)
        start += n_lines + 1
    return True


_WS_LINE_RE = re.compile(r"(?m)^[ \t]+$")


def _conll_block_fast(ctx: _Ctx, block: str, first_line: int, counter: list[int]) -> bool:
    """Handle a block of exactly two-column, one-character lines; ``False`` when it is not one."""
    n = block.count("\n") + 1
    sep = "\t" if "\t" in block else " "
    flat = block.replace("\n", sep).split(sep)
    if len(flat) != 2 * n:
        return False
    chars = flat[0::2]
    tags = flat[1::2]
    text = "".join(chars)
    if len(text) != n or "" in tags:
        return False
    counter[0] += 1
    record = counter[0]
    odd = [t for t in set(tags) if len(t) == 1 and t != "O"]
    if odd:
        tags = _type_untyped(tags, ctx.untyped_label)
    spans = _decode_tags(
        tags, ctx.scheme, ctx.policy, ctx.file, record, lambda p: first_line + p, ctx.problems
    )
    if spans is None:
        ctx.rejected += 1
        return True
    if not text.strip():
        ctx.err(first_line, record, "empty_text", "the sentence has only whitespace characters")
        ctx.rejected += 1
        return True
    ctx.add(first_line, text, spans, first_line, record)
    return True


def _conll_lines(
    ctx: _Ctx, lines: list[str | None], first_no: int, tag_column: int, counter: list[int]
) -> None:
    """Line-by-line reading (blank lines separate sentences); ``counter[0]`` numbers the sentences."""
    chars: list[str] = []
    tags: list[str] = []
    first_line = 0
    broken = False  # the current sentence has an error line
    multi = False

    def flush() -> None:
        nonlocal chars, tags, broken, multi
        if not chars and not broken:
            return
        if broken:
            ctx.rejected += 1
        else:
            _finish_conll(ctx, counter[0], first_line, chars, tags, multi)
        chars, tags, broken, multi = [], [], False, False

    for ln_no, line in enumerate(lines, start=first_no):
        if line is None:  # invalid UTF-8 (already recorded)
            if not chars and not broken:
                counter[0] += 1
                first_line = ln_no
            broken = True
            continue
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip(" \t"):
            flush()
            continue
        if not chars and not broken:
            counter[0] += 1
            first_line = ln_no
        record = counter[0]
        if "\t" in line:
            parts = line.split("\t")
        elif line.startswith("  "):  # the character is a space
            parts = [" "] + [x for x in line[2:].split(" ") if x]
        else:
            parts = [x for x in line.split(" ") if x]
        ch = parts[0]
        try:
            tag = parts[tag_column] if len(parts) >= 2 else ""
        except IndexError:
            tag = ""
        if len(parts) >= 2 and tag_column == -len(parts):
            tag = ""
        if not tag:
            if ch in ("0", "O") and len(parts) <= 2:
                ctx.warn(
                    ln_no,
                    record,
                    "missing_char",
                    f"line {line!r} has no character: read as a space tagged O (a whitespace lost upstream)",
                )
                chars.append(" ")
                tags.append("O")
                continue
            ctx.err(
                ln_no,
                record,
                "missing_tag",
                f"expected 'char<sep>tag' with the tag in column {tag_column}, got {line!r}; sentence rejected",
            )
            broken = True
            continue
        if not ch:
            ctx.warn(ln_no, record, "missing_char", f"line {line!r} has no character: read as a space")
            ch = " "
        if len(ch) != 1:
            multi = True
        chars.append(ch)
        tags.append(tag)
    flush()


def _finish_conll(
    ctx: _Ctx, record: int, first_line: int, chars: list[str], tags: list[str], multi: bool
) -> None:
    if multi:
        ctx.warn(
            first_line,
            record,
            "multi_char_token",
            "tokens longer than one character: their tag is spread over the characters",
        )
        new_tags: list[str] = []
        for ch, t in zip(chars, tags):
            new_tags.extend(schemes.spread_tag(t, len(ch), ctx.scheme))
        tags = new_tags
        line_of = lambda _p: first_line  # noqa: E731 - token lines no longer map 1:1 to positions
    else:
        line_of = lambda p: first_line + p  # noqa: E731
    text = "".join(chars)
    tags = _type_untyped(tags, ctx.untyped_label)
    spans = _decode_tags(tags, ctx.scheme, ctx.policy, ctx.file, record, line_of, ctx.problems)
    if spans is None:
        ctx.rejected += 1
        return
    if not text.strip():
        ctx.err(first_line, record, "empty_text", "the sentence has only whitespace characters")
        ctx.rejected += 1
        return
    ctx.add(first_line, text, spans, first_line, record)


def _check_spans(
    ctx: _Ctx, text: str, spans: list[tuple[int, int, str, str | None]], line: int, record: int
) -> list[tuple[int, int, str]] | None:
    """Validate ``(start, end, label, mention|None)``; return clean spans or ``None`` to reject."""
    n = len(text)
    out: list[tuple[int, int, str]] = []
    ok = True
    seen: set[tuple[int, int, str]] = set()
    for s, e, lab, mention in spans:
        if s < 0 or e > n or e <= s:
            ctx.err(
                line,
                record,
                "span_out_of_range",
                f"entity [{s}, {e}) {lab}{'' if mention is None else ' ' + repr(mention)} lies outside the "
                f"text (length {n}) or is empty",
            )
            ok = False
            continue
        if mention is not None and text[s:e] != mention:
            if ctx.policy == "repair" and mention:
                found = _nearest(text, mention, s)
                if found is not None:
                    ctx.warn(
                        line,
                        record,
                        "mention_mismatch",
                        f"entity [{s}, {e}) {lab}: text there is {text[s:e]!r}, mention is {mention!r}; "
                        f"moved to [{found}, {found + len(mention)})",
                    )
                    s, e = found, found + len(mention)
                else:
                    ctx.err(
                        line,
                        record,
                        "mention_mismatch",
                        f"entity [{s}, {e}) {lab}: text there is {text[s:e]!r}, mention {mention!r} "
                        f"does not occur in the text",
                    )
                    ok = False
                    continue
            else:
                ctx.err(
                    line,
                    record,
                    "mention_mismatch",
                    f"entity [{s}, {e}) {lab}: text there is {text[s:e]!r}, mention is {mention!r}",
                )
                ok = False
                continue
        key = (s, e, lab)
        if key in seen:
            ctx.warn(line, record, "duplicate_entity", f"entity [{s}, {e}) {lab} listed twice (kept once)")
            continue
        seen.add(key)
        out.append(key)
    out.sort()
    for a, b in zip(out, out[1:]):
        if b[0] < a[1]:
            ctx.err(
                line,
                record,
                "span_overlap",
                f"entities [{a[0]}, {a[1]}) {a[2]} and [{b[0]}, {b[1]}) {b[2]} overlap",
            )
            ok = False
    return out if ok else None


def _nearest(text: str, mention: str, near: int) -> int | None:
    best = None
    i = text.find(mention)
    while i != -1:
        if best is None or abs(i - near) < abs(best - near):
            best = i
        i = text.find(mention, i + 1)
    return best


def _json_lines(ctx: _Ctx, data: bytes):
    record = 0
    for ln_no, line in enumerate(_decode_lines(ctx, data), start=1):
        if line is None:
            record += 1
            ctx.rejected += 1
            continue
        if not line.strip():
            continue  # blank separator lines carry nothing
        record += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            ctx.err(ln_no, record, "invalid_json", f"{exc.msg} (column {exc.colno})")
            ctx.rejected += 1
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            ctx.err(
                ln_no, record, "bad_record", f"expected an object with a string 'text', got {_short(obj)}"
            )
            ctx.rejected += 1
            continue
        if not obj["text"].strip():
            ctx.err(ln_no, record, "empty_text", "the text is empty")
            ctx.rejected += 1
            continue
        yield ln_no, record, obj


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _add_span_record(ctx: _Ctx, text: str, raw: list, ln_no: int, record: int, bad_shape: str | None) -> None:
    """Store one span-format record, or reject it: ``bad_shape`` is the message for a malformed record;
    span problems are checked (and recorded) by :func:`_check_spans`."""
    if bad_shape is not None:
        ctx.err(ln_no, record, "bad_record", bad_shape)
        ctx.rejected += 1
        return
    spans = _check_spans(ctx, text, raw, ln_no, record)
    if spans is None:
        ctx.rejected += 1
        return
    ctx.add(ln_no, text, spans, ln_no, record)


def _parse_cluener(ctx: _Ctx, data: bytes) -> bool:
    for ln_no, record, obj in _json_lines(ctx, data):
        text = obj["text"]
        label = obj.get("label", {}) or {}
        raw: list[tuple[int, int, str, str | None]] = []
        bad = not isinstance(label, dict)
        if not bad:
            for typ, mentions in label.items():
                if not isinstance(mentions, dict):
                    bad = True
                    break
                for mention, positions in mentions.items():
                    if not isinstance(positions, list):
                        bad = True
                        break
                    for pos in positions:
                        if not (
                            isinstance(pos, list) and len(pos) == 2 and _is_int(pos[0]) and _is_int(pos[1])
                        ):
                            bad = True
                            break
                        raw.append((pos[0], pos[1] + 1, str(typ), mention))  # inclusive end -> half-open
        _add_span_record(
            ctx,
            text,
            raw,
            ln_no,
            record,
            "expected 'label' as {type: {mention: [[start, end_inclusive], ...]}}" if bad else None,
        )
    return True


def _parse_jsonl(ctx: _Ctx, data: bytes) -> bool:
    for ln_no, record, obj in _json_lines(ctx, data):
        text = obj["text"]
        ents = obj.get("entities", []) or []
        raw: list[tuple[int, int, str, str | None]] = []
        bad = not isinstance(ents, list)
        for ent in ents if not bad else []:
            if not (
                isinstance(ent, dict)
                and _is_int(ent.get("start"))
                and _is_int(ent.get("end"))
                and isinstance(ent.get("label"), str)
                and ent["label"]
            ):
                bad = True
                break
            mention = ent.get("text", ent.get("mention"))
            raw.append(
                (ent["start"], ent["end"], ent["label"], mention if isinstance(mention, str) else None)
            )
        _add_span_record(
            ctx,
            text,
            raw,
            ln_no,
            record,
            "expected 'entities' as a list of {start: int, end: int, label: str} (half-open)"
            if bad
            else None,
        )
    return True


def _parse_text(ctx: _Ctx, data: bytes) -> bool:
    for ln_no, line in enumerate(_decode_lines(ctx, data), start=1):
        if line is None:
            ctx.rejected += 1
            continue
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            ctx.err(ln_no, ln_no, "empty_text", "blank line: no document")
            ctx.rejected += 1
            continue
        ctx.add(ln_no, line, [], ln_no, ln_no)
    return True


# ----------------------------------------------------------------------------------------------- API


def read_file(
    path: str | Path,
    format: str | None = None,
    *,
    split: str | None = None,
    policy: Literal["strict", "repair"] = "repair",
    untyped_label: str = "ENT",
    tag_column: int = -1,
    scheme: Scheme | str | None = None,
) -> ParseResult:
    """Parse and validate one file into :class:`Document` objects.

    ``doc_id`` is ``f"{file stem}:{n}"`` with ``n`` the record number for JSON arrays and the (first) line
    number for line formats. Records with error-severity problems are left out; warnings keep them.
    """
    p = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None (detect), got {format!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(untyped_label, str) or not untyped_label or any(c.isspace() for c in untyped_label):
        raise ValueError(f"untyped_label must be a non-empty label without spaces, got {untyped_label!r}")
    if not isinstance(tag_column, int) or tag_column == 0:
        raise ValueError(
            f"tag_column must be a non-zero column index (0 is the character), got {tag_column!r}"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    fmt = format or detect_format(p)
    default_scheme = Scheme.BMES if fmt == "bmes" else Scheme.BIO
    sch = _normalise_scheme(scheme, default_scheme)
    if fmt == "bmes" and sch in (Scheme.BIO, Scheme.IOB1):
        raise ValueError(f"{p}: format 'bmes' needs scheme BMES or BIOES, got {sch}")
    data = p.read_bytes()
    if fmt == "bmes" and scheme is None and re.search(rb"[ \t]I-", data) and not re.search(rb"[ \t]M-", data):
        sch = Scheme.BIOES
    ctx = _Ctx(p, split, policy, untyped_label, sch)
    with no_gc():
        ok = _dispatch(ctx, fmt, data, tag_column)
    labels = sorted({sp[2] for r in ctx.records for sp in r[2]})
    return ParseResult(
        records=ctx.records if ok else [],
        split=split,
        problems=ctx.problems,
        format=fmt,
        labels=labels,
        source=str(p),
        sha256=hashlib.sha256(data).hexdigest(),
        scheme=sch if fmt in ("seed_json", "conll", "bmes") else None,
        fatal=not ok,
        rejected=ctx.rejected,
    )


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects (no cycles are made)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _dispatch(ctx: _Ctx, fmt: str, data: bytes, tag_column: int) -> bool:
    if fmt == "seed_json":
        return _parse_seed_json(ctx, data)
    elif fmt == "seed_texts":
        return _parse_seed_texts(ctx, data)
    elif fmt in ("conll", "bmes"):
        return _parse_conll(ctx, data, tag_column)
    elif fmt == "cluener":
        return _parse_cluener(ctx, data)
    elif fmt == "jsonl":
        return _parse_jsonl(ctx, data)
    else:
        return _parse_text(ctx, data)
