"""Tag schemes: BIO (= IOB2), BIOES, BMES and IOB1.

This module is the single owner of tag schemes. Entities live as half-open character spans
``[start, end)`` (:class:`ner_core.documents.Entity`); tags are derived from them per run.

A tag is ``"O"`` or ``"<PREFIX>-<LABEL>"``; the label may itself contain ``-`` or ``_`` (the tag is
split at the first ``-``). Each scheme is *data*: a table from prefix to the role the prefix plays
in a span (begin / inside / end / single) plus one encoding flag for IOB1. Everything else (span
encoding, lenient decoding, validation, repair, allowed CRF transitions) is derived from the table.

Canonical encoding of an entity of length ``n`` (``spans_to_tags``):

=========  ================  ==================  ======================================
scheme     n == 1            n >= 2              note
=========  ================  ==================  ======================================
BIO        B                 B I ... I
BIOES      S                 B I ... I E
BMES       S                 B M ... M E         as in Resume NER
IOB1       I                 I I ... I           first tag is B only when the previous
                                                 character ends an entity of the same label
=========  ================  ==================  ======================================

Lenient decoding (``tags_to_spans``), conlleval-like, for any sequence of *known* tags:

* ``O`` closes the open entity.
* a *begin* tag (B) closes the open entity and opens a new one.
* a *single* tag (S) closes the open entity and emits a one-character entity.
* an *inside* tag (I / M) continues the open entity if it has the same label; otherwise (nothing
  open, or another label: "a type change ends the previous entity") it closes it and opens a new one.
* an *end* tag (E) closes the open entity *including* this character if it has the same label;
  otherwise it closes the open entity and emits a one-character entity (an E without its B starts
  an entity, which the E ends at once).
* the end of the sequence closes the open entity (so ``B-X O`` in BIOES reads as ``[0, 1) X``).

A sequence is *valid* iff every step, including ``START -> first`` and ``last -> END``, is allowed
by :func:`is_transition_allowed`; valid sequences are exactly the canonical encodings, so for a valid
sequence ``spans_to_tags(len(t), tags_to_spans(t)) == t`` and :func:`repair_tags` changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import numpy as np

from ner_core.documents import Entity

__all__ = [
    "OUTSIDE",
    "Scheme",
    "SchemeSpec",
    "TagProblem",
    "allowed_transitions",
    "convert_tags",
    "is_transition_allowed",
    "parse_tag",
    "repair_tags",
    "scheme_spec",
    "spans_to_tags",
    "tag_set",
    "tags_to_spans",
    "validate_tags",
]

OUTSIDE = "O"
START = "START"
END = "END"


class Scheme(str, Enum):
    """The supported tag schemes. ``Scheme("iob2")`` and ``Scheme("bio")`` are accepted too."""

    BIO = "BIO"
    BIOES = "BIOES"
    BMES = "BMES"
    IOB1 = "IOB1"

    @classmethod
    def _missing_(cls, value: object) -> "Scheme | None":
        if isinstance(value, str):
            key = value.strip().upper()
            key = {"IOB2": "BIO"}.get(key, key)
            for member in cls:
                if member.value == key:
                    return member
        return None


# Roles a prefix can play inside a span.
BEGIN, INSIDE, LAST, SINGLE = "begin", "inside", "end", "single"


@dataclass(frozen=True)
class SchemeSpec:
    """The data that defines a scheme.

    ``prefixes`` maps prefix -> role, in the order :func:`tag_set` lists them. ``family`` selects the
    transition rule set (``"bio"``, ``"iob1"`` or ``"bioes"``).
    """

    scheme: Scheme
    prefixes: dict[str, str]
    family: str

    def prefix_for(self, role: str) -> str | None:
        for prefix, r in self.prefixes.items():
            if r == role:
                return prefix
        return None


_SPECS: dict[Scheme, SchemeSpec] = {
    Scheme.BIO: SchemeSpec(Scheme.BIO, {"B": BEGIN, "I": INSIDE}, "bio"),
    Scheme.BIOES: SchemeSpec(Scheme.BIOES, {"B": BEGIN, "I": INSIDE, "E": LAST, "S": SINGLE}, "bioes"),
    Scheme.BMES: SchemeSpec(Scheme.BMES, {"B": BEGIN, "M": INSIDE, "E": LAST, "S": SINGLE}, "bioes"),
    Scheme.IOB1: SchemeSpec(Scheme.IOB1, {"I": INSIDE, "B": BEGIN}, "iob1"),
}


def _as_scheme(scheme: Scheme | str) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return Scheme(scheme)
    except ValueError:
        raise ValueError(
            f"expected a tag scheme, one of {[s.value for s in Scheme]}, got {scheme!r}"
        ) from None


def scheme_spec(scheme: Scheme | str) -> SchemeSpec:
    """The prefix table of ``scheme``."""
    return _SPECS[_as_scheme(scheme)]


def parse_tag(tag: str) -> tuple[str, str | None]:
    """Split a tag into ``(prefix, label)``: ``"O" -> ("O", None)``, ``"B-PER" -> ("B", "PER")``.

    The split is at the first ``-``, so ``"I-GPE-ORG" -> ("I", "GPE-ORG")``. Raises ``ValueError`` for
    anything else (empty string, bare prefix ``"B"``, ``"B-"``, ``"-PER"``, ``"O-PER"``, whitespace).
    Does not check the prefix against a scheme (see :func:`validate_tags`).
    """
    if not isinstance(tag, str):
        raise ValueError(f"expected a tag string such as 'O' or 'B-PER', got {type(tag).__name__} {tag!r}")
    return _parse_tag(tag)


@lru_cache(maxsize=65536)
def _parse_tag(tag: str) -> tuple[str, str | None]:
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, sep, label = tag.partition("-")
    if not sep or not prefix or not label or prefix == OUTSIDE or any(ch.isspace() for ch in tag):
        raise ValueError(f"expected a tag 'O' or 'PREFIX-LABEL' (e.g. 'B-PER'), got {tag!r}")
    return prefix, label


def _role(spec: SchemeSpec, tag: str) -> tuple[str | None, str | None]:
    """``(role, label)`` of ``tag`` in ``spec``; role is None for ``O``. Raises ValueError if unknown."""
    prefix, label = parse_tag(tag)
    if label is None:
        return None, None
    role = spec.prefixes.get(prefix)
    if role is None:
        raise ValueError(
            f"tag {tag!r} has prefix {prefix!r}, expected one of {list(spec.prefixes)} or 'O' "
            f"in {spec.scheme.value}"
        )
    return role, label


@lru_cache(maxsize=65536)
def _role_in(scheme: Scheme, tag: str) -> tuple[str | None, str | None]:
    """Cached :func:`_role` (tag sequences repeat a handful of tags millions of times)."""
    return _role(_SPECS[scheme], tag)


def _role_checked(scheme: Scheme, tag: object) -> tuple[str | None, str | None]:
    if not isinstance(tag, str):
        raise ValueError(f"expected a tag string such as 'O' or 'B-PER', got {type(tag).__name__} {tag!r}")
    return _role_in(scheme, tag)


def tag_set(labels: Sequence[str], scheme: Scheme | str) -> list[str]:
    """All tags of ``scheme`` for ``labels``: ``"O"`` first, then per label (sorted) the scheme's
    prefixes in a fixed order (BIO: B,I; BIOES: B,I,E,S; BMES: B,M,E,S; IOB1: I,B).

    Duplicate labels are ignored. Labels must be non-empty strings without whitespace and not "O".
    """
    spec = scheme_spec(scheme)
    if isinstance(labels, str):
        raise ValueError(f"expected a sequence of labels, got the string {labels!r}")
    clean: set[str] = set()
    for label in labels:
        if not isinstance(label, str) or not label or label == OUTSIDE or any(c.isspace() for c in label):
            raise ValueError(
                f"expected non-empty labels without whitespace and other than 'O', got {label!r}"
            )
        clean.add(label)
    tags = [OUTSIDE]
    for label in sorted(clean):
        tags.extend(f"{prefix}-{label}" for prefix in spec.prefixes)
    return tags


def spans_to_tags(length: int, entities: Sequence[Entity], scheme: Scheme | str) -> list[str]:
    """Canonical tags (one per character) for ``entities`` over a text of ``length`` characters.

    Raises ``ValueError`` naming the offending entities when a span lies outside ``[0, length)`` or two
    spans overlap. Entities may come in any order.
    """
    spec = scheme_spec(scheme)
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"expected a non-negative int length, got {length!r}")
    for e in entities:
        if not isinstance(e, Entity):
            raise ValueError(f"expected Entity objects, got {type(e).__name__} {e!r}")
        if e.end > length:
            raise ValueError(f"entity [{e.start}, {e.end}) {e.label} lies outside the text (length {length})")
    ordered = sorted(entities, key=lambda e: (e.start, e.end, e.label))
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise ValueError(
                f"entities overlap: [{a.start}, {a.end}) {a.label} and [{b.start}, {b.end}) {b.label}"
            )
    begin = spec.prefix_for(BEGIN)
    inside = spec.prefix_for(INSIDE)
    last = spec.prefix_for(LAST)
    single = spec.prefix_for(SINGLE)
    iob1 = spec.family == "iob1"
    tags = [OUTSIDE] * length
    prev: Entity | None = None
    for e in ordered:
        n = e.end - e.start
        if iob1:
            # IOB1: B only marks the start of an entity right after one of the same label.
            adjacent = prev is not None and prev.end == e.start and prev.label == e.label
            first = begin if adjacent else inside
        else:
            first = single if n == 1 and single is not None else begin
        tags[e.start] = f"{first}-{e.label}"
        for i in range(e.start + 1, e.end - 1):
            tags[i] = f"{inside}-{e.label}"
        if n >= 2:
            tags[e.end - 1] = f"{last or inside}-{e.label}"
        prev = e
    return tags


def tags_to_spans(tags: Sequence[str], scheme: Scheme | str) -> list[Entity]:
    """Entities read from ``tags`` (lenient, conlleval-like; see the module docstring), by start.

    Raises ``ValueError`` naming the position of a tag that is malformed or whose prefix does not
    belong to ``scheme``.
    """
    spec = scheme_spec(scheme)
    if isinstance(tags, str):
        raise ValueError(f"expected a sequence of tags, got the string {tags!r}")
    spans: list[tuple[int, int, str]] = []
    open_start = -1
    open_label: str | None = None
    memo: dict[str, tuple[str | None, str | None]] = {}
    for i, tag in enumerate(tags):
        try:
            role, label = memo[tag]
        except (KeyError, TypeError):
            try:
                role, label = memo[tag] = _role_checked(spec.scheme, tag)
            except ValueError as err:
                raise ValueError(f"position {i}: {err}") from None
        if open_label is not None and (role in (None, BEGIN, SINGLE) or label != open_label):
            spans.append((open_start, i, open_label))  # close the open entity before this tag
            open_label = None
        if role is None:
            continue
        if role == SINGLE:
            spans.append((i, i + 1, label))
        elif role == LAST:
            start = open_start if open_label is not None else i
            spans.append((start, i + 1, label))
            open_label = None
        elif open_label is None:  # BEGIN, or an INSIDE that cannot continue
            open_start, open_label = i, label
    if open_label is not None:
        spans.append((open_start, len(tags), open_label))
    # the spans are valid by construction: skip pydantic validation (a large share of the time)
    return [Entity.model_construct(start=s, end=e, label=lab) for s, e, lab in spans]


def convert_tags(tags: Sequence[str], src: Scheme | str, dst: Scheme | str) -> list[str]:
    """Tags in scheme ``dst`` for the (leniently read) entities of ``tags`` in scheme ``src``."""
    return spans_to_tags(len(tags), tags_to_spans(tags, src), dst)


def is_transition_allowed(scheme: Scheme | str, from_tag: str, to_tag: str) -> bool:
    """Whether ``to_tag`` may directly follow ``from_tag`` in ``scheme``.

    ``from_tag`` may be the pseudo-tag ``"START"`` and ``to_tag`` the pseudo-tag ``"END"``. Raises
    ``ValueError`` for a tag the scheme does not know.
    """
    sch = _as_scheme(scheme)
    for tag in (from_tag, to_tag):
        if not isinstance(tag, str):
            raise ValueError(f"expected a tag string, 'START' or 'END', got {type(tag).__name__} {tag!r}")
    return _allowed(sch, from_tag, to_tag)


@lru_cache(maxsize=65536)
def _allowed(scheme: Scheme, from_tag: str, to_tag: str) -> bool:
    spec = _SPECS[scheme]
    if from_tag == END or to_tag == START:
        return False  # nothing follows END; nothing precedes START
    f_role, f_label = (START, None) if from_tag == START else _role_in(scheme, from_tag)
    t_role, t_label = (END, None) if to_tag == END else _role_in(scheme, to_tag)
    f_role = f_role or OUTSIDE
    t_role = t_role or OUTSIDE
    same = f_label is not None and f_label == t_label
    if spec.family == "bio":
        return any(
            [
                # any tag may end the sequence
                t_role == END,
                # O and B-x may follow anything (START included)
                t_role in (OUTSIDE, BEGIN),
                # I-x may only continue B-x or I-x of the same label
                t_role == INSIDE and f_role in (BEGIN, INSIDE) and same,
            ]
        )
    if spec.family == "iob1":
        return any(
            [
                # any tag may end the sequence
                t_role == END,
                # O and I-x may follow anything (an I-x after another label starts a new entity)
                t_role in (OUTSIDE, INSIDE),
                # B-x only separates two adjacent entities of the same label
                t_role == BEGIN and f_role in (BEGIN, INSIDE) and same,
            ]
        )
    # family "bioes": BIOES and BMES (I plays the role of M)
    return any(
        [
            # only O, E-x and S-x close cleanly, so only they may end the sequence
            t_role == END and f_role in (OUTSIDE, LAST, SINGLE),
            # O, B-x and S-x may start the sequence or follow O, E-x, S-x
            t_role in (OUTSIDE, BEGIN, SINGLE) and f_role in (START, OUTSIDE, LAST, SINGLE),
            # I-x and E-x may only follow B-x or I-x of the same label
            t_role in (INSIDE, LAST) and f_role in (BEGIN, INSIDE) and same,
        ]
    )


def allowed_transitions(
    tags: Sequence[str], scheme: Scheme | str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks of allowed transitions for the tag list ``tags`` (K tags, indexed as listed).

    Returns ``start`` (K,) [START -> k], ``trans`` (K, K) [from, to] and ``end`` (K,) [k -> END].
    """
    if isinstance(tags, str) or len(tags) == 0:
        raise ValueError(f"expected a non-empty sequence of tags, got {tags!r}")
    if len(set(tags)) != len(tags):
        raise ValueError(f"expected distinct tags, got duplicates in {list(tags)}")
    k = len(tags)
    start = np.array([is_transition_allowed(scheme, START, t) for t in tags], dtype=bool)  # (K,)
    end = np.array([is_transition_allowed(scheme, t, END) for t in tags], dtype=bool)  # (K,)
    trans = np.array(  # (K, K)
        [[is_transition_allowed(scheme, a, b) for b in tags] for a in tags], dtype=bool
    ).reshape(k, k)
    return start, trans, end


