"""Review: correct a prediction run's entities, one document at a time, the most useful documents first.

Every decision is a review event (:mod:`storage.reviews`): it goes to a spool file beside the database
first (fsync'd) and from there to DuckDB; while another process holds the database the decisions wait in
the spool (the page says how many) and are written on a later rerun, each exactly once. The page shows a
document as the stored events plus those still waiting make it (:func:`ui.review_state.replay`, the rule of
:mod:`ner_core.review`), from one read of the document per rerun.

The panel always shows what the selected entity is now. Its widgets are keyed by the entity's
:func:`ui.review_state.entity_digest` (the entity picker by the whole document's), so a decision (this
reviewer's, or another's read later) gives fresh widgets holding the new span, label and state; a widget
keyed by the entity alone kept its old values, and a button built from them wrote the old span back. Each
button builds its event from the entity as replayed when it is clicked and refuses, beside itself, when
that is not the entity it was drawn for. Every refusal is shown beside the control that caused it. The
decision buttons sit in a bar that stays at the bottom of the window while a long text scrolls, and
"accept the rest" asks first when some of the entities it would accept were never on screen (the
span-selection component reports which were).

Nested entities: a span model's prediction run (its config's ``decoder`` is ``span``) may hold entities
inside others (北京 inside 北京大学). The text draws every level (each entity outlined and labelled, an
enclosing one's outline a level lower); a click picks the innermost entity under the mouse, a click again
on the same character the one enclosing it, a click on a label that entity. "Entities by nesting level"
lists each level with Pick, Accept and Reject per entity; a selection dragged inside an entity adds an
inner one. Only a flat (CRF) run's document refuses an added or moved span that overlaps another entity
(:mod:`storage.reviews` says the same); a span run's refuses only a second entity on the same span with
the same label.

Query parameters keep the place across a reload: ``reviewer``, ``run``, ``doc``. The Evaluation page links
here with ``doc`` and ``eval``: the evaluation's predictions are reviewed in the prediction run made from
its report (:func:`storage.reviews.evaluation_review_run`).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ner_core.review import adjust_fields, relabel_fields
from storage.db import DatabaseLockedError
from storage.reviews import ReviewSpool, new_event
from ui import queries, review_queries
from ui.app_pages.common import (
    count,
    db_path,
    escape_markdown,
    label_colours,
    legend_html,
    show_highlighted,
    spans_of,
)
from ui.components import span_select
from ui.review_state import (
    STATES,
    effective,
    entity_digest,
    entity_ref,
    nesting_levels,
    never_seen,
    overlapping,
    replay,
    spool_path,
    state_digest,
    undo_target,
)

ORDERS = {
    "uncertain": "most uncertain first",
    "uncertain_per_char": "most uncertain per character",
    "disagree": "where two runs disagree",
    "random": "random",
    "search": "search",
}
NESTED_HINT = (
    " · nested entities: click again on a character for the entity around it, or click an entity's label"
)
SHORTCUTS = (
    "Keys (outside text boxes): **a** accept · **r** reject · **1-9** label the selection (add) or the "
    "selected entity (relabel) · **n** accept the rest and next · **s** skip · **u** undo · **x** / Esc "
    "clear the selection. Drag over characters to select them; click an entity to select it."
)
# the decision bar stays at the bottom of the window while the text scrolls (Streamlit wraps a container in
# a box of its own height: the wrapper is what sticks, within the page's column)
BAR_CSS = (
    "<style>div:has(> .st-key-review_bar){position:sticky;bottom:0;z-index:990;}"
    ".st-key-review_bar{background:var(--st-background-color,#fff);box-shadow:0 -3px 8px rgba(0,0,0,.15);}"
    "</style>"
)
ss = st.session_state
db = db_path()
spool = ReviewSpool(spool_path(db))
ss.setdefault("review_stamp", 0)
ss.setdefault("review_msgs", {})  # place -> [(kind, text)]: shown beside the control on the next rerun
ss.setdefault("review_undo", [])  # groups of events this session made: [{"doc_id", "events": [...]}]
ss.setdefault("review_drafts", {})  # typed Start/End offsets by widget key, kept while other widgets change


# ------------------------------------------------------------------------------------------ helpers
def _param(name: str) -> str | None:
    value = st.query_params.get(name)
    return value if value else None


def _say(place: str, text: str, kind: str = "error") -> None:
    """Keep ``text`` for ``place``, the part of the page whose control caused it (``page``, ``bar``,
    ``entity``, ``add``); :func:`_show` draws it there on the next rerun."""
    ss.review_msgs.setdefault(place, []).append((kind, text))


def _show(place: str) -> None:
    """The messages kept for ``place``; they name data (mentions, ids), so they are shown as plain text."""
    for kind, raw in ss.review_msgs.pop(place, []):
        text = escape_markdown(raw)
        if kind == "error":
            st.error(text, icon=":material/block:")
        elif kind == "warning":
            st.warning(text, icon=":material/warning:")
        else:
            st.info(text, icon=":material/info:")


def _flush() -> int:
    """Write what waits in the spool; returns how many still wait (the database busy). Decisions the
    database refuses are said at the top of the page (they were made on an earlier rerun)."""
    before = len(spool.refused())
    try:
        written, waiting = spool.flush(db, wait_s=0.3)
    except DatabaseLockedError:
        written, waiting = 0, spool.pending()
    if written:
        ss.review_stamp += 1
    for bad in spool.refused()[before:]:
        _say("page", f"Decision not recorded: {bad.get('refused_because')}")
    return waiting


def _submit(events: list[dict], *, doc_id: str) -> None:
    """Spool ``events`` (one undoable group); the rerun that follows writes them (:func:`_flush`)."""
    if not events:
        return
    spool.add(events)
    ss.review_undo.append({"doc_id": doc_id, "events": events})
    ss.review_undo = ss.review_undo[-200:]


def _reviewer() -> str:
    """The reviewer's name, asked once per session (kept in the URL, so a reload keeps it)."""
    name = ss.get("reviewer") or _param("reviewer")
    if name and name.strip():
        ss.reviewer = name.strip()
        st.query_params["reviewer"] = ss.reviewer
        return ss.reviewer
    st.info("Every decision is stored with your name and the time.", icon=":material/badge:")
    with st.form("who"):
        typed = st.text_input("Your name", key="reviewer_input", placeholder="e.g. wang.fang")
        if st.form_submit_button("Start reviewing", type="primary"):
            if typed.strip():
                ss.reviewer = typed.strip()
                st.query_params["reviewer"] = ss.reviewer
                st.rerun()
            st.error("Give a name: an empty reviewer name is refused.")
    st.stop()


