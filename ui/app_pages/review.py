"""Review: correct a prediction run's entities, one document at a time, the most useful documents first.

Every decision is a review event (:mod:`storage.reviews`): it goes to a spool file beside the database
first (fsync'd) and from there to DuckDB; while another process holds the database the decisions wait in
the spool (the page says how many) and are written on a later rerun, each exactly once. The page shows a
document as the stored events plus those still waiting make it (:func:`ui.review_state.replay`, the rule of
:mod:`ner_core.review`), from one read of the document per rerun.

Query parameters keep the place across a reload: ``reviewer``, ``run``, ``doc`` (the Evaluation page links
here with ``doc`` and ``run``).
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from ner_core.review import adjust_fields, relabel_fields
from storage.db import DatabaseLockedError
from storage.reviews import ReviewSpool, new_event
from ui import queries
from ui.app_pages.common import db_path, label_colours, legend_html, show_highlighted, spans_of
from ui.components import span_select
from ui.review_state import STATES, effective, overlapping, replay, spool_path, undo_target

ORDERS = {
    "uncertain": "most uncertain first",
    "disagree": "where two runs disagree",
    "random": "random",
    "search": "search",
}
SHORTCUTS = (
    "Keys (outside text boxes): **a** accept · **r** reject · **1-9** label the selection (add) or the "
    "selected entity (relabel) · **n** accept the rest and next · **s** skip · **u** undo · **x** / Esc "
    "clear the selection. Drag over characters to select them; click an entity to select it."
)
ss = st.session_state
db = db_path()
spool = ReviewSpool(spool_path(db))
ss.setdefault("review_stamp", 0)
ss.setdefault("review_errors", [])  # refusals to show on the next rerun
ss.setdefault("review_notes", [])
ss.setdefault("review_undo", [])  # groups of events this session made: [{"doc_id", "events": [...]}]


# ------------------------------------------------------------------------------------------ helpers
def _param(name: str) -> str | None:
    value = st.query_params.get(name)
    return value if value else None


def _flush() -> int:
    """Write what waits in the spool; returns how many still wait (the database busy). Decisions the
    database refuses are kept in ``review_errors`` for the next rerun to show."""
    before = len(spool.refused())
    try:
        written, waiting = spool.flush(db, wait_s=0.3)
    except DatabaseLockedError:
        written, waiting = 0, spool.pending()
    if written:
        ss.review_stamp += 1
    for bad in spool.refused()[before:]:
        ss.review_errors.append(f"Decision not recorded: {bad.get('refused_because')}")
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
    if order == "uncertain":
        have = int(queue["uncertainty"].notna().sum()) if not queue.empty else 0
        measure = (
            "the document's summed token entropy of the CRF marginals (stored at prediction time)"
            if have
            else "the lowest entity confidence (this run stored no per-document entropy)"
        )
        return (
            f"Ordered most uncertain first by {measure}; documents without the entropy follow by their "
            f"lowest entity confidence. Near-duplicate texts (equal once lower-cased without spaces, "
            f"punctuation, symbols and digits) wait behind the first of their kind; skipped documents last."
        )
    if order == "disagree":
        return f"Documents where {compare} predicted other entities, most disagreements first; skipped last."
    if order == "random":
        return f"A random order fixed by seed {seed}; skipped documents last."
    return f"Documents containing {search!r}, most uncertain first; skipped documents last."


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
    """Another prediction run holding ``doc_id`` (a link from the Evaluation page may name none)."""
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


def _relabel(
    doc: dict, ent: dict, label: str, doc_id: str | None = None, doc_hash: str | None = None
) -> dict:
    """Change an entity's label; boundaries fixed before are kept (:func:`ner_core.review.relabel_fields`)."""
    ctx = {**doc, "doc_id": doc_id or doc["doc_id"], "doc_hash": doc_hash or doc["doc_hash"]}
    action, fields = relabel_fields(ent["key"], (ent["start"], ent["end"]), label)
    return _ev(ctx, action, **fields)


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
        st.warning("The database is busy: applied to this document's mentions only.")
        rows = []
    for r in rows:
        if r["doc_id"] != doc["doc_id"]:
            key = (r["key_start"], r["key_end"], r["key_label"])
            other = {"key": key, "start": r["start"], "end": r["end"], "label": r["label"]}
            same.append((r["doc_id"], r["doc_hash"], other))
    return same


