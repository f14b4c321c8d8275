"""Calibrated entity confidence (issue 27 part 4): reliability bins, ECE, the threshold curve and confusion
cells by hand; the temperature's arithmetic against brute force; the fit on a tiny model (NLL down,
predictions unchanged); the span path's logits; ``calibration.json`` (round trip, refusals); the tagger, the
evaluation and the end-of-training record using it; old reports and model directories as before."""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SAMPLE

LABELS = ["FIN", "LOC", "ORG", "PER"]


# ----------------------------------------------------------------------------------------- metrics by hand
def test_reliability_bins_and_ece_by_hand():
    from ner_core.metrics import expected_calibration_error, reliability_bins

    conf = [0.05, 0.15, 0.15, 0.3, 0.95, 1.0]
    correct = [False, True, False, False, True, True]
    bins = reliability_bins(conf, correct)
    assert len(bins) == 10 and [b.n for b in bins] == [1, 1 + 1, 0, 1, 0, 0, 0, 0, 0, 2]
    assert (bins[0].lo, bins[0].hi, bins[9].lo, bins[9].hi) == (0.0, 0.1, 0.9, 1.0)
    assert bins[1].mean_confidence == pytest.approx(0.15) and bins[1].accuracy == 0.5
    assert bins[9].mean_confidence == pytest.approx(0.975) and bins[9].accuracy == 1.0  # 1.0 in the last bin
    assert (bins[2].n, bins[2].mean_confidence, bins[2].accuracy) == (0, 0.0, 0.0)  # empty, still listed
    # (1 * 0.05 + 2 * 0.35 + 1 * 0.3 + 2 * 0.025) / 6
    assert expected_calibration_error(conf, correct) == pytest.approx(1.1 / 6)
    assert expected_calibration_error([], []) == 0.0
    for bad in (1.2, -0.1, float("nan")):
        with pytest.raises(ValueError, match="confidences in \\[0, 1\\]"):
            reliability_bins([0.5, bad], [True, False])
    with pytest.raises(ValueError, match="one correctness flag per confidence"):
        reliability_bins([0.5], [True, False])


def test_threshold_curve_by_hand():
    from ner_core.metrics import THRESHOLDS, threshold_curve

    curve = threshold_curve([0.9, 0.6, 0.3, 0.02], [True, False, True, False], n_gold=4)
    assert [p.threshold for p in curve] == list(THRESHOLDS) and len(curve) == 20
    at = {p.threshold: p for p in curve}
    assert (at[0.0].n_kept, at[0.0].precision, at[0.0].recall) == (4, 0.5, 0.5)
    assert (at[0.5].n_kept, at[0.5].precision, at[0.5].recall) == (2, 0.5, 0.25)
    assert (at[0.9].n_kept, at[0.9].precision, at[0.9].recall) == (1, 1.0, 0.25)
    assert at[0.9].f1 == pytest.approx(0.4)
    assert (at[0.95].n_kept, at[0.95].precision, at[0.95].f1) == (0, 0.0, 0.0)


def test_confusion_cells_by_hand_and_in_every_evaluation():
    from ner_core.documents import Document, Entity
    from ner_core.metrics import confusion_cells, evaluate

    def E(s, e, lab):
        return Entity(start=s, end=e, label=lab)

    gold = [[E(0, 2, "PER"), E(3, 5, "LOC"), E(6, 8, "ORG")], [E(0, 2, "LOC"), E(0, 2, "ORG")]]
    pred = [[E(0, 2, "PER"), E(3, 5, "ORG"), E(9, 10, "LOC"), E(0, 2, "PER")], [E(0, 2, "ORG")]]
    cells = {(c.gold, c.pred): c.n for c in confusion_cells(gold, pred)}
    # same span -> (gold, pred); a gold span alone -> (gold, O); a predicted one alone -> (O, pred); the
    # second document's span has two gold labels: ORG pairs with itself, LOC is left over
    want = {("PER", "PER"): 1, ("LOC", "ORG"): 1, ("ORG", "O"): 1, ("O", "LOC"): 1}
    assert cells == {**want, ("ORG", "ORG"): 1, ("LOC", "O"): 1}
    docs = [Document(doc_id="a", text="张三在北京的中国银行"), Document(doc_id="b", text="北京")]
    docs = [d.model_copy(update={"entities": g}) for d, g in zip(docs, gold, strict=True)]
    report = evaluate(docs, pred, outermost_tags=True)
    assert {(c.gold, c.pred): c.n for c in report.confusion} == cells
    assert report.calibration is None  # no confidences given


