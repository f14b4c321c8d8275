"""Metrics: hand-computed cases, error kinds, seqeval agreement, accuracy definitions."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ner_core.documents import Document, Entity
from ner_core.metrics import (
    ERROR_KINDS,
    SUMMARY_FIELDS,
    ErrorCounts,
    EvaluationReport,
    char_accuracy,
    classify_errors,
    entity_prf,
    evaluate,
    prf,
    sentence_accuracy,
    seqeval_prf,
)
from ner_core.schemes import spans_to_tags


def E(start: int, end: int, label: str) -> Entity:
    return Entity(start=start, end=end, label=label)


# ---------------------------------------------------------------------------------------------
# A hand-built case with known numbers
#   A "张三在北京工作": perfect
#   B "李四加入ABC资本": PER predicted one character short (boundary), ORG right
#   C "余额宝收益下降": FIN predicted as LOC (type)
#   D "今天天气不错": no gold, ORG predicted (spurious)
# gold 5 (PER 2, LOC 1, ORG 1, FIN 1), predicted 6 (PER 2, LOC 2, ORG 2), correct 3
# ---------------------------------------------------------------------------------------------
GOLD = [
    Document(doc_id="A", text="张三在北京工作", entities=[E(0, 2, "PER"), E(3, 5, "LOC")]),
    Document(doc_id="B", text="李四加入ABC资本", entities=[E(0, 2, "PER"), E(4, 9, "ORG")]),
    Document(doc_id="C", text="余额宝收益下降", entities=[E(0, 3, "FIN")]),
    Document(doc_id="D", text="今天天气不错", entities=[]),
]
PRED = [
    [E(0, 2, "PER"), E(3, 5, "LOC")],
    [E(0, 1, "PER"), E(4, 9, "ORG")],
    [E(0, 3, "LOC")],
    [E(0, 2, "ORG")],
]


@pytest.fixture(scope="module")
def report() -> EvaluationReport:
    return evaluate(GOLD, PRED, scheme="BIOES")


def test_hand_built_entity_scores(report):
    assert report.n_sentences == 4
    assert report.n_chars == 7 + 9 + 7 + 6
    assert (report.n_gold, report.n_pred, report.n_correct) == (5, 6, 3)
    assert report.precision == pytest.approx(3 / 6)
    assert report.recall == pytest.approx(3 / 5)
    assert report.f1 == pytest.approx(2 * 0.5 * 0.6 / 1.1)
    per = {t.label: t for t in report.per_type}
    assert [t.label for t in report.per_type] == ["FIN", "LOC", "ORG", "PER"]
    assert (per["PER"].precision, per["PER"].recall, per["PER"].f1) == (0.5, 0.5, 0.5)
    assert (per["LOC"].precision, per["LOC"].recall) == (0.5, 1.0)
    assert per["LOC"].f1 == pytest.approx(2 / 3)
    assert (per["ORG"].support, per["ORG"].predicted, per["ORG"].correct) == (1, 2, 1)
    # nothing predicted for FIN: precision 0 by convention, F1 0
    assert (per["FIN"].precision, per["FIN"].recall, per["FIN"].f1) == (0.0, 0.0, 0.0)
    assert (per["FIN"].support, per["FIN"].predicted) == (1, 0)
    assert report.macro_precision == pytest.approx((0.5 + 0.5 + 0.5 + 0.0) / 4)
    assert report.macro_recall == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert report.macro_f1 == pytest.approx((0.5 + 2 / 3 + 2 / 3 + 0) / 4)


def test_hand_built_char_and_sentence_accuracy_depend_on_scheme(report):
    # BIOES: B loses 2 (B-PER vs S-PER, E-PER vs O), C loses 3, D loses 2 -> 22 of 29
    assert report.char_accuracy == pytest.approx(22 / 29)
    assert report.sentence_accuracy == pytest.approx(1 / 4)
    # BIO: in B only the second character differs (I-PER vs O) -> 23 of 29
    bio = evaluate(GOLD, PRED, scheme="BIO")
    assert bio.scheme == "BIO" and report.scheme == "BIOES"
    assert bio.char_accuracy == pytest.approx(23 / 29)
    assert bio.f1 == report.f1


def test_hand_built_errors(report):
    assert report.errors == {
        "FIN": {"boundary": 0, "type": 1, "boundary+type": 0, "missed": 0, "spurious": 0},
        "LOC": {"boundary": 0, "type": 0, "boundary+type": 0, "missed": 0, "spurious": 0},
        "ORG": {"boundary": 0, "type": 0, "boundary+type": 0, "missed": 0, "spurious": 1},
        "PER": {"boundary": 1, "type": 0, "boundary+type": 0, "missed": 0, "spurious": 0},
    }
    assert [(s.doc_id, s.kinds) for s in report.error_sentences] == [
        ("B", ["boundary"]),
        ("C", ["type"]),
        ("D", ["spurious"]),
    ]
    assert report.error_sentences[0].pred == [E(0, 1, "PER"), E(4, 9, "ORG")]
    capped = evaluate(GOLD, PRED, max_error_sentences=1)
    assert [s.doc_id for s in capped.error_sentences] == ["B"]
    assert capped.errors == report.errors  # the cap limits examples, not counts


def test_summary_and_markdown(report):
    s = report.summary()
    assert s["f1"] == report.f1 and s["n_sentences"] == 4
    assert s["PER.precision"] == 0.5 and s["FIN.support"] == 1
    assert s["errors.type"] == 1 and s["errors.missed"] == 0 and s["errors.spurious"] == 1
    assert all(isinstance(v, (int, float)) for v in s.values())
    md = report.to_markdown(max_error_sentences=2)
    assert "| entity F1 (micro, strict) | 0.5455 |" in md
    assert "| character accuracy | 0.7586 |" in md
    assert "| PER | 0.5000 | 0.5000 | 0.5000 | 2 | 2 | 1 |" in md
    assert "(2 of 3 shown)" in md and "`C`" in md and "`D`" not in md
    assert "「李」PER [0, 1)" in md
    with pytest.raises(ValueError, match="max_error_sentences"):
        report.to_markdown(-1)
    # the report survives a JSON round trip (it is stored as JSON)
    again = EvaluationReport.model_validate_json(report.model_dump_json())
    assert again == report


def test_the_summary_figures_are_the_reports_number_fields_listed_once(report):
    """summary() and flows.contracts.EvaluateSummary come from one list, the report's int and float fields,
    with the keys and order they always had."""
    from flows.contracts import EvaluateSummary

    figures = ["n_sentences", "n_chars", "char_accuracy", "sentence_accuracy", "precision", "recall", "f1",
               "macro_precision", "macro_recall", "macro_f1", "n_gold", "n_pred", "n_correct"]  # fmt: skip
    assert list(SUMMARY_FIELDS) == figures
    assert list(report.summary())[: len(figures)] == figures
    assert list(EvaluateSummary.model_fields) == ["eval_id", *figures, "markdown", "per_type"]
    for name in figures:
        assert EvaluateSummary.model_fields[name].annotation is EvaluationReport.model_fields[name].annotation
    out = EvaluateSummary(eval_id="e", **report.summary(), markdown="# m")
    assert list(json.loads(out.model_dump_json()))[: len(figures) + 1] == ["eval_id", *figures]
    assert "markdown" not in out.model_dump() and out.model_dump()["PER.precision"] == 0.5
    with pytest.raises(ValueError, match="n_correct"):
        EvaluateSummary(eval_id="e", **{k: v for k, v in report.summary().items() if k != "n_correct"})


def test_perfect_prediction_and_nothing_predicted():
    perfect = evaluate(GOLD, [d.entities for d in GOLD])
    assert (perfect.precision, perfect.recall, perfect.f1, perfect.char_accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert perfect.sentence_accuracy == 1.0 and perfect.error_sentences == []
    assert all(v == 0 for c in perfect.errors.values() for v in c.values())
    empty = evaluate(GOLD, [[] for _ in GOLD])
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)
    assert empty.errors["PER"]["missed"] == 2 and empty.errors["FIN"]["missed"] == 1
    assert empty.sentence_accuracy == 0.25  # only D (no entities) is right
    assert empty.char_accuracy == pytest.approx((3 + 2 + 4 + 6) / 29)  # the O positions of A, B, C, D


# ---------------------------------------------------------------------------------------------
# Error kinds, one by one
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ([E(0, 2, "PER")], [E(0, 2, "PER")], []),
        ([E(0, 2, "PER")], [E(0, 3, "PER")], [("PER", "boundary")]),
        ([E(1, 3, "PER")], [E(0, 2, "PER")], [("PER", "boundary")]),
        ([E(0, 2, "PER")], [E(0, 2, "ORG")], [("PER", "type")]),
        ([E(0, 2, "PER")], [E(1, 4, "ORG")], [("PER", "boundary+type")]),
        ([E(0, 2, "PER")], [], [("PER", "missed")]),
        ([E(0, 2, "PER")], [E(2, 4, "PER")], [("PER", "missed"), ("PER", "spurious")]),  # touching only
        ([], [E(3, 5, "LOC")], [("LOC", "spurious")]),
        # one prediction merging two gold entities: one boundary error per gold entity
        ([E(0, 2, "LOC"), E(2, 4, "LOC")], [E(0, 4, "LOC")], [("LOC", "boundary"), ("LOC", "boundary")]),
        # the same span with another label beats an overlapping same-label prediction; the prediction
        # nested inside it is compared with nested gold entities only (none here): spurious
        ([E(0, 3, "ORG")], [E(0, 3, "FIN"), E(1, 2, "ORG")], [("ORG", "type"), ("ORG", "spurious")]),
        ([E(0, 3, "ORG")], [E(0, 3, "FIN"), E(1, 4, "ORG")], [("ORG", "type")]),
        # a correct entity next to an error in the same sentence
        ([E(0, 2, "PER"), E(5, 7, "LOC")], [E(0, 2, "PER"), E(5, 6, "ORG")], [("LOC", "boundary+type")]),
    ],
)
def test_classify_errors(gold, pred, expected):
    assert classify_errors(gold, pred) == expected


def test_error_counts():
    c = ErrorCounts()
    c.add("PER", "missed")
    c.add("PER", "missed", 2)
    c.touch("LOC")
    assert c.as_dict() == {
        "LOC": dict.fromkeys(ERROR_KINDS, 0),
        "PER": {**dict.fromkeys(ERROR_KINDS, 0), "missed": 3},
    }
    assert c.total() == 3 and c.total("missed") == 3 and c.total("type") == 0
    with pytest.raises(ValueError, match="expected an error kind"):
        c.add("PER", "wrong")


# ---------------------------------------------------------------------------------------------
# Character and sentence accuracy definitions
# ---------------------------------------------------------------------------------------------
def test_char_and_sentence_accuracy_definitions():
    gold = [["B-PER", "E-PER", "O"], ["O", "O"], ["S-LOC"]]
    pred = [["B-PER", "E-PER", "O"], ["O", "S-ORG"], ["O"]]
    # O positions count: 3 + 1 + 0 = 4 right out of 6
    assert char_accuracy(gold, pred) == pytest.approx(4 / 6)
    assert sentence_accuracy(gold, pred) == pytest.approx(1 / 3)
    assert char_accuracy([["O", "O"]], [["O", "O"]]) == 1.0
    assert char_accuracy([], []) == 0.0 and sentence_accuracy([], []) == 0.0
    assert sentence_accuracy([[]], [[]]) == 1.0  # an empty sentence has no wrong tag


def test_accuracy_input_checks():
    with pytest.raises(ValueError, match="sentence 1: expected 2 predicted tags .* got 1"):
        char_accuracy([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="got 1 predicted and 2 gold"):
        sentence_accuracy([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="string"):
        char_accuracy(["OO"], [["O", "O"]])


def test_prf_conventions():
    assert prf(0, 0, 5) == (0.0, 0.0, 0.0)  # nothing predicted: precision 0
    assert prf(0, 3, 0) == (0.0, 0.0, 0.0)  # no gold: recall 0
    assert prf(0, 0, 0) == (0.0, 0.0, 0.0)
    assert prf(2, 4, 2) == (0.5, 1.0, pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="correct <= min"):
        prf(3, 2, 5)


def test_evaluate_input_checks():
    with pytest.raises(ValueError, match="one prediction list per gold document"):
        evaluate(GOLD, PRED[:2])
    with pytest.raises(ValueError, match="at least one gold document"):
        evaluate([], [])
    with pytest.raises(ValueError, match="prediction for document 'A'.*overlap"):
        evaluate(GOLD[:1], [[E(0, 2, "PER"), E(1, 3, "LOC")]], outermost_tags=False)
    with pytest.raises(ValueError, match="prediction for document 'D'.*outside the text"):
        evaluate(GOLD[3:], [[E(4, 9, "ORG")]])
    with pytest.raises(ValueError, match="expected a tag scheme"):
        evaluate(GOLD, PRED, scheme="BILOU")
    with pytest.raises(ValueError, match="expected a Document"):
        evaluate([{"text": "x"}], [[]])


# ---------------------------------------------------------------------------------------------
# Agreement with seqeval
# ---------------------------------------------------------------------------------------------
LABELS = ["PER", "ORG", "LOC", "FIN"]


def _random_spans(rng: random.Random, n: int, density: float) -> list[Entity]:
    out, i = [], 0
    while i < n:
        if rng.random() < density:
            length = rng.choice([1, 1, 2, 3, 4])
            end = min(n, i + length)
            out.append(E(i, end, rng.choice(LABELS)))
            i = end
        else:
            i += 1
    return out


def _perturb(rng: random.Random, n: int, gold: list[Entity]) -> list[Entity]:
    """Prediction near the gold: keep, relabel, move a boundary, drop; plus a few random ones."""
    pred: list[Entity] = []
    for e in gold:
        r = rng.random()
        if r < 0.5:
            pred.append(e)
        elif r < 0.65:
            pred.append(E(e.start, e.end, rng.choice(LABELS)))
        elif r < 0.85:
            start = min(n - 1, max(0, e.start + rng.choice([-1, 0, 1])))
            end = min(n, max(start + 1, e.end + rng.choice([-1, 0, 1])))
            pred.append(E(start, end, e.label))
    for e in _random_spans(rng, n, 0.05):
        pred.append(e)
    # drop overlaps (a tagger never predicts them), keeping the earlier span
    pred.sort(key=lambda e: (e.start, e.end))
    clean: list[Entity] = []
    for e in pred:
        if not clean or e.start >= clean[-1].end:
            clean.append(e)
    return clean


def _assert_agree(gold: list[list[Entity]], pred: list[list[Entity]], lengths: list[int], scheme: str):
    gold_tags = [spans_to_tags(n, g, scheme) for n, g in zip(lengths, gold, strict=True)]
    pred_tags = [spans_to_tags(n, p, scheme) for n, p in zip(lengths, pred, strict=True)]
    p, r, f, per = entity_prf(gold, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning spam
        sp, sr, sf, sper = seqeval_prf(gold_tags, pred_tags, scheme)
    assert (p, r, f) == pytest.approx((sp, sr, sf), abs=1e-12)
    macro = sper.pop("macro avg", None)
    assert set(sper) == set(per)
    for label, t in per.items():
        s = sper[label]
        expected = (s["precision"], s["recall"], s["f1"])
        assert (t.precision, t.recall, t.f1) == pytest.approx(expected, abs=1e-12)
        assert t.support == s["support"]
    if per:
        n = len(per)
        assert macro["precision"] == pytest.approx(sum(t.precision for t in per.values()) / n, abs=1e-12)
        assert macro["f1"] == pytest.approx(sum(t.f1 for t in per.values()) / n, abs=1e-12)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES", "BMES", "IOB1"])
def test_agrees_with_seqeval_on_seeded_random_cases(scheme):
    rng = random.Random(1234)
    for _ in range(60):
        lengths = [rng.randint(0, 20) for _ in range(rng.randint(1, 6))]
        gold = [_random_spans(rng, n, rng.choice([0.0, 0.1, 0.3])) for n in lengths]
        pred = [_perturb(rng, n, g) for n, g in zip(lengths, gold, strict=True)]
        _assert_agree(gold, pred, lengths, scheme)


@st.composite
def _batch(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n_sent = draw(st.integers(1, 5))
    rng = random.Random(seed)
    lengths = [rng.randint(0, 15) for _ in range(n_sent)]
    gold = [_random_spans(rng, n, 0.3) for n in lengths]
    pred = [
        _perturb(rng, n, g) if rng.random() < 0.7 else _random_spans(rng, n, 0.3)
        for n, g in zip(lengths, gold, strict=True)
    ]
    return lengths, gold, pred


@settings(max_examples=60, deadline=None)
@given(_batch(), st.sampled_from(["BIO", "BIOES"]))
def test_agrees_with_seqeval_property(batch, scheme):
    lengths, gold, pred = batch
    _assert_agree(gold, pred, lengths, scheme)


def test_seqeval_adjacent_same_label_entities():
    # two adjacent PER entities are two entities in every scheme (IOB1 needs its B- here)
    gold = [[E(0, 2, "PER"), E(2, 3, "PER")]]
    pred = [[E(0, 3, "PER")]]
    for scheme in ("BIO", "BIOES", "BMES", "IOB1"):
        tags_g = [spans_to_tags(3, gold[0], scheme)]
        tags_p = [spans_to_tags(3, pred[0], scheme)]
        assert seqeval_prf(tags_g, tags_p, scheme)[:3] == (0.0, 0.0, 0.0)
    assert entity_prf(gold, pred)[:3] == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# On the bundled corpus (fast: 80 sentences)
# ---------------------------------------------------------------------------------------------
def test_evaluate_on_sample_corpus_test_split():
    path = Path(__file__).resolve().parents[1] / "sample_corpus" / "test.jsonl"
    docs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        d = json.loads(line)
        ents = [Entity(**e) for e in d["entities"]]
        docs.append(Document(doc_id=f"test-{i}", text=d["text"], entities=ents))
    perfect = evaluate(docs, [d.entities for d in docs])
    assert perfect.f1 == 1.0 and perfect.char_accuracy == 1.0
    # drop every FIN prediction: FIN recall 0, others perfect, errors all "missed" FIN
    no_fin = evaluate(docs, [[e for e in d.entities if e.label != "FIN"] for d in docs])
    per = {t.label: t for t in no_fin.per_type}
    assert per["FIN"].recall == 0.0 and per["PER"].f1 == 1.0
    assert no_fin.errors["FIN"]["missed"] == per["FIN"].support > 0
    assert no_fin.precision == 1.0 and no_fin.recall == pytest.approx(1 - per["FIN"].support / no_fin.n_gold)


def test_markdown_keeps_multiline_text_on_one_line():
    doc = Document(doc_id="m", text="张三\n在北京", entities=[E(0, 2, "PER"), E(4, 6, "LOC")])
    md = evaluate([doc], [[E(0, 2, "PER")]]).to_markdown()
    assert "- `m` (missed): 张三 在北京\n" in md
    assert "「北京」LOC [4, 6)" in md
