"""What the readers share: the context of one file being read (options, records, problems, tag
decoding), the :class:`ParseResult` it becomes, and line decoding."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner_core import schemes
from ner_core.data.formats.problems import Problem, problem
from ner_core.documents import Document, Entity
from ner_core.schemes import Scheme

MAX_TAG_PROBLEMS_PER_RECORD = 5  # tag problems listed per record; more are summed up in one more

Span = tuple[int, int, str]  # (start, end, label), half-open

# One accepted record, before it becomes a Document: (doc_id, text, spans [(start, end, label)], line).
Record = tuple[str, str, list[Span], "int | None"]


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
    # spans dropped from kept records by the repair of overlaps (ner_core.data.formats.overlaps):
    # (index into records, start, end, label, reason, kept start, kept end, kept label)
    dropped: list[tuple] = field(default_factory=list)
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


def _doc(
    doc_id: str,
    text: str,
    spans: list[Span],
    split: str | None,
    source: str,
    line: int | None,
) -> Document:
    ents = [Entity.model_construct(start=s, end=e, label=lab) for s, e, lab in spans]
    return Document.model_construct(
        doc_id=doc_id, text=text, entities=ents, split=split, source=source, line=line
    )


class ReadContext:
    """One file being read: the options, and the records and problems found so far.

    Readers call :meth:`add` for each accepted record, :meth:`err` / :meth:`warn` for each problem (and
    count a rejected record in ``rejected``), and :meth:`tag_spans` to turn a record's tags into spans.
    """

    def __init__(
        self,
        path: Path,
        split: str | None,
        policy: str,
        untyped_label: str,
        scheme: Scheme,
        tag_column: int = -1,
    ):
        self.file = str(path)
        self.stem = path.stem
        self.split = split
        self.policy = policy
        self.untyped_label = untyped_label
        self.scheme = scheme
        self.tag_column = tag_column
        self._fast_spans = schemes.fast_decoder(scheme)
        self.records: list[Record] = []
        self.problems: list[Problem] = []
        self.rejected = 0
        self.seen_text: dict[str, int] = {}
        self.dropped: list[tuple] = []  # see ParseResult.dropped
        self.pending_dropped: list[tuple] = []  # dropped from the record being checked, until it is added

    def add(self, key: int, text: str, spans: list[Span], line: int | None, record: int | None) -> None:
        """Accept a record: doc_id ``<stem>:<key>``; a text seen before in the file is a warning."""
        prev = self.seen_text.get(text)
        if prev is not None:
            self.problems.append(
                problem(
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
        if self.pending_dropped:
            self.dropped.extend((len(self.records), *d) for d in self.pending_dropped)
            self.pending_dropped = []
        self.records.append((f"{self.stem}:{key}", text, spans, line))

    def err(self, line: int | None, record: int | None, code: str, message: str) -> None:
        self.problems.append(problem(self.file, line, record, code, "error", message))

    def warn(self, line: int | None, record: int | None, code: str, message: str) -> None:
        self.problems.append(problem(self.file, line, record, code, "warning", message))

    def tag_spans(
        self, tags: list[str], record: int | None, line_of: Callable[[int], int | None]
    ) -> list[Span] | None:
        """Spans of ``tags`` in the file's scheme; ``None`` when the record must be rejected (problems
        recorded). ``line_of(position)`` gives the file line of a tag position (or ``None``).

        A valid sequence takes :func:`ner_core.schemes.fast_spans`; any other is validated, and under
        ``repair`` repaired, by :mod:`ner_core.schemes`.
        """
        spans = self._fast_spans(tags)
        if spans is not None:
            return spans
        scheme, policy, file, problems = self.scheme, self.policy, self.file, self.problems
        found = schemes.validate_tags(tags, scheme)
        unknown = [tp for tp in found if tp.code == "unknown_tag"]
        bad = [tp for tp in found if tp.code != "unknown_tag"]
        if unknown:
            for tp in unknown[:MAX_TAG_PROBLEMS_PER_RECORD]:
                problems.append(
                    problem(file, line_of(tp.position), record, "unknown_tag", "error", tp.message)
                )
            if len(unknown) > MAX_TAG_PROBLEMS_PER_RECORD:
                problems.append(
                    problem(
                        file,
                        line_of(unknown[0].position),
                        record,
                        "unknown_tag",
                        "error",
                        f"... and {len(unknown) - MAX_TAG_PROBLEMS_PER_RECORD} more unknown tags",
                    )
                )
            return None
        if not bad:  # valid after all (fast_spans declines only invalid sequences): trust schemes
            return [(e.start, e.end, e.label) for e in schemes.tags_to_spans(tags, scheme)]
        if policy == "strict":
            for tp in bad[:MAX_TAG_PROBLEMS_PER_RECORD]:
                problems.append(
                    problem(
                        file,
                        line_of(tp.position),
                        record,
                        tp.code,
                        "error",
                        f"{tp.message} (strict: rejected)",
                    )
                )
            return None
        repaired, warnings = schemes.repair_tags(tags, scheme)
        for tp in warnings or bad:
            problems.append(
                problem(
                    file,
                    line_of(tp.position),
                    record,
                    "invalid_transition",
                    "warning",
                    f"repaired {tp.message}",
                )
            )
        return [(e.start, e.end, e.label) for e in schemes.tags_to_spans(repaired, scheme)]


def decode_lines(ctx: ReadContext, data: bytes) -> list[str | None]:
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


def type_untyped(tags: list[str], untyped_label: str) -> list[str]:
    """``B``/``I``/``E``/``S``/``M`` without a type get ``untyped_label``; other tags are left alone."""
    out = tags
    for i, t in enumerate(tags):
        if len(t) == 1 and t != "O" and t in "BIMES":
            if out is tags:
                out = list(tags)
            out[i] = f"{t}-{untyped_label}"
    return out


def short_repr(obj: Any) -> str:
    """``obj``'s type and the start of its JSON, for messages about a record of the wrong shape."""
    s = json.dumps(obj, ensure_ascii=False)
    return f"{type(obj).__name__} {s[:60]}{'...' if len(s) > 60 else ''}"


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