def _from_evaluation() -> None:
    """A link from the Evaluation page names ``eval``: open its predictions (the prediction run made from
    its report, written on the first visit; no model runs) at the linked ``doc``."""
    eval_id = _param("eval")
    if not eval_id:
        return
    try:
        run = review_queries.evaluation_review_run(db, eval_id)
    except DatabaseLockedError:
        st.warning("The database is busy: the evaluation's predictions were not opened yet; reload the page.")
        st.stop()
    except (KeyError, ValueError) as exc:
        _say("page", f"The evaluation's predictions cannot be opened: {exc.args[0]}")
    else:
        st.query_params["run"] = run
        ss.review_run, ss.review_doc, ss.review_left = run, _param("doc"), set()
    st.query_params.pop("eval", None)
    st.rerun()


def _pick_run(pruns: pd.DataFrame) -> tuple[str, str | None]:
    names = {
        r.pred_run_id: f"{r.pred_run_id}  ({r.input_kind}, {r.n_documents} docs, {r.n_entities} entities)"
        for r in pruns.itertuples()
    }
    ids = list(names)
    wanted = _param("run")
    c1, c2 = st.columns(2)
    run = c1.selectbox(
        "Prediction run", ids, index=ids.index(wanted) if wanted in ids else 0, format_func=names.get
    )
    others = ["(none)", *[i for i in ids if i != run]]
    compare = c2.selectbox("Compare with run (optional)", others, format_func=lambda i: names.get(i, i))
    if run != wanted:
        if wanted:  # the reviewer chose another run: the URL's document was the other run's
            st.query_params.pop("doc", None)
        st.query_params["run"] = run
    return run, None if compare == "(none)" else compare


def _queue_order(compare: str | None) -> tuple[str, str | None, int]:
    c1, c2 = st.columns([3, 2])
    orders = [o for o in ORDERS if o != "disagree" or compare]
    order = c1.radio("Queue order", orders, format_func=ORDERS.get, horizontal=True, key="review_order")
    search, seed = None, 0
    if order == "search":
        search = c2.text_input("Text contains", key="review_search", placeholder="e.g. 北京").strip()
    elif order == "random":
        seed = int(c2.number_input("Seed", min_value=0, value=0, step=1, key="review_seed"))
    return order, search, seed


def _how_ordered(order: str, queue: pd.DataFrame, compare: str | None, search: str | None, seed: int) -> str:
    if order in ("uncertain", "uncertain_per_char"):
        have = int(queue["uncertainty"].notna().sum()) if "uncertainty" in queue else 0
        measure = (
            "the document's uncertainty stored at prediction time (a CRF run: the summed token entropy of "
            "its marginals; a span run: the summed binary entropy of its scored spans)"
            if have
            else "the lowest entity confidence (this run stored no per-document entropy)"
        )
        if have and order == "uncertain_per_char":
            measure += ", divided by its length in characters (a sum puts long documents first)"
        return (
            f"Ordered most uncertain first by {measure}; documents without the entropy follow by their "
            f"lowest entity confidence. Near-duplicate texts (equal once lower-cased without spaces, "
            f"punctuation, symbols and digits) wait behind the first of their kind; skipped documents last."
        )
    if order == "disagree":
        return (
            f"Documents where {escape_markdown(compare)} predicted other entities, most disagreements first; "
            f"skipped last."
        )
    if order == "random":
        return f"A random order fixed by seed {seed}; skipped documents last."
    return (
        f"Documents containing {escape_markdown(repr(search))}, most uncertain first; skipped documents last."
    )


def _load(run: str, doc_id: str) -> dict | None:
    """The document as stored, with its predicted entities and events (one read); when the database is busy,
    the copy this session read last (so decisions can go on into the spool). ``KeyError`` when the run
    lacks it."""
    try:
        doc = queries.review_document(db, run, doc_id, ss.review_stamp)
    except DatabaseLockedError:
        last = ss.get("review_last_doc")
        if last and last["pred_run_id"] == run and last["doc_id"] == doc_id:
            st.caption(
                "The database is busy: this is the document as last read, with your waiting decisions."
            )
            return last
        st.warning("The database is busy and this document was not read yet: press **Retry now**.")
        return None
    ss.review_last_doc = doc
    return doc


def _find_run(doc_id: str, run: str, pruns: pd.DataFrame) -> str | None:
    """Another prediction run holding ``doc_id`` (a link may name a run that lacks it)."""
    for other in pruns["pred_run_id"]:
        if other == run:
            continue
        try:
            queries.review_document(db, other, doc_id, ss.review_stamp)
        except KeyError:
            continue
        return other
    return None


def _all_events(doc: dict) -> list[dict]:
    """The document's stored events plus those still waiting in the spool."""
    stored = {e["event_id"] for e in doc["events"]}
    waiting = [
        e
        for e in spool.events()
        if e.get("pred_run_id") == doc["pred_run_id"]
        and e.get("doc_id") == doc["doc_id"]
        and e["event_id"] not in stored
    ]
    return [*doc["events"], *waiting]


def _labels(doc: dict, events: list[dict]) -> list[str]:
    """The model's label set, then labels added with an explicit ``add_label`` (stored or waiting)."""
    added = [e["label"] for e in effective(events) if e["action"] == "add_label"]
    out = list(doc["labels"])
    for lb in [*doc["added_labels"], *added]:
        if lb not in out:
            out.append(lb)
    return out


def _ev(doc: dict, action: str, **fields) -> dict:
    return new_event(doc["pred_run_id"], doc["doc_id"], doc["doc_hash"], ss.reviewer, action, **fields)


def _key_fields(ent: dict) -> dict:
    return {"start": ent["key"][0], "end": ent["key"][1], "label": ent["key"][2]}


