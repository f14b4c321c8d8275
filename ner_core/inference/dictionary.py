"""User dictionaries at prediction time: force or forbid entities, exactly, in the CRF and the span decoder.

A dictionary is a JSONL or TSV file of records ``text, label, mode (force|forbid), priority (optional int,
default 0)`` (:func:`load_dictionary`). It is untrusted input: the file must be a regular file of at most
:data:`MAX_FILE_BYTES`, each line at most :data:`MAX_LINE_BYTES`, each text at most :data:`MAX_TEXT_CHARS`
characters, at most :data:`MAX_ENTRIES` records; it is read line by line, and what it costs in memory
(the entries and the automaton's trie nodes) is a constant factor of its real size, which the size limit
bounds. A bad record is reported in one line naming the file, the line and the
problem (all of them, up to :data:`MAX_ERRORS_SHOWN`, in one :class:`DictionaryError`).

Matching: every occurrence of every entry's text, by an Aho-Corasick automaton (the ``pyahocorasick`` C
extension, pinned in pyproject.toml), in one pass over a text however many entries there are.

Resolution (:meth:`UserDictionary.plan`), per text:

* a force and a forbid of the same span and label: the entry with the higher priority wins, then the one
  listed earlier in the file; the other is dropped (reported in :attr:`DictionaryPlan.dropped`);
* overlapping forced matches: the longest first, then the higher priority, then the earlier start, then
  the earlier line; a forced match overlapping one already kept is dropped (reported). Kept forced spans
  never overlap, so the tag path made of them and ``O`` elsewhere always satisfies every constraint: an
  allowed path always remains (see below), and nothing is ever decoded against contradictory masks.

CRF decoding under a plan (:func:`decode_with_dictionary`), exact:

* **force** ``[s, e) X``: per-position tag masks: positions ``s..e-1`` may only take the tags that encode
  the span in the scheme (BIO ``B-X I-X ...``; BIOES/BMES ``S-X`` or ``B-X I-X ... E-X``), and position
  ``e`` may not continue it. Viterbi then returns the best path containing the span and the marginals are
  conditioned on it (:meth:`ConstrainedCRF.viterbi_tensor`'s ``allowed_tags``: ``-inf`` emissions, on the
  C kernel and in torch alike).
* **forbid** ``[s, e) X``: "this exact entity must not appear" is a condition across positions (a start at
  ``s``, continuations up to ``e - 1``, no continuation at ``e``) that per-position masks cannot express.
  Method: **state expansion**. For each start ``s`` of a forbidden span of label ``X`` the entity that
  starts there is tracked in a *slot*: extra copies of the ``X`` tags that carry "this entity began at
  ``s``". The copies' per-position masks say where it may end: never at an ``e`` of a forbidden
  ``[s, e) X`` (BIO: a "must continue" copy there; BIOES: ``E-X``/``S-X`` copies off there), and at the
  last forbidden end the entity, if it goes on, hands over to the ordinary tags (so slots are reused along
  the text; starts whose ranges overlap get different slots). Static transitions keep an entity in its
  slot. Every allowed tag path maps to exactly one path of the expanded chain and the forbidden ones to
  none, so the same Viterbi and forward-backward (C kernel or torch) on the expanded chain give the best
  path without any forbidden entity and the marginals conditioned on that (summed back onto the tags).
  Rows without a forbidden match decode on the plain chain, rows without any match exactly as without a
  dictionary.
* No allowed path: cannot happen after resolution (the forced spans and ``O`` elsewhere is allowed, as a
  forbid identical to a kept forced span was dropped); were the model's own masks to contradict
  themselves, the CRF's penalised fallback applies as without a dictionary.

Span decoder (:func:`apply_to_spans`): forced spans are added with probability 1, forbidden ones removed.

IOB1 is a read-only scheme (models train in BIO or BIOES), so the CRF path refuses it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ahocorasick
import numpy as np
import torch
from torch import Tensor

from ner_core.model.crf import ConstrainedCRF
from ner_core.schemes import OUTSIDE, Role, parse_tag, scheme_spec

__all__ = [
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "MAX_LINE_BYTES",
    "MAX_TEXT_CHARS",
    "MODES",
    "DictionaryError",
    "DictionaryPlan",
    "Entry",
    "UserDictionary",
    "apply_to_spans",
    "decode_with_dictionary",
    "load_dictionary",
]

log = logging.getLogger(__name__)

MODES = ("force", "forbid")
#: limits on an untrusted dictionary file
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 4096
MAX_TEXT_CHARS = 256
MAX_ENTRIES = 2_000_000
MAX_ERRORS_SHOWN = 20
_PRIORITY_LIMIT = 10**9
_JSON_KEYS = {"text", "label", "mode", "priority"}

Span = tuple[int, int, str]


class DictionaryError(ValueError):
    """A dictionary file that cannot be used; one line per problem, each naming the file and line."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One dictionary record; ``line`` is its 1-based line in the file (the order tie-break)."""

    text: str
    label: str
    mode: str
    priority: int = 0
    line: int = 0


