"""Runs: every training run with its configuration and best scores; two runs side by side.

The table shows the scores right after the run id (pinned), so they stay in view however wide the other
columns are.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from ui import queries
from ui.app_pages.common import count, db_path, escape_markdown, fmt

#: the scores, first after the run id; the remaining columns follow in the order the query gives them
SCORE_COLUMNS = [
    "best_dev_f1",
    "test_f1",
    "test_precision",
    "test_recall",
    "test_char_accuracy",
    "test_sentence_accuracy",
    "best_epoch",
    "n_epochs",
]
HIDDEN_COLUMNS = ["config", "model_dir"]


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v
    return out


db = db_path()
st.title("Training runs")
runs = queries.runs(db)
if runs.empty:
    st.info("No training runs yet: run `ner train ...` or `ner pipeline ...`.")
    st.stop()

st.caption(
    f"{count(len(runs), 'run')}, newest first. Scores: best dev entity F1 during training and the latest "
    f"evaluation on the test split."
)
first = ["run_id", *SCORE_COLUMNS]
shown = runs[first + [c for c in runs.columns if c not in first and c not in HIDDEN_COLUMNS]]
st.dataframe(
    shown,
    hide_index=True,
    column_config={
        "run_id": st.column_config.TextColumn(pinned=True),
        **{
            c: st.column_config.NumberColumn(format="%.4f")
            for c in shown.columns
            if c.startswith("test_") or c == "best_dev_f1"
        },
    },
)

st.subheader("Compare two runs")
ids = runs["run_id"].tolist()
col_a, col_b = st.columns(2)
run_a = col_a.selectbox("Run A", ids, index=0, key="run_a")
run_b = col_b.selectbox("Run B", ids, index=1 if len(ids) > 1 else 0, key="run_b")

rows = {rid: runs.loc[runs["run_id"] == rid].iloc[0] for rid in (run_a, run_b)}
for col, rid in ((col_a, run_a), (col_b, run_b)):
    r = rows[rid]
    with col:
        m1, m2, m3 = st.columns(3)
        m1.metric("best dev F1", fmt(r["best_dev_f1"]))
        m2.metric("test F1", fmt(r["test_f1"]))
        m3.metric("epochs", fmt(r["n_epochs"]))
        facts = (r["status"], f"head {r['head']}", f"scheme {r['scheme']}", f"stopped: {r['stopped_reason']}")
        st.caption(" · ".join([f"**{escape_markdown(rid)}**", *(escape_markdown(f) for f in facts)]))

cfg = {rid: _flatten(json.loads(rows[rid]["config"])) for rid in (run_a, run_b)}
keys = sorted(set(cfg[run_a]) | set(cfg[run_b]))
scores = [
    "best_dev_f1",
    "best_epoch",
    "n_epochs",
    "test_f1",
    "test_precision",
    "test_recall",
    "test_char_accuracy",
    "test_sentence_accuracy",
    "seconds",
]
table = pd.DataFrame(
    {
        "setting": scores + keys,
        "run A": [fmt(rows[run_a][s]) for s in scores] + [str(cfg[run_a].get(k, "")) for k in keys],
        "run B": [fmt(rows[run_b][s]) for s in scores] + [str(cfg[run_b].get(k, "")) for k in keys],
    }
)
table["differs"] = table["run A"] != table["run B"]
only_diff = st.toggle("Only settings that differ", value=False, key="only_diff")
st.dataframe(table[table["differs"]] if only_diff else table, hide_index=True)
