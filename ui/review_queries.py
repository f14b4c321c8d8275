"""The Review page's reads beyond :mod:`ui.queries` (cached the same way, with the page's ``stamp``), and
the one write a link can ask for: the prediction run that holds an evaluation's predictions.

Kept apart from :mod:`ui.queries` so the page's additions stay in one place.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from storage import reviews as _reviews
from ui import queries

__all__ = ["evaluation_review_run", "reviewed_documents"]


@st.cache_data(ttl=queries.TTL_S, show_spinner=False)
def reviewed_documents(db_path: str, pred_run_id: str, limit: int = 200, stamp: int = 0) -> pd.DataFrame:
    """The run's reviewed documents, the latest first (:func:`storage.reviews.reviewed_documents`)."""
    rows = _reviews.reviewed_documents(db_path, pred_run_id, limit=limit, wait_s=queries.LOCK_WAIT_S)
    return pd.DataFrame(rows, columns=["doc_id", "preview", "n_chars", "reviewed_at", "reviewers"])


def evaluation_review_run(db_path: str, eval_id: str) -> str:
    """The prediction run holding evaluation ``eval_id``'s predictions of its sentences with errors, written
    from its stored report the first time (:func:`storage.reviews.evaluation_review_run`); not cached (it
    may write), and the cached list of prediction runs is cleared when it did."""
    before = set(queries.prediction_runs(db_path)["pred_run_id"])
    run = _reviews.evaluation_review_run(db_path, eval_id, wait_s=queries.LOCK_WAIT_S)
    if run not in before:
        queries.prediction_runs.clear()
    return run