@dataclass
class DictionaryPlan:
    """What a dictionary asks of one text: forced spans (never overlapping), forbidden spans, and the
    matches dropped by the resolution rules with the reason (``(start, end, label, mode, reason)``)."""

    forced: list[Span] = field(default_factory=list)
    forbidden: list[Span] = field(default_factory=list)
    dropped: list[tuple[int, int, str, str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.forced or self.forbidden)

    def is_forced(self, start: int, end: int, label: str) -> bool:
        """Whether the entity ``[start, end) label`` came from the dictionary (a kept forced span)."""
        return (start, end, label) in set(self.forced)

    def is_forbidden(self, start: int, end: int, label: str) -> bool:
        """Whether ``[start, end) label`` is forbidden: decoding never produces it, but an entity trimmed
        of edge whitespace afterwards can become it, so a caller that trims filters with this."""
        return (start, end, label) in set(self.forbidden)


# ---------------------------------------------------------------------------------------------- reading
def _check_record(text: object, label: object, mode: object, priority: object) -> str | None:
    """The problem with one record's fields, or None."""
    if not isinstance(text, str) or not text:
        return "text must be a non-empty string"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters, more than the limit of {MAX_TEXT_CHARS}"
    if text != text.strip() or any(c in text for c in "\r\n\t"):
        return f"text {text[:40]!r} has whitespace at an edge or a tab/newline (entities never do)"
    if not isinstance(label, str) or not label or label == OUTSIDE or any(c.isspace() for c in label):
        return f"label must be a non-empty string without whitespace, other than 'O', got {label!r}"
    if mode not in MODES:
        return f"mode must be 'force' or 'forbid', got {mode!r}"
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > _PRIORITY_LIMIT:
        return f"priority must be an integer within +-{_PRIORITY_LIMIT}, got {priority!r}"
    return None


def _parse_line(raw: str, jsonl: bool, lineno: int) -> tuple[Entry | None, str | None]:
    """One non-blank line -> (entry, None), (None, problem), or (None, None) for a TSV header/comment."""
    if jsonl:
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            return None, f"not valid JSON ({getattr(exc, 'msg', exc)})"
        except RecursionError:  # a line of thousands of nested brackets
            return None, "not a dictionary record (JSON nested too deeply)"
        if not isinstance(rec, dict):
            return None, f"expected a JSON object, got {type(rec).__name__}"
        extra = sorted(set(rec) - _JSON_KEYS)
        if extra:
            return None, f"unknown field(s) {extra}; expected text, label, mode and optional priority"
        text, label, mode = rec.get("text"), rec.get("label"), rec.get("mode")
        priority = rec.get("priority", 0)
    else:
        if raw.startswith("#"):
            return None, None
        parts = raw.split("\t")
        if lineno == 1 and [p.strip().lower() for p in parts[:3]] == ["text", "label", "mode"]:
            return None, None  # a header
        if len(parts) not in (3, 4):
            return None, (
                f"expected 3 or 4 tab-separated fields (text, label, mode[, priority]), got {len(parts)}"
            )
        text, label, mode = parts[0], parts[1], parts[2]
        priority: object = 0
        if len(parts) == 4:
            try:
                priority = int(parts[3])
            except ValueError:
                return None, f"priority must be an integer, got {parts[3][:40]!r}"
    problem = _check_record(text, label, mode, priority)
    if problem:
        return None, problem
    return Entry(text, label, mode, priority, lineno), None  # type: ignore[arg-type]


def _dictionary_format(path: Path) -> bool:
    """True for JSONL, False for TSV (by suffix), else a one-line error."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return True
    if suffix in (".tsv", ".txt"):
        return False
    found = suffix or "(no suffix)"
    raise DictionaryError(f"{path}: unknown dictionary format {found!r}; use .jsonl or .tsv")


def load_dictionary(path: str | os.PathLike, labels: Sequence[str] | None = None) -> UserDictionary:
    """Read a dictionary file (JSONL or TSV, see module doc); with ``labels``, every record's label must be
    one of them (the model's). Raises :class:`DictionaryError` listing every bad record, one per line."""
    path = Path(path)
    jsonl = _dictionary_format(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise DictionaryError(f"{path}: cannot read the dictionary ({exc.strerror})") from None
    if not path.is_file():
        raise DictionaryError(f"{path}: not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise DictionaryError(f"{path}: {info.st_size} bytes, more than the limit of {MAX_FILE_BYTES}")
    entries, errors = _read_entries(path, jsonl, set(labels) if labels is not None else None)
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = len(errors) - len(shown)
        tail = [f"{path}: ... and {more} more bad records"] if more else []
        raise DictionaryError("\n".join(shown + tail))
    return UserDictionary(entries, source=str(path))


def _read_entries(path: Path, jsonl: bool, labels: set[str] | None) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    errors: list[str] = []
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw_b = fh.readline(MAX_LINE_BYTES + 1)  # never more than the limit in memory
            if not raw_b:
                break
            lineno += 1
            if len(raw_b) > MAX_LINE_BYTES and not raw_b.endswith(b"\n"):
                errors.append(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
                while raw_b and not raw_b.endswith(b"\n"):  # skip the rest of that line, in pieces
                    raw_b = fh.readline(MAX_LINE_BYTES + 1)
                continue
            try:
                raw = raw_b.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                errors.append(f"{path}:{lineno}: not UTF-8")
                continue
            if lineno == 1:
                raw = raw.lstrip("\ufeff")
            if not raw.strip():
                continue
            entry, problem = _parse_line(raw, jsonl, lineno)
            if problem is None and entry is not None and labels is not None and entry.label not in labels:
                problem = f"label {entry.label!r} is not one of the model's labels {sorted(labels)}"
            if problem is not None:
                errors.append(f"{path}:{lineno}: {problem}")
            elif entry is not None:
                if len(entries) >= MAX_ENTRIES:
                    errors.append(f"{path}:{lineno}: more than {MAX_ENTRIES} records")
                    break
                entries.append(entry)
    return entries, errors


# ---------------------------------------------------------------------------------------------- matching
class UserDictionary:
    """Entries and their Aho-Corasick automaton; :meth:`plan` resolves one text's matches."""

    def __init__(self, entries: Sequence[Entry], source: str = "<entries>") -> None:
        self.entries = list(entries)
        self.source = source
        by_text: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            by_text.setdefault(e.text, []).append(i)
        self._automaton = ahocorasick.Automaton()
        for text, ids in by_text.items():
            self._automaton.add_word(text, (len(text), tuple(ids)))
        if by_text:
            self._automaton.make_automaton()
        self._empty = not by_text
        self.labels = sorted({e.label for e in self.entries})

    def __len__(self) -> int:
        return len(self.entries)

    def check_labels(self, labels: Sequence[str]) -> None:
        """One line per entry whose label the model does not know (file, line, label), as an error."""
        known = set(labels)
        bad = [e for e in self.entries if e.label not in known]
        if bad:
            lines = [
                f"{self.source}:{e.line}: label {e.label!r} is not one of the model's labels {sorted(known)}"
                for e in bad[:MAX_ERRORS_SHOWN]
            ]
            if len(bad) > MAX_ERRORS_SHOWN:
                lines.append(f"{self.source}: ... and {len(bad) - MAX_ERRORS_SHOWN} more bad records")
            raise DictionaryError("\n".join(lines))

    def matches(self, text: str) -> list[tuple[int, int, int]]:
        """Every occurrence of every entry in ``text``: ``(start, end, entry index)``."""
        if self._empty or not text:
            return []
        out = []
        for last, (n, ids) in self._automaton.iter(text):
            out.extend((last + 1 - n, last + 1, i) for i in ids)
        return out

    def plan(self, text: str) -> DictionaryPlan:
        """The forced and forbidden spans of ``text`` after the resolution rules of the module doc."""
        found = self.matches(text)
        plan = DictionaryPlan()
        if not found:
            return plan
        best: dict[Span, tuple[int, int, int]] = {}  # span -> the winning match (by priority, then line)
        for s, e, i in found:
            key = (s, e, self.entries[i].label)
            cur = best.get(key)
            if cur is None or self._rank(i) < self._rank(cur[2]):
                if cur is not None:
                    self._drop(plan, cur, "a higher-priority or earlier entry for the same span wins")
                best[key] = (s, e, i)
            else:
                self._drop(plan, (s, e, i), "a higher-priority or earlier entry for the same span wins")
        forced = [m for m in best.values() if self.entries[m[2]].mode == "force"]
        plan.forbidden = sorted(k for k, m in best.items() if self.entries[m[2]].mode == "forbid")
        forced.sort(key=lambda m: (m[0] - m[1], *self._rank(m[2])[:1], m[0], self.entries[m[2]].line))
        taken = bytearray(len(text))
        for s, e, i in forced:
            if any(taken[s:e]):
                self._drop(plan, (s, e, i), "overlaps a longer (or higher-priority, earlier) forced span")
                continue
            taken[s:e] = b"\x01" * (e - s)
            plan.forced.append((s, e, self.entries[i].label))
        plan.forced.sort()
        if plan.dropped:
            log.debug("dictionary %s: %d matches dropped in a text", self.source, len(plan.dropped))
        return plan

    def _rank(self, i: int) -> tuple[int, int]:
        return -self.entries[i].priority, self.entries[i].line

    def _drop(self, plan: DictionaryPlan, m: tuple[int, int, int], reason: str) -> None:
        e = self.entries[m[2]]
        plan.dropped.append((m[0], m[1], e.label, e.mode, f"{self.source}:{e.line}: {reason}"))


# ---------------------------------------------------------------------------------------------- span decoder
def apply_to_spans(
    spans: Sequence[tuple[int, int, str, float]], plan: DictionaryPlan | None, flat: bool = False
) -> list[tuple[int, int, str, float, bool]]:
    """The span decoder's ``(start, end, label, prob)`` entities under a plan, as ``(start, end, label,
    prob, from_dictionary)`` sorted by start, end, label: forbidden spans removed, forced ones added with
    probability 1.0 (replacing the model's own entry for that span). With ``flat`` (the decoder's flat
    mode: no two entities overlap), model spans overlapping a forced span are removed too."""
    if not plan:
        return [(*s, False) for s in spans]
    forbidden = set(plan.forbidden)
    forced = set(plan.forced)
    covered = np.zeros(max([e for _, e, _ in plan.forced], default=0) + 1, dtype=bool)
    for s, e, _ in plan.forced:
        covered[s:e] = True
    out = [(s, e, lab, 1.0, True) for s, e, lab in plan.forced]
    for s, e, lab, p in spans:
        if (s, e, lab) in forbidden or (s, e, lab) in forced:
            continue
        if flat and covered[min(s, len(covered) - 1) : e].any():
            continue
        out.append((s, e, lab, p, False))
    return sorted(out, key=lambda x: x[:3])


# ---------------------------------------------------------------------------------------------- CRF decoding
#: variant codes of an expanded state: 0 ends as its tag allows, 1 must continue in its slot (BIO: ending
#: here is forbidden), 2 hands over: must continue, into the ordinary tags (the slot's last forbidden end)
_FREE, _STAY, _HANDOFF = 0, 1, 2


@dataclass(frozen=True)
class _Tags:
    """The model's tags as roles and labels, for building masks."""

    family: str
    roles: list[Role | None]
    labels: list[str | None]
    index: dict[tuple[Role, str], int]

    @classmethod
    def of(cls, tags: Sequence[str], scheme: str) -> _Tags:
        spec = scheme_spec(scheme)
        if spec.family not in ("bio", "bioes"):
            raise ValueError(
                f"dictionary decoding supports BIO, BIOES and BMES models, not {spec.scheme.value}"
            )
        roles: list[Role | None] = []
        labels: list[str | None] = []
        for t in tags:
            prefix, lab = parse_tag(t)
            roles.append(None if lab is None else spec.prefixes[prefix])
            labels.append(lab)
        index = {(r, lab): i for i, (r, lab) in enumerate(zip(roles, labels, strict=True)) if r is not None}
        return cls(spec.family, roles, labels, index)

    def tag(self, role: Role, label: str) -> int:
        try:
            return self.index[(role, label)]
        except KeyError:
            raise ValueError(f"dictionary label {label!r} is not one of the model's labels") from None

    def encoding(self, label: str, n: int) -> list[int]:
        """The tag ids that encode an entity of ``n`` characters (the scheme's canonical encoding)."""
        if self.family == "bio":
            return [self.tag(Role.BEGIN, label)] + [self.tag(Role.INSIDE, label)] * (n - 1)
        if n == 1:
            return [self.tag(Role.SINGLE, label)]
        inner = [self.tag(Role.INSIDE, label)] * (n - 2)
        return [self.tag(Role.BEGIN, label), *inner, self.tag(Role.LAST, label)]

    def continuations(self, label: str) -> list[int]:
        roles = (Role.INSIDE,) if self.family == "bio" else (Role.INSIDE, Role.LAST)
        return [self.tag(r, label) for r in roles]

    def starts(self, label: str) -> list[int]:
        roles = (Role.BEGIN,) if self.family == "bio" else (Role.BEGIN, Role.SINGLE)
        return [self.tag(r, label) for r in roles]


def _forced_mask(
    info: _Tags, plans: Sequence[DictionaryPlan | None], T: int, lengths: list[int]
) -> np.ndarray:
    """``(R, T, K)`` allowed tags: a forced span's positions take only its encoding, the position after it
    may not continue it; everything else is open."""
    K = len(info.roles)
    allowed = np.ones((len(plans), T, K), dtype=bool)
    rows: list[int] = []  # every forced position: row, step, its one tag
    steps: list[int] = []
    tag_ids: list[int] = []
    after: list[tuple[int, int, int]] = []  # (row, step, tag) a span's next position may not take
    for r, plan in enumerate(plans):
        for s, e, lab in plan.forced if plan else ():
            rows += [r] * (e - s)
            steps += range(s, e)
            tag_ids += info.encoding(lab, e - s)
            if e < lengths[r]:
                after += [(r, e, k) for k in info.continuations(lab)]
    if rows:
        allowed[rows, steps] = False
        allowed[rows, steps, tag_ids] = True
    if after:
        allowed[tuple(np.array(after).T)] = False
    return allowed


def _slots(forbidden: Sequence[Span]) -> list[tuple[str, int, int, frozenset[int], int]]:
    """Forbidden spans grouped by (label, start) into ``(label, slot, start, ends, last end)``; starts of one
    label whose ranges ``[start, last end - 1]`` overlap get different slots (1, 2, ...), greedily."""
    ends: dict[tuple[str, int], set[int]] = {}
    for s, e, lab in forbidden:
        ends.setdefault((lab, s), set()).add(e)
    out = []
    free_at: dict[str, list[int]] = {}  # label -> per slot, the first position where it is free again
    for (lab, s), es in sorted(ends.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        slots = free_at.setdefault(lab, [])
        j = next((k for k, f in enumerate(slots) if f <= s), len(slots))
        if j == len(slots):
            slots.append(0)
        slots[j] = max(es)  # the range ends at max(es) - 1
        out.append((lab, j + 1, s, frozenset(es), max(es)))
    return out


def _variants(family: str) -> list[tuple[Role, int]]:
    """The tag copies of one slot: BIO ``B, I`` x (free, must stay, hand over); BIOES every tag of the
    label (its E/S end, its B/I continue) plus B/I handing over."""
    if family == "bio":
        return [(r, v) for r in (Role.BEGIN, Role.INSIDE) for v in (_FREE, _STAY, _HANDOFF)]
    return [(r, _FREE) for r in (Role.BEGIN, Role.INSIDE, Role.LAST, Role.SINGLE)] + [
        (Role.BEGIN, _HANDOFF),
        (Role.INSIDE, _HANDOFF),
    ]


def _expanded_states(info: _Tags, counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The expanded chain's states: ``base`` (K',) tag id, ``slot`` (K',) 0 for the ordinary tags, else a
    unique id per (label, slot), ``code`` (K',) variant; and ``(label, slot, role, code) -> state``."""
    K = len(info.roles)
    base, slot, code = list(range(K)), [0] * K, [_FREE] * K
    where: dict[tuple[str, int, Role, int], int] = {}
    sid = 0
    for lab in sorted(counts):
        for j in range(1, counts[lab] + 1):
            sid += 1
            for role, v in _variants(info.family):
                where[(lab, j, role, v)] = len(base)
                base.append(info.tag(role, lab))
                slot.append(sid)
                code.append(v)
    return np.array(base), np.array(slot), np.array(code), where


def _expanded_crf(crf: ConstrainedCRF, info: _Tags, base, slot, code) -> ConstrainedCRF:
    """A CRF over the expanded states: scores copied from the tags they stand for; moves allowed as between
    those tags, except that a continuation stays in its slot (or, handing over, goes to the ordinary
    tags) and a must-continue copy may neither end nor be followed by anything but a continuation."""
    roles, labels = info.roles, info.labels
    K = len(roles)
    cont = np.zeros((K, K), dtype=bool)
    for a in range(K):
        for b in range(K):
            cont[a, b] = (
                roles[a] in (Role.BEGIN, Role.INSIDE)
                and roles[b] in (Role.INSIDE, Role.LAST)
                and labels[a] == labels[b]
            )
    start, trans, end = (
        x.detach().cpu().numpy() for x in (crf.allowed_start, crf.allowed_trans, crf.allowed_end)
    )
    is_cont = cont[base][:, base]  # (K', K')
    keep_slot = np.where(code[:, None] == _HANDOFF, slot[None, :] == 0, slot[:, None] == slot[None, :])
    moves = trans[base][:, base] & np.where(is_cont, keep_slot, (code == _FREE)[:, None])
    allowed = (start[base], moves, end[base] & (code == _FREE))
    exp = ConstrainedCRF(len(base), allowed)
    b = torch.as_tensor(base, device=crf.crf.transitions.device)
    with torch.no_grad():
        exp.crf.start_transitions.copy_(crf.crf.start_transitions[b])
        exp.crf.transitions.copy_(crf.crf.transitions[b][:, b])
        exp.crf.end_transitions.copy_(crf.crf.end_transitions[b])
    return exp.to(crf.crf.transitions.device)


def _expanded_emissions(
    em: np.ndarray, allowed: np.ndarray, base: np.ndarray, where: dict, info: _Tags, rows_slots: list
) -> np.ndarray:
    """``(R, T, K')`` emissions of the expanded chain, ``-inf`` where a state is not allowed: the ordinary
    tags as the forced masks say, except that an entity may not start at a forbidden start of its label
    outside that start's slot; each slot's copies only where its entity can be (from its start to its last
    forbidden end - 1), in the variant that position requires, and only where the forced masks allow the
    tag. Built in numpy (its fills and gathers are far faster than torch's on CPU), once for both calls;
    an allowed path always remains (module doc), so the CRF's no-allowed-path fallback is never needed."""
    R, T, K = em.shape
    out = np.full((R, T, len(base)), -np.inf, dtype=np.float32)
    out[:, :, :K] = np.where(allowed, em, np.float32(-np.inf))
    bio = info.family == "bio"
    for r, slots in enumerate(rows_slots):
        for lab, j, s, ends, last in slots:
            out[r, s, info.starts(lab)] = -np.inf
            for t in range(s, last):
                role = Role.BEGIN if t == s else Role.INSIDE
                states = []
                if t == last - 1:
                    states.append(where[(lab, j, role, _HANDOFF)])
                elif bio:
                    states.append(where[(lab, j, role, _STAY if t + 1 in ends else _FREE)])
                else:
                    states.append(where[(lab, j, role, _FREE)])
                    if t + 1 not in ends:
                        states.append(where[(lab, j, Role.SINGLE if t == s else Role.LAST, _FREE)])
                for x in states:
                    if allowed[r, t, base[x]]:
                        out[r, t, x] = em[r, t, base[x]]
    return out


def _decode_expanded(
    crf: ConstrainedCRF,
    info: _Tags,
    em: Tensor,
    mask: Tensor,
    allowed: np.ndarray,
    plans: list[DictionaryPlan | None],
    confidence: bool,
    backend: str,
) -> tuple[Tensor, Tensor | None]:
    """Viterbi and marginals on the expanded chain, mapped back to the tags. Rows without a forbidden span
    go through it too (their copies are all ``-inf``, which the C kernels skip), sparing row copies."""
    rows_slots = [_slots(p.forbidden) if p else [] for p in plans]
    counts: dict[str, int] = {}
    for slots in rows_slots:
        for lab, j, *_ in slots:
            counts[lab] = max(counts.get(lab, 0), j)
    base, slot, code, where = _expanded_states(info, counts)
    exp = _expanded_crf(crf, info, base, slot, code)
    b = torch.as_tensor(base, device=em.device)
    em_np = em.detach().float().cpu().numpy()
    em_x = torch.from_numpy(_expanded_emissions(em_np, allowed, base, where, info, rows_slots)).to(em.device)
    paths_x, _ = exp.viterbi_tensor(em_x, mask, backend)
    paths = b[paths_x]  # (R, T)
    if not confidence:
        return paths, None
    K = len(info.roles)
    marg_x = exp.marginals(em_x, mask, backend)  # (R, T, K'); the first K states are the tags themselves
    return paths, marg_x[:, :, :K].clone().index_add_(2, b[K:], marg_x[:, :, K:])


def _checked(plan: DictionaryPlan | None, length: int, row: int) -> DictionaryPlan | None:
    """A plan as :meth:`UserDictionary.plan` makes them: spans inside the row, forced spans apart; a
    forbidden span equal to a forced one is left out (the forced one stands). Else a one-line error."""
    if not plan:
        return plan
    last = 0
    for s, e, lab in sorted(plan.forced):
        if not 0 <= s < e <= length or s < last:
            raise ValueError(
                f"row {row}: forced span [{s}, {e}) {lab} overlaps another or lies outside 0..{length}"
            )
        last = e
    if any(not 0 <= s < e <= length for s, e, _ in plan.forbidden):
        raise ValueError(f"row {row}: a forbidden span lies outside the row's {length} positions")
    forced = set(plan.forced)
    if forced & set(plan.forbidden):
        return DictionaryPlan(plan.forced, [f for f in plan.forbidden if f not in forced], plan.dropped)
    return plan


def decode_with_dictionary(
    crf: ConstrainedCRF,
    emissions: Tensor,
    mask: Tensor,
    plans: Sequence[DictionaryPlan | None],
    tags: Sequence[str],
    scheme: str,
    *,
    confidence: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Viterbi paths ``(R, T)`` and, with ``confidence``, marginals ``(R, T, K)`` of a batch of stitched
    emissions ``(R, T, K)`` (mask ``(R, T)`` right-padded) under one :class:`DictionaryPlan` per row (None:
    no dictionary): the best path that holds every forced span and no forbidden one, and the marginals
    conditioned on that (see the module doc). Without any plan this is exactly ``crf.viterbi_tensor`` and
    ``crf.marginals``. ``tags`` are the model's tags (index = tag id) in ``scheme``."""
    R, T, K = emissions.shape
    if len(plans) != R:
        raise ValueError(f"expected one dictionary plan per row ({R}), got {len(plans)}")
    if not any(plans):
        paths, _ = crf.viterbi_tensor(emissions, mask, backend)
        return paths, crf.marginals(emissions, mask, backend) if confidence else None
    info = _Tags.of(tags, scheme)
    lengths = mask.sum(dim=1).tolist()
    plans = [_checked(p, n, r) for r, (p, n) in enumerate(zip(plans, lengths, strict=True))]
    allowed = _forced_mask(info, plans, T, lengths)  # (R, T, K)
    if any(p and p.forbidden for p in plans):  # the expanded chain, for every row (no row copies)
        return _decode_expanded(crf, info, emissions, mask, allowed, plans, confidence, backend)
    ok = torch.from_numpy(allowed).to(emissions.device)
    paths, _ = crf.viterbi_tensor(emissions, mask, backend, allowed_tags=ok)
    return paths, crf.marginals(emissions, mask, backend, allowed_tags=ok) if confidence else None
