"""Evaluation: per-type scores, error counts by kind, calibration of entity confidence (reliability diagram,
confidence histogram, precision/recall against a confidence threshold), a per-label confusion matrix, and an
error browser (gold vs predicted spans)."""

from __future__ import annotations

import streamlit as st

from ner_core.metrics import ERROR_KINDS
from ui import calibration_charts as charts
from ui import queries
from ui.app_pages.common import db_path, fmt, label_colours, legend_html, show_highlighted, spans_of

db = db_path()
st.title("Evaluation")
evals = queries.evaluations(db)
if evals.empty:
    st.info("No evaluations yet: run `ner test ...` or `ner pipeline ...`.")
    st.stop()

labels_by_id = {r.eval_id: f"{r.eval_id}  ({r.split}, F1 {r.f1:.3f})" for r in evals.itertuples()}
eval_id = st.selectbox("Evaluation", list(labels_by_id), format_func=labels_by_id.get, key="eval_id")
row = evals.loc[evals["eval_id"] == eval_id].iloc[0]

m = st.columns(6)
for col, (name, key) in zip(
    m,
    [
        ("entity F1", "f1"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("macro F1", "macro_f1"),
        ("char accuracy", "char_accuracy"),
        ("sentence accuracy", "sentence_accuracy"),
    ],
    strict=True,
):
    col.metric(name, fmt(row[key]))
st.caption(
    f"run {row['run_id']} · dataset {row['dataset']} v{row['dataset_version']} · "
    f"split {row['split']} · "
    f"{row['n_sentences']} sentences · {row['n_chars']} characters · scheme {row['scheme']}"
)

st.subheader("Per entity type")
types = queries.evaluation_types(db, eval_id)
c1, c2 = st.columns([3, 2])
c1.dataframe(
    types,
    hide_index=True,
    column_config={k: st.column_config.NumberColumn(format="%.4f") for k in ("precision", "recall", "f1")},
)
if not types.empty:
    c2.bar_chart(types.set_index("label")[["precision", "recall", "f1"]], stack=False)

st.subheader("Errors by kind")
errors = queries.evaluation_errors(db, eval_id)
st.dataframe(errors, hide_index=True)
st.caption(
    "boundary: same label, other span · type: same span, other label · boundary+type: both differ · "
    "missed: no prediction overlaps · spurious: a prediction overlaps no gold entity "
    "(counted under the predicted label)."
)

report = queries.evaluation(db, eval_id)


def show_calibration() -> None:
    """The calibration charts and the confusion matrix of the selected evaluation; one line instead where
    it stored none (evaluated before calibration was measured, or without confidences)."""
    bins = queries.evaluation_reliability(db, eval_id)
    cells = queries.evaluation_confusion(db, eval_id)
    if bins.empty and cells.empty:
        st.caption("No calibration or confusion data for this evaluation (stored before they were measured).")
        return
    if bins.empty:
        st.caption("No calibration data for this evaluation (its predictions had no confidences).")
    elif not bins["n"].any():
        st.caption("No calibration to show: the model predicted no entity on this split.")
    else:
        st.subheader("Confidence calibration")
        st.caption(charts.calibration_caption(row, report.get("calibration") or {}))
        r1, r2 = st.columns(2)
        r1.markdown("**Reliability diagram** (dashed: perfectly calibrated)")
        r1.altair_chart(charts.reliability_chart(bins))
        r2.markdown("**Confidence histogram**")
        r2.altair_chart(charts.histogram_chart(bins))
        points = queries.evaluation_thresholds(db, eval_id)
        if not points.empty:
            st.markdown("**Precision, recall and F1 against the confidence threshold**")
            st.altair_chart(charts.thresholds_chart(points))
    if not cells.empty:
        st.subheader("Confusion matrix")
        st.caption(
            "Entities paired by identical span: rows gold label, columns predicted label; O: no entity on "
            "that span (row O: spurious predictions, column O: missed gold entities)."
        )
        st.altair_chart(charts.confusion_chart(cells), width="content")  # square cells


show_calibration()

st.subheader("Error browser")
all_labels = sorted({t["label"] for t in report.get("per_type", [])} | set(types["label"]))
f1, f2, f3 = st.columns(3)
label = f1.selectbox("Entity type", ["(all)", *all_labels], key="err_label")
kind = f2.selectbox("Kind of error", ["(all)", *ERROR_KINDS], key="err_kind")
limit = f3.number_input("Show at most", min_value=1, max_value=500, value=20, step=10, key="err_limit")
sentences = queries.error_sentences(
    report, label=None if label == "(all)" else label, kind=None if kind == "(all)" else kind
)
n_stored = len(report.get("error_sentences", []))
st.caption(f"{len(sentences)} sentences with errors match (of {n_stored} stored).")
colours = label_colours([*queries.all_labels(db), *all_labels])
st.html(legend_html(colours))
# "Review" opens a document with this evaluation's predictions: the Review page reviews them in the
# prediction run made from the stored report (storage.reviews.evaluation_review_run; no model runs).
st.page_link(
    "app_pages/problems.py",
    label=f"Ingest problems of {row['dataset']} (gold can be wrong: repaired transitions, duplicates)",
    icon=":material/report:",
    query_params={"dataset": row["dataset"]},
)
for s in sentences[: int(limit)]:
    with st.container(border=True):
        head, link = st.columns([4, 1])
        head.caption(f"{s['doc_id']} · {', '.join(s.get('kinds', []))}")
        params = {"doc": s["doc_id"], "eval": eval_id}
        link.page_link(
            "app_pages/review.py", label="Review", icon=":material/rate_review:", query_params=params
        )
        g, p = st.columns(2)
        with g:
            st.markdown("**gold**")
            show_highlighted(s["text"], spans_of(s.get("gold", [])), colours)
        with p:
            st.markdown("**predicted**")
            show_highlighted(s["text"], spans_of(s.get("pred", [])), colours)
