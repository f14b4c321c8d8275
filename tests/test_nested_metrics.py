"""Metrics with nested entities: entity scores stay exact set matches (and equal the figures of the
metrics module before nesting, frozen in tests/fixtures/metrics-760f796, on every shared flat data set),
outer/nested level scores, error kinds compared per nesting depth, and character/sentence accuracy from
the outermost spans when gold or prediction nest."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from ner_core.documents import Document, Entity
from ner_core.metrics import classify_errors, entity_prf, evaluate, level_prf, nesting_depths

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
# (name, file, the data set's own scheme): a labelled file of each shared data set (SOURCES.md)
SHARED_FILES = [
    ("resume", SHARED / "resume-ner" / "test.char.bmes", "BMES"),
    ("msra", SHARED / "msra" / "msra_test_bio", "BIO"),
    ("peoples-daily", SHARED / "peoples-daily" / "example.dev", "BIO"),
    ("finance", SHARED / "keras-bert-ner-finance" / "dev.txt", "BIO"),
]
N_DOCS = 300  # a few hundred documents a data set keep the comparison quick


def E(s: int, e: int, lab: str) -> Entity:
    return Entity(start=s, end=e, label=lab)


def _old_metrics():
    path = REPO / "tests" / "fixtures" / "metrics-760f796" / "metrics.py"
    spec = importlib.util.spec_from_file_location("metrics_before_nesting", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # pydantic resolves the models' annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


TEXT = "他在北京大学读书，用上海银行信用卡。"  # 北京大学 [2, 6), 上海银行信用卡 [10, 17)
GOLD = Document(
    doc_id="n",
    text=TEXT,
    entities=[E(2, 6, "ORG"), E(2, 4, "LOC"), E(10, 17, "PRODUCT"), E(10, 14, "ORG"), E(10, 12, "LOC")],
)


# ------------------------------------------------------------------------------------------------ levels
def test_nesting_depths_count_the_spans_around_each_span():
    spans = {(10, 17, "PRODUCT"), (10, 14, "ORG"), (10, 12, "LOC"), (10, 12, "GPE"), (2, 6, "ORG")}
    assert nesting_depths(spans) == {
        (2, 6, "ORG"): 0, (10, 17, "PRODUCT"): 0, (10, 14, "ORG"): 1, (10, 12, "LOC"): 2, (10, 12, "GPE"): 2,
    }  # fmt: skip
    assert nesting_depths([(0, 2, "A"), (2, 4, "B")]) == {(0, 2, "A"): 0, (2, 4, "B"): 0}


def test_level_scores_split_outer_and_nested_entities():
    # the model finds both outer spans, one inner span, misses two and adds an inner one gold lacks
    pred = [E(2, 6, "ORG"), E(2, 4, "LOC"), E(10, 17, "PRODUCT"), E(13, 17, "PRODUCT")]
    outer, nested = level_prf([GOLD.entities], [pred])
    assert (outer.label, outer.support, outer.predicted, outer.correct) == ("outer", 2, 2, 2)
    assert (nested.label, nested.support, nested.predicted, nested.correct) == ("nested", 3, 2, 1)
    assert nested.recall == pytest.approx(1 / 3) and nested.precision == 0.5 and outer.f1 == 1.0
    # the counts add up to the overall ones
    p, r, f, per_type = entity_prf([GOLD.entities], [pred])
    assert outer.correct + nested.correct == sum(t.correct for t in per_type.values()) == 3
    # a right inner span counts as nested even when the model missed the span around it
    outer, nested = level_prf([GOLD.entities], [[E(2, 4, "LOC")]])
    assert (outer.predicted, nested.predicted, nested.correct) == (0, 1, 1)


NESTED_ERRORS = [
    # (predictions, errors): gold is GOLD (two outer spans, three nested ones)
    (GOLD.entities, []),
    # outer ORG one character short: a boundary error of the outer ORG, not of the LOC inside it
    ([E(2, 5, "ORG"), E(2, 4, "LOC"), E(10, 17, "PRODUCT"), E(10, 14, "ORG"), E(10, 12, "LOC")],
     [("ORG", "boundary")]),
    # only the outer ORG, one character short: its boundary error; the LOC inside it is missed, not a
    # boundary+type error of a prediction one level up
    ([E(2, 5, "ORG"), *GOLD.entities[2:]], [("LOC", "missed"), ("ORG", "boundary")]),
    # inner ORG predicted as LOC: a type error of the inner ORG; the LOC inside stays right
    ([E(2, 6, "ORG"), E(2, 4, "LOC"), E(10, 17, "PRODUCT"), E(10, 14, "LOC"), E(10, 12, "LOC")],
     [("ORG", "type")]),
    # the inner spans missed: three missed errors, no spurious ones
    ([E(2, 6, "ORG"), E(10, 17, "PRODUCT")], [("LOC", "missed"), ("LOC", "missed"), ("ORG", "missed")]),
    # an inner span where gold has none inside 北京大学's LOC... (大学 as ORG): spurious at depth 1
    ([*GOLD.entities, E(4, 6, "ORG")], [("ORG", "spurious")]),
]  # fmt: skip


@pytest.mark.parametrize("pred, expected", NESTED_ERRORS)
def test_error_kinds_compare_each_gold_span_with_predictions_at_its_depth(pred, expected):
    assert classify_errors(GOLD.entities, pred) == expected


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_scores_nested_sets_and_tags_the_outermost_spans():
    pred = [E(2, 6, "ORG"), E(2, 4, "LOC"), E(10, 17, "PRODUCT"), E(10, 14, "LOC")]
    report = evaluate([GOLD], [pred], "BIOES")
    assert (report.n_gold, report.n_pred, report.n_correct) == (5, 4, 3)
    assert report.precision == 0.75 and report.recall == 0.6
    # both outermost sets are 北京大学 ORG + 上海银行信用卡 PRODUCT: every tag right
    assert report.char_accuracy == 1.0 and report.sentence_accuracy == 1.0
    assert report.tags_from == "outermost spans"
    assert [(t.label, t.support, t.correct) for t in report.levels] == [("outer", 2, 2), ("nested", 3, 1)]
    md = report.to_markdown()
    assert "computed from the outermost spans" in md and "| nested | 0.5000 | 0.3333 |" in md
    summary = report.summary()
    assert summary["levels.nested.support"] == 3 and summary["levels.outer.f1"] == 1.0
    with pytest.raises(ValueError, match="gold document 'n'.*overlap"):
        evaluate([GOLD], [pred], "BIOES", outermost_tags=False)  # the strict check of a flat model
    with pytest.raises(ValueError, match="outside the text"):
        evaluate([GOLD], [[E(2, 6, "ORG"), E(3, 40, "LOC")]], "BIOES")  # an inner span is still checked


def test_a_span_run_says_so_even_on_flat_data():
    flat = Document(doc_id="f", text=TEXT, entities=[E(2, 6, "ORG")])
    plain = evaluate([flat], [[E(2, 6, "ORG")]])
    assert plain.tags_from == "spans" and plain.levels == [] and "levels.outer.f1" not in plain.summary()
    span = evaluate([flat], [[E(2, 6, "ORG")]], outermost_tags=True)
    assert span.tags_from == "outermost spans" and [t.label for t in span.levels] == ["outer", "nested"]
    assert span.model_dump(exclude={"tags_from", "levels"}) == plain.model_dump(
        exclude={"tags_from", "levels"}
    )


# ------------------------------------------------------------------------------------------------ flat data
def _perturbed(doc: Document, labels: list[str], rng: random.Random) -> list[Entity]:
    """A flat prediction near the gold: kept, relabelled, a boundary moved, dropped, plus spurious spans."""
    n = len(doc.text)
    out: list[tuple[int, int, str]] = []
    for e in doc.entities:
        r = rng.random()
        if r < 0.55:
            out.append((e.start, e.end, e.label))
        elif r < 0.65:
            out.append((e.start, e.end, rng.choice(labels)))
        elif r < 0.85:
            s, t = e.start + rng.choice((-1, 0, 1)), e.end + rng.choice((-1, 1))
            if 0 <= s < t <= n:
                out.append((s, t, e.label))
    for _ in range(rng.choice((0, 0, 1, 2))):
        s = rng.randrange(n)
        out.append((s, min(n, s + rng.randint(1, 4)), rng.choice(labels)))
    flat, end = [], -1
    for s, t, lab in sorted(out):  # the old module takes flat predictions only
        if s >= end:
            flat.append(E(s, t, lab))
            end = t
    return flat


@pytest.mark.parametrize("name, path, scheme", SHARED_FILES, ids=[f[0] for f in SHARED_FILES])
def test_flat_figures_equal_those_of_the_metrics_before_nesting(name, path, scheme):
    from ner_core.data.formats import read_file

    if not path.is_file():
        pytest.skip(f"{path} is absent (shared data set {name})")
    parsed = read_file(path)
    docs = [d for d in parsed.documents if d.text][:N_DOCS]
    assert docs and not parsed.errors
    rng = random.Random(25)
    labels = sorted({e.label for d in docs for e in d.entities}) + ["MISC"]
    preds = [_perturbed(d, labels, rng) for d in docs]
    old = _old_metrics()
    for sch in sorted({scheme, "BIOES"}):
        before = old.evaluate(docs, preds, sch)
        now = evaluate(docs, preds, sch)
        assert (
            now.model_dump(exclude={"tags_from", "levels", "confusion", "calibration"}) == before.model_dump()
        )
        assert now.tags_from == "spans" and now.levels == []
        assert 0.2 < now.f1 < 0.95 and now.n_gold > 100  # a real comparison: hits and misses both
        span = evaluate(docs, preds, sch, outermost_tags=True)  # a span run on flat data: same figures
        assert (
            span.model_dump(exclude={"tags_from", "levels", "confusion", "calibration"})
            == before.model_dump()
        )
    gold = [d.entities for d in docs]
    (*figures, per_type), (*old_figures, old_types) = entity_prf(gold, preds), old.entity_prf(gold, preds)
    assert figures == old_figures
    assert {k: v.model_dump() for k, v in per_type.items()} == {
        k: v.model_dump() for k, v in old_types.items()
    }
