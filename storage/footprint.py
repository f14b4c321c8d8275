"""Where the platform writes, and which of those files hold a given text.

Removing personal data (:mod:`storage.deletion`) has to reach every copy of a text, and a copy outside the
database is only found when something says where it is. This module is that list:

- beside the database file ``<db>``: its write-ahead log ``<db>.wal``; DuckDB's spill directory
  ``<db>.tmp`` (DuckDB's default ``temp_directory``: a query over its memory limit spills blocks of rows
  there, removed when the query ends, left behind when its process is killed); the file rewrite's
  ``<db>.rewrite`` (+ ``.wal``: left by a rewrite that was killed, a full copy of the old file); the review
  page's spool ``<db>.review-spool.jsonl`` with its ``.refused``, ``.tmp`` and ``.lock`` (events with their
  document id and text hash, a refusal's reason may quote the text); and the outputs manifest
  ``<db>.outputs.jsonl`` (:func:`record_outputs`);
- the run folders: ``runs.run_dir`` and the folder above every model directory the database names (runs,
  evaluations, prediction runs), where an evaluation writes ``eval-<data>[-<split>].json`` and ``.md``
  (error sentences, the whole text);
- the files a command wrote somewhere the database does not know: the seed's ``ner test|predict
  -test_data FILE -output_path DIR`` files (:func:`record_outputs` lists them in the manifest, one JSON
  line per command: ``{"kind", "written_at", "source", "files"}``); later writers (exports, silver data,
  teacher targets) record theirs the same way;
- Prefect's home (``$PREFECT_HOME``, default ``~/.prefect``): its SQLite database holds the Markdown
  artifact ``run-report-<dataset>`` (up to 20 error sentences), its collection row and the event that
  announced it (:mod:`storage.prefect_records`); ``ner prefect up`` keeps its server and worker logs there.

Which files hold a text is decided on what they hold, not on their names: :func:`strings_held` reads the
strings out of the formats the platform writes (JSON, JSON lines, the Markdown reports' error-sentence
lines, JSON held in a string) and the caller compares their sha1 with those of the texts to remove.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "BESIDE_DB",
    "OUTPUTS_SUFFIX",
    "SPOOL_SUFFIX",
    "byte_forms",
    "file_sha1_held",
    "files_below",
    "forget_outputs",
    "hits",
    "outputs_manifest",
    "platform_files",
    "prefect_home",
    "record_outputs",
    "recorded_outputs",
    "report_groups",
    "review_spool",
    "sha1_held",
    "spill_dir",
    "strings_held",
]

SPOOL_SUFFIX = ".review-spool.jsonl"  # ui.review_state.spool_path: where the review page spools events
OUTPUTS_SUFFIX = ".outputs.jsonl"
#: what the platform may write beside ``<db>`` (appended to its file name)
BESIDE_DB = (
    ".wal",
    ".tmp",
    ".rewrite",
    ".rewrite.wal",
    SPOOL_SUFFIX,
    SPOOL_SUFFIX + ".refused",
    SPOOL_SUFFIX + ".tmp",
    SPOOL_SUFFIX + ".lock",
    OUTPUTS_SUFFIX,
    OUTPUTS_SUFFIX + ".lock",
)
#: an evaluation report's files in a run folder (flows.steps.evaluate_step)
REPORT_GLOBS = ("eval-*.json", "eval-*.md")
# an error sentence of EvaluationReport.to_markdown: "- `doc_id` (kinds): text on one line"
_ERROR_LINE = re.compile(r"^- `[^`\n]*` \([^)\n]*\): (.*)$", re.MULTILINE)
_MAX_DEPTH = 4  # JSON inside a string inside JSON ...: Prefect stores an artifact's Markdown that way


def _beside(db_path: str | os.PathLike, suffix: str) -> Path:
    p = Path(db_path)
    return p.with_name(p.name + suffix)


def review_spool(db_path: str | os.PathLike) -> Path:
    """The review page's spool of ``db_path`` (``ui.review_state.spool_path`` names the same file)."""
    return _beside(db_path, SPOOL_SUFFIX)


def spill_dir(db_path: str | os.PathLike) -> Path:
    """DuckDB's default spill directory of ``db_path`` (its ``temp_directory`` unless a connection sets
    another)."""
    return _beside(db_path, ".tmp")


def outputs_manifest(db_path: str | os.PathLike) -> Path:
    return _beside(db_path, OUTPUTS_SUFFIX)


