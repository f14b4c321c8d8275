"""Review replay: what a document's entities are after its review events. Pure: no SQL, no I/O.

This module owns the rule; :mod:`storage.reviews` checks a batch of events with it, the Review page
(:mod:`ui.review_state`) shows stored plus spooled decisions with it, and the views of ``storage/schema.py``
(``v_review_latest``, ``v_review_current``, ``v_review_disagreements``, migration 6) spell the same in SQL
(a property test holds the view equal to :func:`replay`).

An event is a dict as :mod:`storage.reviews` stores it: ``event_id``, ``reviewer``, ``action``, ``start``,
``end``, ``label`` (the entity's *key*), ``new_start``, ``new_end``, ``new_label``, ``ref_event_id``,
``created_at`` (a datetime or ISO text; a zone is turned into naive UTC) and, once stored, ``seq``.

The rule:

- An entity is named by its key: the span ``[start, end)`` and label it had when predicted, or when added.
- An ``undo`` cancels the event it names; it is not a decision itself (storage refuses to undo an undo).
- Per key the latest decision still in force wins, whoever made it; every event stays.
- ``accept`` -> accepted; ``relabel`` -> corrected, the new label on the key's span; ``adjust`` ->
  corrected, the new span with ``new_label`` (or the key's label); ``reject`` -> rejected (not among the
  current entities); ``add`` -> accepted on a predicted key.
- A decision on a key nobody predicted makes an added entity (state ``added``); later decisions on that key
  change its span or label and it stays ``added``, a reject removes it.
- A decision replaces the one before it, it does not combine with it: a plain relabel after an adjust puts
  the entity back on its key's span. :func:`relabel_fields` and :func:`adjust_fields` make the event that
  keeps the other half of the correction.

The order of events is one total order, :func:`replay_order`: by ``created_at`` (when the reviewer decided,
kept from the spool), and among events with the same ``created_at`` in the order they arrived: recorded
events by ``seq`` (the number storage gives each event when it records it, in the order of its batch),
then events not recorded yet (the spool's, or a batch being checked) in the order they are given. Why not
``recorded_at`` or ``event_id`` for ties: a spooled event has no ``recorded_at`` yet, so the page would have
to place it by another rule than the database later does, and all events of one batch share one
``recorded_at`` anyway; ``event_id`` is a random uuid, so it would pick the winner of a tie by chance. Two
decisions in the same instant (a batch, a client that stamps whole seconds) are meant in the order they
were made: the second one stands, before and after the spool is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "DECISIONS",
    "STATES",
    "Key",
    "ReviewedEntity",
    "adjust_fields",
    "event_time",
    "in_force",
    "latest_decisions",
    "relabel_fields",
    "replay",
    "replay_order",
    "undo_target",
]

#: the actions that decide on one entity (they carry its key: start, end, label)
DECISIONS = ("accept", "reject", "relabel", "adjust", "add")
#: the states of a replayed entity
STATES = ("predicted", "accepted", "corrected", "added", "rejected")

Key = tuple[int, int, str]


@dataclass(frozen=True)
class ReviewedEntity:
    """One entity of a document after its review events.

    ``key`` names it as events do (its predicted or added span and label); ``start``, ``end``, ``label`` are
    what it is now; ``state`` one of :data:`STATES`; ``confidence`` the prediction's (``None`` for an added
    one); ``action``, ``reviewer``, ``event_id``, ``decided_at`` of the decision in force (``None`` while
    only predicted)."""

    key: Key
    start: int
    end: int
    label: str
    state: str
    confidence: float | None = None
    added: bool = False
    action: str | None = None
    reviewer: str | None = None
    event_id: str | None = None
    decided_at: datetime | None = None


def event_time(event: Mapping[str, Any]) -> datetime:
    """The event's ``created_at`` as a naive UTC datetime (ISO text is parsed; a zone is converted).
    ``ValueError`` when it has none or it is not a time."""
    at = event.get("created_at")
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            raise ValueError(
                f"event {event.get('event_id')!r}: created_at {at!r} is not an ISO time"
            ) from None
    if not isinstance(at, datetime):
        raise ValueError(f"event {event.get('event_id')!r}: expected created_at as a time, got {at!r}")
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


def replay_order(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``events`` in the one order of the module docstring: ``created_at``, then recorded ones by ``seq``
    (then ``event_id``, as the SQL views break a tie no sequence makes), then unrecorded ones as given."""

    def key(item: tuple[int, Mapping[str, Any]]) -> tuple:
        i, e = item
        seq = e.get("seq")
        if seq is None:
            return (event_time(e), 1, 0, "", i)
        return (event_time(e), 0, int(seq), str(e.get("event_id") or ""), i)

    return [e for _, e in sorted(enumerate(events), key=key)]