# ------------------------------------------------------------------------------------------ actions
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
    _advance(doc["doc_id"], queue)


def _skip(doc: dict, queue: pd.DataFrame) -> None:
    _submit([_ev(doc, "skip")], doc_id=doc["doc_id"])
    _advance(doc["doc_id"], queue)


def _undo(doc: dict, events: list[dict]) -> None:
    """Cancel this session's last group of decisions (all of an "accept the rest and next", or of an
    "apply to every identical mention"), or else the reviewer's latest decision on this document."""
    if ss.review_undo:
        group = ss.review_undo.pop()
        targets = [e for e in reversed(group["events"])]
    else:
        last = undo_target(events, ss.reviewer)
        if last is None:
            ss.review_errors.append("Nothing to undo: you made no decision on this document.")
            return
        group, targets = {"doc_id": doc["doc_id"]}, [last]
    undo = [
        new_event(
            t["pred_run_id"], t["doc_id"], t["doc_hash"], ss.reviewer, "undo", ref_event_id=t["event_id"]
        )
        for t in targets
    ]
    spool.add(undo)
    ss.review_left = ss.get("review_left", set()) - {group["doc_id"]}
    ss.review_doc = group["doc_id"]
    st.query_params["doc"] = group["doc_id"]


def _decide(doc: dict, ents: list[dict], ent: dict, action: str, label: str | None = None) -> None:
    """accept | reject | relabel ``ent``; reject and relabel honour "apply to every identical mention"."""
    if action == "accept":
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
        ss.review_notes.append(f"Applied to {len(events)} identical mentions (this document and others).")
    _submit(events, doc_id=doc["doc_id"])


def _add(doc: dict, ents: list[dict], start: int, end: int, label: str) -> None:
    hit = overlapping(ents, start, end)
    if hit is not None:
        ss.review_errors.append(
            f"Not added: [{start}, {end}) overlaps {hit['label']} [{hit['start']}, {hit['end']}) "
            f"{doc['text'][hit['start'] : hit['end']]!r}; reject or fix that one first."
        )
        return
    _submit([_ev(doc, "add", start=start, end=end, label=label)], doc_id=doc["doc_id"])
    ss.review_sel_span = None


def _adjust(doc: dict, ents: list[dict], ent: dict, start: int, end: int) -> None:
    if not 0 <= start < end <= len(doc["text"]):
        ss.review_errors.append(
            f"Boundaries [{start}, {end}) are not a span of the {len(doc['text'])} characters."
        )
        return
    hit = overlapping(ents, start, end, skip=ent["key"])
    if hit is not None:
        ss.review_errors.append(
            f"Not changed: [{start}, {end}) overlaps {hit['label']} [{hit['start']}, {hit['end']})."
        )
        return
    action, fields = adjust_fields(ent["key"], ent["label"], start, end)
    _submit([_ev(doc, action, **fields)], doc_id=doc["doc_id"])
    ss.review_sel_span = None


# ------------------------------------------------------------------------------------------ panels
def _ent_name(ent: dict, text: str) -> str:
    return (
        f"{ent['label']} {text[ent['start'] : ent['end']]!r} [{ent['start']}, {ent['end']}) · {ent['state']}"
    )


