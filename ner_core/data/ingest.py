"""Ingest planning: from input files to a typed plan of one dataset version, without a database.

Two steps, so that an unchanged re-ingest costs no parsing:

1. :func:`prepare_ingest` checks the arguments, names each file's split (from a dict, from the file
   name, or "by ratio"), hashes the files and computes the :attr:`IngestRequest.fingerprint` of
   files + options. Storage compares it with the latest stored version.
2. :func:`plan_ingest` parses every file (:func:`ner_core.data.formats.read_file`), applies the policy,
   deals the records into splits when ``split_ratios`` is given, checks document ids and finds texts
   that occur in two splits. The :class:`IngestPlan` it returns holds every row to store;
   :mod:`storage.datasets` writes it in one transaction.

Policies: ``repair`` keeps the valid records and every problem (rejected records included); ``strict``
stops at any error-severity problem. A file that cannot be read at all (invalid JSON array, invalid
UTF-8 in a JSON array) stops the ingest under either policy. Stopping raises :class:`IngestError`,
whose ``report`` lists the problems.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner_core.data.doc_ids import unique_doc_ids
from ner_core.data.formats import POLICIES, ParseResult, Problem, format_names, read_file
from ner_core.data.formats.problems import count_severity, problem
from ner_core.schemes import Scheme

log = logging.getLogger(__name__)

__all__ = [
    "IngestError",
    "IngestOptions",
    "IngestPlan",
    "IngestReport",
    "IngestRequest",
    "PlannedFile",
    "Row",
    "SourceFile",
    "check_dataset_name",
    "plan_ingest",
    "prepare_ingest",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# split names recognised in file names, and the split each stands for
SPLIT_NAMES = {
    "train": "train",
    "dev": "dev",
    "valid": "dev",
    "validation": "dev",
    "val": "dev",
    "test": "test",
}
RATIO_SPLITS = {2: ("train", "dev"), 3: ("train", "dev", "test")}
_SPLIT_ORDER = ["train", "dev", "test"]
_REPORT_MAX_LISTED = 20

# One record to store: (doc_id, text, spans [(start, end, label)], line, source file).
Row = tuple[str, str, list[tuple[int, int, str]], "int | None", str]


class IngestError(ValueError):
    """Nothing was stored; ``report`` carries the problems that stopped the ingest."""

    def __init__(self, message: str, report: IngestReport):
        super().__init__(message)
        self.report = report


@dataclass
class IngestReport:
    dataset: str
    version: int | None
    created: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> documents/entities/characters
    labels: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)  # path, split, format, sha256, documents
    rejected: int = 0
    seconds: float = 0.0

    @property
    def n_errors(self) -> int:
        return count_severity(self.problems, "error")

    @property
    def n_warnings(self) -> int:
        return count_severity(self.problems, "warning")

    def to_text(self) -> str:
        """A human-readable summary: version, counts per split, labels, problems by code, first problems."""
        if self.version is None:
            head = f"dataset {self.dataset!r}: NOTHING STORED"
        elif self.created:
            head = f"dataset {self.dataset!r} version {self.version}: stored"
        else:
            head = (
                f"dataset {self.dataset!r} version {self.version}: unchanged "
                "(identical files already ingested)"
            )
        lines = [head]
        for f in self.files:
            lines.append(
                f"  file {f['path']} [{f['format']}] -> {f.get('split') or 'ratio split'}: "
                f"{f['documents']} documents, sha256 {f['sha256'][:12]}"
            )
        if self.counts:
            lines.append(f"  {'split':<8}{'documents':>12}{'entities':>12}{'characters':>14}")
            for split, c in self.counts.items():
                lines.append(f"  {split:<8}{c['documents']:>12,}{c['entities']:>12,}{c['characters']:>14,}")
        lines.append(f"  labels: {', '.join(self.labels) if self.labels else '(none)'}")
        lines.append(
            f"  problems: {self.n_errors} errors ({self.rejected} records rejected), "
            f"{self.n_warnings} warnings"
        )
        by_code = Counter((p.severity, p.code) for p in self.problems)
        for (sev, code), n in sorted(by_code.items()):
            lines.append(f"    {sev:<8}{code:<24}{n:>8,}")
        for p in self.problems[:_REPORT_MAX_LISTED]:
            lines.append(f"    {p}")
        if len(self.problems) > _REPORT_MAX_LISTED:
            where = "table ingest_problems" if self.version is not None else "IngestError.report.problems"
            lines.append(f"    ... {len(self.problems) - _REPORT_MAX_LISTED} more (all of them in {where})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- request


@dataclass(frozen=True)
class SourceFile:
    """One input file: its split (``None``: dealt per record by ``split_ratios``) and content hash."""

    split: str | None
    path: Path
    sha256: str


@dataclass(frozen=True)
class IngestOptions:
    """The reading options of an ingest, as they enter the fingerprint and the stored ``options``.

    ``scheme`` is kept as given (not normalised), ``seed`` only with ``split_ratios``.
    """

    format: str | None = None
    policy: str = "repair"
    untyped_label: str = "ENT"
    scheme: Scheme | str | None = None
    split_ratios: tuple[float, ...] | None = None
    seed: int | None = None
    tag_column: int = -1

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the stored order."""
        return {
            "format": self.format,
            "policy": self.policy,
            "untyped_label": self.untyped_label,
            "scheme": self.scheme,
            "split_ratios": list(self.split_ratios) if self.split_ratios else None,
            "seed": self.seed,
            "tag_column": self.tag_column,
        }


