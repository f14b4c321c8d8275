"""Data contracts shared by every part of the platform.

Entities are half-open character spans ``[start, end)`` over a document's ``text`` (Python ``str``
indices, i.e. Unicode code points), with a label. Tags are never stored: they are derived per run
from the chosen scheme (see :mod:`ner_core.schemes`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Entity(BaseModel):
    """One entity: ``text[start:end]`` carries ``label``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int = Field(ge=0, description="first character, inclusive")
    end: int = Field(gt=0, description="one past the last character (half-open)")
    label: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check_order(self) -> Entity:
        if self.end <= self.start:
            raise ValueError(f"entity end ({self.end}) must be greater than start ({self.start})")
        return self

    def mention(self, text: str) -> str:
        return text[self.start : self.end]


class Document(BaseModel):
    """A text with (possibly no) gold entities.

    ``doc_id`` is stable within a dataset; ``source`` and ``line`` point back to the input file so
    that every problem can name where it came from.
    """

    model_config = ConfigDict(extra="forbid")

    doc_id: str
    text: str
    entities: list[Entity] = Field(default_factory=list)
    split: str | None = None
    source: str | None = None
    line: int | None = None

    @model_validator(mode="after")
    def _check_spans(self) -> Document:
        n = len(self.text)
        for e in self.entities:
            if e.end > n:
                raise ValueError(
                    f"document {self.doc_id!r}: entity [{e.start}, {e.end}) {e.label} "
                    f"lies outside the text (length {n})"
                )
        return self

    def sorted_entities(self) -> list[Entity]:
        return sorted(self.entities, key=lambda e: (e.start, e.end, e.label))
