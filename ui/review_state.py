"""The Review page's logic without Streamlit: the spool's place, replaying events over predicted entities
in the page's shape, overlap and undo targets.

Storage stays the source of truth (``v_review_current``). The rule itself (keys, undo, the latest decision
wins, the one order of events) is :mod:`ner_core.review`'s; :func:`replay` applies it to the stored events
plus those still waiting in the spool (the database busy), so the page shows a decision as soon as it is
made, with the same winner the database gives it once written, and the rejected entities (struck through),
which the view leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict

from ner_core import review as rule

DECISIONS = rule.DECISIONS
STATES = rule.STATES
effective = rule.in_force
undo_target = rule.undo_target

__all__ = [
    "DECISIONS",
    "STATES",
    "effective",
    "overlapping",
    "replay",
    "spool_path",
    "undo_target",
]


def spool_path(db_path: str) -> str:
    """Where the page spools decisions while the database is busy: beside the database file."""
    return f"{db_path}.review-spool.jsonl"


def replay(predicted: Sequence[dict], events: Iterable[dict]) -> list[dict]:
    """:func:`ner_core.review.replay` as the page's dicts: ``key`` (start, end, label), ``start``, ``end``,
    ``label``, ``state`` (predicted | accepted | corrected | added | rejected), ``confidence``, ``added``,
    ``action``, ``reviewer``, ``event_id`` and ``decided_at`` of the deciding event. Rejected ones stay in
    the list. Ordered by start, end, label. ``events``: the stored ones, then the spool's."""
    return [asdict(e) for e in rule.replay(predicted, events)]


def overlapping(entities: Iterable[dict], start: int, end: int, *, skip: tuple | None = None) -> dict | None:
    """The first entity that is not rejected and overlaps ``[start, end)`` (``skip``: a key to ignore)."""
    for ent in entities:
        if ent["state"] == "rejected" or ent["key"] == skip:
            continue
        if ent["start"] < end and start < ent["end"]:
            return ent
    return None