@dataclass
class TagProblem:
    """One problem in a tag sequence. ``position`` is the 0-based character index.

    ``code`` is ``"unknown_tag"`` (malformed tag, prefix not in the scheme, label not in the label
    set), ``"invalid_transition"`` (the tag may not follow the previous one, may not start or end the
    sequence) or, for warnings from :func:`repair_tags`, ``"repaired"``.
    """

    position: int
    tag: str
    code: str
    message: str


def validate_tags(
    tags: Sequence[str], scheme: Scheme | str, labels: Collection[str] | None = None
) -> list[TagProblem]:
    """Every problem of ``tags`` in ``scheme``, in order of position; empty when the sequence is valid.

    A step into a tag that is not allowed is reported at that tag's position ("position 7: I-PER
    cannot follow O in BIO"); a start not allowed at position 0 ("... cannot start a sequence ...");
    an end not allowed at the last position ("... cannot end a sequence ..."). Steps from or into an
    unknown tag are not checked. With ``labels``, a label outside that set is an ``unknown_tag``.
    """
    spec = scheme_spec(scheme)
    if isinstance(tags, str):
        raise ValueError(f"expected a sequence of tags, got the string {tags!r}")
    name = spec.scheme.value
    known = set(labels) if labels is not None else None
    problems: list[TagProblem] = []
    ok: list[bool] = []
    for i, tag in enumerate(tags):
        try:
            _, label = _role_checked(spec.scheme, tag)
            if known is not None and label is not None and label not in known:
                raise ValueError(f"label {label!r} of tag {tag!r} is not in the label set {sorted(known)}")
        except ValueError as err:
            problems.append(TagProblem(i, str(tag), "unknown_tag", f"position {i}: {err}"))
            ok.append(False)
            continue
        ok.append(True)
        if i == 0:
            if not _allowed(spec.scheme, START, tag):
                problems.append(
                    TagProblem(
                        i, tag, "invalid_transition", f"position {i}: {tag} cannot start a sequence in {name}"
                    )
                )
        elif ok[i - 1] and not _allowed(spec.scheme, tags[i - 1], tag):
            problems.append(
                TagProblem(
                    i, tag, "invalid_transition", f"position {i}: {tag} cannot follow {tags[i - 1]} in {name}"
                )
            )
    if tags and ok[-1] and not _allowed(spec.scheme, tags[-1], END):
        i = len(tags) - 1
        problems.append(
            TagProblem(
                i, tags[-1], "invalid_transition", f"position {i}: {tags[-1]} cannot end a sequence in {name}"
            )
        )
    return problems


