"""Helpers the pages share: the database path, entity highlighting, colours and the legend.

Highlighting renders half-open ``[start, end)`` character spans as HTML ``<span>`` elements with a
background colour per label, nested entities as nested elements with stacked underlines; every piece of
text is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import heapq
import html
import re
from collections.abc import Iterable, Sequence

import pandas as pd
import streamlit as st

from ner_core.settings import settings

# Readable light backgrounds; labels are coloured by their sorted position, so a label keeps its colour
# across pages as long as the label set is the same.
PALETTE: tuple[str, ...] = (
    "#ffd6a5",
    "#a0c4ff",
    "#caffbf",
    "#ffadad",
    "#bdb2ff",
    "#fdffb6",
    "#9bf6ff",
    "#ffc6ff",
    "#e2c799",
    "#b5e48c",
    "#f1c0e8",
    "#cfbaf0",
)


def db_path() -> str:
    """The database path: :func:`ner_core.settings.settings`' ``db`` (``NER_DB``, which ``ner ui --db X``
    sets; default :data:`ner_core.settings.DEFAULT_DB`), read at every rerun (the settings are parsed
    again when the environment changed)."""
    return settings().db


#: every ASCII punctuation character: CommonMark lets a backslash escape each, and Streamlit's own syntax
#: (``:red[...]``, ``:material/icon:``, ``$...$``) is built from them
_MARKDOWN_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
#: U+2060 WORD JOINER: invisible, no line break
WORD_JOINER = "\u2060"
#: where GitHub-flavoured Markdown links plain text: ``http://``, ``https://``, ``www.`` and e-mail addresses.
#: Streamlit's renderer finds them in the text after escapes are undone, so a backslash cannot stop them;
#: a word joiner inside the pattern does
_AUTOLINK = re.compile(r"(?<=http:)(?=//)|(?<=https:)(?=//)|(?<=www)(?=\.)|@", re.IGNORECASE)


def escape_markdown(text: object) -> str:
    """``text`` (data, a URL parameter: anything not written by this code) for a Streamlit element that
    renders Markdown (``st.caption``, ``st.markdown``, widget labels): every ASCII punctuation character
    backslash-escaped, so a text shows as itself and never becomes a link, an image, emphasis, an icon or a
    colour directive; a :data:`WORD_JOINER` after ``http:`` / ``https:`` before ``//``, after ``www`` before
    ``.`` and after ``@``, so no bare URL or e-mail address becomes a link either (the joiner is invisible;
    copied text carries it); line breaks become spaces (a label is one line)."""
    one_line = " ".join(str(text).splitlines())
    joined = _AUTOLINK.sub(lambda m: m.group(0) + WORD_JOINER, one_line)
    return "".join("\\" + c if c in _MARKDOWN_PUNCTUATION else c for c in joined)


def count(n, one: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``0 entities`` (``many`` for an irregular plural; default ``one + "s"``);
    ``- runs`` for a count not known (None, NA: a run still running has not counted its rows)."""
    plural = many or one + "s"
    if n is None or n is pd.NA or n != n:
        return f"- {plural}"
    return f"{n} {one if n == 1 else plural}"


def label_colours(labels: Iterable[str]) -> dict[str, str]:
    """``{label: background colour}``, deterministic in the sorted label set."""
    labels = sorted(set(labels))
    if any(not isinstance(lb, str) or not lb for lb in labels):
        raise ValueError(f"expected non-empty str labels, got {labels!r}")
    return {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}


#: how far below its inner entities an enclosing entity's underline is drawn, per nesting level (px)
LEVEL_PX = 5


class _Piece:
    """One element of the highlighted text: an entity, or the part of a crossing entity that fits inside
    the entity it crosses (the rest is another piece), with the pieces nested inside it."""

    __slots__ = ("children", "end", "first", "label", "last", "start", "whole")

    def __init__(self, start: int, end: int, label: str, whole: tuple[int, int], first: bool, last: bool):
        self.start, self.end, self.label, self.whole = start, end, label, whole
        self.first, self.last = first, last
        self.children: list[_Piece] = []

    def height(self) -> int:
        """1 for a piece with nothing inside, else 1 + its tallest child's: its underline's level."""
        return 1 + max((c.height() for c in self.children), default=0)


def nest_spans(spans: Sequence[tuple[int, int, str]]) -> list[_Piece]:
    """The spans as a forest of nested pieces, every span in it (none skipped): a span inside another
    (nested, or the same span with another label) is its child; a span crossing another is cut where the
    other ends, the first part inside it and the rest placed after it, so the HTML elements nest."""
    heap = [(s, -e, lb, i, s, e) for i, (s, e, lb) in enumerate(spans)]
    heapq.heapify(heap)
    roots: list[_Piece] = []
    stack: list[_Piece] = []
    while heap:
        s, neg_e, label, i, ws, we = heapq.heappop(heap)
        e = -neg_e
        while stack and stack[-1].end <= s:
            stack.pop()
        if stack and stack[-1].end < e:  # crossing: the rest goes on after the piece it crosses
            heapq.heappush(heap, (stack[-1].end, -e, label, i, ws, we))
            e = stack[-1].end
        piece = _Piece(s, e, label, (ws, we), first=s == ws, last=e == we)
        (stack[-1].children if stack else roots).append(piece)
        stack.append(piece)
    return roots


def _darker(colour: str) -> str:
    """The underline colour of a background colour ``#rrggbb``: the same hue, darker (grey for others)."""
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
        return "#777777"
    return "#" + "".join(f"{int(colour[k : k + 2], 16) * 55 // 100:02x}" for k in (1, 3, 5))