def test_an_old_evaluation_json_still_loads_and_a_new_one_round_trips():
    from ner_core.metrics import EvaluationReport, calibration_report

    old = Path(__file__).parent / "fixtures/main-0b85e1b/runs/20261204-100000-sample-bigru-aaaaaa"
    report = EvaluationReport.model_validate_json((old / "eval-sample-test.json").read_text(encoding="utf-8"))
    assert report.calibration is None and report.confusion == [] and report.n_sentences == 80
    assert "Calibration" not in report.to_markdown()
    report.calibration = calibration_report(
        [0.9, 0.8, 0.4],
        [0.7, 0.6, 0.3],
        [True, False, True],
        4,
        temperature=1.7,
        fitted_on="dev",
        precision="fp32",
    )
    again = EvaluationReport.model_validate_json(report.model_dump_json())
    assert again.calibration == report.calibration and len(again.calibration.bins_raw) == 10
    md = again.to_markdown()
    assert "### Calibration" in md and "temperature 1.7 (fitted on: dev)" in md and "| [0.9, 1.0] | 1 |" in md


# ----------------------------------------------------------------------------------------- the arithmetic
def _bioes_crf(seed: int = 0):
    from ner_core.model.crf import ConstrainedCRF
    from ner_core.schemes import allowed_transitions

    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    crf = ConstrainedCRF(len(tags), allowed_transitions(tags, "BIOES"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (crf.crf.start_transitions, crf.crf.transitions, crf.crf.end_transitions):
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    return crf, torch.randn(2, 4, len(tags), generator=g) * 3


def _brute_marginals(crf, em, n: int, t: float) -> np.ndarray:
    """p(y_i = k) by enumerating every allowed path of the first ``n`` steps, scores divided by ``t``."""
    K = crf.num_tags
    c = crf.crf
    start, trans, end = (
        x.detach().double().numpy() for x in (c.start_transitions, c.transitions, c.end_transitions)
    )
    ok_s, ok_t, ok_e = (m.numpy() for m in (crf.allowed_start, crf.allowed_trans, crf.allowed_end))
    e = em.double().numpy()
    weights = np.zeros((n, K))
    for path in itertools.product(range(K), repeat=n):
        if (
            not ok_s[path[0]]
            or not ok_e[path[-1]]
            or not all(ok_t[a, b] for a, b in itertools.pairwise(path))
        ):
            continue
        score = start[path[0]] + end[path[-1]] + sum(e[i, k] for i, k in enumerate(path))
        score += sum(trans[a, b] for a, b in itertools.pairwise(path))
        w = math.exp(score / t)
        for i, k in enumerate(path):
            weights[i, k] += w
    return weights / weights[0].sum()


@pytest.mark.parametrize("t", [0.4, 1.0, 2.5])
def test_scaled_marginals_equal_brute_force_over_every_allowed_path(t, one_thread):
    from ner_core.inference.temperature import scaled_crf, scaled_marginals

    crf, em = _bioes_crf()
    mask = torch.tensor([[True] * 4, [True, True, True, False]])  # a padded row too
    got = scaled_marginals(crf, em, mask, t)
    torch_got = scaled_crf(crf, t).marginals(em / t, mask, backend="torch")
    for row, n in ((0, 4), (1, 3)):
        want = _brute_marginals(crf, em[row], n, t)
        assert np.allclose(got[row, :n].numpy(), want, atol=1e-5)
        assert np.allclose(torch_got[row, :n].numpy(), want, atol=1e-5)
    assert bool((got[1, 3] == 0).all())  # padding stays 0
    # the scaled CRF keeps the masks: a forbidden move stays forbidden (O -> I-X has probability 0)
    assert scaled_crf(crf, t).allowed_trans.equal(crf.allowed_trans)
    # and the Viterbi path of the scaled scores is the raw one
    assert scaled_crf(crf, t).viterbi_tensor(em / t, mask)[0].equal(crf.viterbi_tensor(em, mask)[0])


def test_sigmoid_at_a_temperature_is_stable_and_temperatures_are_checked():
    from ner_core.inference.temperature import sigmoid_at

    got = sigmoid_at([-800.0, -2.0, 0.0, 2.0, 800.0, math.inf], 2.0)
    assert got.tolist() == pytest.approx([0.0, 1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-1)), 1.0, 1.0])
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e6, True):
        with pytest.raises(ValueError, match="temperature"):
            sigmoid_at([1.0], bad)


