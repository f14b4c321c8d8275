"""Helpers the pages share: the database path, entity highlighting, colours and the legend.

Highlighting renders half-open ``[start, end)`` character spans as HTML ``<span>`` elements with a
background colour per label; every piece of text is escaped with :func:`html.escape`.
"""

from __future__ import annotations

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


def highlight_html(text: str, spans: Sequence[tuple[int, int, str]], colours: dict[str, str]) -> str:
    """``text`` as HTML with each ``(start, end, label)`` span wrapped in a coloured ``<span>``.

    Spans are half-open character offsets into ``text``. A span that overlaps an earlier one (by start)
    is skipped, so the output always contains ``text`` exactly once, in order. Labels without a colour
    get grey.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected text as a str, got {type(text).__name__}")
    parts: list[str] = []
    cursor = 0
    for start, end, label in sorted(spans, key=lambda s: (s[0], -s[1])):
        if not (0 <= start < end <= len(text)):
            raise ValueError(f"span [{start}, {end}) {label} lies outside the text (length {len(text)})")
        if start < cursor:
            continue
        parts.append(html.escape(text[cursor:start]))
        colour = colours.get(label, "#dddddd")
        parts.append(
            f'<span class="ent" data-label="{html.escape(label)}" title="{html.escape(label)}" '
            f'style="background:{colour};padding:0 2px;border-radius:3px;">{html.escape(text[start:end])}'
            f'<sup style="font-size:0.65em;opacity:0.7;margin-left:1px;">{html.escape(label)}</sup></span>'
        )
        cursor = end
    parts.append(html.escape(text[cursor:]))
    return (
        '<div class="ner-text" style="white-space:pre-wrap;line-height:1.9;font-size:1.05em;">'
        + "".join(parts)
        + "</div>"
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


def show_highlighted(text: str, spans: Sequence[tuple[int, int, str]], colours: dict[str, str]) -> None:
    st.html(highlight_html(text, spans, colours))


def fmt(x, digits: int = 4) -> str:
    """A number for ``st.metric``; '-' for a missing one (None, NaN, or pandas' NA: DuckDB gives nullable
    integer columns such as a failed run's ``best_epoch`` as pandas' nullable type)."""
    if x is None or x is pd.NA or x != x:  # None, NA or NaN
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
