"""Training curves: loss, dev entity F1, character and sentence accuracy and learning rate per epoch."""

from __future__ import annotations

import streamlit as st

from ui import queries
from ui.app_pages.common import db_path

METRICS = {
    "train_loss": "Training loss",
    "dev_f1": "Dev entity F1",
    "dev_char_accuracy": "Dev character accuracy",
    "dev_sentence_accuracy": "Dev sentence accuracy",
    "learning_rate": "Learning rate",
}

db = db_path()
st.title("Training curves")
runs = queries.runs(db)
if runs.empty:
    st.info("No training runs yet.")
    st.stop()

ids = runs["run_id"].tolist()
chosen = st.multiselect("Runs", ids, default=ids[:2], key="curve_runs")
if not chosen:
    st.info("Pick at least one run.")
    st.stop()
ep = queries.epochs(db, tuple(chosen))
if ep.empty:
    st.info("The chosen runs have no finished epochs yet.")
    st.stop()

cols = st.columns(2)
for i, (metric, title) in enumerate(METRICS.items()):
    wide = ep.pivot_table(index="epoch", columns="run_id", values=metric, aggfunc="first")
    with cols[i % 2]:
        st.markdown(f"**{title}**")
        if wide.notna().any().any():
            st.line_chart(wide, x_label="epoch", y_label=metric)
        else:
            st.caption("not recorded")

st.subheader("Epochs")
st.dataframe(ep, hide_index=True)
