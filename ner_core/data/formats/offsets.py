"""Character offsets in code points (Python ``str``, this project's storage) and in UTF-16 code units
(JavaScript ``String.length``, which some annotation tools store).

A character outside the Basic Multilingual Plane (most emoji, some rare CJK ideographs of extension B
and later) is one code point but two UTF-16 units, so every offset after it differs by one per such
character. Texts without such characters (nearly all Chinese NER text) have identical offsets in both.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "OFFSET_UNITS",
    "OffsetUnit",
    "from_utf16",
    "has_astral",
    "span_to_unit",
    "to_utf16",
    "utf16_table",
]

OffsetUnit = Literal["codepoint", "utf16"]
OFFSET_UNITS: tuple[str, ...] = ("codepoint", "utf16")


def has_astral(text: str) -> bool:
    """Whether ``text`` has a character outside the BMP (two UTF-16 units)."""
    return any(ord(c) > 0xFFFF for c in text)


def to_utf16(text: str, offset: int) -> int:
    """The UTF-16 unit offset of code-point offset ``offset`` (0 <= offset <= len(text))."""
    return offset + sum(1 for c in text[:offset] if ord(c) > 0xFFFF)


def from_utf16(text: str, unit: int) -> int | None:
    """The code-point offset of UTF-16 unit offset ``unit``; ``None`` when ``unit`` is negative, lies
    past the end, or falls between the two halves of one character."""
    if unit < 0:
        return None
    u = 0
    for i, c in enumerate(text):
        if u == unit:
            return i
        u += 2 if ord(c) > 0xFFFF else 1
        if u > unit:
            return None
    return len(text) if u == unit else None


def utf16_table(text: str) -> list[int | None]:
    """:func:`from_utf16` for every UTF-16 unit offset ``0 .. len`` at once (one pass over ``text``, so
    a text with many spans is not rescanned per span): the code-point offset, ``None`` between the two
    halves of one character."""
    out: list[int | None] = []
    for i, c in enumerate(text):
        out.append(i)
        if ord(c) > 0xFFFF:
            out.append(None)
    out.append(len(text))
    return out


def span_to_unit(text: str, start: int, end: int, unit: str) -> tuple[int, int]:
    """A code-point span ``[start, end)`` of ``text`` in ``unit`` (``codepoint`` or ``utf16``)."""
    if unit == "codepoint":
        return start, end
    if unit == "utf16":
        return to_utf16(text, start), to_utf16(text, end)
    raise ValueError(f"offset unit must be one of {OFFSET_UNITS}, got {unit!r}")