#: after the label of an entity a user dictionary forced (``highlight_html``'s ``marked``)
DICTIONARY_MARK = "·dict"


def _piece_html(
    text: str, piece: _Piece, colours: dict[str, str], outer: tuple[str, ...], marked: frozenset = frozenset()
) -> str:
    label = piece.label
    colour = colours.get(label, "#dddddd")
    ws, we = piece.whole
    forced = (ws, we, label) in marked
    here = f"{label} [{ws}, {we}) {text[ws:we]}" + (" (from the user dictionary)" if forced else "")
    title = " · inside ".join((here, *reversed(outer)))
    inner, cursor = [], piece.start
    for child in piece.children:
        inner.append(html.escape(text[cursor : child.start]))
        inner.append(_piece_html(text, child, colours, (*outer, here), marked))
        cursor = child.end
    inner.append(html.escape(text[cursor : piece.end]))
    part = "" if piece.first and piece.last else ' data-part="1"'
    mark = ' data-dictionary="1"' if forced else ""
    sup = (
        f'<sup style="font-size:0.65em;opacity:0.7;margin-left:1px;">'
        f"{html.escape(label)}{DICTIONARY_MARK if forced else ''}</sup>"
        if piece.last
        else ""
    )
    return (
        f'<span class="ent" data-label="{html.escape(label)}" data-level="{len(outer) + 1}"{part}{mark} '
        f'title="{html.escape(title)}" style="background:{colour};padding:0 2px '
        f"{(piece.height() - 1) * LEVEL_PX}px;border-radius:3px;"
        f"{'outline:1px dashed #333;' if forced else ''}"
        f'border-bottom:3px solid {_darker(colour)};">{"".join(inner)}{sup}</span>'
    )


def highlight_html(
    text: str,
    spans: Sequence[tuple[int, int, str]],
    colours: dict[str, str],
    marked: Iterable[tuple[int, int, str]] = (),
) -> str:
    """``text`` as HTML with each ``(start, end, label)`` span wrapped in a coloured ``<span class="ent">``.

    Spans are half-open character offsets into ``text``. Nested entities (a span model's output) are
    nested elements, every one shown: each has its label after it and an underline in its label's colour,
    an enclosing entity's underline one level lower than those inside it (stacked underlines, one per
    nesting level), and its title (the hover text) names it and every entity it lies inside. A span
    crossing another is cut into pieces (``data-part``) so the elements nest. The output contains ``text``
    exactly once, in order, escaped. Labels without a colour get grey. Spans also in ``marked`` (those a
    user dictionary forced) carry ``data-dictionary``, a dashed outline and :data:`DICTIONARY_MARK` after
    their label.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected text as a str, got {type(text).__name__}")
    for start, end, label in spans:
        if not (0 <= start < end <= len(text)):
            raise ValueError(f"span [{start}, {end}) {label} lies outside the text (length {len(text)})")
    parts: list[str] = []
    cursor = 0
    roots = nest_spans(spans)
    marked = frozenset(marked)
    for piece in roots:
        parts.append(html.escape(text[cursor : piece.start]))
        parts.append(_piece_html(text, piece, colours, (), marked))
        cursor = piece.end
    parts.append(html.escape(text[cursor:]))
    levels = max((p.height() for p in roots), default=1)
    return (
        '<div class="ner-text" style="white-space:pre-wrap;font-size:1.05em;'
        f'line-height:calc(1.9em + {(levels - 1) * LEVEL_PX}px);">' + "".join(parts) + "</div>"
    )


def legend_html(colours: dict[str, str]) -> str:
    """One coloured chip per label."""
    chips = "".join(
        f'<span class="legend-chip" style="background:{c};padding:1px 8px;margin-right:6px;'
        f'border-radius:3px;">'
        f"{html.escape(lb)}</span>"
        for lb, c in colours.items()
    )
    return f'<div class="ner-legend">Legend: {chips}</div>'


def spans_of(entities: Iterable) -> list[tuple[int, int, str]]:
    """``(start, end, label)`` from dicts (report JSON) or rows with those fields."""
    out = []
    for e in entities:
        get = e.get if isinstance(e, dict) else e.__getitem__
        out.append((int(get("start")), int(get("end")), str(get("label"))))
    return out


def show_highlighted(
    text: str,
    spans: Sequence[tuple[int, int, str]],
    colours: dict[str, str],
    marked: Iterable[tuple[int, int, str]] = (),
) -> None:
    st.html(highlight_html(text, spans, colours, marked))


def fmt(x, digits: int = 4) -> str:
    """A number for ``st.metric``; '-' for a missing one (None, NaN, or pandas' NA: DuckDB gives nullable
    integer columns such as a failed run's ``best_epoch`` as pandas' nullable type)."""
    if x is None or x is pd.NA or x != x:  # None, NA or NaN
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def beside_raw(frame: pd.DataFrame, raw: str, calibrated: str) -> pd.DataFrame:
    """``frame`` with column ``calibrated`` moved right after ``raw`` (the calibrated entity confidence
    beside the raw one), or dropped when no row has one (a model without a temperature, rows stored before
    calibration): a column of blanks says nothing. A copy; the cached frame is not touched."""
    if calibrated not in frame.columns:
        return frame
    if frame[calibrated].isna().all():
        return frame.drop(columns=[calibrated])
    cols = [c for c in frame.columns if c != calibrated]
    at = cols.index(raw) + 1 if raw in cols else len(cols)
    return frame[[*cols[:at], calibrated, *cols[at:]]]
