"""Training curves: loss, dev entity F1, character and sentence accuracy and learning rate per epoch.

Every epoch is a point on its run's line, so a one-epoch run shows too; the best epoch (the one whose model
was kept) is a large diamond, and a run that stopped early (patience or time budget) has a dashed rule at
the epoch where it stopped.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
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


def epoch_marks(runs: pd.DataFrame, run_ids: list[str]) -> pd.DataFrame:
    """One row per run of ``run_ids``: ``run_id``, ``best_epoch`` and ``stop_epoch`` (the last epoch of a
    run whose stopped reason is not ``finished ...``, e.g. an early stop; else missing)."""
    rows = runs.loc[runs["run_id"].isin(run_ids), ["run_id", "best_epoch", "n_epochs", "stopped_reason"]]
    reason = rows["stopped_reason"].fillna("")
    early = (reason != "") & ~reason.str.startswith("finished")
    return pd.DataFrame(
        {
            "run_id": rows["run_id"],
            "best_epoch": rows["best_epoch"],
            "stop_epoch": rows["n_epochs"].where(early),
            "stopped": rows["stopped_reason"].where(early),
        }
    )


def curve_chart(ep: pd.DataFrame, metric: str, marks: pd.DataFrame) -> alt.LayerChart:
    """``metric`` per epoch, one coloured line with a point per epoch for each run, the best epoch as a
    diamond, early stops as dashed rules."""
    data = ep.loc[ep[metric].notna(), ["run_id", "epoch", metric]].merge(marks, on="run_id", how="left")
    data["best"] = data["epoch"] == data["best_epoch"]
    colour = alt.Color("run_id:N", legend=alt.Legend(orient="bottom", labelLimit=400, title=None))
    axis = alt.Axis(tickMinStep=1, format="d")
    x = alt.X("epoch:Q", title="epoch", axis=axis, scale=alt.Scale(nice=False, padding=12))
    y = alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False), title=None)
    tooltip = ["run_id:N", "epoch:Q", alt.Tooltip(f"{metric}:Q", format=".4g")]
    base = alt.Chart(data).encode(x=x, y=y, color=colour, tooltip=tooltip)
    lines = base.mark_line(point=alt.OverlayMarkDef(size=50, filled=True))
    best = base.transform_filter("datum.best").mark_point(shape="diamond", size=220, filled=True, opacity=1)
    stops = marks.dropna(subset=["stop_epoch"])
    layers = [lines, best]
    if not stops.empty:
        rule = alt.Chart(stops).mark_rule(strokeDash=[5, 4])
        stop_x = alt.X("stop_epoch:Q", title="epoch")
        layers.append(rule.encode(x=stop_x, color=colour, tooltip=["run_id:N", "stopped:N"]))
    return alt.layer(*layers).properties(height=260)


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

marks = epoch_marks(runs, chosen)
st.caption("A point per epoch; ◆ the best epoch (its model was kept); dashed line: an early stop.")
cols = st.columns(2)
for i, (metric, title) in enumerate(METRICS.items()):
    with cols[i % 2]:
        st.markdown(f"**{title}**")
        if ep[metric].notna().any():
            st.altair_chart(curve_chart(ep, metric, marks))
        else:
            st.caption("not recorded")

st.subheader("Epochs")
st.dataframe(ep, hide_index=True)
