"""Try it: paste text, pick a trained model, optionally a user dictionary, see the tagged text.

Model directories come from :func:`ui.queries.models`, absolute (an older database's relative ones are
resolved against its folder by :func:`storage.runs.stored_path`), so the page works wherever ``ner ui``
started.

A user dictionary (an uploaded JSONL/TSV file, or lines typed here) is read by the library's own reader,
:func:`ner_core.inference.dictionary.load_dictionary`, so it takes exactly what ``ner predict --dictionary``
takes, under the same limits (an upload is untrusted), and a bad record gets the same one line
(``name:line: problem``), shown beside the control. The cached tagger is never changed: tagging with a
dictionary uses a shallow copy that carries it.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import queries
from ui.app_pages.common import (
    DICTIONARY_MARK,
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
#: the dictionary's sources (the radio's options)
NO_DICTIONARY, UPLOAD, TYPED = "none", "upload a file", "type lines"
#: the name typed lines go by in a bad record's message
TYPED_NAME = "typed lines"
#: the upload cap, in Streamlit's megabytes (MiB): the library's MAX_FILE_BYTES, which the reader checks too
MAX_UPLOAD_MB = 64


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


@st.cache_resource(show_spinner="Reading the dictionary ...", max_entries=2)
def read_dictionary(digest: str, name: str, suffix: str, _data: bytes):
    """``(UserDictionary, None)`` or ``(None, the library's error lines)`` for the dictionary ``_data``
    (sha256 ``digest``) named ``name``: written to a private temporary file with ``suffix`` (it says the
    format) and read by :func:`load_dictionary`, the temporary path in its messages replaced by ``name``.
    Cached per content, so a rerun does not read it again."""
    from ner_core.inference.dictionary import MAX_FILE_BYTES, DictionaryError, load_dictionary

    if len(_data) > MAX_FILE_BYTES:  # the reader's own check and words, before anything is written
        return None, f"{name}: {len(_data)} bytes, more than the limit of {MAX_FILE_BYTES}"
    with tempfile.TemporaryDirectory(prefix="ner-dictionary-") as tmp:
        path = Path(tmp) / f"dictionary{suffix}"
        path.write_bytes(_data)
        try:
            dictionary = load_dictionary(path)
        except DictionaryError as exc:
            return None, str(exc).replace(str(path), name)
    dictionary.source = name  # check_labels' messages name it too
    return dictionary, None


def _suffix(name: str) -> str:
    """An uploaded file's suffix, lower-case, as the format; ``""`` (the reader: "no suffix") if odd."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ""


def _typed_suffix(lines: str) -> str:
    """Typed lines are JSONL when the first non-blank one is a JSON object, else TSV."""
    first = next((ln.strip() for ln in lines.splitlines() if ln.strip()), "")
    return ".jsonl" if first.startswith("{") else ".tsv"


def show_problems(box, problems: str) -> None:
    """The library's error lines, one per line, as text (a record's text and a file name are data)."""
    box.error("  \n".join(escape_markdown(line) for line in problems.splitlines()))


def dictionary_controls():
    """The dictionary chosen on the page: ``(UserDictionary or None, ok, box)``; ``ok`` is False when one
    was given and has bad records (shown in ``box``, beside the control, where later problems go too)."""
    source = st.radio("User dictionary", [NO_DICTIONARY, UPLOAD, TYPED], horizontal=True, key="try_dict_src")
    data = name = suffix = None
    if source == UPLOAD:
        upload = st.file_uploader(
            "Dictionary file (JSONL or TSV: text, label, mode force|forbid, optional priority)",
            type=["jsonl", "ndjson", "tsv", "txt"],
            max_upload_size=MAX_UPLOAD_MB,
            key="try_dict_file",
        )
        if upload is not None:
            data, name, suffix = upload.getvalue(), upload.name, _suffix(upload.name)
    elif source == TYPED:
        lines = st.text_area(
            "Dictionary lines (TSV: text, label, mode, optional priority; or one JSON object a line)",
            placeholder="北京大学\tORG\tforce\n上海\tLOC\tforbid\t2",
            height=120,
            key="try_dict_text",
        )
        if lines.strip():
            data, name, suffix = lines.encode("utf-8"), TYPED_NAME, _typed_suffix(lines)
    box = st.container()
    if data is None:
        return None, True, box
    dictionary, problems = read_dictionary(hashlib.sha256(data).hexdigest(), name, suffix, data)
    if problems:
        show_problems(box, problems)
        return None, False, box
    box.caption(f"{count(len(dictionary), 'entry', 'entries')} read from {escape_markdown(name)}.")
    return dictionary, True, box


def with_dictionary(tagger, labels: list[str], dictionary):
    """A shallow copy of the cached ``tagger`` that decodes under ``dictionary`` (``DictionaryError``, one
    line per record, when a record's label is not the model's)."""
    dictionary.check_labels(labels)
    tagged = copy.copy(tagger)
    tagged.dictionary = dictionary
    return tagged


def show_result(db: str, text: str, ents: list, labels: list[str], dictionary) -> None:
    """The tagged text (entities the dictionary forced marked) and the entity table."""
    colours = label_colours([*queries.all_labels(db), *(labels or []), *(e.label for e in ents)])
    st.html(legend_html(colours))
    forced = [(e.start, e.end, e.label) for e in ents if e.from_dictionary]
    show_highlighted(text, [(e.start, e.end, e.label) for e in ents], colours, forced)
    columns = ["start", "end", "label", "text", "confidence", "confidence_calibrated"]
    if dictionary is not None:
        columns.append("from dictionary")
    rows = pd.DataFrame(
        [
            {
                "start": e.start,
                "end": e.end,
                "label": e.label,
                "text": e.text,
                "confidence": e.confidence,
                "confidence_calibrated": e.confidence_calibrated,
                "from dictionary": e.from_dictionary,
            }
            for e in ents
        ],
        columns=columns,
    )
    st.dataframe(beside_raw(rows.round(3), "confidence", "confidence_calibrated"), hide_index=True)
    found = f"{count(len(ents), 'entity', 'entities')} found"
    if dictionary is not None:
        found += f", {len(forced)} forced by the dictionary (marked {DICTIONARY_MARK} after the label)"
    st.caption(f"{found}.")


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
user_dictionary, dictionary_ok, dictionary_box = dictionary_controls()

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
    if not dictionary_ok:
        st.warning("The dictionary has bad records (listed above): fix them, or choose no dictionary.")
        st.stop()
    try:
        tagger, labels = load_tagger(model_dir)
    except ValueError as exc:  # ModelDirError: damaged, incomplete or of another format version
        st.error(f"The model in {escape_markdown(model_dir)} cannot be loaded: {escape_markdown(exc)}")
        st.stop()
    if user_dictionary is not None:
        from ner_core.inference.dictionary import DictionaryError

        try:
            tagger = with_dictionary(tagger, labels, user_dictionary)
        except DictionaryError as exc:  # a label the model does not know
            show_problems(dictionary_box, str(exc))
            st.stop()
    [ents] = tagger.predict([text])
    show_result(db, text, ents, labels, user_dictionary)
