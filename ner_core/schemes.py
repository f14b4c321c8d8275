"""Tag schemes: BIO (= IOB2), BIOES, BMES and IOB1.

This module is the single owner of tag schemes. Entities live as half-open character spans
``[start, end)`` (:class:`ner_core.documents.Entity`); tags are derived from them per run.

A tag is ``"O"`` or ``"<PREFIX>-<LABEL>"``; the label may itself contain ``-`` or ``_`` (the tag is
split at the first ``-``). Each scheme is *data*: a table from prefix to the :class:`Role` the prefix
plays in a span (begin / inside / end / single) plus a rule family (``bio``, ``iob1``, ``bioes``).
Everything else (span encoding, lenient decoding, the one-pass decoder of valid sequences
:func:`fast_spans`, validation, repair, allowed CRF transitions) is derived from the table.

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

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import lru_cache, partial
from itertools import pairwise
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ner_core.documents import Entity

__all__ = [
    "OUTSIDE",
    "TRAINING_SCHEMES",
    "Role",
    "Scheme",
    "SchemeSpec",
    "TagProblem",
    "TrainingScheme",
    "allowed_transitions",
    "convert_tags",
    "fast_decoder",
    "fast_spans",
    "has_overlaps",
    "is_transition_allowed",
    "labels_of",
    "outermost",
    "parse_tag",
    "repair_tags",
    "resolve_overlaps",
    "scheme_spec",
    "span_tuples",
    "spans_to_tags",
    "spread_tag",
    "tag_set",
    "tags_to_spans",
    "validate_tags",
]

OUTSIDE = "O"
START = "START"
END = "END"


class Scheme(StrEnum):
    """The supported tag schemes. ``Scheme("iob2")`` and ``Scheme("bio")`` are accepted too.

    A member is the string of its name (``Scheme.BIO == "BIO"``, ``str(Scheme.BIO) == "BIO"``), so it
    serialises to JSON, DuckDB and f-strings as the plain name.
    """

    BIO = "BIO"
    BIOES = "BIOES"
    BMES = "BMES"
    IOB1 = "IOB1"

    @classmethod
    def _missing_(cls, value: object) -> Scheme | None:
        if isinstance(value, str):
            key = value.strip().upper()
            key = {"IOB2": "BIO"}.get(key, key)
            for member in cls:
                if member.value == key:
                    return member
        return None


class Role(Enum):
    """The part a tag prefix plays in an entity span."""

    BEGIN = "begin"  # first character of a span of two or more (B)
    INSIDE = "inside"  # a character after the first (I, M; IOB1: any character)
    LAST = "end"  # the last character of a span of two or more (E)
    SINGLE = "single"  # a span of one character (S)


# Training schemes: the schemes a model is trained in (DataConfig.scheme); the others are read only.
TRAINING_SCHEMES = (Scheme.BIO, Scheme.BIOES)


def _training_scheme(value: object) -> object:
    # exactly the names, as the Literal["BIO", "BIOES"] this type replaces (no aliases such as "bio")
    if value not in TRAINING_SCHEMES:
        raise PydanticCustomError(
            "literal_error", "Input should be 'BIO' or 'BIOES'", {"expected": "'BIO' or 'BIOES'"}
        )
    return value


TrainingScheme = Annotated[
    Scheme,
    BeforeValidator(_training_scheme),
    WithJsonSchema({"enum": [s.value for s in TRAINING_SCHEMES], "title": "Scheme", "type": "string"}),
]
"""A pydantic field type: a :class:`Scheme` that must be one of :data:`TRAINING_SCHEMES`, given by its
exact name; it serialises to that name (``"BIO"`` / ``"BIOES"``)."""


@dataclass(frozen=True)
class SchemeSpec:
    """The data that defines a scheme.

    ``prefixes`` maps prefix -> role, in the order :func:`tag_set` lists them. ``family`` selects the
    transition rule set (``"bio"``, ``"iob1"`` or ``"bioes"``).
    """

    scheme: Scheme
    prefixes: dict[str, Role]
    family: str

    def prefix_for(self, role: Role) -> str | None:
        for prefix, r in self.prefixes.items():
            if r == role:
                return prefix
        return None


_SPECS: dict[Scheme, SchemeSpec] = {
    Scheme.BIO: SchemeSpec(Scheme.BIO, {"B": Role.BEGIN, "I": Role.INSIDE}, "bio"),
    Scheme.BIOES: SchemeSpec(
        Scheme.BIOES, {"B": Role.BEGIN, "I": Role.INSIDE, "E": Role.LAST, "S": Role.SINGLE}, "bioes"
    ),
    Scheme.BMES: SchemeSpec(
        Scheme.BMES, {"B": Role.BEGIN, "M": Role.INSIDE, "E": Role.LAST, "S": Role.SINGLE}, "bioes"
    ),
    Scheme.IOB1: SchemeSpec(Scheme.IOB1, {"I": Role.INSIDE, "B": Role.BEGIN}, "iob1"),
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


def _role(spec: SchemeSpec, tag: str) -> tuple[Role | None, str | None]:
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


_CLOSES = (None, Role.BEGIN, Role.SINGLE)  # roles that close an open entity whatever its label


@lru_cache(maxsize=65536)
def _role_in(scheme: Scheme, tag: str) -> tuple[Role | None, str | None]:
    """Cached :func:`_role` (a corpus repeats a handful of tags over and over)."""
    return _role(_SPECS[scheme], tag)


def _role_checked(scheme: Scheme, tag: object) -> tuple[Role | None, str | None]:
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
    for a, b in pairwise(ordered):
        if b.start < a.end:
            raise ValueError(
                f"entities overlap: [{a.start}, {a.end}) {a.label} and [{b.start}, {b.end}) {b.label}"
            )
    begin = spec.prefix_for(Role.BEGIN)
    inside = spec.prefix_for(Role.INSIDE)
    last = spec.prefix_for(Role.LAST)
    single = spec.prefix_for(Role.SINGLE)
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
    # the spans are valid by construction: skip pydantic validation (a large share of the time)
    return [Entity.model_construct(start=s, end=e, label=lab) for s, e, lab in span_tuples(tags, scheme)]


def span_tuples(tags: Sequence[str], scheme: Scheme | str) -> list[tuple[int, int, str]]:
    """:func:`tags_to_spans` as ``(start, end, label)`` tuples, for hot paths that build their own
    objects (batch prediction reads one span list per text)."""
    spec = scheme_spec(scheme)
    if isinstance(tags, str):
        raise ValueError(f"expected a sequence of tags, got the string {tags!r}")
    spans: list[tuple[int, int, str]] = []
    open_start = -1
    open_label: str | None = None
    memo: dict[str, tuple[Role | None, str | None]] = {}
    for i, tag in enumerate(tags):
        try:
            role, label = memo[tag]
        except (KeyError, TypeError):
            try:
                role, label = memo[tag] = _role_checked(spec.scheme, tag)
            except ValueError as err:
                raise ValueError(f"position {i}: {err}") from None
        if open_label is not None and (role in _CLOSES or label != open_label):
            spans.append((open_start, i, open_label))  # close the open entity before this tag
            open_label = None
        if role is None:
            continue
        if role is Role.SINGLE:
            spans.append((i, i + 1, label))
        elif role is Role.LAST:
            start = open_start if open_label is not None else i
            spans.append((start, i + 1, label))
            open_label = None
        elif open_label is None:  # BEGIN, or an INSIDE that cannot continue
            open_start, open_label = i, label
    if open_label is not None:
        spans.append((open_start, len(tags), open_label))
    return spans


def fast_spans(tags: Sequence[str], scheme: Scheme | str) -> list[tuple[int, int, str]] | None:
    """Spans ``(start, end, label)`` of a valid tag sequence, by start; ``None`` when a tag is unknown or a
    transition is not allowed.

    The one-pass decoder for bulk reading: on a valid sequence it equals :func:`tags_to_spans` (as
    tuples); on anything else it declines, and the caller falls back to :func:`validate_tags`,
    :func:`repair_tags` and :func:`tags_to_spans`. A tag is checked for its prefix and a non-empty label
    only (a label containing whitespace passes), so known-tag checks stay with :func:`validate_tags`.
    """
    return fast_decoder(scheme)(tags)


def fast_decoder(scheme: Scheme | str) -> Callable[[Sequence[str]], list[tuple[int, int, str]] | None]:
    """:func:`fast_spans` for one scheme, looked up once (for a reader that decodes many sequences)."""
    decode = _FAST.get(scheme) if isinstance(scheme, str) else None
    return decode if decode is not None else _FAST[scheme_spec(scheme).scheme]


def _fast_bio(
    begin: str, inside: str, run_re: re.Pattern[str], tags: Sequence[str]
) -> list[tuple[int, int, str]] | None:
    """Family ``bio`` with C-level string work: entities are the runs ``B I*`` (``run_re``) in the string
    of tag initials; ``begin`` and ``inside`` are the one-character prefixes."""
    distinct = set(tags)
    for t in distinct:
        if t != OUTSIDE and (len(t) < 3 or t[1] != "-" or t[0] not in (begin, inside)):
            return None
    if len(distinct) == 1 and OUTSIDE in distinct:
        return []
    initials = "".join([t[0] for t in tags])
    spans: list[tuple[int, int, str]] = []
    n_inside = 0
    for m in run_re.finditer(initials):
        s, e = m.span()
        lab = tags[s][2:]
        if e - s > 1:
            if tags[s + 1 : e].count(f"{inside}-{lab}") != e - s - 1:
                return None  # an inside tag of another label within the run
            n_inside += e - s - 1
        spans.append((s, e, lab))
    if n_inside != initials.count(inside):
        return None  # a stray inside tag that no begin tag opened
    return spans


def _fast_iob1(begin: str, inside: str, tags: Sequence[str]) -> list[tuple[int, int, str]] | None:
    """Family ``iob1``; the prefixes come with their dash (``"B-"``)."""
    spans: list[tuple[int, int, str]] = []
    cur: str | None = None
    start = 0
    for i, t in enumerate(tags):
        if t == OUTSIDE:
            if cur is not None:
                spans.append((start, i, cur))
                cur = None
            continue
        pre, lab = t[:2], t[2:]
        if not lab:
            return None
        if pre == inside:
            if cur != lab:
                if cur is not None:
                    spans.append((start, i, cur))
                cur, start = lab, i
        elif pre == begin:  # only separates two adjacent entities of the same label
            if cur != lab:
                return None
            spans.append((start, i, cur))
            start = i
        else:
            return None
    if cur is not None:
        spans.append((start, len(tags), cur))
    return spans


def _fast_bioes(
    begin: str, inside: str, last: str, single: str, tags: Sequence[str]
) -> list[tuple[int, int, str]] | None:
    """Family ``bioes``; the prefixes come with their dash (``"B-"``)."""
    spans: list[tuple[int, int, str]] = []
    cur: str | None = None
    start = 0
    for i, t in enumerate(tags):
        if t == OUTSIDE:
            if cur is not None:
                return None
            continue
        pre, lab = t[:2], t[2:]
        if not lab:
            return None
        if pre == begin:
            if cur is not None:
                return None
            cur, start = lab, i
        elif pre == inside:
            if cur != lab:
                return None
        elif pre == last:
            if cur != lab:
                return None
            spans.append((start, i + 1, lab))
            cur = None
        elif pre == single:
            if cur is not None:
                return None
            spans.append((i, i + 1, lab))
        else:
            return None
    return None if cur is not None else spans


def _fast_decoder(spec: SchemeSpec) -> Callable[[Sequence[str]], list[tuple[int, int, str]] | None]:
    """:func:`fast_spans` for one scheme, its prefixes bound from the scheme's table."""
    if any(len(prefix) != 1 for prefix in spec.prefixes):
        raise ValueError(f"the fast decoder reads one-character prefixes, {spec.scheme.value} has others")
    begin, inside = spec.prefix_for(Role.BEGIN), spec.prefix_for(Role.INSIDE)
    if spec.family == "bio":
        run_re = re.compile(f"{re.escape(begin)}{re.escape(inside)}*")
        return partial(_fast_bio, begin, inside, run_re)
    if spec.family == "iob1":
        return partial(_fast_iob1, f"{begin}-", f"{inside}-")
    last, single = spec.prefix_for(Role.LAST), spec.prefix_for(Role.SINGLE)
    return partial(_fast_bioes, f"{begin}-", f"{inside}-", f"{last}-", f"{single}-")