def prefect_home() -> Path:
    """``$PREFECT_HOME``, else ``~/.prefect`` (Prefect's own default)."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


# ------------------------------------------------------------------------------------------ the manifest
@contextmanager
def _manifest_locked(db_path: str | os.PathLike) -> Iterator[Path]:
    path = outputs_manifest(db_path)
    with open(_beside(db_path, OUTPUTS_SUFFIX + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record_outputs(
    db_path: str | os.PathLike, kind: str, files: Iterable[str | os.PathLike], source: str | None = None
) -> bool:
    """Note in ``<db>.outputs.jsonl`` that a command (``kind``, e.g. ``ner test -test_data``) wrote
    ``files`` (made absolute) from ``source``, so that deleting a dataset finds them. The manifest sits
    beside the database even when the command did not open it (the seed's commands work without one).
    Returns False, logging why, when it cannot be written: the command's own work is done by then."""
    row = {
        "kind": kind,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": None if source is None else str(Path(source).resolve()),
        "files": [str(Path(f).resolve()) for f in files],
    }
    try:
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        with _manifest_locked(db_path) as path, open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        log.warning("could not record the files written in %s: %s", outputs_manifest(db_path), exc)
        return False
    return True


def _read_manifest(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a crash mid-append
            continue
        if isinstance(row, dict) and isinstance(row.get("files"), list):
            out.append(row)
    return out


def recorded_outputs(db_path: str | os.PathLike) -> list[dict]:
    """The manifest's records, oldest first (see :func:`record_outputs`); none when there is no manifest."""
    return _read_manifest(outputs_manifest(db_path))


def forget_outputs(db_path: str | os.PathLike) -> int:
    """Rewrite the manifest without the files that no longer exist (and without records left with none);
    returns how many records were dropped. Atomic: a new file renamed over the old one."""
    with _manifest_locked(db_path) as path:
        rows = _read_manifest(path)
        kept = []
        for row in rows:
            files = [f for f in row["files"] if isinstance(f, str) and os.path.exists(f)]
            if files:
                kept.append({**row, "files": files})
        if not path.exists() or kept == rows:
            return 0
        tmp = path.with_name(path.name + ".new")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return len(rows) - len(kept)


# ------------------------------------------------------------------------------------------ run folders
def report_groups(folders: Iterable[str | os.PathLike]) -> list[list[Path]]:
    """The evaluation reports in ``folders`` (not below them), one group per report: ``eval-X.json`` with
    its ``eval-X.md`` (the same evaluation in two forms: they go together)."""
    groups: dict[Path, list[Path]] = {}
    for folder in sorted({Path(f) for f in folders}):
        if not folder.is_dir():
            continue
        for pattern in REPORT_GLOBS:
            for p in folder.glob(pattern):
                if p.is_file():
                    groups.setdefault(p.with_suffix(""), []).append(p)
    return [sorted(g) for _, g in sorted(groups.items())]


# ------------------------------------------------------------------------------------------ contents
def _walk(value, depth: int) -> Iterator[str]:
    if isinstance(value, str):
        yield from strings_held(value, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v, depth)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, depth)


def _json_values(text: str) -> list:
    """``text`` parsed as JSON, else as JSON lines (the lines that parse); [] when it is neither."""
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    out = []
    for line in text.splitlines():
        if line[:1] in "{[":
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def strings_held(text: str, depth: int = 0) -> Iterator[str]:
    """Every string ``text`` holds in the platform's formats: itself; each error sentence of a Markdown
    evaluation report (its text on one line); and, when it is JSON or JSON lines, every string value in
    it, read the same way (an artifact's Markdown is a JSON string inside Prefect's JSON)."""
    yield text
    for m in _ERROR_LINE.finditer(text):
        yield m.group(1)
    head = text.lstrip()[:1]
    if depth < _MAX_DEPTH and head and head in '{["':
        for value in _json_values(text):
            yield from _walk(value, depth)


def sha1_held(text: str) -> set[str]:
    """sha1 (hex, of the UTF-8 bytes: ``documents.text_sha1``) of every string :func:`strings_held`."""
    return {hashlib.sha1(s.encode("utf-8")).hexdigest() for s in strings_held(text)}


def file_sha1_held(path: Path) -> set[str]:
    """:func:`sha1_held` of a file's text (undecodable bytes replaced)."""
    return sha1_held(path.read_text(encoding="utf-8", errors="replace"))


# ------------------------------------------------------------------------------------------ everything
def files_below(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
    elif root.is_dir():
        for base, _dirs, names in os.walk(root):
            for n in names:
                p = Path(base) / n
                if p.is_file() and not p.is_symlink():
                    yield p


def platform_files(
    db_path: str | os.PathLike,
    folders: Iterable[str | os.PathLike] = (),
    home: str | os.PathLike | None = None,
) -> list[Path]:
    """Every file the platform wrote for ``db_path`` that exists now: the database and what sits beside
    it (:data:`BESIDE_DB`, the spill directory's files), the files the manifest lists, every file below
    ``folders`` (run folders: :func:`storage.deletion.report_folders` names them) and below Prefect's
    ``home`` (default :func:`prefect_home`). What a check that no copy of a text is left reads."""
    roots = [Path(db_path), *(_beside(db_path, s) for s in BESIDE_DB)]
    roots += [Path(f) for row in recorded_outputs(db_path) for f in row["files"] if isinstance(f, str)]
    roots += [Path(f) for f in folders]
    roots.append(Path(home) if home is not None else prefect_home())
    return sorted({p.resolve() for r in roots for p in files_below(r)})


def byte_forms(text: str) -> list[bytes]:
    """The byte strings a copy of ``text`` is written as: UTF-8, JSON with ``\\uXXXX`` escapes (lower and
    upper case hex: Prefect's database keeps JSON so), UTF-16 (little endian)."""
    escaped = json.dumps(text, ensure_ascii=True)[1:-1]
    forms = [
        text.encode("utf-8"),
        escaped.encode("ascii"),
        re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), escaped).encode("ascii"),
        text.encode("utf-16-le"),
    ]
    return list(dict.fromkeys(forms))


def hits(files: Iterable[Path], needles: Iterable[bytes]) -> dict[Path, int]:
    """``file -> occurrences`` of any of ``needles`` in each of ``files`` that holds one (read whole, in
    bytes: a check that no copy of a text is left, e.g. after a deletion)."""
    wanted = [n for n in dict.fromkeys(needles) if n]
    out: dict[Path, int] = {}
    for f in files:
        try:
            data = Path(f).read_bytes()
        except OSError:
            continue
        n = sum(data.count(w) for w in wanted)
        if n:
            out[Path(f)] = n
    return out
