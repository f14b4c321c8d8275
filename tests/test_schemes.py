"""Tag schemes: encoding, lenient decoding, validation, repair and allowed transitions."""

from __future__ import annotations

import itertools
import json
import random
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ner_core.documents import Entity
from ner_core.schemes import (
    TRAINING_SCHEMES,
    Role,
    Scheme,
    TagProblem,
    TrainingScheme,
    allowed_transitions,
    convert_tags,
    fast_decoder,
    fast_spans,
    is_transition_allowed,
    labels_of,
    parse_tag,
    repair_tags,
    scheme_spec,
    spans_to_tags,
    spread_tag,
    tag_set,
    tags_to_spans,
    validate_tags,
)

ALL = list(Scheme)


def E(start: int, end: int, label: str) -> Entity:
    return Entity(start=start, end=end, label=label)


# Two adjacent PER entities (2 chars + 1 char), a gap, a 3-char LOC, a 1-char ORG at the very end.
ENTS = [E(0, 2, "PER"), E(2, 3, "PER"), E(5, 8, "LOC"), E(8, 9, "ORG")]
EXPECTED = {
    Scheme.BIO: ["B-PER", "I-PER", "B-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "B-ORG"],
    Scheme.BIOES: ["B-PER", "E-PER", "S-PER", "O", "O", "B-LOC", "I-LOC", "E-LOC", "S-ORG"],
    Scheme.BMES: ["B-PER", "E-PER", "S-PER", "O", "O", "B-LOC", "M-LOC", "E-LOC", "S-ORG"],
    Scheme.IOB1: ["I-PER", "I-PER", "B-PER", "O", "O", "I-LOC", "I-LOC", "I-LOC", "I-ORG"],
}


# ---------------------------------------------------------------- scheme names and tag sets


def test_scheme_values_and_aliases():
    assert [s.value for s in Scheme] == ["BIO", "BIOES", "BMES", "IOB1"]
    assert Scheme("iob2") is Scheme.BIO
    assert Scheme("bioes") is Scheme.BIOES
    with pytest.raises(ValueError, match="expected a tag scheme"):
        tag_set(["PER"], "BILOU")


def test_scheme_is_its_name_as_a_string():
    assert str(Scheme.BIOES) == "BIOES" and f"{Scheme.BMES}" == "BMES" and Scheme.BIO == "BIO"
    assert json.dumps({"scheme": Scheme.IOB1}) == '{"scheme": "IOB1"}'


def test_prefix_roles_are_an_enum():
    assert scheme_spec("BMES").prefixes == {
        "B": Role.BEGIN,
        "M": Role.INSIDE,
        "E": Role.LAST,
        "S": Role.SINGLE,
    }
    assert scheme_spec(Scheme.IOB1).prefix_for(Role.BEGIN) == "B"
    assert scheme_spec("BIO").prefix_for(Role.LAST) is None


class _Trained(BaseModel):
    scheme: TrainingScheme


def test_training_scheme_type():
    assert TRAINING_SCHEMES == (Scheme.BIO, Scheme.BIOES)
    assert _Trained(scheme="BIO").scheme is Scheme.BIO
    assert _Trained(scheme=Scheme.BIOES).scheme is Scheme.BIOES
    assert _Trained(scheme="BIOES").model_dump_json() == '{"scheme":"BIOES"}'
    for bad in (
        "BMES",
        "IOB1",
        "bio",
        "iob2",
        3,
    ):  # the exact training names only, as Literal["BIO", "BIOES"]
        with pytest.raises(ValidationError, match="Input should be 'BIO' or 'BIOES'"):
            _Trained(scheme=bad)
    schema = _Trained.model_json_schema()["properties"]["scheme"]
    assert schema["enum"] == ["BIO", "BIOES"] and schema["type"] == "string"


def test_config_scheme_is_a_training_scheme():
    from ner_core.config import DataConfig, NERConfig

    assert DataConfig().scheme is Scheme.BIOES
    cfg = NERConfig.model_validate({"data": {"scheme": "BIO"}})  # as a saved config.json has it
    assert cfg.data.scheme is Scheme.BIO and json.loads(cfg.to_json())["data"]["scheme"] == "BIO"
    assert NERConfig.model_validate_json(cfg.to_json()) == cfg
    assert cfg.with_overrides({"data.scheme": "BIOES"}).data.scheme is Scheme.BIOES
    with pytest.raises(ValidationError, match="Input should be 'BIO' or 'BIOES'"):
        DataConfig(scheme="BMES")


def test_tag_set_orders():
    assert tag_set(["PER", "LOC"], "BIO") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert tag_set(["PER"], Scheme.BIOES) == ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert tag_set(["PER"], Scheme.BMES) == ["O", "B-PER", "M-PER", "E-PER", "S-PER"]
    assert tag_set(["PER"], Scheme.IOB1) == ["O", "I-PER", "B-PER"]
    # deterministic whatever the input order, duplicates ignored
    assert tag_set(["b", "a", "b"], "BIO") == tag_set(["a", "b"], "BIO")


def test_tag_set_rejects_bad_labels():
    with pytest.raises(ValueError, match="got 'O'"):
        tag_set(["O"], "BIO")
    with pytest.raises(ValueError, match="got ''"):
        tag_set([""], "BIO")
    with pytest.raises(ValueError, match="sequence of labels"):
        tag_set("PER", "BIO")


def test_parse_tag():
    assert parse_tag("O") == ("O", None)
    assert parse_tag("B-PER") == ("B", "PER")
    assert parse_tag("I-GPE-ORG") == ("I", "GPE-ORG")
    assert parse_tag("M-NAME_X") == ("M", "NAME_X")
    for bad in ["", "B", "B-", "-PER", "O-PER", "B PER", "B- X"]:
        with pytest.raises(ValueError, match="expected a tag"):
            parse_tag(bad)
    with pytest.raises(ValueError, match="got int"):
        parse_tag(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- encoding and decoding


@pytest.mark.parametrize("scheme", ALL)
def test_spans_to_tags_every_scheme(scheme):
    assert spans_to_tags(9, ENTS, scheme) == EXPECTED[scheme]
    assert spans_to_tags(9, list(reversed(ENTS)), scheme) == EXPECTED[scheme]  # order of input irrelevant
    assert tags_to_spans(EXPECTED[scheme], scheme) == ENTS
    assert spans_to_tags(0, [], scheme) == []
    assert tags_to_spans([], scheme) == []


def test_iob1_b_only_after_same_label():
    # different labels adjacent: no B needed
    assert spans_to_tags(2, [E(0, 1, "PER"), E(1, 2, "LOC")], "IOB1") == ["I-PER", "I-LOC"]
    assert spans_to_tags(2, [E(0, 1, "PER"), E(1, 2, "PER")], "IOB1") == ["I-PER", "B-PER"]


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_convert_between_every_pair(src, dst):
    assert convert_tags(EXPECTED[src], src, dst) == EXPECTED[dst]


def test_spans_to_tags_errors_name_the_entities():
    with pytest.raises(ValueError, match=r"\[3, 6\) PER lies outside the text \(length 5\)"):
        spans_to_tags(5, [E(3, 6, "PER")], "BIO")
    with pytest.raises(ValueError, match=r"overlap: \[0, 3\) PER and \[2, 4\) LOC"):
        spans_to_tags(5, [E(2, 4, "LOC"), E(0, 3, "PER")], "BIO")
    with pytest.raises(ValueError, match="non-negative int length"):
        spans_to_tags(-1, [], "BIO")
    with pytest.raises(ValueError, match="expected Entity"):
        spans_to_tags(3, [(0, 1, "PER")], "BIO")  # type: ignore[list-item]


@pytest.mark.parametrize(
    "scheme, tags, spans",
    [
        # BIO: a stray I-X starts an entity; a type change ends the previous one
        ("BIO", ["O", "I-PER", "I-PER"], [(1, 3, "PER")]),
        ("BIO", ["B-PER", "I-LOC", "I-LOC"], [(0, 1, "PER"), (1, 3, "LOC")]),
        ("BIO", ["I-PER"], [(0, 1, "PER")]),
        # BIOES: I or E without B starts one; B without E ends at O / at the end
        ("BIOES", ["O", "I-PER", "E-PER"], [(1, 3, "PER")]),
        ("BIOES", ["O", "E-PER", "O"], [(1, 2, "PER")]),
        ("BIOES", ["B-PER", "O", "B-LOC"], [(0, 1, "PER"), (2, 3, "LOC")]),
        ("BIOES", ["B-PER", "I-PER", "S-PER"], [(0, 2, "PER"), (2, 3, "PER")]),
        ("BIOES", ["B-PER", "E-LOC"], [(0, 1, "PER"), (1, 2, "LOC")]),
        ("BIOES", ["B-PER", "B-PER", "E-PER"], [(0, 1, "PER"), (1, 3, "PER")]),
        ("BIOES", ["E-PER", "I-PER"], [(0, 1, "PER"), (1, 2, "PER")]),
        # BMES, same rules with M
        ("BMES", ["M-PER", "M-PER", "E-PER"], [(0, 3, "PER")]),
        ("BMES", ["B-PER", "M-LOC", "E-LOC"], [(0, 1, "PER"), (1, 3, "LOC")]),
        # IOB1: B after O behaves like the start of an entity
        ("IOB1", ["O", "B-PER", "I-PER"], [(1, 3, "PER")]),
        ("IOB1", ["I-PER", "I-LOC"], [(0, 1, "PER"), (1, 2, "LOC")]),
    ],
)
def test_lenient_reading_of_invalid_sequences(scheme, tags, spans):
    assert [(e.start, e.end, e.label) for e in tags_to_spans(tags, scheme)] == spans


def test_tags_to_spans_unknown_tag_names_position():
    with pytest.raises(ValueError, match=r"position 2: tag 'E-PER' has prefix 'E'.* in BIO"):
        tags_to_spans(["O", "B-PER", "E-PER"], "BIO")
    with pytest.raises(ValueError, match="position 0: expected a tag"):
        tags_to_spans(["B"], "BIO")
    with pytest.raises(ValueError, match="sequence of tags"):
        tags_to_spans("BIO", "BIO")
    with pytest.raises(ValueError, match="position 1: expected a tag string .* got list"):
        tags_to_spans(["O", ["B-PER"]], "BIO")  # type: ignore[list-item]


# ---------------------------------------------------------------- the fast decoder

# every prefix of every scheme, two labels, plus malformed and foreign tags
_POOL = ["O", "O"] + [f"{p}-{lab}" for p in "BIMES" for lab in ("A", "B")]
_JUNK = ["X-A", "B-", "I", "B", "BB-X", "O-A", "-A", "I-GPE-ORG"]


def _spans(tags, scheme):
    return [(e.start, e.end, e.label) for e in tags_to_spans(tags, scheme)]


@pytest.mark.parametrize("scheme", ALL)
@pytest.mark.parametrize("pool", ["scheme", "all", "junk"])
def test_fast_spans_equals_tags_to_spans_or_declines(scheme, pool):
    """On a valid sequence fast_spans is tags_to_spans; on any other (unknown tag, transition not
    allowed) it is None. Random sequences from the scheme's own tags, every prefix, and junk tags."""
    rng = random.Random(7)
    tags_pool = {
        "scheme": tag_set(["A", "B"], scheme) + ["O"] * 3,
        "all": _POOL,
        "junk": _POOL + _JUNK,
    }[pool]
    n_valid = n_invalid = 0
    for _ in range(3000):
        tags = [rng.choice(tags_pool) for _ in range(rng.randint(0, 9))]
        fast = fast_spans(tags, scheme)
        if validate_tags(tags, scheme) == []:
            assert fast == _spans(tags, scheme), tags
            n_valid += 1
        else:
            assert fast is None, tags
            n_invalid += 1
    assert n_valid > 50 and n_invalid > 50


@pytest.mark.parametrize("scheme", ALL)
def test_fast_spans_every_short_sequence(scheme):
    tags = tag_set(["A", "B"], scheme)
    for length in range(0, 4):
        for seq in itertools.product(tags, repeat=length):
            t = list(seq)
            expected = _spans(t, scheme) if validate_tags(t, scheme) == [] else None
            assert fast_spans(t, scheme) == expected, t


def test_fast_spans_scheme_names():
    tags = ["B-PER", "I-PER", "O"]
    assert (
        fast_spans(tags, "BIO") == fast_spans(tags, Scheme.BIO) == fast_spans(tags, "iob2") == [(0, 2, "PER")]
    )
    assert fast_spans(tags, "BIOES") is None
    assert fast_decoder("BIO") is fast_decoder(Scheme.BIO) and fast_decoder("bio")(tags) == [(0, 2, "PER")]
    with pytest.raises(ValueError, match="expected a tag scheme"):
        fast_spans(tags, "BILOU")


@pytest.mark.parametrize(
    "tag, n, scheme, expected",
    [
        ("B-X", 3, "BIO", ["B-X", "I-X", "I-X"]),
        ("E-X", 3, "BIOES", ["I-X", "I-X", "E-X"]),
        ("S-X", 3, "BMES", ["B-X", "M-X", "E-X"]),
        ("S-X", 2, "BIOES", ["B-X", "E-X"]),
        ("B-X", 2, "BMES", ["B-X", "M-X"]),
        ("I-X", 3, "BIO", ["I-X", "I-X", "I-X"]),
        ("M-X", 2, "BMES", ["M-X", "M-X"]),
        ("O", 2, "BIO", ["O", "O"]),
        ("S-X", 1, "BIOES", ["S-X"]),
        ("B", 2, "BIO", ["B", "B"]),  # not PREFIX-LABEL: repeated
    ],
)
def test_spread_tag(tag, n, scheme, expected):
    assert spread_tag(tag, n, scheme) == expected


@pytest.mark.parametrize("scheme", ALL)
def test_spread_tag_of_a_valid_token_sequence_stays_valid(scheme):
    """Spreading each tag of a valid sequence over tokens of 1-3 characters gives a valid sequence with
    the same entities, stretched over the characters."""
    rng = random.Random(5)
    for _ in range(300):
        length = rng.randint(1, 8)
        ents, i = [], 0
        while i < length:
            n = rng.randint(1, 3)
            if rng.random() < 0.5 and i + n <= length:
                ents.append(E(i, i + n, rng.choice("AB")))
            i += n
        tokens = spans_to_tags(length, ents, scheme)
        widths = [rng.randint(1, 3) for _ in tokens]
        chars = [t for tag, w in zip(tokens, widths, strict=True) for t in spread_tag(tag, w, scheme)]
        assert validate_tags(chars, scheme) == [], (tokens, widths, chars)
        offsets = [sum(widths[:k]) for k in range(len(widths) + 1)]
        assert _spans(chars, scheme) == [(offsets[e.start], offsets[e.end], e.label) for e in ents]


def test_labels_of():
    assert labels_of(tag_set(["PER", "LOC"], "BIOES")) == ["LOC", "PER"]
    assert labels_of(["O", "B-PER", "I-PER", "S-GPE-ORG", "B-LOC", "E-PER"]) == ["PER", "GPE-ORG", "LOC"]
    assert labels_of(["O"]) == [] and labels_of([]) == []


# ---------------------------------------------------------------- validation and repair


def test_validate_positions_and_messages():
    probs = validate_tags(["O", "O", "B-PER", "O", "O", "O", "O", "I-PER"], "BIO")
    assert probs == [TagProblem(7, "I-PER", "invalid_transition", "position 7: I-PER cannot follow O in BIO")]

    probs = validate_tags(["I-PER", "B-PER", "I-LOC", "X-PER", "I-PER"], "BIO")
    assert [(p.position, p.code) for p in probs] == [
        (0, "invalid_transition"),
        (2, "invalid_transition"),
        (3, "unknown_tag"),
    ]  # the step X-PER -> I-PER is not checked: X-PER is unknown
    assert probs[0].message == "position 0: I-PER cannot start a sequence in BIO"
    assert probs[1].message == "position 2: I-LOC cannot follow B-PER in BIO"
    assert "position 3: tag 'X-PER' has prefix 'X'" in probs[2].message

    probs = validate_tags(["B-PER", "E-PER", "I-PER", "O", "B-LOC"], "BIOES")
    assert [(p.position, p.message) for p in probs] == [
        (2, "position 2: I-PER cannot follow E-PER in BIOES"),
        (3, "position 3: O cannot follow I-PER in BIOES"),
        (4, "position 4: B-LOC cannot end a sequence in BIOES"),
    ]
    assert validate_tags(["O", "B-X", "M-X", "E-X", "S-Y"], "BMES") == []
    assert validate_tags(["O", "B-X"], "IOB1")[0].message == "position 1: B-X cannot follow O in IOB1"
    assert validate_tags([], "BIO") == []


def test_validate_with_label_set():
    probs = validate_tags(["B-PER", "B-FOO"], "BIO", labels={"PER", "LOC"})
    assert len(probs) == 1 and probs[0].position == 1 and probs[0].code == "unknown_tag"
    assert "'FOO'" in probs[0].message


@pytest.mark.parametrize(
    "scheme, tags, repaired, positions",
    [
        ("BIO", ["O", "I-PER", "I-PER", "O"], ["O", "B-PER", "I-PER", "O"], [1]),
        ("BIO", ["B-PER", "I-LOC"], ["B-PER", "B-LOC"], [1]),
        ("BIOES", ["B-PER", "I-PER", "O"], ["B-PER", "E-PER", "O"], [1]),
        ("BIOES", ["O", "B-PER"], ["O", "S-PER"], [1]),
        ("BIOES", ["O", "I-PER", "E-PER"], ["O", "B-PER", "E-PER"], [1]),
        ("BMES", ["M-PER", "M-PER"], ["B-PER", "E-PER"], [0, 1]),
        ("IOB1", ["O", "B-PER"], ["O", "I-PER"], [1]),
    ],
)
def test_repair(scheme, tags, repaired, positions):
    out, warnings = repair_tags(tags, scheme)
    assert out == repaired
    assert [w.position for w in warnings] == positions
    assert all(w.code == "repaired" for w in warnings)
    assert validate_tags(out, scheme) == []
    assert tags_to_spans(out, scheme) == tags_to_spans(tags, scheme)


def test_repair_message_and_unknown():
    _, warnings = repair_tags(["O", "I-PER"], "BIO")
    assert warnings[0].message == "position 1: I-PER -> B-PER (I-PER cannot follow O in BIO)"
    with pytest.raises(ValueError, match="cannot repair unknown tags: position 1"):
        repair_tags(["O", "Q-PER"], "BIO")
    for scheme in ALL:
        assert repair_tags(EXPECTED[scheme], scheme) == (EXPECTED[scheme], [])


# ---------------------------------------------------------------- transitions, brute force


def test_is_transition_allowed_examples():
    assert not is_transition_allowed("BIO", "O", "I-PER")
    assert not is_transition_allowed("BIO", "START", "I-PER")
    assert not is_transition_allowed("BIO", "B-PER", "I-LOC")
    assert is_transition_allowed("BIO", "B-PER", "I-PER")
    assert not is_transition_allowed("BIOES", "E-PER", "I-PER")
    assert not is_transition_allowed("BIOES", "B-PER", "END")
    assert is_transition_allowed("BMES", "M-PER", "E-PER")
    assert is_transition_allowed("IOB1", "I-PER", "B-PER")
    assert not is_transition_allowed("IOB1", "I-LOC", "B-PER")
    assert not is_transition_allowed("BIO", "END", "O")
    assert not is_transition_allowed("BIO", "O", "START")
    with pytest.raises(ValueError, match="prefix 'S'"):
        is_transition_allowed("BIO", "O", "S-PER")


@pytest.mark.parametrize("scheme", ALL)
def test_brute_force_valid_iff_allowed_iff_canonical(scheme):
    """Over every sequence of length <= 4 of a 2-label tag set: validate_tags finds nothing exactly when
    every step (START and END included) is allowed, exactly when the sequence is the canonical encoding
    of its own lenient reading; repair always yields a valid sequence with the same spans."""
    tags = tag_set(["A", "B"], scheme)
    start, trans, end = allowed_transitions(tags, scheme)
    k = len(tags)
    assert start.shape == (k,) and trans.shape == (k, k) and end.shape == (k,)
    assert start.dtype == np.bool_ and trans.dtype == np.bool_
    n_valid = 0
    for length in range(1, 5):
        for seq in itertools.product(range(k), repeat=length):
            steps_ok = bool(start[seq[0]] and end[seq[-1]] and all(trans[a, b] for a, b in pairwise(seq)))
            t = [tags[i] for i in seq]
            valid = validate_tags(t, scheme) == []
            assert valid == steps_ok, t
            spans = tags_to_spans(t, scheme)
            canonical = spans_to_tags(length, spans, scheme)
            assert (canonical == t) == valid, t
            fixed, warnings = repair_tags(t, scheme)
            assert fixed == canonical and validate_tags(fixed, scheme) == []
            assert len(warnings) == sum(a != b for a, b in zip(t, fixed, strict=True))
            n_valid += valid
    assert n_valid > 0


def test_allowed_transitions_input_checks():
    with pytest.raises(ValueError, match="non-empty"):
        allowed_transitions([], "BIO")
    with pytest.raises(ValueError, match="distinct"):
        allowed_transitions(["O", "O"], "BIO")


# ---------------------------------------------------------------- hypothesis round trips

LABELS = ["PER", "LOC", "ORG-X", "a_b"]


@st.composite
def docs(draw):
    """A length and non-overlapping entities over it (adjacent entities of the same label included)."""
    length = draw(st.integers(0, 30))
    cuts = sorted(draw(st.sets(st.integers(0, length), max_size=12)))
    ents = []
    for a, b in pairwise(cuts):
        if draw(st.booleans()):
            ents.append(E(a, b, draw(st.sampled_from(LABELS))))
    return length, ents


@settings(max_examples=300, deadline=None)
@given(docs(), st.sampled_from(ALL), st.sampled_from(ALL))
def test_roundtrip_and_conversion(doc, scheme, other):
    length, ents = doc
    tags = spans_to_tags(length, ents, scheme)
    assert len(tags) == length
    assert tags_to_spans(tags, scheme) == ents
    assert validate_tags(tags, scheme) == []
    converted = convert_tags(tags, scheme, other)
    assert tags_to_spans(converted, other) == ents
    assert convert_tags(converted, other, scheme) == tags


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(tag_set(["P", "L"], "BIOES")), max_size=12), st.sampled_from(["BIOES", "BMES"])
)
def test_repair_any_sequence_is_valid_and_keeps_spans(raw, scheme):
    tags = [t.replace("I-", "M-") if scheme == "BMES" else t for t in raw]
    fixed, warnings = repair_tags(tags, scheme)
    assert validate_tags(fixed, scheme) == []
    assert tags_to_spans(fixed, scheme) == tags_to_spans(tags, scheme)
    assert [w.position for w in warnings] == [
        i for i, (a, b) in enumerate(zip(tags, fixed, strict=True)) if a != b
    ]
