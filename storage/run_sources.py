"""What a run's model came from besides its dataset versions (issue 26), and the texts that no training
source may hold.

A model trained here may also owe something to text that is not a stored dataset version: the corpus its
encoder was adapted on (``ner adapt``, ``ner train --adapt_seconds``), the unlabeled texts it self-trained
or was distilled on, each self-training round's silver data, and the teacher it was distilled from. The
trainers write that lineage into the model directory (``metrics.json``: keys ``self_training`` and
``distillation``) and the adapted encoder folder (its adapt record); when a run is recorded as completed
(:func:`storage.runs.finish_run`) it is read from there into ``run_sources`` (migration 8), one row per
source, so that ``ner lineage`` and SQL (``v_model_sources``) answer "where did this model come from"
without opening folders that may since have moved.

Those files are untrusted input (a model directory can come from anywhere): they are read through
:mod:`ner_core.model.untrusted` (a regular file inside its folder, at most a few MiB), every value is
type-checked and bounded (texts, lists, counts), and anything else is refused in one line that names the
file and the key. A refusal does not fail the run (its model is fine): the run is recorded with no sources
and that line (``run_source_records.problem``), which ``ner lineage`` shows. A run recorded before
migration 8 has no ``run_source_records`` row: its sources are "not recorded", not "none".

:func:`dev_test_hashes` gives the text hashes of stored dev and test splits: self-training keeps a silver
document out when its text is in any of them, not only in its own dataset's.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ner_core.artifacts.layout import CONFIG, METRICS
from ner_core.model import untrusted
from storage.db import now, open_db
from storage.db import rows as _rows

log = logging.getLogger(__name__)

__all__ = ["KINDS", "SourceError", "dev_test_hashes", "read_sources", "run_sources", "write_sources"]

#: the kinds of training source, in the order a run lists them
KINDS = ("adapt_corpus", "unlabeled", "silver_round", "teacher")
#: bounds on what a record may hold (far above what the trainers write)
MAX_TEXT = 4096
MAX_ITEMS = 1000
MAX_KEYS = 32
MAX_NUMBER = 10**12
#: files named one by one in a source's name (the rest are counted)
_NAMED_FILES = 3


class SourceError(ValueError):
    """A model's lineage record that cannot be read: one line naming the file and the key."""


class _Bad(ValueError):
    """A value refused, before the file is named."""


# ------------------------------------------------------------------------------------------- checked values
def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else f"a {type(v).__name__} of {len(v)}"
    return text if len(text) <= 40 else text[:37] + "..."


