"""Ingest problems: what the readers and the ingest found wrong with a dataset version's files, browsed by
code, file and line (repaired transitions, duplicates, ... are warnings: the records were kept).

A link may name the dataset, file and line (``?dataset=...&file=...&line=...``); a value that names nothing
stored is ignored, and one shown back goes through :func:`ui.app_pages.common.escape_markdown`.
"""

from __future__ import annotations

import streamlit as st

from ui import queries
from ui.app_pages.common import count, db_path, escape_markdown

MAX_LINE = 2**31 - 1  # what a number input holds safely


def line_param(value: str | None) -> int:
    """The ``?line=`` of a link as a line number (0: none); a value that is not a line number (a number from
    0 to :data:`MAX_LINE`) says so and is ignored."""
    if not value:
        return 0
    try:
        line = int(value)
    except ValueError:
        line = -1
    if not 0 <= line <= MAX_LINE:
        st.warning(f"Ignored the link's line {escape_markdown(value)}: not a line number.")
        return 0
    return line


db = db_path()
st.title("Ingest problems")
sets = queries.datasets(db)
if sets.empty:
    st.info("No datasets yet: run `ner ingest ...` or `ner pipeline ...`.")
    st.stop()

names = sorted(sets["name"].unique())
wanted = st.query_params.get("dataset")  # a link may name the dataset (and file, line)
c1, c2 = st.columns([3, 1])
name = c1.selectbox("Dataset", names, index=names.index(wanted) if wanted in names else 0, key="prob_ds")
versions = sets.loc[sets["name"] == name, "version"].tolist()  # newest first
version = c2.selectbox("Version", versions, key=f"prob_ver_{name}")
row = sets.loc[(sets["name"] == name) & (sets["version"] == version)].iloc[0]

problems = queries.dataset_problems(db, name, int(version))
m = st.columns(3)
m[0].metric("documents", int(row["n_documents"]))
m[1].metric("errors (records left out)", int((problems["severity"] == "error").sum()))
m[2].metric("warnings (records kept)", int((problems["severity"] == "warning").sum()))
if problems.empty:
    st.success(f"{escape_markdown(name)} v{version}: the ingest found no problem.")
    st.stop()

st.subheader("By code")
by_code = (
    problems.groupby(["code", "severity"]).size().reset_index(name="n").sort_values("n", ascending=False)
)
st.dataframe(by_code, hide_index=True)

st.subheader("Browse")
f1, f2, f3, f4 = st.columns([2, 2, 1, 2])
codes = f1.multiselect("Code", sorted(problems["code"].unique()), key=f"prob_codes_{name}_{version}")
files = ["(all)", *sorted(problems["file"].unique())]
wanted_file = st.query_params.get("file")
file = f2.selectbox(
    "File", files, index=files.index(wanted_file) if wanted_file in files else 0, key=f"prob_file_{name}"
)
line = f3.number_input(
    "From line", min_value=0, value=line_param(st.query_params.get("line")), step=1, key="prob_line"
)
needle = f4.text_input("Message contains", value="", key="prob_text")

shown = problems
if codes:
    shown = shown[shown["code"].isin(codes)]
if file != "(all)":
    shown = shown[shown["file"] == file]
if line:
    shown = shown[shown["line"].fillna(0) >= line]
if needle.strip():
    shown = shown[shown["message"].str.contains(needle.strip(), case=False, regex=False)]
st.caption(f"{len(shown)} of {count(len(problems), 'problem')} shown (line and record numbers are 1-based).")
st.dataframe(shown, hide_index=True, width="stretch")