def repair_tags(tags: Sequence[str], scheme: Scheme | str) -> tuple[list[str], list[TagProblem]]:
    """The valid sequence whose entities are the lenient reading of ``tags``, and one warning per
    changed position (code ``"repaired"``, e.g. "position 3: I-PER -> B-PER (I-PER cannot follow O in
    BIO)"). A valid sequence comes back unchanged with no warnings. Unknown tags raise ``ValueError``.
    """
    spec = scheme_spec(scheme)
    problems = validate_tags(tags, spec.scheme)
    unknown = [p for p in problems if p.code == "unknown_tag"]
    if unknown:
        raise ValueError("cannot repair unknown tags: " + "; ".join(p.message for p in unknown))
    repaired = spans_to_tags(len(tags), tags_to_spans(tags, spec.scheme), spec.scheme)
    reasons: dict[int, list[str]] = {}
    for p in problems:
        reasons.setdefault(p.position, []).append(p.message.split(": ", 1)[1])
    warnings = []
    for i, (old, new) in enumerate(zip(tags, repaired)):
        if old != new:
            why = "; ".join(reasons.get(i, [])) or "to keep the neighbouring tags consistent"
            warnings.append(TagProblem(i, old, "repaired", f"position {i}: {old} -> {new} ({why})"))
    return repaired, warnings
