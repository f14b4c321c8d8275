"""Try it: paste text, pick a trained model, see the tagged text.

Model directories come from :func:`ui.queries.models`, absolute (an older database's relative ones are
resolved against its folder by :func:`storage.runs.stored_path`), so the page works wherever ``ner ui``
started.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ui import queries
from ui.app_pages.common import (
    beside_raw,
    count,
    db_path,
    escape_markdown,
    fmt,
    label_colours,
    legend_html,
    show_highlighted,
)

EXAMPLE = "张伟于2021年加入北京华为技术有限公司，担任高级工程师，常驻上海浦东新区。"


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def load_tagger(model_dir: str):
    """A :class:`ner_core.inference.tagger.Tagger` for ``model_dir``, loaded once per process (never
    mutated)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    loaded = load_model_dir(model_dir)
    return Tagger.from_loaded(loaded), list(loaded.labels)


db = db_path()
st.title("Try it")
models = queries.models(db)
if models.empty:
    st.info("No trained model yet: run `ner train ...` or `ner pipeline ...`.")
    st.stop()

names = {
    r.run_id: f"{r.run_id}{'  ★ production' if r.is_production else ''}  (dev F1 {fmt(r.best_dev_f1, 3)})"
    for r in models.itertuples()
}
run_id = st.selectbox("Model", list(names), format_func=names.get, key="try_model")
model_dir = str(models.loc[models["run_id"] == run_id, "model_dir"].iloc[0])
st.caption(f"model directory: {escape_markdown(model_dir)}")
text = st.text_area("Text", value=EXAMPLE, height=150, key="try_text")

if st.button("Tag", type="primary", key="try_tag"):
    if not Path(model_dir).is_dir():
        st.error(
            f"The model directory {escape_markdown(model_dir)} does not exist on this machine "
            "(moved or deleted?)."
        )
        st.stop()
    if not text.strip():
        st.warning("Paste some text first.")
        st.stop()
    try:
        tagger, labels = load_tagger(model_dir)
    except ValueError as exc:  # ModelDirError: damaged, incomplete or of another format version
        st.error(f"The model in {escape_markdown(model_dir)} cannot be loaded: {escape_markdown(exc)}")
        st.stop()
    [ents] = tagger.predict([text])
    colours = label_colours([*queries.all_labels(db), *(labels or []), *(e.label for e in ents)])
    st.html(legend_html(colours))
    show_highlighted(text, [(e.start, e.end, e.label) for e in ents], colours)
    rows = pd.DataFrame(
        [
            {
                "start": e.start,
                "end": e.end,
                "label": e.label,
                "text": e.text,
                "confidence": e.confidence,
                "confidence_calibrated": e.confidence_calibrated,
            }
            for e in ents
        ],
        columns=["start", "end", "label", "text", "confidence", "confidence_calibrated"],
    )
    st.dataframe(beside_raw(rows.round(3), "confidence", "confidence_calibrated"), hide_index=True)
    st.caption(f"{count(len(ents), 'entity', 'entities')} found.")