def _pick_key(run: str, doc_id: str) -> str:
    """Where the session keeps the selected entity's ref for this document (not a widget key: the picker
    widget is made anew whenever the document changes, this stays)."""
    return f"review_ent_{run}_{doc_id}"


def _ent_name(ent: dict, text: str) -> str:
    return (
        f"{ent['label']} {text[ent['start'] : ent['end']]!r} [{ent['start']}, {ent['end']}) · {ent['state']}"
    )


# ------------------------------------------------------------------------------- the state at a click
def _state_now(run: str, doc_id: str) -> tuple[dict, list[dict]] | None:
    """The document and its entities as they are when a button is clicked (stored plus waiting events,
    replayed): what every action is built from. ``None`` (and a message) when it cannot be read."""
    try:
        doc = queries.review_document(db, run, doc_id, ss.review_stamp)
    except DatabaseLockedError:
        doc = ss.get("review_last_doc")
        if not doc or (doc["pred_run_id"], doc["doc_id"]) != (run, doc_id):
            _say("page", "Nothing recorded: the database is busy and the document was not read.", "warning")
            return None
    except KeyError:
        _say("page", f"Nothing recorded: prediction run {run!r} no longer holds document {doc_id!r}.")
        return None
    return doc, replay(doc["predicted"], _all_events(doc))


def _entity_now(run: str, doc_id: str, ref: str, shown: str, place: str) -> tuple | None:
    """``(doc, ents, ent)`` now, when entity ``ref`` is still what the button was drawn for (its
    :func:`entity_digest` is ``shown``); otherwise ``None`` and a refusal at ``place``."""
    got = _state_now(run, doc_id)
    if got is None:
        return None
    doc, ents = got
    ent = next((e for e in ents if entity_ref(e) == ref), None)
    if ent is not None and entity_digest(ent) == shown:
        return doc, ents, ent
    now = f"it is now {_ent_name(ent, doc['text'])}" if ent else "it is no longer in the document"
    _say(place, f"Not recorded: the entity changed since this button was drawn ({now}). Decide again.")
    return None


# ------------------------------------------------------------------------------------------ actions
def _mentions(doc: dict, ents: list[dict], ent: dict) -> list[tuple[str, str, dict]]:
    """(doc_id, doc_hash, entity) of every current entity with ``ent``'s mention and label: this document's,
    then those of documents not reviewed yet."""
    mention = doc["text"][ent["start"] : ent["end"]]
    same = [
        (doc["doc_id"], doc["doc_hash"], e)
        for e in ents
        if e["state"] != "rejected"
        and e["label"] == ent["label"]
        and doc["text"][e["start"] : e["end"]] == mention
    ]
    try:
        rows = queries.review_mentions(db, doc["pred_run_id"], mention, ent["label"])
    except DatabaseLockedError:
        _say("entity", "The database is busy: applied to this document's mentions only.", "warning")
        rows = []
    for r in rows:
        if r["doc_id"] != doc["doc_id"]:
            key = (r["key_start"], r["key_end"], r["key_label"])
            other = {"key": key, "start": r["start"], "end": r["end"], "label": r["label"]}
            same.append((r["doc_id"], r["doc_hash"], other))
    return same


def _advance(doc_id: str, queue: pd.DataFrame) -> None:
    """Move to the next queued document after ``doc_id`` (the queue is read again after a write)."""
    done = ss.setdefault("review_left", set())
    done.add(doc_id)
    ids = [d for d in (queue["doc_id"].tolist() if not queue.empty else []) if d not in done]
    ss.review_doc = ids[0] if ids else None
    if ss.review_doc:
        st.query_params["doc"] = ss.review_doc
    elif "doc" in st.query_params:
        del st.query_params["doc"]


def _accept_rest(doc: dict, ents: list[dict], queue: pd.DataFrame) -> None:
    events = [_ev(doc, "accept", **_key_fields(e)) for e in ents if e["state"] == "predicted"]
    _submit([*events, _ev(doc, "done")], doc_id=doc["doc_id"])
    ss.pop("review_confirm", None)
    _advance(doc["doc_id"], queue)


def _rest_or_ask(doc: dict, ents: list[dict], queue: pd.DataFrame, seen: frozenset) -> None:
    """Accept the entities still only predicted and go on; when some of them were never on screen, ask
    first (the bar then says how many and offers to accept them all)."""
    if never_seen(ents, seen):
        ss.review_confirm = {"doc": (doc["pred_run_id"], doc["doc_id"]), "digest": state_digest(ents)}
        return
    _accept_rest(doc, ents, queue)


def _on_rest(run: str, doc_id: str, digest: str, seen: frozenset, queue: pd.DataFrame, sure: bool) -> None:
    """The "accept the rest" buttons: on the document as it is now, if that is the one they were drawn
    for; ``sure``: the confirmation's button (accept the unseen ones too)."""
    got = _state_now(run, doc_id)
    if got is None:
        return
    doc, ents = got
    if state_digest(ents) != digest:
        ss.pop("review_confirm", None)
        _say("bar", "Not recorded: the document changed since this button was drawn. Look at it again.")
    elif sure:
        _accept_rest(doc, ents, queue)
    else:
        _rest_or_ask(doc, ents, queue, seen)


def _skip(doc: dict, queue: pd.DataFrame) -> None:
    _submit([_ev(doc, "skip")], doc_id=doc["doc_id"])
    ss.pop("review_confirm", None)
    _advance(doc["doc_id"], queue)


def _on_skip(run: str, doc_id: str, queue: pd.DataFrame) -> None:
    got = _state_now(run, doc_id)
    if got is not None:
        _skip(got[0], queue)


def _undo(doc: dict, events: list[dict]) -> None:
    """Cancel this session's last group of decisions (all of an "accept the rest and next", or of an
    "apply to every identical mention"), or else the reviewer's latest decision on this document."""
    if ss.review_undo:
        group = ss.review_undo.pop()
        targets = [e for e in reversed(group["events"])]
    else:
        last = undo_target(events, ss.reviewer)
        if last is None:
            _say("bar", "Nothing to undo: you made no decision on this document.")
            return
        group, targets = {"doc_id": doc["doc_id"]}, [last]
    undo = [
        new_event(
            t["pred_run_id"], t["doc_id"], t["doc_hash"], ss.reviewer, "undo", ref_event_id=t["event_id"]
        )
        for t in targets
    ]
    spool.add(undo)
    ss.pop("review_confirm", None)
    ss.review_left = ss.get("review_left", set()) - {group["doc_id"]}
    ss.review_doc = group["doc_id"]
    st.query_params["doc"] = group["doc_id"]