def _text(v: Any, where: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise _Bad(f"{where}: expected text of at most {limit} characters, got {_show(v)}")
    return v


def _count(v: Any, where: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_NUMBER:
        raise _Bad(f"{where}: expected a whole number from 0 to {MAX_NUMBER}, got {_show(v)}")
    return v


def _number(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_NUMBER:
        raise _Bad(f"{where}: expected a finite number, got {_show(v)}")
    return v


def _object(v: Any, where: str, *, required: bool = False) -> dict | None:
    if v is None and not required:
        return None
    if not isinstance(v, dict) or len(v) > 4 * MAX_KEYS:
        raise _Bad(f"{where}: expected an object of at most {4 * MAX_KEYS} keys, got {_show(v)}")
    return v


def _items(v: Any, where: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_ITEMS:
        raise _Bad(f"{where}: expected a list of at most {MAX_ITEMS} items, got {_show(v)}")
    return v


def _numbers(v: Any, where: str) -> dict[str, float]:
    """A small object of named numbers (counts per reason, settings)."""
    obj = _object(v, where) or {}
    if len(obj) > MAX_KEYS:
        raise _Bad(f"{where}: expected at most {MAX_KEYS} keys, got {len(obj)}")
    out = {}
    for k, x in obj.items():
        _text(k, f"{where} key", limit=100)
        out[k] = _number(x, f"{where}.{k}")
    return out


# ------------------------------------------------------------------------------------------- the records
def _source(v: Any, where: str) -> tuple[str | None, str | None, int | None, dict | None]:
    """``(name, dataset, version, source)`` of how a corpus was named: files, or a stored dataset version."""
    src = _object(v, where)
    if src is None:
        return None, None, None, None
    if "files" in src:
        files = []
        for i, f in enumerate(_items(src["files"], f"{where}.files")):
            if isinstance(f, dict):
                path = _text(f.get("path"), f"{where}.files[{i}].path", required=True)
                files.append({"path": path, "sha256": _text(f.get("sha256"), f"{where}.files[{i}].sha256")})
            else:
                files.append({"path": _text(f, f"{where}.files[{i}]", required=True), "sha256": None})
        named = [f["path"] for f in files[:_NAMED_FILES]]
        more = f" and {len(files) - _NAMED_FILES} more" if len(files) > _NAMED_FILES else ""
        return ", ".join(named) + more, None, None, {"files": files}
    if "dataset" in src:
        dataset = _text(src["dataset"], f"{where}.dataset", required=True, limit=500)
        version = _count(src.get("version"), f"{where}.version")
        split = _text(src.get("split"), f"{where}.split", limit=100)
        name = f"dataset {dataset}" + (f" v{version}" if version is not None else "")
        name += f" ({split})" if split else ""
        return name, dataset, version, {"dataset": dataset, "version": version, "split": split}
    raise _Bad(f"{where}: expected files or a dataset, got keys {sorted(map(str, src))[:5]}")


def _row(kind: str, name, fingerprint, n_docs, dataset, version, detail: dict) -> dict:
    return {
        "kind": kind,
        "name": name,
        "fingerprint": fingerprint,
        "n_docs": n_docs,
        "source_dataset": dataset,
        "source_version": version,
        "detail": {k: v for k, v in detail.items() if v is not None},
    }


def _corpus_row(v: Any, where: str, used_by: str, extra: dict) -> dict | None:
    """The ``unlabeled`` row of a self-training or distillation record's corpus (``{source, texts,
    sha256}``)."""
    corpus = _object(v, where)
    if corpus is None:
        return None
    name, ds, ver, src = _source(corpus.get("source"), f"{where}.source")
    sha = _text(corpus.get("sha256"), f"{where}.sha256", limit=200)
    n = _count(corpus.get("texts"), f"{where}.texts")
    return _row("unlabeled", name, sha, n, ds, ver, {"used_by": used_by, "source": src, **extra})


def _self_training_rows(v: Any) -> list[dict]:
    rec = _object(v, "self_training", required=True)
    settings = _numbers(rec.get("settings"), "self_training.settings")
    out = [
        _corpus_row(rec.get("unlabeled"), "self_training.unlabeled", "self_training", {"settings": settings})
    ]
    for i, r in enumerate(_items(rec.get("rounds"), "self_training.rounds")):
        w = f"self_training.rounds[{i}]"
        r = _object(r, w, required=True)
        detail = {
            "round": _count(r.get("round"), f"{w}.round"),
            "teacher": _text(r.get("teacher"), f"{w}.teacher"),
            "counts": _numbers(r.get("counts"), f"{w}.counts"),
            "silver_hashes": _text(r.get("silver_hashes"), f"{w}.silver_hashes"),
            "silver_hashes_sha256": _text(
                r.get("silver_hashes_sha256"), f"{w}.silver_hashes_sha256", limit=200
            ),
        }
        silver = _text(r.get("silver"), f"{w}.silver")
        sha = _text(r.get("silver_sha256"), f"{w}.silver_sha256", limit=200)
        out.append(
            _row("silver_round", silver, sha, _count(r.get("selected"), f"{w}.selected"), None, None, detail)
        )
    return [r for r in out if r is not None]


def _distillation_rows(v: Any) -> list[dict]:
    rec = _object(v, "distillation", required=True)
    sha = rec.get("teacher_sha256", rec.get("teacher_fingerprint"))
    detail = {
        "teacher_dir": _text(rec.get("teacher_dir"), "distillation.teacher_dir"),
        "alpha": _number(rec.get("alpha"), "distillation.alpha"),
        "temperature": _number(rec.get("temperature"), "distillation.temperature"),
    }
    teacher = _text(rec.get("teacher"), "distillation.teacher", required=True)
    out = [
        _row(
            "teacher", teacher, _text(sha, "distillation.teacher_sha256", limit=200), None, None, None, detail
        )
    ]
    left_out = _numbers((_object(rec.get("unlabeled"), "distillation.unlabeled") or {}).get("left_out"),
                        "distillation.unlabeled.left_out")  # fmt: skip
    corpus = _corpus_row(
        rec.get("unlabeled"), "distillation.unlabeled", "distillation", {"left_out": left_out}
    )
    return out + ([corpus] if corpus else [])


def _adapt_row(encoder: Path, record: Any) -> dict:
    rec = _object(record, "adapt record", required=True)
    name, ds, ver, src = _source(rec.get("source"), "source")
    detail = {
        "encoder": str(encoder),
        "source_encoder": _text(rec.get("source_encoder"), "source_encoder"),
        "masking": _text(rec.get("masking"), "masking", limit=100),
        "steps": _count(rec.get("steps"), "steps"),
        "seconds": _number(rec.get("seconds"), "seconds"),
        "stopped_reason": _text(rec.get("stopped_reason"), "stopped_reason"),
        "source": src,
    }
    sha = _text(rec.get("corpus_sha256"), "corpus_sha256", limit=200)
    return _row("adapt_corpus", name, sha, _count(rec.get("corpus_texts"), "corpus_texts"), ds, ver, detail)


def _adapt_rows(model_dir: Path) -> list[dict]:
    """The adapt record of the encoder folder the model's own configuration names (the folder the training
    loaded it from: ``ner adapt``'s output, or a run's ``--adapt_seconds`` encoder), when it has one. A
    folder without a configuration names no encoder: no adapt record (not a refusal)."""
    if not (model_dir / CONFIG).exists() and not (model_dir / CONFIG).is_symlink():
        return []
    try:
        config = untrusted.read_json(model_dir, CONFIG)
    except untrusted.UntrustedFileError as exc:
        raise SourceError(str(exc)) from None
    enc = (config.get("encoder") or {}).get("name") if isinstance(config, dict) else None
    if not isinstance(enc, str) or len(enc) > MAX_TEXT or not enc or not Path(enc).is_dir():
        return []  # a hub id or short name: not adapted here
    from ner_core.training.adapt import ADAPT_RECORD  # the adapt module's own name for it

    encoder = Path(enc)
    if not (encoder / ADAPT_RECORD).exists():
        return []
    try:
        return [_adapt_row(encoder, untrusted.read_json(encoder, ADAPT_RECORD))]
    except untrusted.UntrustedFileError as exc:
        raise SourceError(str(exc)) from None
    except _Bad as exc:
        raise SourceError(f"{encoder / ADAPT_RECORD}: {exc}") from None


def read_sources(model_dir: str | Path) -> list[dict]:
    """The training sources a model directory records, in :data:`KINDS` order: rows with ``kind``,
    ``name``, ``fingerprint``, ``n_docs``, ``source_dataset``, ``source_version`` and ``detail`` (a dict).
    ``[]`` for a plain run; :class:`SourceError` (one line naming the file) for a record that is refused."""
    root = Path(model_dir)
    out = _adapt_rows(root)
    if not (root / METRICS).exists():
        return out
    try:
        metrics = untrusted.read_json(root, METRICS)
        if not isinstance(metrics, dict):
            raise _Bad(f"expected a JSON object, got {_show(metrics)}")
        if metrics.get("self_training") is not None:
            out += _self_training_rows(metrics["self_training"])
        if metrics.get("distillation") is not None:
            out += _distillation_rows(metrics["distillation"])
    except untrusted.UntrustedFileError as exc:
        raise SourceError(str(exc)) from None
    except _Bad as exc:
        raise SourceError(f"{root / METRICS}: {exc}") from None
    return sorted(out, key=lambda r: KINDS.index(r["kind"]))  # stable: rounds stay in order


def read_for_record(model_dir: str | Path | None) -> tuple[list[dict], str | None]:
    """``(rows, problem)`` for :func:`write_sources`: a refusal becomes the problem line (logged), never an
    exception, since the run it describes completed."""
    if not model_dir:
        return [], None
    try:
        return read_sources(model_dir), None
    except (SourceError, OSError) as exc:
        line = " ".join(str(exc).split())[:MAX_TEXT]
        log.warning("training sources not recorded: %s", line)
        return [], line


# ------------------------------------------------------------------------------------------- the database
def write_sources(con, run_id: str, sources: list[dict], problem: str | None) -> None:
    """Replace run ``run_id``'s sources (inside the caller's transaction) and mark them recorded."""
    con.execute("DELETE FROM run_sources WHERE run_id = ?", [run_id])
    for i, r in enumerate(sources):
        con.execute(
            "INSERT INTO run_sources (run_id, ord, kind, name, fingerprint, n_docs, source_dataset, "
            "source_version, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, i, r["kind"], r["name"], r["fingerprint"], r["n_docs"], r["source_dataset"],
             r["source_version"], json.dumps(r["detail"], ensure_ascii=False)],
        )  # fmt: skip
    con.execute(
        "INSERT OR REPLACE INTO run_source_records (run_id, recorded_at, problem) VALUES (?, ?, ?)",
        [run_id, now(), problem],
    )


def run_sources(con, run_id: str) -> dict:
    """``{"recorded": bool, "problem": str | None, "items": [rows of run_sources, detail a dict]}``."""
    rec = con.execute("SELECT problem FROM run_source_records WHERE run_id = ?", [run_id]).fetchone()
    items = _rows(con, "SELECT * EXCLUDE (run_id) FROM run_sources WHERE run_id = ? ORDER BY ord", [run_id])
    for it in items:
        it["detail"] = json.loads(it["detail"]) if it["detail"] else {}
    return {"recorded": rec is not None, "problem": rec[0] if rec else None, "items": items}


def dev_test_hashes(db_path: str | Path, dataset: str | None = None, version: int | None = None) -> set[str]:
    """The text hashes (``documents.text_sha1``, :func:`storage.datasets.text_sha1`) of the dev and test
    documents of dataset ``dataset`` v``version``, or, without them, of every stored dataset version: a
    text scored by any evaluation here must not come back as training data."""
    sql = "SELECT DISTINCT text_sha1 FROM documents WHERE split IN ('dev', 'test')"
    params: list = []
    if dataset is not None:
        sql += " AND dataset = ? AND version = ?"
        params = [dataset, version]
    with open_db(db_path, read_only=True) as con:
        return {r[0] for r in con.execute(sql, params).fetchall()}
