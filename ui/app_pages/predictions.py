"""Predictions: search predicted entities by text and label, a highlighted document view, frequencies.

Ids, inputs (file paths, SQL texts) and document texts are data: shown through Markdown only escaped
(:func:`ui.app_pages.common.escape_markdown`); select boxes show their options as plain text.
"""

from __future__ import annotations

import streamlit as st

from ui import queries
from ui.app_pages.common import (
    beside_raw,
    count,
    db_path,
    escape_markdown,
    label_colours,
    legend_html,
    show_highlighted,
    spans_of,
)

db = db_path()
st.title("Predictions")
pruns = queries.prediction_runs(db)
if pruns.empty:
    st.info("No prediction runs yet: run `ner predict ...` or `ner pipeline ...`.")
    st.stop()

names = {
    r.pred_run_id: f"{r.pred_run_id}  ({r.input_kind}, {count(r.n_documents, 'document')}, "
    f"{count(r.n_entities, 'entity', 'entities')})"
    for r in pruns.itertuples()
}
pred_run_id = st.selectbox("Prediction run", list(names), format_func=names.get, key="pred_run")
info = pruns.loc[pruns["pred_run_id"] == pred_run_id].iloc[0]
facts = (f"model run {info['run_id'] or '-'}", f"status {info['status']}", f"input {info['input_ref']}")
st.caption(" · ".join(escape_markdown(f) for f in facts))

counts = queries.label_counts(db, pred_run_id)
labels = counts["label"].tolist()
colours = label_colours(queries.all_labels(db))

st.subheader("Search")
s1, s2 = st.columns([2, 1])
text = s1.text_input("Text contains", value="", key="pred_text", placeholder="e.g. 北京")
chosen = s2.multiselect("Labels", labels, default=[], key="pred_labels")
found = queries.search_entities(db, pred_run_id, text.strip(), tuple(chosen), 200)
st.caption(f"{count(len(found), 'entity', 'entities')} shown (at most 200).")
st.dataframe(beside_raw(found, "confidence", "confidence_calibrated"), hide_index=True)

st.subheader("Document")
docs = queries.predicted_docs(db, pred_run_id, text.strip(), tuple(chosen), 500)
if docs.empty:
    st.info("No document matches the search.")
else:
    previews = {
        r.doc_id: f"{r.doc_id} · {count(r.n_entities, 'entity', 'entities')} · {r.preview}"
        for r in docs.itertuples()
    }
    # keyed by run: the options depend on it, and a stale selection must not carry over
    doc_id = st.selectbox("Document", list(previews), format_func=previews.get, key=f"pred_doc_{pred_run_id}")
    doc_text, ents = queries.predicted_document(db, pred_run_id, doc_id)
    st.html(legend_html(colours))
    show_highlighted(doc_text, spans_of(ents.to_dict("records")), colours)
    with st.expander(f"{count(len(ents), 'entity', 'entities')} in this document"):
        st.dataframe(beside_raw(ents, "confidence", "confidence_calibrated"), hide_index=True)

st.subheader("Entity frequencies")
f1, f2 = st.columns([1, 2])
with f1:
    st.dataframe(counts, hide_index=True)
    if not counts.empty:
        st.bar_chart(counts.set_index("label")["n_entities"])
with f2:
    top_label = st.selectbox("Most frequent mentions of", ["(all)", *labels], key=f"top_label_{pred_run_id}")
    top = queries.top_entities(db, pred_run_id, None if top_label == "(all)" else top_label, 50)
    st.dataframe(beside_raw(top, "mean_confidence", "mean_confidence_calibrated"), hide_index=True)