def _on_undo(run: str, doc_id: str) -> None:
    got = _state_now(run, doc_id)
    if got is not None:
        _undo(got[0], _all_events(got[0]))


def _relabel(
    doc: dict, ent: dict, label: str, doc_id: str | None = None, doc_hash: str | None = None
) -> dict:
    """Change an entity's label; boundaries fixed before are kept (:func:`ner_core.review.relabel_fields`)."""
    ctx = {**doc, "doc_id": doc_id or doc["doc_id"], "doc_hash": doc_hash or doc["doc_hash"]}
    action, fields = relabel_fields(ent["key"], (ent["start"], ent["end"]), label)
    return _ev(ctx, action, **fields)


def _decide(doc: dict, ents: list[dict], ent: dict, action: str, label: str | None = None) -> None:
    """accept | reject | relabel ``ent`` (as it is now); reject and relabel honour "apply to every
    identical mention". An accept of a corrected entity would put it back on its predicted span: refused."""
    place = "entity" if action == "relabel" else "bar"
    if action == "accept":
        if ent["state"] not in ("predicted", "rejected"):
            _say(place, f"Not recorded: {_ent_name(ent, doc['text'])} is already decided; accept needs none.")
            return
        _submit([_ev(doc, "accept", **_key_fields(ent))], doc_id=doc["doc_id"])
        return
    targets = [(doc["doc_id"], doc["doc_hash"], ent)]
    if ss.get("review_apply_all"):
        targets = _mentions(doc, ents, ent)
    events = []
    for doc_id, doc_hash, e in targets:
        if action == "reject":
            ctx = {**doc, "doc_id": doc_id, "doc_hash": doc_hash}
            events.append(_ev(ctx, "reject", **_key_fields(e)))
        elif e["label"] != label:
            events.append(_relabel(doc, e, label, doc_id, doc_hash))
    if len(targets) > 1:
        _say(place, f"Applied to {len(events)} identical mentions (this document and others).", "info")
    _submit(events, doc_id=doc["doc_id"])


def _on_decide(run: str, doc_id: str, ref: str, shown: str, action: str, label_key: str | None) -> None:
    """Accept, Reject and Change label: built from the entity as it is at the click."""
    got = _entity_now(run, doc_id, ref, shown, "entity" if action == "relabel" else "bar")
    if got is not None:
        _decide(*got, action, ss[label_key] if label_key else None)


def _blocker(doc: dict, ents: list[dict], start: int, end: int, label: str, skip=None) -> dict | None:
    """The current entity that refuses ``[start, end)`` ``label``: in a flat run's document one that
    overlaps it, in a span run's one on the same span with the same label (an inner span is welcome)."""
    if doc.get("decoder") != "span":
        return overlapping(ents, start, end, skip=skip)
    same = (start, end, label)
    return next(
        (
            e
            for e in ents
            if e["state"] != "rejected" and e["key"] != skip and (e["start"], e["end"], e["label"]) == same
        ),
        None,
    )


def _add(doc: dict, ents: list[dict], start: int, end: int, label: str) -> None:
    hit = _blocker(doc, ents, start, end, label)
    if hit is not None and doc.get("decoder") == "span":
        _say("add", f"Not added: {label} [{start}, {end}) is already an entity ({hit['state']}).")
        return
    if hit is not None:
        _say(
            "add",
            f"Not added: [{start}, {end}) overlaps {hit['label']} [{hit['start']}, {hit['end']}) "
            f"{doc['text'][hit['start'] : hit['end']]!r}; reject or fix that one first.",
        )
        return
    _submit([_ev(doc, "add", start=start, end=end, label=label)], doc_id=doc["doc_id"])
    ss.review_sel_span = None


def _on_add(run: str, doc_id: str, sel: tuple) -> None:
    if tuple(ss.get("review_sel_span") or ()) != tuple(sel):
        _say("add", "Not added: the selection changed since this button was drawn. Look at it again.")
        return
    got = _state_now(run, doc_id)
    if got is not None:
        _add(*got, sel[0], sel[1], ss.review_add_label)


def _drop_drafts(run: str, doc_id: str, ref: str) -> None:
    prefix = f"{_pick_key(run, doc_id)}_{ref}_"
    ss.review_drafts = {k: v for k, v in ss.review_drafts.items() if not k.startswith(prefix)}


def _adjust(doc: dict, ents: list[dict], ent: dict, start: int, end: int) -> None:
    if not 0 <= start < end <= len(doc["text"]):
        _say("entity", f"Boundaries [{start}, {end}) are not a span of the {len(doc['text'])} characters.")
        return
    if (start, end) == (ent["start"], ent["end"]):
        _say("entity", f"Not changed: the entity is already on [{start}, {end}).", "info")
        return
    hit = _blocker(doc, ents, start, end, ent["label"], skip=ent["key"])
    if hit is not None and doc.get("decoder") == "span":
        _say("entity", f"Not changed: {ent['label']} [{start}, {end}) is already an entity ({hit['state']}).")
        return
    if hit is not None:
        _say(
            "entity", f"Not changed: [{start}, {end}) overlaps {hit['label']} [{hit['start']}, {hit['end']})."
        )
        return
    action, fields = adjust_fields(ent["key"], ent["label"], start, end)
    _submit([_ev(doc, action, **fields)], doc_id=doc["doc_id"])
    _drop_drafts(doc["pred_run_id"], doc["doc_id"], entity_ref(ent))
    ss.review_sel_span = None


def _on_fix(run: str, doc_id: str, ref: str, shown: str, start_key: str, end_key: str) -> None:
    """Fix boundaries: the typed offsets, on the entity as it is at the click."""
    got = _entity_now(run, doc_id, ref, shown, "entity")
    if got is not None:
        _adjust(*got, int(ss[start_key]), int(ss[end_key]))