def _entity_panel(doc: dict, ents: list[dict], labels: list[str], pick_key: str) -> dict | None:
    """The selected entity and its actions; returns it (None when none is selected). Buttons act in their
    callbacks, on the document as it was shown, before the rerun that shows the result."""
    by_key = {"{}:{}:{}".format(*e["key"]): e for e in ents}
    choice = st.selectbox(
        "Entity",
        ["", *by_key],
        key=pick_key,
        format_func=lambda k: (
            "(click an entity in the text, or choose here)" if not k else _ent_name(by_key[k], doc["text"])
        ),
    )
    ent = by_key.get(choice)
    if ent is None:
        return None
    b = st.columns(2)
    corrected = ent["state"] == "corrected"
    b[0].button(
        "Accept [a]",
        icon=":material/check:",
        disabled=corrected or ent["state"] in ("accepted", "added"),
        help="already corrected: the correction is the decision" if corrected else None,
        on_click=_decide,
        args=(doc, ents, ent, "accept"),
    )
    b[1].button(
        "Reject [r]",
        icon=":material/close:",
        disabled=ent["state"] == "rejected",
        on_click=_decide,
        args=(doc, ents, ent, "reject"),
    )
    r1, r2 = st.columns([2, 1])
    current = labels.index(ent["label"]) if ent["label"] in labels else 0
    label_key = f"{pick_key}_label"
    new_label = r1.selectbox("Label", labels, index=current, key=label_key)
    r2.button(
        "Change label",
        disabled=new_label == ent["label"],
        on_click=lambda: _decide(doc, ents, ent, "relabel", ss[label_key]),
    )
    st.checkbox("Apply to every identical mention (reject, change label)", key="review_apply_all")
    with st.expander("Fix boundaries (code-point offsets)"):
        n = len(doc["text"])
        f1, f2 = st.columns(2)
        ks, ke = f"{pick_key}_{choice}_s", f"{pick_key}_{choice}_e"
        start = int(f1.number_input("Start", 0, n - 1, ent["start"], key=ks))
        end = int(f2.number_input("End", 1, n, ent["end"], key=ke))
        st.caption(f"New mention: {doc['text'][start:end]!r}" if start < end else "End must be after start.")
        sel = ss.get("review_sel_span")
        if sel:
            st.button(
                f"Use the selection [{sel[0]}, {sel[1]}) {sel[2]!r}",
                on_click=_adjust,
                args=(doc, ents, ent, sel[0], sel[1]),
            )
        st.button(
            "Fix boundaries",
            disabled=(start, end) == (ent["start"], ent["end"]),
            on_click=lambda: _adjust(doc, ents, ent, int(ss[ks]), int(ss[ke])),
        )
    return ent


def _select_typed(text: str) -> None:
    s, e = int(ss.review_typed_s), int(ss.review_typed_e)
    if s < e:
        ss.review_sel_span = (s, e, text[s:e])
    else:
        ss.review_errors.append(f"Nothing selected: From ({s}) must be before To ({e}).")


def _add_label(doc: dict, labels: list[str]) -> None:
    typed = ss.review_new_label.strip()
    if typed in labels:
        ss.review_errors.append(f"Label {typed!r} is already in the label set.")
    elif any(c.isspace() for c in typed):
        ss.review_errors.append(
            f"Label {typed!r} contains a space: use one word such as {typed.split()[0]!r}."
        )
    else:
        _submit([_ev(doc, "add_label", label=typed)], doc_id=doc["doc_id"])
        ss.review_notes.append(f"Label {typed!r} added: the next exported dataset version carries it.")


def _add_panel(doc: dict, ents: list[dict], labels: list[str]) -> None:
    """Add a missing entity: the mouse selection (or typed offsets) and a label."""
    sel = ss.get("review_sel_span")
    if sel:
        st.markdown(f"Selected **{html.escape(sel[2])}** [{sel[0]}, {sel[1]})")
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
        on_click=lambda: _add(doc, ents, sel[0], sel[1], ss.review_add_label),
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


def _on_key(key: str, doc: dict, ents: list, ent: dict | None, labels: list, queue, events) -> None:
    """A keyboard shortcut from the document component."""
    sel = ss.get("review_sel_span")
    if key in ("x", "Escape"):
        ss.review_sel_span = None
    elif key == "a" and ent is not None and ent["state"] in ("predicted", "rejected"):
        _decide(doc, ents, ent, "accept")
    elif key == "r" and ent is not None and ent["state"] != "rejected":
        _decide(doc, ents, ent, "reject")
    elif key == "n":
        _accept_rest(doc, ents, queue)
    elif key == "s":
        _skip(doc, queue)
    elif key == "u":
        _undo(doc, events)
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
    pick_key = f"review_ent_{doc['pred_run_id']}_{doc['doc_id']}"
    if ss.get("review_sel_doc") != (doc["pred_run_id"], doc["doc_id"]):
        ss.review_sel_doc, ss.review_sel_span = (doc["pred_run_id"], doc["doc_id"]), None
    shown = [{**e, "i": i, "colour": colours.get(e["label"])} for i, e in enumerate(ents)]
    keys = ["{}:{}:{}".format(*e["key"]) for e in ents]
    chosen = ss.get(pick_key) or ""
    got = span_select(
        doc["text"],
        shown,
        key=f"span_{doc['pred_run_id']}_{doc['doc_id']}",
        selected=keys.index(chosen) if chosen in keys else None,
        hint=f"{len(doc['text'])} characters · labels: "
        + " ".join(f"{i}={lb}" for i, lb in enumerate(labels[:9], 1)),
    )
    if got["selection"] is not None:
        sel = got["selection"]
        ss.review_sel_span = (sel.start, sel.end, sel.chars)
    if got["pick"] is not None and got["pick"] < len(keys):
        ss[pick_key] = keys[got["pick"]]
    st.html(legend_html(colours))
    left, right = st.columns(2)
    with left:
        st.markdown("**Selected entity**")
        ent = _entity_panel(doc, ents, labels, pick_key)
    with right:
        st.markdown("**Missing entity**")
        _add_panel(doc, ents, labels)
    if got["key"]:
        _on_key(got["key"], doc, ents, ent, labels, queue, events)
    f = st.columns(3)
    f[0].button(
        "Accept the rest and next [n]",
        type="primary",
        icon=":material/done_all:",
        on_click=_accept_rest,
        args=(doc, ents, queue),
    )
    f[1].button("Skip [s]", icon=":material/skip_next:", on_click=_skip, args=(doc, queue))
    f[2].button("Undo [u]", icon=":material/undo:", on_click=_undo, args=(doc, events))
    st.caption(SHORTCUTS)
    _details(doc, ents, compare, colours)


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
            st.caption(f"{compare} has no document {doc['doc_id']}.")
        else:
            st.markdown(f"**{compare}** predicted:")
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


