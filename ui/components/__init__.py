"""Custom Streamlit components of the dashboard (Streamlit's components v2: plain HTML, CSS and JS files in
this package, passed inline to :func:`st.components.v2.component`; no npm build, nothing fetched).

``span_select``: a document whose characters can be selected with the mouse; it reports the selection as
Python code-point offsets (see ``span_select/span_select.js`` for why they are exact on emoji too), a click
on a highlighted entity, the review page's keyboard shortcuts, and which entities have been on screen (so
"accept the rest" knows what the reviewer never scrolled to).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

_ASSETS = Path(__file__).resolve().parent / "span_select"
_NAME = "ner_span_select"
_renderer = None


@dataclass(frozen=True)
class Selection:
    """A checked mouse selection: ``text[start:end] == chars`` in Python code points."""

    start: int
    end: int
    chars: str


def _component():
    global _renderer
    if _renderer is None:
        _renderer = st.components.v2.component(
            _NAME,
            html=(_ASSETS / "index.html").read_text(encoding="utf-8"),
            css=(_ASSETS / "span_select.css").read_text(encoding="utf-8"),
            js=(_ASSETS / "span_select.js").read_text(encoding="utf-8"),
        )
    return _renderer


def checked_selection(text: str, payload: object) -> Selection | None:
    """The component's ``selection`` payload as a :class:`Selection`, or ``None`` when it is missing or does
    not match ``text`` (a stale selection from another document, or offsets that are not code points)."""
    if not isinstance(payload, dict):
        return None
    start, end, chars = payload.get("start"), payload.get("end"), payload.get("text")
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(chars, str)):
        return None
    if not (0 <= start < end <= len(text)) or text[start:end] != chars:
        return None
    return Selection(start, end, chars)


def span_select(
    text: str,
    entities: list[dict],
    *,
    key: str,
    selected: int | None = None,
    shortcuts: bool = True,
    hint: str = "",
) -> dict:
    """Show ``text`` with ``entities`` (dicts with ``i``, ``start``, ``end``, ``label``, ``state``,
    ``colour`` and ``ref``, a name that lasts across reruns) and return this rerun's events:
    ``{"selection": Selection | None, "pick": int | None, "key": str | None, "seen": set[str]}``. Each
    event is reported on exactly one rerun (a Streamlit trigger value); ``seen`` is a state value: the refs
    of the entities that have been on screen (at least half visible) since the component was first drawn
    under ``key``."""
    seen = _seen(st.session_state.get(key))
    data = {
        "text": text,
        "entities": [
            {k: e[k] for k in ("i", "start", "end", "label", "state", "colour", "ref") if k in e}
            for e in entities
        ],
        "selected": -1 if selected is None else int(selected),
        "shortcuts": bool(shortcuts),
        "hint": hint,
        "seen": sorted(seen),  # the script knows these already: the browser sends only new ones
    }
    noop = lambda: None  # noqa: E731  (a callback per trigger registers it; the value is read below)
    result = _component()(
        key=key,
        data=data,
        on_selection_change=noop,
        on_pick_change=noop,
        on_key_change=noop,
        on_seen_change=noop,
    )
    pick, sel, key_ev = result.get("pick"), result.get("selection"), result.get("key")  # a dict subclass
    return {
        "selection": checked_selection(text, sel),
        "pick": int(pick["idx"]) if isinstance(pick, dict) and isinstance(pick.get("idx"), int) else None,
        "key": key_ev.get("key") if isinstance(key_ev, dict) else None,
        "seen": seen | _seen(result),
    }


def _seen(state: object) -> set[str]:
    """The ``seen`` state value of the component's state (a list of str from the browser), as a set; bad
    values are left out."""
    got = state.get("seen") if hasattr(state, "get") else None
    return {x for x in got if isinstance(x, str)} if isinstance(got, list) else set()