def _on_use_selection(run: str, doc_id: str, ref: str, shown: str, sel: tuple) -> None:
    if tuple(ss.get("review_sel_span") or ()) != tuple(sel):
        _say("entity", "Not changed: the selection changed since this button was drawn. Look at it again.")
        return
    got = _entity_now(run, doc_id, ref, shown, "entity")
    if got is not None:
        _adjust(*got, sel[0], sel[1])


def _keep_draft(key: str) -> None:
    ss.review_drafts[key] = int(ss[key])


def _reopen(key: str) -> None:
    """Open a reviewed document again (it left the queue; decisions on it still count)."""
    doc_id = ss.get(key)
    if doc_id:
        ss.review_doc = doc_id
        st.query_params["doc"] = doc_id
        ss.review_left = ss.get("review_left", set()) - {doc_id}


# ------------------------------------------------------------------------------------------ panels
def _bar(doc: dict, ents: list[dict], ent: dict | None, queue: pd.DataFrame, seen: frozenset) -> None:
    """The decisions, in a bar that stays at the bottom of the window while the text scrolls: the selected
    entity with Accept and Reject, then accept the rest and next, skip, undo, and what they refused."""
    run, doc_id, digest = doc["pred_run_id"], doc["doc_id"], state_digest(ents)
    st.html(BAR_CSS)
    with st.container(key="review_bar", border=True):
        top = st.columns([6, 2, 2], vertical_alignment="center")
        ref, shown = (entity_ref(ent), entity_digest(ent)) if ent else ("", "")
        if ent is None:
            top[0].caption("No entity selected: click one in the text, or choose it below.")
        else:
            top[0].markdown(f"**Selected:** {escape_markdown(_ent_name(ent, doc['text']))}")
        corrected = ent is not None and ent["state"] == "corrected"
        top[1].button(
            "Accept [a]",
            icon=":material/check:",
            disabled=ent is None or ent["state"] not in ("predicted", "rejected"),
            help="already corrected: the correction is the decision" if corrected else None,
            on_click=_on_decide,
            args=(run, doc_id, ref, shown, "accept", None),
        )
        top[2].button(
            "Reject [r]",
            icon=":material/close:",
            disabled=ent is None or ent["state"] == "rejected",
            on_click=_on_decide,
            args=(run, doc_id, ref, shown, "reject", None),
        )
        low = st.columns([4, 2, 2])
        low[0].button(
            "Accept the rest and next [n]",
            type="primary",
            icon=":material/done_all:",
            on_click=_on_rest,
            args=(run, doc_id, digest, seen, queue, False),
        )
        low[1].button("Skip [s]", icon=":material/skip_next:", on_click=_on_skip, args=(run, doc_id, queue))
        low[2].button("Undo [u]", icon=":material/undo:", on_click=_on_undo, args=(run, doc_id))
        _confirm_rest(doc, ents, queue, seen, digest)
        _show("bar")


def _confirm_rest(doc: dict, ents: list[dict], queue: pd.DataFrame, seen: frozenset, digest: str) -> None:
    """The question "accept the rest" asked: how many of the entities it accepts were never on screen."""
    ask = ss.get("review_confirm")
    if not ask or ask["doc"] != (doc["pred_run_id"], doc["doc_id"]):
        return
    unseen = never_seen(ents, seen)
    if ask["digest"] != digest or not unseen:  # decided meanwhile, or scrolled through: ask again on n
        ss.pop("review_confirm", None)
        return
    n = sum(e["state"] == "predicted" for e in ents)
    first = ", ".join(
        f"{doc['text'][e['start'] : e['end']]!r} [{e['start']}, {e['end']})" for e in unseen[:5]
    )
    more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
    st.warning(
        f"{len(unseen)} of the {n} entities this would accept were never on screen: "
        f"{escape_markdown(first)}{more}. Scroll through the text to see them, or accept all {n}.",
        icon=":material/visibility_off:",
    )
    c = st.columns([4, 2, 2])
    c[0].button(
        f"Accept all {n} and next",
        type="primary",
        on_click=_on_rest,
        args=(doc["pred_run_id"], doc["doc_id"], digest, seen, queue, True),
    )
    c[1].button("Cancel", key="review_confirm_cancel", on_click=lambda: ss.pop("review_confirm", None))


def _select_ref(pick_key: str, ref: str) -> None:
    ss[pick_key] = ref


def _levels_panel(doc: dict, ents: list[dict], pick_key: str) -> None:
    """A span run's entities level by level (outermost first), each with Pick (into the panel below:
    label, boundaries), Accept and Reject; shown for a flat run's document only when its entities nest."""
    levels = nesting_levels(ents)
    depth = max(levels.values(), default=1)
    if doc.get("decoder") != "span" and depth == 1:
        return
    run, doc_id, chosen = doc["pred_run_id"], doc["doc_id"], ss.get(pick_key)
    title = f"Entities by nesting level: {count(len(ents), 'entity', 'entities')} on {count(depth, 'level')}"
    with st.expander(title, expanded=True), st.container(key="review_levels"):
        for lv in range(1, depth + 1):
            where = "outermost" if lv == 1 else f"inside {count(lv - 1, 'other entity', 'other entities')}"
            st.markdown(f"**Level {lv}** ({where})")
            for i, e in enumerate(ents):
                ref, shown = entity_ref(e), entity_digest(e)
                if levels[ref] != lv:
                    continue
                c = st.columns([6, 1, 1, 1], vertical_alignment="center")
                name = escape_markdown(_ent_name(e, doc["text"]))
                c[0].markdown(f"**{name}** ◀ selected" if ref == chosen else name)
                c[1].button(
                    "Pick",
                    help="show it in the Selected entity panel: its label and boundaries",
                    key=f"review_lvl_sel_{i}_{shown}",
                    disabled=ref == chosen,
                    on_click=_select_ref,
                    args=(pick_key, ref),
                )
                c[2].button(
                    "Accept",
                    key=f"review_lvl_acc_{i}_{shown}",
                    disabled=e["state"] not in ("predicted", "rejected"),
                    on_click=_on_decide,
                    args=(run, doc_id, ref, shown, "accept", None),
                )
                c[3].button(
                    "Reject",
                    key=f"review_lvl_rej_{i}_{shown}",
                    disabled=e["state"] == "rejected",
                    on_click=_on_decide,
                    args=(run, doc_id, ref, shown, "reject", None),
                )


