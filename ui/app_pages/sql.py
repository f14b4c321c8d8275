"""SQL: read-only queries over the tables and views, with a row limit.

Only a single SELECT / WITH / SHOW / DESCRIBE statement runs; file-reading functions and file paths are
rejected, and the connection is read-only with external access disabled. Each query runs under the
INTERACTIVE profile of storage.query: a process of its own, capped in memory and result size and stopped
at its time limit, so that whatever is typed here cannot take the machine down.
"""

from __future__ import annotations

import streamlit as st

from storage.query import INTERACTIVE, time_limit_from_env
from ui import queries
from ui.app_pages.common import db_path

DEFAULT_SQL = (
    "SELECT label, sum(n_entities) AS n FROM v_predicted_label_counts\nGROUP BY label ORDER BY n DESC"
)

db = db_path()
st.title("SQL")
st.caption(
    "Read-only: one SELECT / WITH / SHOW / DESCRIBE statement over the database's tables and views. "
    f"No writes, no file access. Each query may use {INTERACTIVE.cap_mb} MB of memory, return "
    f"{INTERACTIVE.max_result_mb:g} MB and run {time_limit_from_env():g} s."
)
with st.expander("Tables and views"):
    st.dataframe(queries.views(db), hide_index=True)

sql = st.text_area("Query", value=DEFAULT_SQL, height=140, key="sql_text")
limit = st.number_input("Row limit", min_value=1, max_value=10_000, value=200, step=100, key="sql_limit")
if st.button("Run query", type="primary", key="sql_run"):
    try:
        result = queries.run_sql(db, sql, int(limit))
    except queries.SqlRejected as exc:
        st.error(str(exc), icon=":material/block:")
    else:
        st.dataframe(result.frame, hide_index=True)
        more = " (limit reached: more rows exist)" if result.truncated else ""
        st.caption(f"{len(result.frame)} rows{more}.")