@dataclass(frozen=True)
class IngestRequest:
    """What to ingest, checked and hashed but not parsed: enough to tell an unchanged re-ingest."""

    dataset: str
    files: tuple[SourceFile, ...]
    options: IngestOptions
    fingerprint: str


def check_dataset_name(name: object) -> str:
    """``name`` if it is a valid dataset name; ``ValueError`` otherwise."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"dataset name must be letters, digits, '_', '.', '-' (not starting with one), got {name!r}"
        )
    return name


def prepare_ingest(
    name: str,
    files: dict[str, str | Path] | list[str | Path] | str | Path,
    *,
    format: str | None = None,
    policy: str = "repair",
    untyped_label: str = "ENT",
    split_ratios: tuple | None = None,
    seed: int = 13,
    scheme: Scheme | str | None = None,
    tag_column: int = -1,
) -> IngestRequest:
    """Check the arguments, name each file's split, hash the files and fingerprint files + options.

    ``files`` is ``{split: path}``, or a list of paths whose split comes from the file name
    (train/dev/valid/test) or, with ``split_ratios`` (e.g. ``(0.8, 0.1, 0.1)``), from a seeded shuffle
    of all their records into train/dev[/test].
    """
    check_dataset_name(name)
    if format is not None and format not in format_names():
        raise ValueError(f"format must be one of {format_names()} or None (detect), got {format!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    ratios = _check_ratios(split_ratios)
    entries = _normalise_files(files, ratios)
    sources = tuple(SourceFile(split, path, _sha256(path)) for split, path in entries)
    options = IngestOptions(
        format=format,
        policy=policy,
        untyped_label=untyped_label,
        scheme=scheme,
        split_ratios=ratios,
        seed=seed if ratios else None,
        tag_column=tag_column,
    )
    return IngestRequest(name, sources, options, _fingerprint(sources, options))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split_from_name(p: Path) -> str | None:
    return SPLIT_NAMES.get(p.stem.lower()) or next(
        (v for k, v in SPLIT_NAMES.items() if re.search(rf"(^|[^a-z]){k}([^a-z]|$)", p.name.lower())),
        None,
    )


def _normalise_files(files: Any, split_ratios: tuple | None) -> list[tuple[str | None, Path]]:
    if isinstance(files, (str, Path)):
        files = [files]
    if isinstance(files, dict):
        if not files:
            raise ValueError("files must name at least one file, got an empty dict")
        if split_ratios is not None:
            raise ValueError("split_ratios applies to a list of files, got a dict split -> path")
        out = []
        for split, path in files.items():
            if not isinstance(split, str) or not NAME_RE.match(split):
                raise ValueError(f"split names must be simple words such as 'train', got {split!r}")
            out.append((split, Path(path)))
    elif isinstance(files, (list, tuple)):
        if not files:
            raise ValueError("files must name at least one file, got an empty list")
        out = []
        for path in files:
            p = Path(path)
            if split_ratios is not None:
                out.append((None, p))
                continue
            split = _split_from_name(p)
            if split is None:
                raise ValueError(
                    f"cannot tell the split of {p} from its name: pass a dict split -> path or split_ratios"
                )
            out.append((split, p))
        splits = [s for s, _ in out if s is not None]
        if len(set(splits)) != len(splits):
            raise ValueError(f"two files map to the same split: {[(s, str(p)) for s, p in out]}; pass a dict")
    else:
        raise ValueError(f"files must be a dict split -> path or a list of paths, got {type(files).__name__}")
    for _, p in out:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    return out


def _check_ratios(split_ratios: tuple | None) -> tuple[float, ...] | None:
    if split_ratios is None:
        return None
    r = tuple(float(x) for x in split_ratios)
    if len(r) not in RATIO_SPLITS or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
        raise ValueError(
            "split_ratios must be 2 or 3 non-negative numbers summing to 1 (train, dev[, test]), "
            f"got {split_ratios!r}"
        )
    return r


def _fingerprint(files: tuple[SourceFile, ...], options: IngestOptions) -> str:
    # stored fingerprints are compared across versions of this code: keep the payload as it is
    payload = json.dumps(
        {"files": sorted([f.split or "", f.sha256] for f in files), "options": options.as_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedFile:
    """One parsed input file. ``split`` is ``None`` when its records were dealt by ratio."""

    split: str | None
    path: str
    format: str
    sha256: str
    size: int  # bytes
    documents: int

    def as_report_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "path": self.path,
            "format": self.format,
            "sha256": self.sha256,
            "documents": self.documents,
        }


@dataclass
class IngestPlan:
    """Everything one new dataset version stores: rows in input order (``splits[i]`` is the split of
    ``rows[i]``), per-file facts, problems, labels and counts per split."""

    dataset: str
    fingerprint: str
    options: IngestOptions
    files: list[PlannedFile]
    rows: list[Row]
    splits: list[str]
    problems: list[Problem]
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split -> documents/entities/characters, splits as train/dev/test
    format: str  # the one format of the files, or "mixed"
    scheme: str | None  # the schemes the tagged files were read in, comma-separated
    rejected: int  # records rejected by error-severity problems
    # spans the repair of overlaps dropped: (doc_id, start, end, label, reason, kept start, end, label)
    dropped: list[tuple] = field(default_factory=list)

    @property
    def n_documents(self) -> int:
        return len(self.rows)

    @property
    def n_entities(self) -> int:
        return sum(len(r[2]) for r in self.rows)

    @property
    def n_characters(self) -> int:
        return sum(len(r[1]) for r in self.rows)

    @property
    def n_errors(self) -> int:
        return count_severity(self.problems, "error")

    @property
    def n_warnings(self) -> int:
        return count_severity(self.problems, "warning")

    def split_rows(self, split: str) -> list[Row]:
        """The rows of one split, in input order."""
        return [r for r, s in zip(self.rows, self.splits, strict=True) if s == split]

    def report(self, version: int | None, created: bool) -> IngestReport:
        return IngestReport(
            dataset=self.dataset,
            version=version,
            created=created,
            counts=self.counts,
            labels=self.labels,
            problems=self.problems,
            files=[f.as_report_dict() for f in self.files],
            rejected=self.rejected,
        )


def plan_ingest(request: IngestRequest, *, progress: bool = False) -> IngestPlan:
    """Parse and check the files of ``request`` into the plan of a new dataset version.

    Raises :class:`IngestError` when nothing may be stored (a file cannot be read; ``strict`` and an
    error; no valid record) and ``ValueError`` when document ids collide across files (files that share a
    stem get longer ids: :func:`ner_core.data.doc_ids.unique_doc_ids`; only the same file twice collides).
    """
    name, opts = request.dataset, request.options
    results = _parse_files(request, progress)
    problems = [p for r in results for p in r.problems]
    files = [
        PlannedFile(f.split, r.source, r.format, r.sha256, Path(r.source).stat().st_size, len(r.records))
        for f, r in zip(request.files, results, strict=True)
    ]
    failed = IngestReport(
        dataset=name,
        version=None,
        created=False,
        problems=problems,
        files=[f.as_report_dict() for f in files],
        rejected=sum(r.rejected for r in results),
    )
    fatal = [r.source for r in results if r.fatal]
    if fatal:
        raise IngestError(
            f"dataset {name!r}: nothing stored, cannot read {fatal}:\n{failed.to_text()}", failed
        )
    if opts.policy == "strict" and failed.n_errors:
        raise IngestError(
            f"dataset {name!r}: nothing stored (policy strict, {failed.n_errors} errors):\n"
            f"{failed.to_text()}",
            failed,
        )
    rows: list[Row] = []
    splits: list[str] = []
    doc_ids = unique_doc_ids([r.source for r in results], [[rec[0] for rec in r.records] for r in results])
    for f, r, ids in zip(request.files, results, doc_ids, strict=True):
        for doc_id, rec in zip(ids, r.records, strict=True):
            rows.append((doc_id, rec[1], rec[2], rec[3], r.source))
            splits.append(f.split or "")
    dropped = [(ids[d[0]], *d[1:]) for r, ids in zip(results, doc_ids, strict=True) for d in r.dropped]
    if opts.split_ratios:
        _deal_by_ratio(splits, opts.split_ratios, opts.seed)
    _check_doc_ids(name, rows)
    if not rows:
        raise IngestError(f"dataset {name!r}: nothing stored, no valid record:\n{failed.to_text()}", failed)
    problems.extend(_shared_across_splits(rows, splits))
    formats = sorted({r.format for r in results})
    schemes = sorted({r.scheme for r in results if r.scheme})
    return IngestPlan(
        dataset=name,
        fingerprint=request.fingerprint,
        options=opts,
        files=files,
        rows=rows,
        splits=splits,
        problems=problems,
        labels=sorted({sp[2] for r in rows for sp in r[2]}),
        counts=_counts(rows, splits),
        format=formats[0] if len(formats) == 1 else "mixed",
        scheme=",".join(schemes) or None,
        rejected=failed.rejected,
        dropped=dropped,
    )


def _parse_files(request: IngestRequest, progress: bool) -> list[ParseResult]:
    opts = request.options
    results = []
    for f in request.files:
        if progress:
            log.info("ingest %s: reading %s ...", request.dataset, f.path)
        results.append(
            read_file(
                f.path,
                opts.format,
                split=f.split,
                policy=opts.policy,
                untyped_label=opts.untyped_label,
                tag_column=opts.tag_column,
                scheme=opts.scheme,
            )
        )
    return results


def _deal_by_ratio(splits: list[str], ratios: tuple[float, ...], seed: int | None) -> None:
    """Overwrite ``splits`` with a seeded shuffle dealt into train/dev[/test] by ``ratios``."""
    names = RATIO_SPLITS[len(ratios)]
    order = list(range(len(splits)))
    random.Random(seed).shuffle(order)
    bounds, acc = [], 0.0
    for x in ratios:
        acc += x
        bounds.append(round(acc * len(splits)))
    k = 0
    for pos, idx in enumerate(order):
        while pos >= bounds[k]:
            k += 1
        splits[idx] = names[k]


def _check_doc_ids(name: str, rows: list[Row]) -> None:
    ids = Counter(r[0] for r in rows)
    dup_ids = [i for i, n in ids.items() if n > 1]
    if dup_ids:
        raise ValueError(
            f"dataset {name!r}: document ids collide across files (the same file given twice?): {dup_ids[:5]}"
        )


def _shared_across_splits(rows: list[Row], splits: list[str]) -> list[Problem]:
    """A warning for each text already seen in another split (leakage between train and evaluation)."""
    found = []
    first_split: dict[str, tuple[str, str]] = {}
    for (doc_id, text, _sp, line, source), split in zip(rows, splits, strict=True):
        seen = first_split.setdefault(text, (split, doc_id))
        if seen[0] != split:
            message = f"{doc_id} ({split}) has the same text as {seen[1]} ({seen[0]})"
            found.append(problem(source, line, None, "duplicate_across_splits", "warning", message))
    return found


def _counts(rows: list[Row], splits: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for (_i, text, spans, _l, _s), split in zip(rows, splits, strict=True):
        c = counts.setdefault(split, {"documents": 0, "entities": 0, "characters": 0})
        c["documents"] += 1
        c["entities"] += len(spans)
        c["characters"] += len(text)
    return {k: counts[k] for k in sorted(counts, key=lambda s: (_SPLIT_ORDER + [s]).index(s))}