def _picker(doc: dict, ents: list[dict], pick_key: str) -> None:
    """The entity picker. Its options show each entity's current state, and a select box keeps the label it
    first drew for a value: so the widget is keyed by the document's state (and the choice), made anew
    whenever either changes; the choice itself lives in ``ss[pick_key]``."""
    by_ref = {entity_ref(e): e for e in ents}
    levels = nesting_levels(ents)
    chosen = ss.get(pick_key) or ""
    options = ["", *by_ref]
    widget = f"{pick_key}_pick_{state_digest(ents)}_{chosen}"

    def copy() -> None:
        ss[pick_key] = ss[widget] or ""

    st.selectbox(
        "Entity",
        options,
        index=options.index(chosen) if chosen in options else 0,
        key=widget,
        on_change=copy,
        format_func=lambda k: (
            "(click an entity in the text, or choose here)"
            if not k
            else "↳ " * (levels[k] - 1) + _ent_name(by_ref[k], doc["text"])
        ),
    )


def _entity_panel(doc: dict, ents: list[dict], ent: dict | None, labels: list[str], pick_key: str) -> None:
    """The selected entity: picker, label, boundaries. Every widget below the picker is keyed by the
    entity's digest, so after any decision it shows the entity as it is now."""
    _picker(doc, ents, pick_key)
    if ent is None:
        _show("entity")
        return
    run, doc_id, ref, shown = doc["pred_run_id"], doc["doc_id"], entity_ref(ent), entity_digest(ent)
    r1, r2 = st.columns([2, 1])
    label_key = f"{pick_key}_{ref}_{shown}_label"
    current = labels.index(ent["label"]) if ent["label"] in labels else 0
    new_label = r1.selectbox("Label", labels, index=current, key=label_key)
    r2.button(
        "Change label",
        disabled=new_label == ent["label"],
        on_click=_on_decide,
        args=(run, doc_id, ref, shown, "relabel", label_key),
    )
    st.checkbox("Apply to every identical mention (reject, change label)", key="review_apply_all")
    sel = ss.get("review_sel_span")
    slot = st.container()  # always there: an element that comes and goes would reset the expander below
    if sel and (sel[0], sel[1]) != (ent["start"], ent["end"]):
        slot.button(
            escape_markdown(f"Use the selection [{sel[0]}, {sel[1]}) {sel[2]!r} as its boundaries"),
            icon=":material/straighten:",
            on_click=_on_use_selection,
            args=(run, doc_id, ref, shown, tuple(sel)),
        )
    _boundaries(doc, ent, pick_key)
    _show("entity")


def _boundaries(doc: dict, ent: dict, pick_key: str) -> None:
    """Typed offsets for the entity's span. The inputs are keyed by the span they start from, so a moved
    entity gets inputs holding its new span; what was typed is kept as a draft (other widgets and other
    entities may change meanwhile) until it is applied or the entity moves, which is then said."""
    run, doc_id, ref = doc["pred_run_id"], doc["doc_id"], entity_ref(ent)
    base = f"{pick_key}_{ref}_{ent['start']}_{ent['end']}"
    moved = any(k.startswith(f"{pick_key}_{ref}_") and not k.startswith(f"{base}_") for k in ss.review_drafts)
    if moved:
        _drop_drafts(run, doc_id, ref)
    n = len(doc["text"])
    with st.expander("Fix boundaries (code-point offsets)", key="review_fix_boundaries"):
        f1, f2 = st.columns(2)
        ks, ke = f"{base}_s", f"{base}_e"
        start = f1.number_input(
            "Start",
            0,
            n - 1,
            ss.review_drafts.get(ks, ent["start"]),
            key=ks,
            on_change=_keep_draft,
            args=(ks,),
        )
        end = f2.number_input(
            "End", 1, n, ss.review_drafts.get(ke, ent["end"]), key=ke, on_change=_keep_draft, args=(ke,)
        )
        start, end = int(start), int(end)
        st.caption(
            f"New mention: {escape_markdown(repr(doc['text'][start:end]))}"
            if start < end
            else "End must be after start."
        )
        st.button(
            "Fix boundaries",
            disabled=start >= end or (start, end) == (ent["start"], ent["end"]),
            on_click=_on_fix,
            args=(run, doc_id, ref, entity_digest(ent), ks, ke),
        )
    if moved:
        st.caption(
            f"The offsets you typed were for the entity before it moved: it is now on [{ent['start']}, "
            f"{ent['end']}). Type them again if they still apply."
        )


def _select_typed(text: str) -> None:
    s, e = int(ss.review_typed_s), int(ss.review_typed_e)
    if s < e:
        ss.review_sel_span = (s, e, text[s:e])
    else:
        _say("add", f"Nothing selected: From ({s}) must be before To ({e}).")


def _add_label(doc: dict, labels: list[str]) -> None:
    typed = ss.review_new_label.strip()
    if typed in labels:
        _say("add", f"Label {typed!r} is already in the label set.")
    elif any(c.isspace() for c in typed):
        _say("add", f"Label {typed!r} contains a space: use one word such as {typed.split()[0]!r}.")
    else:
        _submit([_ev(doc, "add_label", label=typed)], doc_id=doc["doc_id"])
        _say("add", f"Label {typed!r} added: the next exported dataset version carries it.", "info")


def _add_panel(doc: dict, labels: list[str]) -> None:
    """Add a missing entity: the mouse selection (or typed offsets) and a label."""
    sel = ss.get("review_sel_span")
    if sel:
        st.markdown(f"Selected **{escape_markdown(sel[2])}** [{sel[0]}, {sel[1]})")
    else:
        st.caption("Select characters in the text with the mouse to add a missing entity.")
    with st.expander("or type the offsets (code points)"):
        n = len(doc["text"])
        o1, o2, o3 = st.columns([1, 1, 1])
        o1.number_input("From", 0, max(0, n - 1), 0, key="review_typed_s")
        o2.number_input("To", 1, max(1, n), 1, key="review_typed_e")
        o3.button("Select", key="review_typed_go", on_click=_select_typed, args=(doc["text"],))
    a1, a2 = st.columns([2, 1])
    a1.selectbox("Label of the new entity", labels, key="review_add_label")
    a2.button(
        "Add entity",
        icon=":material/add:",
        disabled=not sel or not labels,
        on_click=_on_add,
        args=(doc["pred_run_id"], doc["doc_id"], tuple(sel or ())),
    )
    with st.expander("Add a new label (not in the model's label set)"):
        typed = st.text_input("New label", key="review_new_label", placeholder="e.g. PRODUCT").strip()
        st.button(
            "Add label",
            key="review_add_label_go",
            disabled=not typed,
            on_click=_add_label,
            args=(doc, labels),
        )
    _show("add")