def _progress(run: str, order_note: str) -> None:
    try:
        p = queries.review_progress(db, run, ss.review_stamp)
    except DatabaseLockedError:
        return
    total = max(1, p["reviewed"] + p["queued"])
    st.progress(p["reviewed"] / total, text=f"{p['reviewed']} reviewed / {p['queued']} queued")
    st.caption(order_note)


def _current(run: str, queue: pd.DataFrame) -> str | None:
    """The document on screen: this session's, else the URL's, else the head of the queue."""
    if ss.get("review_run") != run:
        ss.review_run, ss.review_doc, ss.review_left = run, None, set()
    doc_id = ss.get("review_doc") or _param("doc")
    if doc_id is None and not queue.empty:
        doc_id = queue["doc_id"].iloc[0]
    if doc_id is not None:
        ss.review_doc = doc_id
        if _param("doc") != doc_id:
            st.query_params["doc"] = doc_id
    return doc_id


# ------------------------------------------------------------------------------------------ the page
st.title("Review")
reviewer = _reviewer()
waiting = _flush()
for msg in ss.review_errors:
    st.error(msg, icon=":material/block:")
for msg in ss.review_notes:
    st.info(msg, icon=":material/info:")
ss.review_errors, ss.review_notes = [], []
h1, h2 = st.columns([5, 1])
h1.caption(f"Reviewing as **{html.escape(reviewer)}** · each decision is stored with this name and the time.")
if h2.button("Change name"):
    ss.pop("reviewer", None)
    st.query_params.pop("reviewer", None)
    st.rerun()
if waiting:
    word = "decision" if waiting == 1 else "decisions"
    st.warning(
        f"{waiting} {word} waiting, the database is busy. They are kept in {spool.path} and written, each "
        f"once, as soon as the database is free.",
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
doc_id = _current(run, queue)
if doc_id is None:
    st.success("Nothing left in this queue: every document is reviewed (or none matches the search).")
    st.stop()
try:
    doc = _load(run, doc_id)
except KeyError:
    other = _find_run(doc_id, run, pruns)
    if other is not None:
        st.query_params["run"] = other
        ss.review_doc = doc_id
        st.rerun()
    st.warning(
        f"No prediction run holds document {doc_id!r}: predict its dataset (`ner predict --dataset ...`) to "
        f"review it. Showing the queue instead."
    )
    ss.review_doc = None
    st.query_params.pop("doc", None)
    st.stop()
if doc is None:
    st.stop()
with st.expander(f"Queue: {len(queue)} documents shown ({ORDERS[order]})"):
    st.dataframe(queue, hide_index=True)
ids = queue["doc_id"].tolist()
where = f"{ids.index(doc_id) + 1} of {len(ids)}" if doc_id in ids else "not queued"
unc = doc.get("uncertainty")
st.subheader(f"Document {doc_id}")
st.caption(f"queue position {where} · uncertainty " + (f"{unc:.3f}" if unc is not None else "not stored"))
if doc["reviewed"]:
    st.info("This document is already reviewed; decisions made now still count (the later one wins).")
if doc["changed"]:
    st.error(doc["changed"], icon=":material/sync_problem:")
_document(doc, queue, compare)
