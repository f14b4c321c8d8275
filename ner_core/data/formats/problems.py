"""Problems: each thing a reader (or the ingest) finds wrong with an input is one :class:`Problem`.

A problem has the file, the line and/or record number, a code, a severity and a message. Error-severity
problems reject the record (it is not in the documents); warnings keep it. The codes:

======================= ======== =============================================================================
code                    severity meaning
======================= ======== =============================================================================
invalid_utf8            error    bytes that are not UTF-8 (line formats: that record; JSON array: the file)
invalid_json            error    not parseable JSON (JSON array formats: fatal for the file)
bad_record              error    a record of the wrong shape (not a pair, no ``text``, wrong types, ...)
empty_text              error    a record whose text is empty or only whitespace
length_mismatch         error    number of tags differs from number of characters
missing_tag             error    a CoNLL line without a tag column
unknown_tag             error    a tag whose prefix/label the scheme does not know
invalid_transition      error in ``strict``; warning in ``repair`` (the tags are repaired, e.g. a stray
                                 ``I-X`` becomes ``B-X``)
span_out_of_range       error    an entity outside the text, or with end <= start
span_overlap            error    two entities of a record overlap (nested or crossing) under ``strict``
                                 (``repair`` keeps the record and drops spans: ``overlap_dropped``)
mention_mismatch        error in ``strict`` or when the mention does not occur in the text; warning when
                                 ``repair`` moved the span to the nearest occurrence of the mention
missing_char            warning  a CoNLL line lacking its character, such as ``0<TAB>`` where a whitespace
                                 character was lost upstream (MSRA's train file): restored as a space tagged
                                 ``O``, so sentence and entity counts stay as published
multi_char_token        warning  a CoNLL token longer than one character: its tag is spread over its
                                 characters
duplicate_entity        warning  the same span and label listed twice (kept once)
duplicate_text          warning  the same text occurs earlier in the file (kept; the message names that line)
unannotated             warning  a Label Studio task without a completed annotation (only predictions, or
                                 cancelled annotations): skipped, since predictions are not gold
duplicate_across_splits warning  found by the ingest (:mod:`ner_core.data.ingest`), not by a reader: the
                                 same text is in two splits, e.g. train and test (kept; the message names
                                 both)
overlap_dropped         warning  ``repair``: of two overlapping entities of a span-format record one was
                                 dropped (nested: the inner; crossing: the shorter, the later when as long;
                                 one span with two labels: the later label); the message names both spans;
                                 the ingest stores the dropped one in ``dropped_spans``
                                 (:mod:`ner_core.data.formats.overlaps`)
======================= ======== =============================================================================
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = ["CODES", "Problem", "Severity", "count_severity", "problem"]

Severity = Literal["error", "warning"]

# The codes of the table above, in its order.
CODES = (
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
    "unannotated",
    "duplicate_across_splits",
    "overlap_dropped",
)


class Problem(BaseModel):
    """One validation finding. ``line`` is 1-based in the file; ``record`` is the 1-based record number."""

    file: str
    line: int | None = None
    record: int | None = None
    code: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.record is not None:
            where += f" (record {self.record})"
        return f"{where}: {self.severity} {self.code}: {self.message}"


def problem(
    file: str, line: int | None, record: int | None, code: str, severity: Severity, message: str
) -> Problem:
    """A :class:`Problem` built without validation (readers make one per finding, in bulk)."""
    return Problem.model_construct(
        file=file, line=line, record=record, code=code, severity=severity, message=message
    )


def count_severity(problems: list[Problem], severity: Severity) -> int:
    """How many of ``problems`` are of ``severity`` (``"error"`` or ``"warning"``)."""
    return sum(1 for p in problems if p.severity == severity)