def _on_key(key: str, doc: dict, ents: list, ent: dict | None, labels: list, queue, seen: frozenset) -> None:
    """A keyboard shortcut from the document component (this rerun's state is the current one)."""
    sel = ss.get("review_sel_span")
    if key in ("x", "Escape"):
        ss.review_sel_span = None
    elif key == "a" and ent is not None and ent["state"] in ("predicted", "rejected"):
        _decide(doc, ents, ent, "accept")
    elif key == "r" and ent is not None and ent["state"] != "rejected":
        _decide(doc, ents, ent, "reject")
    elif key == "n":
        _rest_or_ask(doc, ents, queue, seen)
    elif key == "s":
        _skip(doc, queue)
    elif key == "u":
        _undo(doc, _all_events(doc))
    elif key.isdigit() and 1 <= int(key) <= len(labels):
        label = labels[int(key) - 1]
        if sel:
            _add(doc, ents, sel[0], sel[1], label)
        elif ent is not None and ent["label"] != label:
            _decide(doc, ents, ent, "relabel", label)
    else:
        return
    st.rerun()


def _document(doc: dict, queue: pd.DataFrame, compare: str | None) -> None:
    """The document, its entities and every action on them."""
    events = _all_events(doc)
    ents = replay(doc["predicted"], events)
    labels = _labels(doc, events)
    colours = label_colours([*labels, *(e["label"] for e in ents)])
    pick_key = _pick_key(doc["pred_run_id"], doc["doc_id"])
    if ss.get("review_sel_doc") != (doc["pred_run_id"], doc["doc_id"]):
        ss.review_sel_doc, ss.review_sel_span = (doc["pred_run_id"], doc["doc_id"]), None
    refs = [entity_ref(e) for e in ents]
    shown = [{**e, "i": i, "ref": refs[i], "colour": colours.get(e["label"])} for i, e in enumerate(ents)]
    chosen = ss.get(pick_key) or ""
    got = span_select(
        doc["text"],
        shown,
        key=f"span_{doc['pred_run_id']}_{doc['doc_id']}",
        selected=refs.index(chosen) if chosen in refs else None,
        hint=f"{len(doc['text'])} characters · labels: "
        + " ".join(f"{i}={lb}" for i, lb in enumerate(labels[:9], 1))
        + (NESTED_HINT if doc.get("decoder") == "span" else ""),
    )
    if got["selection"] is not None:
        sel = got["selection"]
        ss.review_sel_span = (sel.start, sel.end, sel.chars)
    if got["pick"] is not None and got["pick"] < len(refs):
        ss[pick_key] = refs[got["pick"]]
    ent = next((e for e in ents if entity_ref(e) == ss.get(pick_key)), None)
    seen = frozenset(got["seen"])
    _bar(doc, ents, ent, queue, seen)
    st.html(legend_html(colours))
    _levels_panel(doc, ents, pick_key)
    left, right = st.columns(2)
    with left, st.container(key="review_entity_panel"):
        st.markdown("**Selected entity**")
        _entity_panel(doc, ents, ent, labels, pick_key)
    with right, st.container(key="review_add_panel"):
        st.markdown("**Missing entity**")
        _add_panel(doc, labels)
    if got["key"]:
        _on_key(got["key"], doc, ents, ent, labels, queue, seen)
    st.caption(SHORTCUTS)
    _details(doc, ents, compare, colours)
    ss.review_msgs = {}  # a message for a part not drawn this time is stale by the next decision


def _details(doc: dict, ents: list[dict], compare: str | None, colours: dict) -> None:
    """The entity table, reviewers' disagreements and the compared run's prediction."""
    n_by = {s: sum(e["state"] == s for e in ents) for s in STATES}
    st.caption(" · ".join(f"{n} {s}" for s, n in n_by.items()))
    table = pd.DataFrame(
        [
            {
                "label": e["label"],
                "mention": doc["text"][e["start"] : e["end"]],
                "start": e["start"],
                "end": e["end"],
                "state": e["state"],
                "confidence": e["confidence"],
                "reviewer": e["reviewer"],
            }
            for e in ents
        ],
        columns=["label", "mention", "start", "end", "state", "confidence", "reviewer"],
    )
    levels = nesting_levels(ents)
    if doc.get("decoder") == "span" or max(levels.values(), default=1) > 1:
        table.insert(0, "level", [levels[entity_ref(e)] for e in ents])  # 1: outermost
    st.dataframe(table, hide_index=True, key="review_entities")
    if doc["disagreements"]:
        st.warning(
            "Reviewers disagree on these entities; the later decision is the one in force.",
            icon=":material/groups:",
        )
        cols = ["start", "end", "label", "reviewer", "action", "outcome", "created_at"]
        st.dataframe(pd.DataFrame(doc["disagreements"])[cols], hide_index=True)
    if compare:
        try:
            other_text, other = queries.predicted_document(db, compare, doc["doc_id"])
        except KeyError:
            st.caption(escape_markdown(f"{compare} has no document {doc['doc_id']}."))
        else:
            st.markdown(f"**{escape_markdown(compare)}** predicted:")
            show_highlighted(other_text, spans_of(other.to_dict("records")), colours)


def _queue(run: str, order: str, compare: str | None, search: str | None, seed: int) -> pd.DataFrame:
    if order == "search" and not search:
        return pd.DataFrame(columns=["doc_id"])
    try:
        queue = queries.review_queue(db, run, order, compare, search, seed, 50, ss.review_stamp)
    except DatabaseLockedError:
        queue = ss.get("review_last_queue", pd.DataFrame(columns=["doc_id"]))
    ss.review_last_queue = queue
    return queue if not queue.empty else pd.DataFrame(columns=["doc_id"])