def test_the_fit_finds_a_known_temperature_of_span_logits():
    """Correctness drawn with probability sigmoid(z / 2.5): the fit recovers T close to 2.5 and lowers the
    NLL and the ECE of the raw sigmoid(z)."""
    from ner_core.inference.calibration import SpanConfidences, fit_temperature

    rng = np.random.default_rng(7)
    z = rng.normal(2.0, 4.0, 6000)
    correct = rng.random(6000) < 1 / (1 + np.exp(-z / 2.5))
    fit = fit_temperature(SpanConfidences(z), correct)
    assert fit.fitted and fit.temperature == pytest.approx(2.5, rel=0.12)
    assert fit.nll_calibrated < fit.nll_raw and fit.ece_calibrated < 0.02 < fit.ece_raw
    none = fit_temperature(SpanConfidences(z[:50]), np.ones(50, dtype=bool))  # nothing wrong: no fit
    assert not none.fitted and none.temperature == 1.0 and "right" in none.reason
    few = fit_temperature(SpanConfidences(z[:5]), correct[:5])
    assert not few.fitted and "fewer than" in few.reason


# ----------------------------------------------------------------------------------------- a tiny CRF model
def _crf_model_dir(out: Path, encoder_dir: Path) -> Path:
    """An untrained model directory with loud emissions (so overconfident; see tests/test_predict.py)."""
    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    cfg = NERConfig.model_validate(
        {
            "data": {"dataset": "sample", "max_len": 64},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bilstm", "rnn_units": 16},
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder, tokenizer = load_encoder(cfg.encoder)
        model = NERModel(cfg, tag_set(LABELS, cfg.data.scheme), encoder)
        with torch.no_grad():
            model.classifier.weight.mul_(8.0)
    return save_model_dir(out, model, tokenizer)


@pytest.fixture(scope="module")
def crf_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    return _crf_model_dir(tmp_path_factory.mktemp("calib") / "model", tiny_encoder_dir)


@pytest.fixture(scope="module")
def crf_loaded(crf_dir):
    from ner_core.artifacts.modeldir import load_model_dir

    return load_model_dir(crf_dir)


@pytest.fixture(scope="module")
def dev_docs(crf_loaded):
    """Sample dev texts whose gold entities are the model's own predictions, each kept with probability
    confidence**4: the model is right less often than it says, so a temperature above 1 should help."""
    from ner_core.documents import Document, Entity
    from ner_core.inference.tagger import Tagger

    texts = [
        json.loads(line)["text"] for line in (SAMPLE / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    texts = texts[:40]
    tagger = Tagger(crf_loaded.model, crf_loaded.tokenizer, max_len=64, precision="fp32")
    rng = random.Random(3)
    docs = []
    for i, (text, ents) in enumerate(zip(texts, tagger.predict(texts), strict=True)):
        gold = [
            Entity(start=e.start, end=e.end, label=e.label) for e in ents if rng.random() < e.confidence**4
        ]
        docs.append(Document(doc_id=f"d{i}", text=text, entities=gold))
    return docs


def _tagger(loaded, **kw):
    from ner_core.inference.tagger import Tagger

    return Tagger(loaded.model, loaded.tokenizer, max_len=64, precision="fp32", **kw)


def test_the_fitted_temperature_lowers_the_nll_and_changes_no_prediction(crf_loaded, dev_docs, one_thread):
    from ner_core.documents import Entity
    from ner_core.inference.calibration import binary_nll, fit_crf
    from ner_core.metrics import entity_correctness

    report, fit = fit_crf(_tagger(crf_loaded), dev_docs)
    assert fit.fitted and fit.n_entities == report.n_pred > 50 and 0 < fit.n_correct < fit.n_entities
    assert fit.temperature > 1.0 and fit.nll_calibrated < fit.nll_raw and fit.ece_calibrated < fit.ece_raw
    cal = report.calibration
    assert cal.temperature == fit.temperature and cal.fitted_on == "dev" and cal.n_entities == fit.n_entities
    assert cal.ece_raw == pytest.approx(fit.ece_raw, abs=1e-5)
    texts = [d.text for d in dev_docs]
    raw, scaled = (
        _tagger(crf_loaded).predict(texts),
        _tagger(crf_loaded, temperature=fit.temperature).predict(texts),
    )

    def key(ps):
        return [[(e.start, e.end, e.label, e.confidence) for e in p] for p in ps]

    assert key(raw) == key(scaled)  # same Viterbi path, same raw confidence
    assert all(e.confidence_calibrated is None for p in raw for e in p)
    flat = [e for p in scaled for e in p]
    as_entities = [[Entity(start=e.start, end=e.end, label=e.label) for e in p] for p in scaled]
    correct = [c for row in entity_correctness([d.entities for d in dev_docs], as_entities) for c in row]
    assert binary_nll([e.confidence_calibrated for e in flat], correct) == pytest.approx(
        fit.nll_calibrated, abs=1e-4
    )
    assert sum(e.confidence_calibrated < e.confidence for e in flat) > len(flat) // 2  # T > 1 flattens


def test_calibrated_confidence_is_the_min_of_scaled_torch_marginals(crf_loaded, dev_docs, one_thread):
    """Recomputed by hand: the torch forward-backward of a CRF copy whose parameters and emissions are
    divided by T, the marginal of the Viterbi tag, the minimum over the entity's characters."""
    import copy

    t = 1.7
    tagger = _tagger(crf_loaded, temperature=t)
    texts = [d.text for d in dev_docs[:6]]
    (em,) = [torch.from_numpy(x) for x in tagger.stitched_emissions(texts[:1])]
    by_hand = copy.deepcopy(crf_loaded.model.crf)
    with torch.no_grad():
        for p in by_hand.crf.parameters():
            p.div_(t)
    mask = torch.ones(1, len(em), dtype=torch.bool)
    path = crf_loaded.model.crf.viterbi_tensor(em[None], mask, backend="torch")[0][0]
    marg = by_hand.marginals(em[None] / t, mask, backend="torch")[0]
    chosen = marg[torch.arange(len(em)), path].double().numpy()
    ents = tagger.predict(texts[:1])[0]
    tags = [tagger.tags[k] for k in path.tolist()]
    assert tagger.tag_texts(texts[:1])[0][0] == tags  # the path recomputed here is the tagger's
    assert ents and all(e.confidence_calibrated == pytest.approx(chosen[e.start : e.end].min(), abs=2e-6)
                        for e in ents)  # fmt: skip
    # predict_documents (what a stored run keeps) gives the same numbers
    docs = tagger.predict_documents(texts[:1])
    assert [e.confidence_calibrated for e in docs[0].entities] == [e.confidence_calibrated for e in ents]


# ----------------------------------------------------------------------------------------- span decoder
@pytest.fixture(scope="module")
def span_tokenizer(tiny_encoder_dir):
    from ner_core.config import EncoderConfig
    from ner_core.model.encoder import load_encoder

    return load_encoder(EncoderConfig(name=str(tiny_encoder_dir)))[1]


def test_span_confidence_is_sigmoid_of_the_logit_over_t(span_tokenizer):
    """A span's logit is carried, not read back from its probability: 上海 scores 20, whose float32
    probability is 1.0, and still gets sigmoid(20 / 4) = 0.9933."""
    from ner_core.inference.tagger import Tagger
    from tests.test_span_predict import DICTIONARY, TEXT, UNSURE, _DictionarySpanModel

    extra = {"上海": ("LOC", 20.0)}
    fake = _DictionarySpanModel(span_tokenizer, extra=extra)
    text = TEXT + "上海"
    score = {(w, lab): z for table in (DICTIONARY, UNSURE, extra) for w, (lab, z) in table.items()}
    raw = Tagger(fake, span_tokenizer, max_len=16).predict([text])[0]
    got = Tagger(fake, span_tokenizer, max_len=16, temperature=4.0).predict([text])[0]
    assert [(e.start, e.end, e.label, e.confidence) for e in got] == [
        (e.start, e.end, e.label, e.confidence) for e in raw
    ]
    assert ("上海", "LOC", 1.0) in {(e.text, e.label, e.confidence) for e in got}
    for e in got:
        assert e.confidence_calibrated == round(1 / (1 + math.exp(-score[(e.text, e.label)] / 4.0)), 6)
    assert "confidence_calibrated" in got[0].to_dict() and "confidence_calibrated" not in raw[0].to_dict()


def test_span_evaluation_and_fit_use_the_logits(span_tokenizer):
    from ner_core.documents import Document, Entity
    from ner_core.training.span_eval import evaluate_spans, fit_spans, predict_span_scores
    from tests.test_span_predict import TEXT, _DictionarySpanModel

    fake = _DictionarySpanModel(span_tokenizer, extra={"上海": ("LOC", 20.0)})
    texts = [TEXT + "上海", "上海的张三", TEXT]
    scored = predict_span_scores(fake, span_tokenizer, texts, max_len=16)
    assert {(texts[0][e.start : e.end], z) for e, _p, z in scored[0]} >= {("上海", 20.0), ("北京大学", 4.0)}
    docs = [
        Document(
            doc_id=str(i),
            text=t,
            entities=[Entity(start=e.start, end=e.end, label=e.label) for e, _p, z in row if z > 2.5],
        )
        for i, (t, row) in enumerate(zip(texts, scored, strict=True))
    ]
    report = evaluate_spans(fake, span_tokenizer, docs, max_len=16, temperature=2.0, fitted_on="dev")
    cal = report.calibration
    assert cal.temperature == 2.0 and cal.fitted_on == "dev" and cal.n_entities == report.n_pred
    want = sorted(round(1 / (1 + math.exp(-z / 2.0)), 6) for row in scored for _e, _p, z in row)
    got = sorted(b.mean_confidence for b in cal.bins_calibrated for _ in range(b.n))  # bin means only
    assert len(got) == len(want) and sum(b.n for b in cal.bins_raw) == report.n_pred
    assert sum(b.mean_confidence * b.n for b in cal.bins_calibrated) == pytest.approx(sum(want), abs=1e-5)
    assert evaluate_spans(fake, span_tokenizer, docs, max_len=16).calibration is None
    fitted_report, fit = fit_spans(fake, span_tokenizer, docs, max_len=16)
    assert fitted_report.f1 == report.f1 and fit.n_entities == report.n_pred  # one pass, same figures


# ----------------------------------------------------------------------------------------- calibration.json
def _record(**temps):
    from ner_core.artifacts.calibration_file import CalibrationRecord, PrecisionCalibration

    return CalibrationRecord(
        precisions={p: PrecisionCalibration(t, 120, 0.08, 0.015) for p, t in temps.items()}, cpu="AMD EPYC"
    )


def test_calibration_file_round_trip_and_the_temperature_per_precision(tmp_path):
    from ner_core.artifacts.calibration_file import read_calibration, write_calibration

    assert read_calibration(tmp_path) is None and read_calibration(None) is None
    write_calibration(tmp_path, _record(fp32=1.4, int8=1.6))
    got = read_calibration(tmp_path)
    assert got == _record(fp32=1.4, int8=1.6)
    assert (got.temperature_for("int8"), got.temperature_for("fp32"), got.temperature_for("bf16")) == (
        1.6,
        1.4,
        1.4,
    )
    assert _record(int8=1.6).temperature_for("bf16") is None  # neither bf16 nor fp32: none
    raw = json.loads((tmp_path / "calibration.json").read_text())
    assert raw["format_version"] == 1 and raw["split"] == "dev" and raw["cpu"] == "AMD EPYC"
    assert raw["precisions"]["fp32"] == {
        "temperature": 1.4,
        "n_entities": 120,
        "ece_raw": 0.08,
        "ece_calibrated": 0.015,
    }


GOOD = {"temperature": 1.4, "n_entities": 3, "ece_raw": 0.1, "ece_calibrated": 0.02}


@pytest.mark.parametrize(
    "content, why",
    [
        ({"format_version": 1, "precisions": {"fp32": {**GOOD, "temperature": -1.0}}}, "temperature"),
        ('{"format_version": 1, "precisions": {"fp32": {"temperature": NaN}}}', "temperature"),
        ({"format_version": 1, "precisions": {"fp32": {**GOOD, "temperature": 1e300}}}, "temperature"),
        ({"format_version": 1, "precisions": {"fp32": {**GOOD, "temperature": "2"}}}, "temperature"),
        ({"format_version": 1, "precisions": {"fp32": {**GOOD, "n_entities": 10**400}}}, "n_entities"),
        ({"format_version": 1, "precisions": {"fp32": {**GOOD, "ece_raw": 3.0}}}, "ece_raw"),
        ({"format_version": 2, "precisions": {}}, "unknown format_version 2"),
        ({"precisions": {"fp32": GOOD}}, "unknown format_version None"),
        ({"format_version": 1, "precisions": {"fp64": GOOD}}, "unknown precision 'fp64'"),
        ([1, 2], "expected a JSON object"),
        ("{not json", "not valid JSON"),
        ('{"format_version": 1, "precisions": {}, "pad": "' + "x" * 70_000 + '"}', "bytes"),
    ],
)
def test_a_bad_calibration_file_is_refused_in_one_line_naming_it(tmp_path, content, why):
    from ner_core.artifacts.calibration_file import read_calibration
    from ner_core.artifacts.layout import ModelDirError

    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / "calibration.json").write_text(text, encoding="utf-8")
    with pytest.raises(ModelDirError) as err:
        read_calibration(tmp_path)
    msg = str(err.value)
    assert "calibration.json" in msg and why in msg and "\n" not in msg and len(msg) < 400


def test_a_calibration_file_linked_out_of_the_directory_is_refused(tmp_path):
    from ner_core.artifacts.calibration_file import read_calibration, write_calibration
    from ner_core.artifacts.layout import ModelDirError

    (tmp_path / "elsewhere").mkdir()
    write_calibration(tmp_path / "elsewhere", _record(fp32=1.2))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "calibration.json").symlink_to(tmp_path / "elsewhere" / "calibration.json")
    with pytest.raises(ModelDirError, match="outside the folder"):
        read_calibration(tmp_path / "model")


# ----------------------------------------------------------------------------------------- where it is used
@pytest.fixture
def calibrated_dir(tmp_path, crf_dir):
    from ner_core.artifacts.calibration_file import write_calibration

    out = Path(shutil.copytree(crf_dir, tmp_path / "model"))
    write_calibration(out, _record(fp32=2.0, int8=3.0))
    return out


def test_from_loaded_applies_the_stored_temperature_and_refuses_a_bad_file(calibrated_dir, dev_docs):
    from ner_core.artifacts.layout import ModelDirError
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger

    loaded = load_model_dir(calibrated_dir)
    tagger = Tagger.from_loaded(loaded, PredictionConfig(precision="fp32", device="cpu"))
    assert tagger.temperature == 2.0 and tagger.settings["temperature"] == 2.0
    ents = [e for p in tagger.predict([d.text for d in dev_docs[:5]]) for e in p]
    assert ents and all(e.confidence_calibrated is not None for e in ents)
    assert all("confidence_calibrated" in e.to_dict() for e in ents)
    (calibrated_dir / "calibration.json").write_text(
        '{"format_version": 1, "precisions": {"fp32": {"temperature": -2}}}'
    )
    with pytest.raises(ModelDirError, match="calibration.json"):
        Tagger.from_loaded(loaded, PredictionConfig(precision="fp32", device="cpu"))


def test_an_old_model_directory_predicts_and_evaluates_as_before(legacy_dir):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import PredictionConfig
    from ner_core.inference.calibration import stored_temperature
    from ner_core.inference.tagger import Tagger
    from ner_core.metrics import EvaluationReport

    run = legacy_dir / "runs" / "20261201-152337-sample-bilstm-56603a"
    tagger = Tagger.from_loaded(load_model_dir(run / "model"), PredictionConfig(device="cpu"))
    assert tagger.temperature == 1.0 and "temperature" not in tagger.settings
    ents = tagger.predict(["张三在北京工作"])[0]
    assert all(e.confidence_calibrated is None and "confidence_calibrated" not in e.to_dict() for e in ents)
    assert stored_temperature(run / "model", "fp32") == (1.0, "none")
    old = EvaluationReport.model_validate_json((run / "eval-sample-test.json").read_text(encoding="utf-8"))
    assert old.calibration is None and old.confusion == []


def test_evaluate_model_reports_the_calibration_at_the_given_temperature(crf_loaded, dev_docs):
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.metrics import expected_calibration_error

    m = crf_loaded
    plain = evaluate_model(m.model, m.tokenizer, dev_docs, max_len=64)
    assert plain.calibration is None  # the training loop's per-epoch score: no marginals
    report = evaluate_model(m.model, m.tokenizer, dev_docs, max_len=64, temperature=2.0, fitted_on="dev")
    cal = report.calibration
    assert (
        report.f1 == plain.f1
        and cal.temperature == 2.0
        and cal.fitted_on == "dev"
        and cal.precision == "fp32"
    )
    assert cal.n_entities == report.n_pred and len(cal.bins_raw) == len(cal.bins_calibrated) == 10
    preds = _tagger(m, temperature=2.0).predict([d.text for d in dev_docs])
    gold = [{(e.start, e.end, e.label) for e in d.entities} for d in dev_docs]
    flags = [(e.start, e.end, e.label) in g for g, p in zip(gold, preds, strict=True) for e in p]
    assert cal.ece_raw == pytest.approx(
        expected_calibration_error([e.confidence for p in preds for e in p], flags)
    )
    assert cal.ece_calibrated == pytest.approx(
        expected_calibration_error([e.confidence_calibrated for p in preds for e in p], flags)
    )
    assert (cal.thresholds[0].precision, cal.thresholds[0].recall) == pytest.approx(
        (report.precision, report.recall)
    )
    untempered = evaluate_model(m.model, m.tokenizer, dev_docs, max_len=64, temperature=1.0, fitted_on="dev")
    assert untempered.calibration.ece_raw == untempered.calibration.ece_calibrated
    assert untempered.calibration.fitted_on == "none"


def test_evaluate_step_uses_the_model_directorys_temperature(calibrated_dir, dev_docs, tmp_path):
    from flows.steps import evaluate_step
    from ner_core.metrics import EvaluationReport

    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        "\n".join(
            json.dumps(d.model_dump(include={"text", "entities"}), ensure_ascii=False) for d in dev_docs[:12]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    summary = evaluate_step(
        str(tmp_path / "ner.duckdb"), str(calibrated_dir), None, file=str(gold), out_dir=str(out)
    )
    report = EvaluationReport.model_validate_json(next(out.glob("eval-*.json")).read_text(encoding="utf-8"))
    assert report.calibration.temperature == 2.0 and report.calibration.fitted_on == "dev"
    assert "### Calibration" in summary.markdown and report.confusion
    flat = summary.model_dump()  # what the flow returns and Prefect shows carries the ECE too
    assert flat["calibration.temperature"] == 2.0
    assert flat["calibration.ece_calibrated"] == report.calibration.ece_calibrated


def test_the_end_of_training_record_fits_and_writes_the_temperature(tmp_path, crf_dir, dev_docs, one_thread):
    from ner_core.artifacts.calibration_file import read_calibration
    from ner_core.artifacts.modeldir import read_precision_record
    from ner_core.config import Precision
    from ner_core.training.precision_record import record_dev_f1

    model = Path(shutil.copytree(crf_dir, tmp_path / "model"))
    record = record_dev_f1(model, dev_docs, device="cpu", trained_in="fp32", precisions=[Precision.FP32])
    stored = read_calibration(model)
    entry = stored.precisions["fp32"]
    assert stored.split == "dev" and stored.cpu and entry.temperature > 1.0 and entry.n_entities > 50
    assert entry.ece_calibrated < entry.ece_raw and read_precision_record(model).dev_f1 == record.dev_f1
    # all wrong: nothing to fit, and the earlier fit is not left beside the model
    wrong = [d.model_copy(update={"entities": []}) for d in dev_docs]
    record_dev_f1(model, wrong, device="cpu", trained_in="fp32", precisions=[Precision.FP32])
    assert read_calibration(model) is None and not (model / "calibration.json").exists()


def test_a_dictionary_forced_entity_is_calibrated_under_the_same_force(crf_loaded, dev_docs):
    """The scaled marginals are conditioned on the forced span as the raw ones are: the forced entity is
    certain at any temperature, and a text the dictionary does not touch is calibrated as without it."""
    from ner_core.inference.dictionary import Entry, UserDictionary

    dictionary = UserDictionary([Entry("北京", "LOC", "force", line=1)])
    texts = ["我在北京工作了三年", dev_docs[0].text]
    assert "北京" not in texts[1]
    got = _tagger(crf_loaded, temperature=2.0, dictionary=dictionary).predict(texts)
    forced = [e for e in got[0] if e.from_dictionary]
    assert [(e.text, e.confidence, e.confidence_calibrated) for e in forced] == [("北京", 1.0, 1.0)]
    assert got[1] == _tagger(crf_loaded, temperature=2.0).predict(texts[1:])[0]


def test_a_prediction_run_resumes_only_under_the_same_temperature(calibrated_dir, dev_docs, tmp_path):
    """The calibrated column of one run is at one temperature: an interrupted run resumes under the same
    one, is tagged again under another (the model was calibrated again), and adding documents under
    another is refused; a run stored before calibration (no temperature) counts as ``T = 1``."""
    from flows.steps import predict_step
    from ner_core.artifacts.calibration_file import write_calibration
    from ner_core.config import PredictionConfig
    from storage import predictions as predictions_db

    db = str(tmp_path / "p.duckdb")
    docs, fp32 = dev_docs[:6], PredictionConfig(precision="fp32", device="cpu")

    def tag(replace=None, batch=slice(None)):
        return predict_step(
            db,
            str(calibrated_dir),
            docs[batch],
            input_kind="texts",
            input_ref="dev",
            replace=replace,
            options=fp32,
            progress=False,
        )

    first = tag(batch=slice(0, 3))
    pid = first.pred_run_id
    predictions_db.finish_prediction_run(db, pid, status="failed", seconds=1.0)
    assert tag().resumed  # same temperature: only the three documents not stored yet are tagged
    predictions_db.finish_prediction_run(db, pid, status="failed", seconds=1.0)
    write_calibration(calibrated_dir, _record(fp32=3.0, int8=3.0))  # calibrated again
    with pytest.raises(ValueError, match="temperature 2.0"):
        tag(replace=False)
    assert not tag().resumed  # replaced: every row at the new temperature
    stored = json.loads(predictions_db.get_prediction_run(db, pid)["config"])
    assert stored["temperature"] == 3.0
    prev = predictions_db.get_prediction_run(db, pid) | {"status": "failed"}
    old = {k: v for k, v in stored.items() if k != "temperature"}
    assert predictions_db._resumable(prev | {"config": json.dumps(old)}, old | {"temperature": 1.0})
    assert not predictions_db._resumable(prev | {"config": json.dumps(old)}, old | {"temperature": 3.0})
