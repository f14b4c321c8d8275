"""Streamlit review dashboard: ``streamlit run ui/app.py`` (or ``ner ui --db PATH`` / ``make ui``).

The database path comes from the environment variable ``NER_DB`` and is read again at every rerun.
Pages live in ``ui/app_pages/``; the shared chrome (database path, refresh button, database checks) runs
before the selected page. Reads go through :mod:`ui.queries`; the one page that writes, Review, records
decisions through :mod:`storage.reviews` (a spool file first, so a busy database loses none).

Nothing is fetched from outside: the page icons are the Material Symbols font Streamlit bundles, and the
favicon is an emoji (Streamlit turns a ``:material/...:`` favicon into a link to fonts.gstatic.com). Data
and URL parameters shown through Markdown go through :func:`ui.app_pages.common.escape_markdown`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `streamlit run ui/app.py` puts ui/ on the path, not the repo root
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from storage.db import DatabaseLockedError  # noqa: E402
from ui import queries  # noqa: E402
from ui.app_pages.common import db_path, escape_markdown  # noqa: E402

# an emoji favicon is drawn by the browser (a data: URL); a :material/...: one would load from a CDN
st.set_page_config(page_title="Chinese NER review", page_icon="🏷️", layout="wide")

PAGES = [
    st.Page("app_pages/runs.py", title="Runs", icon=":material/table_rows:", default=True),
    st.Page("app_pages/curves.py", title="Training curves", icon=":material/show_chart:"),
    st.Page("app_pages/evaluation.py", title="Evaluation", icon=":material/fact_check:"),
    st.Page("app_pages/predictions.py", title="Predictions", icon=":material/search:"),
    st.Page("app_pages/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("app_pages/problems.py", title="Ingest problems", icon=":material/report:"),
    st.Page("app_pages/try_it.py", title="Try it", icon=":material/edit_note:"),
    st.Page("app_pages/sql.py", title="SQL", icon=":material/database:"),
]
page = st.navigation(PAGES)

db = db_path()
with st.sidebar:
    st.caption("Database (read-only; the Review page records decisions)")
    st.code(db, language=None)
    if st.button("Refresh data", icon=":material/refresh:", help="clear cached query results and reload"):
        st.cache_data.clear()
    st.caption(f"Query results are cached for {queries.TTL_S} s.")

state = queries.db_state(db)
if state.state == "missing":
    st.error(state.message, icon=":material/error:")
    st.stop()
if state.state == "locked":
    st.warning(state.message + " Press **Refresh data** to try again.", icon=":material/hourglass_top:")
    if page.url_path != "review":  # the Review page goes on: decisions wait in its spool, it says how many
        st.stop()
if state.state == "empty":
    st.info(state.message, icon=":material/info:")
    st.stop()

try:
    page.run()
except DatabaseLockedError as exc:
    st.warning(
        f"The database is busy: {escape_markdown(exc)} Press **Refresh data** to try again.",
        icon=":material/hourglass_top:",
    )