#: the queue table's columns, in this order, with their headings (the others are left out)
QUEUE_COLUMNS = {
    "doc_id": "document",
    "n_chars": "characters",
    "uncertainty": "uncertainty",
    "uncertainty_per_char": "per character",
    "n_entities": "entities",
    "min_confidence": "lowest confidence",
    "n_disagreements": "disagreements",
    "near_duplicate": "near-duplicate",
    "skipped": "skipped",
    "preview": "text",
}


def _queue_table(queue: pd.DataFrame, order: str) -> None:
    """The queue with each document's length beside its uncertainty (summed and per character)."""
    with st.expander(f"Queue: {len(queue)} documents shown ({ORDERS[order]})"):
        cols = [c for c in QUEUE_COLUMNS if c in queue.columns]
        st.dataframe(
            queue[cols].rename(columns=QUEUE_COLUMNS),
            hide_index=True,
            key="review_queue_table",
            column_config={"per character": st.column_config.NumberColumn(format="%.4f")},
        )


def _progress(run: str, order_note: str) -> None:
    try:
        p = queries.review_progress(db, run, ss.review_stamp)
    except DatabaseLockedError:
        return
    total = max(1, p["reviewed"] + p["queued"])
    st.progress(p["reviewed"] / total, text=f"{p['reviewed']} reviewed / {p['queued']} queued")
    st.caption(order_note)


def _reviewed_list(run: str) -> None:
    """The run's reviewed documents (they left the queue), the latest first, each one can be reopened."""
    try:
        done = review_queries.reviewed_documents(db, run, 200, ss.review_stamp)
    except DatabaseLockedError:
        return
    if done.empty:
        return
    with st.expander(f"Reviewed: {len(done)} documents, the latest first (reopen one)"):
        names = {
            r.doc_id: f"{r.doc_id} · {r.n_chars} characters · {r.reviewers} · {r.preview}"
            for r in done.itertuples()
        }
        key = f"review_reopen_{run}"
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        c1.selectbox("Reviewed document", list(names), format_func=names.get, key=key)
        c2.button("Reopen", icon=":material/history:", on_click=_reopen, args=(key,))


def _current(run: str, queue: pd.DataFrame) -> str | None:
    """The document on screen: the URL's (a link, or this session's place), else this session's, else the
    head of the queue."""
    if ss.get("review_run") != run:
        ss.review_run, ss.review_doc, ss.review_left = run, None, set()
    doc_id = _param("doc") or ss.get("review_doc")
    if doc_id is None and not queue.empty:
        doc_id = queue["doc_id"].iloc[0]
    if doc_id is not None:
        ss.review_doc = doc_id
        if _param("doc") != doc_id:
            st.query_params["doc"] = doc_id
    return doc_id


def _open(run: str, doc_id: str, pruns: pd.DataFrame, queue: pd.DataFrame) -> dict | None:
    """The document to show: ``doc_id`` of ``run``; when the run lacks it, the same doc_id in another run
    (a rerun), else the head of the queue, saying so."""
    try:
        return _load(run, doc_id)
    except KeyError:
        other = _find_run(doc_id, run, pruns)
        if other is not None:
            st.query_params["run"] = other
            ss.review_run, ss.review_doc = other, doc_id
            st.rerun()
    st.warning(
        f"No prediction run holds document {escape_markdown(repr(doc_id))}. To review a document of an "
        f"evaluation, follow its **Review** link on the Evaluation page (it opens the evaluation's "
        f"predictions); to review a whole dataset, predict it (`ner predict --dataset ...`). Showing the "
        f"head of the queue instead."
    )
    ss.review_doc = None
    st.query_params.pop("doc", None)
    if queue.empty:
        st.stop()
    ss.review_doc = queue["doc_id"].iloc[0]
    st.query_params["doc"] = ss.review_doc
    return _load(run, ss.review_doc)


def _heading(doc: dict, queue: pd.DataFrame) -> None:
    ids = queue["doc_id"].tolist()
    doc_id, n = doc["doc_id"], len(doc["text"])
    where = f"{ids.index(doc_id) + 1} of {len(ids)}" if doc_id in ids else "not queued"
    unc = doc.get("uncertainty")
    how = (
        f"uncertainty {unc:.3f} ({unc / max(1, n):.4f} per character)"
        if unc is not None
        else "uncertainty not stored"
    )
    st.subheader(f"Document {escape_markdown(doc_id)}")
    st.caption(f"queue position {where} · {n} characters · {how}")
    if doc["reviewed"]:
        st.info("This document is already reviewed; decisions made now still count (the later one wins).")
    if doc["changed"]:
        st.error(escape_markdown(doc["changed"]), icon=":material/sync_problem:")


# ------------------------------------------------------------------------------------------ the page
st.title("Review")
reviewer = _reviewer()
waiting = _flush()
_from_evaluation()
_show("page")
h1, h2 = st.columns([5, 1])
h1.caption(
    f"Reviewing as **{escape_markdown(reviewer)}** · each decision is stored with this name and the time."
)
if h2.button("Change name"):
    ss.pop("reviewer", None)
    st.query_params.pop("reviewer", None)
    st.rerun()
if waiting:
    word = "decision" if waiting == 1 else "decisions"
    st.warning(
        f"{waiting} {word} waiting, the database is busy. They are kept in {escape_markdown(spool.path)} and "
        f"written, each once, as soon as the database is free.",
        icon=":material/hourglass_top:",
    )
    st.button("Retry now", icon=":material/refresh:")

pruns = queries.prediction_runs(db)
if pruns.empty:
    st.info("No prediction runs yet: run `ner predict ...` or `ner pipeline ...`.")
    st.stop()
run, compare = _pick_run(pruns)
order, search, seed = _queue_order(compare)
queue = _queue(run, order, compare, search, seed)
_progress(run, _how_ordered(order, queue, compare, search, seed))
_reviewed_list(run)
doc_id = _current(run, queue)
if doc_id is None:
    st.success("Nothing left in this queue: every document is reviewed (or none matches the search).")
    st.stop()
doc = _open(run, doc_id, pruns, queue)
if doc is None:
    st.stop()
_queue_table(queue, order)
_heading(doc, queue)
_document(doc, queue, compare)