_FAST = {scheme: _fast_decoder(spec) for scheme, spec in _SPECS.items()}


def spread_tag(tag: str, n: int, scheme: Scheme | str) -> list[str]:
    """Tags for the ``n`` characters of one token tagged ``tag`` (a CoNLL token of several characters).

    The token's prefix is read by its letter as in BIOES: ``B-X`` opens the span on the first character,
    ``E-X`` closes it on the last, ``S-X`` becomes ``B-X ... E-X``; the characters in between get the
    inside prefix of ``scheme`` (``M`` in BMES, ``I`` otherwise). Any other tag (``O``, ``I-X``, ``M-X``,
    one that is not ``P-LABEL``) is repeated. No tag is validated here.
    """
    if n == 1 or tag == OUTSIDE or len(tag) < 2 or tag[1] != "-":
        return [tag] * n
    role = _SPECS[Scheme.BIOES].prefixes.get(tag[0])
    lab = tag[2:]
    inside = f"{scheme_spec(scheme).prefix_for(Role.INSIDE)}-{lab}"
    if role is Role.BEGIN:
        return [tag] + [inside] * (n - 1)
    if role is Role.LAST:
        return [inside] * (n - 1) + [tag]
    if role is Role.SINGLE:
        return [f"B-{lab}"] + [inside] * (n - 2) + [f"E-{lab}"]
    return [tag] * n