def in_force(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events still in force, in :func:`replay_order`: undo events and the events they cancel are left
    out."""
    events = list(events)
    undone = {e.get("ref_event_id") for e in events if e.get("action") == "undo"}
    return replay_order(e for e in events if e.get("action") != "undo" and e.get("event_id") not in undone)


def _key(event: Mapping[str, Any]) -> Key:
    return (int(event["start"]), int(event["end"]), str(event["label"]))


def latest_decisions(events: Iterable[Mapping[str, Any]]) -> dict[Key, Mapping[str, Any]]:
    """Per entity key, the latest decision in force (over all reviewers)."""
    latest: dict[Key, Mapping[str, Any]] = {}
    for e in in_force(events):
        if e.get("action") in DECISIONS:
            latest[_key(e)] = e
    return latest


def _decided(key: Key, e: Mapping[str, Any], confidence: float | None, added: bool) -> ReviewedEntity:
    """The entity ``key`` after its latest decision ``e``."""
    act = e["action"]
    start, end, label = key
    if act == "reject":
        state = "rejected"
    elif act in ("accept", "add"):
        state = "added" if added else "accepted"
    else:  # relabel | adjust
        label = e.get("new_label") or label
        if act == "adjust":
            start, end = int(e["new_start"]), int(e["new_end"])
        state = "added" if added else "corrected"
    return ReviewedEntity(
        key=key,
        start=start,
        end=end,
        label=label,
        state=state,
        confidence=confidence,
        added=added,
        action=act,
        reviewer=e.get("reviewer"),
        event_id=e.get("event_id"),
        decided_at=event_time(e),
    )


def replay(
    predicted: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]
) -> list[ReviewedEntity]:
    """The entities of one document after ``events`` (all of the document's, undo events included):
    the ``predicted`` ones (mappings with ``start``, ``end``, ``label`` and optionally ``confidence``) and
    the added ones, rejected ones included (state ``rejected``), ordered by start, end, label."""
    confidence: dict[Key, float | None] = {}
    for p in predicted:
        confidence[(int(p["start"]), int(p["end"]), str(p["label"]))] = p.get("confidence")
    latest = latest_decisions(events)
    out = [
        ReviewedEntity(key=k, start=k[0], end=k[1], label=k[2], state="predicted", confidence=c)
        if k not in latest
        else _decided(k, latest[k], c, added=False)
        for k, c in confidence.items()
    ]
    out += [_decided(k, e, None, added=True) for k, e in latest.items() if k not in confidence]
    return sorted(out, key=lambda x: (x.start, x.end, x.label))


def undo_target(events: Iterable[Mapping[str, Any]], reviewer: str) -> Mapping[str, Any] | None:
    """The latest event still in force that ``reviewer`` made (the one an undo cancels), or ``None``."""
    mine = [e for e in in_force(events) if e.get("reviewer") == reviewer]
    return mine[-1] if mine else None


def relabel_fields(key: Key, span: tuple[int, int], label: str) -> tuple[str, dict[str, Any]]:
    """``(action, fields)`` of the event that gives entity ``key``, now on ``span``, the label ``label``.

    The decision in force is the latest one per key, so a plain relabel of an entity whose boundaries
    were fixed would put it back on its key's span: that one gets an ``adjust`` carrying both."""
    fields: dict[str, Any] = {"start": key[0], "end": key[1], "label": key[2]}
    if tuple(span) != key[:2]:
        return "adjust", {**fields, "new_start": span[0], "new_end": span[1], "new_label": label}
    return "relabel", {**fields, "new_label": label}


def adjust_fields(key: Key, label: str, start: int, end: int) -> tuple[str, dict[str, Any]]:
    """``(action, fields)`` of the event that puts entity ``key``, now labelled ``label``, on
    ``[start, end)``; a label changed before is kept (``new_label``), as :func:`relabel_fields` keeps a
    span."""
    fields: dict[str, Any] = {
        "start": key[0],
        "end": key[1],
        "label": key[2],
        "new_start": start,
        "new_end": end,
    }
    if label != key[2]:
        fields["new_label"] = label
    return "adjust", fields