def labels_of(tags: Sequence[str]) -> list[str]:
    """The entity labels of ``tags`` in order of first appearance, each once (``O`` carries none).

    Read leniently (the label is what follows the first ``-``; a tag without one is skipped), so it
    works on any tag list, such as a model's output layer.
    """
    seen: dict[str, None] = {}
    for t in tags:
        if t != OUTSIDE and "-" in t:
            seen.setdefault(t.split("-", 1)[1], None)
    return list(seen)


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
    f_role = f_role or OUTSIDE  # pseudo-roles: START, END and OUTSIDE next to the Role members
    t_role = t_role or OUTSIDE
    same = f_label is not None and f_label == t_label
    if spec.family == "bio":
        return any(
            [
                # any tag may end the sequence
                t_role == END,
                # O and B-x may follow anything (START included)
                t_role in (OUTSIDE, Role.BEGIN),
                # I-x may only continue B-x or I-x of the same label
                t_role == Role.INSIDE and f_role in (Role.BEGIN, Role.INSIDE) and same,
            ]
        )
    if spec.family == "iob1":
        return any(
            [
                # any tag may end the sequence
                t_role == END,
                # O and I-x may follow anything (an I-x after another label starts a new entity)
                t_role in (OUTSIDE, Role.INSIDE),
                # B-x only separates two adjacent entities of the same label
                t_role == Role.BEGIN and f_role in (Role.BEGIN, Role.INSIDE) and same,
            ]
        )
    # family "bioes": BIOES and BMES (I plays the role of M)
    return any(
        [
            # only O, E-x and S-x close cleanly, so only they may end the sequence
            t_role == END and f_role in (OUTSIDE, Role.LAST, Role.SINGLE),
            # O, B-x and S-x may start the sequence or follow O, E-x, S-x
            t_role in (OUTSIDE, Role.BEGIN, Role.SINGLE)
            and f_role in (START, OUTSIDE, Role.LAST, Role.SINGLE),
            # I-x and E-x may only follow B-x or I-x of the same label
            t_role in (Role.INSIDE, Role.LAST) and f_role in (Role.BEGIN, Role.INSIDE) and same,
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
    for i, (old, new) in enumerate(zip(tags, repaired, strict=True)):
        if old != new:
            why = "; ".join(reasons.get(i, [])) or "to keep the neighbouring tags consistent"
            warnings.append(TagProblem(i, old, "repaired", f"position {i}: {old} -> {new} ({why})"))
    return repaired, warnings


# ----------------------------------------------------------------------------------------------
# Overlapping spans: what a tag sequence can hold
# ----------------------------------------------------------------------------------------------
_Span = tuple[int, int, str]


def _reason(dropped: _Span, kept: _Span) -> str:
    if dropped[:2] == kept[:2]:
        return "same_span"
    if kept[0] <= dropped[0] and dropped[1] <= kept[1]:
        return "nested"
    return "crossing"


def resolve_overlaps(spans: list[_Span]) -> tuple[list[_Span], list[tuple[_Span, _Span, str]]]:
    """Split ``(start, end, label)`` ``spans`` (in the record's order, no exact duplicates) into the kept
    spans (sorted) and the dropped ones as ``(dropped, kept span it overlaps, reason)`` in the record's
    order. The rules (see :mod:`ner_core.data.formats.overlaps`, which applies them at ingest): longer
    spans first, then earlier starts, then the record's order; each span is kept unless it overlaps a span
    kept before it; the reason is ``nested`` (inside the kept one), ``crossing`` or ``same_span``."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0] - spans[i][1], spans[i][0], i))
    kept: list[_Span] = []
    dropped: dict[int, tuple[_Span, _Span, str]] = {}
    for i in order:
        s, e, _lab = span = spans[i]
        blocker = next((k for k in kept if k[0] < e and s < k[1]), None)
        if blocker is None:
            kept.append(span)
        else:
            dropped[i] = (span, blocker, _reason(span, blocker))
    return sorted(kept), [dropped[i] for i in sorted(dropped)]


def _key(e: Entity) -> tuple[int, int, str]:
    return (e.start, e.end, e.label)


def _crossing_sorted(keys: list[tuple[int, int, str]]) -> bool:
    end = -1
    for s, e, _lab in keys:
        if s < end:
            return True
        end = max(end, e)
    return False


def has_overlaps(entities: Iterable[Entity]) -> bool:
    """Whether two of ``entities`` share a character (an exact duplicate does not count)."""
    return _crossing_sorted(sorted({_key(e) for e in entities}))


def outermost(entities: Iterable[Entity]) -> list[Entity]:
    """A flat subset of ``entities`` by the ingest's rules (:func:`resolve_overlaps`), what a tag sequence
    (:func:`spans_to_tags`) can hold: of a nested pair
    the outer, of crossing spans the longer (the earlier when as long), of one span with two labels the
    first listed; exact duplicates count once. Sorted by ``(start, end, label)``.

    On entities that do not overlap it returns them all (sorted), so a CRF consumer that calls it first
    sees flat data exactly as before; the Entity objects are the given ones.
    """
    first: dict[tuple[int, int, str], Entity] = {}
    for e in entities:
        first.setdefault(_key(e), e)
    keys = sorted(first)
    if not _crossing_sorted(keys):
        return [first[k] for k in keys]
    kept, _dropped = resolve_overlaps(list(first))  # the record's order decides same-span ties
    return [first[k] for k in kept]
