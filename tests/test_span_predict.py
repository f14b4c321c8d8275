"""Tagging with a span-decoder model: windows that overlap by the span limit, each span from its most
central window, threshold, allow|flat, span confidence and the summed binary entropy of a document; the
prediction plumbing (stored runs, overlapping predicted entities in DuckDB and its views)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

LABELS = ["LOC", "ORG", "PER"]
#: what the dictionary fake knows: nested (北京大学 ORG holds 北京 LOC), two labels on one span (华为)
DICTIONARY = {"北京大学": ("ORG", 4.0), "北京": ("LOC", 3.0), "张三": ("PER", 2.0), "华为": ("ORG", 1.0)}
UNSURE = {"大学": ("ORG", 0.2), "华为": ("LOC", -0.3)}  # near 0.5: counted in the uncertainty


def _config(max_span_len: int | None = 6, threshold: float = 0.5, overlap: str | None = None):
    decoder = SimpleNamespace(type="span", max_span_len=max_span_len, threshold=threshold, overlap=overlap)
    return SimpleNamespace(data=SimpleNamespace(scheme="BIOES"), decoder=decoder)


class _DictionarySpanModel(nn.Module):
    """A span model whose score of a span depends only on its characters (a dictionary lookup; every
    other span scores -8): windowed tagging must then equal whole-text tagging, whatever the windows."""

    decoder = "span"

    def __init__(self, tokenizer, max_span_len: int | None = 6, extra: dict | None = None, **decoder):
        from ner_core.data.alignment import CharAligner

        super().__init__()
        self.labels = list(LABELS)
        self.config = _config(max_span_len, **decoder)
        al = CharAligner(tokenizer)
        self.table = {
            (tuple(al.char_ids(word)), LABELS.index(label)): score
            for table in (DICTIONARY, UNSURE, extra or {})
            for word, (label, score) in table.items()
        }
        self.limit = max_span_len
        self.calls = 0

    def span_logits(self, ids, att):
        self.calls += 1
        B, T = ids.shape
        L = T - 2
        n = att.long().sum(1) - 2  # (B,)
        char_mask = torch.arange(L).unsqueeze(0) < n.unsqueeze(1)  # (B, L)
        out = torch.full((B, len(LABELS), L, L), -1e12)  # (B, C, L, L)
        for b in range(B):
            chars = ids[b, 1 : 1 + int(n[b])].tolist()
            for i in range(len(chars)):
                for j in range(i, min(len(chars), i + (self.limit or len(chars)))):
                    out[b, :, i, j] = -8.0
                    for c in range(len(LABELS)):
                        score = self.table.get((tuple(chars[i : j + 1]), c))
                        if score is not None:
                            out[b, c, i, j] = score
        return out, char_mask

    def span_band(self, ids, att):
        """What the tagger reads: :meth:`span_logits` on the band of cells a span can occupy."""
        from ner_core.model.span import band_width, to_band

        out, char_mask = self.span_logits(ids, att)
        return to_band(out, band_width(out.shape[-1], self.limit)), char_mask


class _CentralitySpanModel(_DictionarySpanModel):
    """Scores every one- and two-character span of label 0 by where it sits in its window: lower the
    more central, and (to tell tied windows apart) slightly lower the later it starts in the window; so
    taking any window's score, or the highest, is not taking the most central window's."""

    def span_logits(self, ids, att):
        out, char_mask = super().span_logits(ids, att)
        out[:] = -1e12
        for b in range(ids.shape[0]):
            n = int(char_mask[b].sum())
            for i in range(n):
                for j in (i, i + 1):
                    if j < n:
                        out[b, 0, i, j] = _central_logit(i, j, n)
        return out, char_mask


def _central_logit(a: int, b: int, n: int) -> float:
    return 2.0 - 0.25 * min(a, n - 1 - b) - 0.001 * a


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    from ner_core.config import EncoderConfig
    from ner_core.model.encoder import load_encoder

    return load_encoder(EncoderConfig(name=str(tiny_encoder_dir)))[1]


TEXT = "张三在北京大学读书，后来去了华为。" * 3 + "北京的张三说：北京大学很好。"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _expected(text: str, threshold: float = 0.5) -> list[tuple[int, int, str, float]]:
    """Every dictionary span of ``text`` reaching ``threshold`` (what the dictionary fake scores)."""
    out = []
    for table in (DICTIONARY, UNSURE):
        for word, (label, score) in table.items():
            p = _sigmoid(score)
            start = text.find(word)
            while start >= 0:
                if p >= threshold:
                    out.append((start, start + len(word), label, round(p, 6)))
                start = text.find(word, start + 1)
    return sorted(out, key=lambda x: x[:3])


# ----------------------------------------------------------------------------------------- windows
def test_each_span_is_owned_by_the_window_where_it_sits_most_centrally():
    """owner_windows against brute force: the largest distance to the nearer window edge among the
    windows holding the span, ties to the earlier window, for many lengths, windows and strides."""
    from ner_core.inference.spans import owner_windows
    from ner_core.inference.tagger import tagging_windows

    rng = np.random.default_rng(0)
    for length, max_len, stride in [(300, 64, 40), (301, 32, 20), (97, 16, 9), (50, 64, 56), (400, 40, 33)]:
        wins = tagging_windows(length, max_len, stride)
        n = wins[0][1] - wins[0][0]
        first = rng.integers(0, length, 400)
        last = np.minimum(first + rng.integers(0, max_len - stride + 1, 400), length - 1)
        got = owner_windows(np.array([s for s, _ in wins]), n, first, last)
        for i, j, k in zip(first.tolist(), last.tolist(), got.tolist(), strict=True):
            cent = [min(i - s, e - 1 - j) if s <= i and j < e else -1 for s, e in wins]
            assert k == cent.index(max(cent)) and cent[k] >= 0, (length, max_len, stride, i, j)


def test_span_windows_overlap_by_the_span_limit_and_a_stride_that_breaks_it_is_refused(tokenizer):
    from ner_core.inference.tagger import Tagger

    fake = _DictionarySpanModel(tokenizer, max_span_len=12)
    assert Tagger(fake, tokenizer, max_len=64).stride == 64 - 12  # the span limit beats the CRF's 1/8
    assert Tagger(_DictionarySpanModel(tokenizer, max_span_len=3), tokenizer, max_len=64).stride == 56
    assert Tagger(fake, tokenizer, max_len=64, stride=52).stride == 52
    with pytest.raises(ValueError, match=r"^stride 53 leaves windows of 64 overlapping by 11 characters.*"):
        Tagger(fake, tokenizer, max_len=64, stride=53)
    with pytest.raises(
        ValueError, match="window of 12 characters must be longer than the model's max_span_len"
    ):
        Tagger(fake, tokenizer, max_len=12)


def test_a_crf_model_refuses_the_span_options_in_one_line(tokenizer):
    from ner_core.inference.tagger import Tagger
    from ner_core.schemes import tag_set
    from tests.test_predict import _PositionFreeModel

    crf = _PositionFreeModel(tag_set(LABELS, "BIOES"), vocab=len(tokenizer))
    for kwargs in ({"span_threshold": 0.3}, {"overlap": "flat"}):
        with pytest.raises(
            ValueError, match="apply to a span-decoder model only; this model decodes with a CRF"
        ):
            Tagger(crf, tokenizer, max_len=32, **kwargs)
    assert Tagger(crf, tokenizer, max_len=32).decoding == {"decoder": "crf"}


# ----------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("max_len,stride", [(64, None), (16, 10), (12, 6), (9, 3)])
def test_windowed_span_tagging_equals_the_dictionary_whatever_the_windows(tokenizer, max_len, stride):
    """A position-free span model: every dictionary span, nested ones and two labels on one span
    included, is found once with its own probability, wherever the window edges fall."""
    from ner_core.inference.tagger import Tagger

    fake = _DictionarySpanModel(tokenizer)
    tagger = Tagger(fake, tokenizer, max_len=max_len, stride=stride, batch_size=3)
    texts = [TEXT, "", "北京", TEXT[5:40]]
    got = tagger.predict(texts)
    for text, ents in zip(texts, got, strict=True):
        assert [(e.start, e.end, e.label, e.confidence) for e in ents] == _expected(text)
        assert all(text[e.start : e.end] == e.text for e in ents)
    assert {("北京大学", "ORG"), ("北京", "LOC"), ("华为", "ORG")} <= {(e.text, e.label) for e in got[0]}
    assert tagger.settings["merge"] == "spans/most-central-window" and tagger.settings["decoder"] == "span"


def test_threshold_and_flat_overlap(tokenizer):
    from ner_core.inference.tagger import Tagger

    fake = _DictionarySpanModel(tokenizer)
    low = Tagger(fake, tokenizer, max_len=16, span_threshold=0.4).predict([TEXT])[0]
    assert [(e.start, e.end, e.label, e.confidence) for e in low] == _expected(TEXT, 0.4)
    assert ("大学", "ORG") in {(e.text, e.label) for e in low}  # p = 0.55 and 0.43 (华为 LOC) now in
    flat = Tagger(fake, tokenizer, max_len=16, span_threshold=0.4, overlap="flat").predict([TEXT])[0]
    # greedy by probability: 北京大学 ORG (0.98) beats 北京 LOC and 大学 ORG; 华为 ORG (0.73) beats 华为 LOC
    assert [(e.text, e.label) for e in flat if e.start < 17] == [
        ("张三", "PER"),
        ("北京大学", "ORG"),
        ("华为", "ORG"),
    ]
    taken = [i for e in flat for i in range(e.start, e.end)]
    assert len(taken) == len(set(taken))
    saved_flat = _DictionarySpanModel(tokenizer, overlap="flat", threshold=0.4)
    assert Tagger(saved_flat, tokenizer, max_len=16).predict([TEXT])[0] == flat  # the model's saved mode
    assert Tagger(saved_flat, tokenizer, max_len=16, overlap="allow").predict([TEXT])[0] == low


def test_whitespace_at_a_spans_edges_is_trimmed_and_a_trimmed_duplicate_kept_once(tokenizer):
    from ner_core.inference.tagger import Tagger

    extra = {" 北京": ("LOC", 1.0), "北京 ": ("LOC", 5.0), "  ": ("PER", 3.0), "京 大": ("ORG", 2.0)}
    fake = _DictionarySpanModel(tokenizer, extra=extra)
    text = "在  北京 大学"
    got = Tagger(fake, tokenizer, max_len=16).predict([text])[0]
    # " 北京" and "北京 " both become 北京 LOC, kept once with the higher probability (5.0 over 3.0 and 1.0)
    assert [(e.start, e.end, e.label, e.text, e.confidence) for e in got] == [
        (3, 5, "LOC", "北京", round(_sigmoid(5.0), 6)),
        (4, 7, "ORG", "京 大", round(_sigmoid(2.0), 6)),  # an inner space stays
        (6, 8, "ORG", "大学", round(_sigmoid(0.2), 6)),
    ]  # and "  " PER, whitespace alone, is no entity


def test_tags_of_a_span_model_are_those_of_its_outermost_entities(tokenizer):
    from ner_core.inference.tagger import Tagger
    from ner_core.schemes import tags_to_spans

    tagger = Tagger(_DictionarySpanModel(tokenizer), tokenizer, max_len=16)
    (tags, probs, entropy), (empty_tags, _, empty_h) = tagger.tag_texts([TEXT, ""], uncertainty=True)
    spans = [(s.start, s.end, s.label) for s in tags_to_spans(tags, "BIOES")]
    assert (3, 7, "ORG") in spans and (3, 5, "LOC") not in spans  # the outer 北京大学, not 北京 inside it
    assert (14, 16, "ORG") in spans  # 华为 ORG (0.73; 华为 LOC, 0.43, is below the threshold)
    assert probs[3] == pytest.approx(_sigmoid(4.0), abs=1e-6) and probs[0] == pytest.approx(
        _sigmoid(2.0), abs=1e-6
    )
    assert probs[2] == 1.0  # 在: no span over it scores 0.05 or more
    ((tags, probs),) = Tagger(
        _DictionarySpanModel(tokenizer), tokenizer, max_len=16, span_threshold=0.6
    ).tag_texts(
        ["大学很好"]
    )  # 大学 ORG (0.55) is no entity at 0.6: its characters are O, with probability 1 - 0.55
    assert tags == ["O"] * 4 and probs == pytest.approx([1 - _sigmoid(0.2)] * 2 + [1.0] * 2, abs=1e-6)
    assert empty_tags == [] and empty_h == 0.0 and entropy == tagger.predict_documents([TEXT])[0].uncertainty


def test_a_span_is_scored_in_its_most_central_window(tokenizer):
    """The centrality fake scores a span lower the more central it sits in its window; every span's
    probability must be the one of the window where it sits most centrally (ties: the earlier one), and
    every span is reported once."""
    from ner_core.inference.tagger import Tagger, tagging_windows

    text = "中" * 150
    fake = _CentralitySpanModel(tokenizer, max_span_len=2, threshold=0.05)
    for max_len, stride in ((32, 20), (24, 12), (40, 38)):
        got = Tagger(fake, tokenizer, max_len=max_len, stride=stride).predict([text])[0]
        wins = tagging_windows(len(text), max_len, stride)
        expected = []
        for i in range(len(text)):
            for j in (i, i + 1):
                if j >= len(text):
                    continue
                cent = [(min(i - s, e - 1 - j), -k) for k, (s, e) in enumerate(wins) if s <= i and j < e]
                _, neg_k = max(cent)
                s = wins[-neg_k][0]
                p = _sigmoid(_central_logit(i - s, j - s, max_len))
                if p >= 0.05:
                    expected.append((i, j + 1, round(p, 6)))
        assert [(e.start, e.end) for e in got] == [x[:2] for x in expected], (max_len, stride)
        assert [e.confidence for e in got] == pytest.approx([x[2] for x in expected], abs=2e-6)


def test_document_uncertainty_is_the_summed_binary_entropy_of_spans_near_the_threshold(tokenizer):
    from ner_core.inference.tagger import Tagger

    tagger = Tagger(_DictionarySpanModel(tokenizer), tokenizer, max_len=16, stride=8)
    texts = [TEXT, "", "张三", "北京大学"]
    docs = tagger.predict_documents(texts)
    for text, doc in zip(texts, docs, strict=True):
        probs = [
            _sigmoid(score)
            for table in (DICTIONARY, UNSURE)
            for word, (_, score) in table.items()
            for _ in range(text.count(word))
        ]
        h = sum(-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in probs if 0.05 <= p <= 0.95)
        assert doc.uncertainty == pytest.approx(h, abs=1e-5)
    assert docs[0].uncertainty > docs[2].uncertainty > 0  # 张三: p = 0.88, inside the band
    # 北京大学 (0.98) and 北京 (0.95) are sure; 大学 ORG (0.55) is not
    assert docs[3].uncertainty == pytest.approx(-(0.55 * math.log(0.55) + 0.45 * math.log(0.45)), abs=2e-3)
    assert docs[1].uncertainty == 0.0
    assert [d.entities for d in docs] == tagger.predict(texts)


# ----------------------------------------------------------------------------------------- storage
NESTED_TEXT = "张三在北京大学读书，后来去了华为。"
#: a span run's rows (nested, and one span with two labels) and a flat run's, for the same document
SPAN_ROWS = [(0, 2, "PER"), (3, 7, "ORG"), (3, 5, "LOC"), (5, 7, "ORG"), (14, 16, "ORG"), (14, 16, "LOC")]
FLAT_ROWS = [(0, 2, "PER"), (3, 7, "ORG"), (14, 16, "LOC"), (10, 12, "LOC")]


def _store(db: str, pred_run_id: str, rows, docs=(("n1", NESTED_TEXT), ("n2", "北京")), decoder="span"):
    from ner_core.inference.tagger import PredictedEntity
    from storage.predictions import PredictionRunWriter

    settings = {"max_len": 64, "stride": 56, "precision": "fp32", "decoder": decoder}
    with PredictionRunWriter(
        db, pred_run_id, model_dir="m", run_id=None, input_kind="texts", input_ref="x", settings=settings
    ) as run:
        run.write(
            [
                (
                    doc_id,
                    text,
                    [
                        PredictedEntity(s, e, lab, text[s:e], 0.9 - 0.1 * k)
                        for k, (s, e, lab) in enumerate(rows)
                    ]
                    if doc_id == "n1"
                    else [PredictedEntity(0, 2, "LOC", "北京", 0.8)],
                    1.5,
                )
                for doc_id, text in docs
            ]
        )


def test_nested_predicted_entities_in_duckdb_views_and_macros(tmp_path):
    """Overlapping rows of a span run (nested spans, one span with two labels) are stored and read back
    whole, in a stable order, by the views, the macros and the dashboard's reads."""
    from storage import predictions as predictions_db
    from storage import query as query_db

    db = str(tmp_path / "nested.duckdb")
    _store(db, "span-run", SPAN_ROWS)
    _store(db, "flat-run", FLAT_ROWS, decoder="crf")
    key = sorted(SPAN_ROWS)
    text, ents = predictions_db.predicted_document(db, "span-run", "n1")
    assert text == NESTED_TEXT and list(zip(ents["start"], ents["end"], ents["label"], strict=True)) == key
    ctx = query_db.query(db, "SELECT * FROM document_entities(?, ?)", ["span-run", "n1"])
    assert sorted((r["start"], r["end"], r["label"]) for r in ctx) == key
    for r in ctx:
        s, e = r["start"], r["end"]
        assert (r["text"], r["left_context"], r["right_context"]) == (
            NESTED_TEXT[s:e],
            NESTED_TEXT[max(0, s - 20) : s],
            NESTED_TEXT[e : e + 20],
        )
    found = predictions_db.entity_search_frame(db, "span-run")
    assert list(zip(found["doc_id"], found["start"], found["end"], found["label"], strict=True)) == [
        ("n1", *k) for k in key
    ] + [("n2", 0, 2, "LOC")]
    counts = query_db.query(
        db, "SELECT label, n_entities FROM v_predicted_label_counts WHERE pred_run_id = ?", ["span-run"]
    )
    assert {r["label"]: r["n_entities"] for r in counts} == {"LOC": 3, "ORG": 3, "PER": 1}
    docs = query_db.query(
        db, "SELECT doc_id, n_entities FROM predicted_documents WHERE pred_run_id = 'span-run'"
    )
    assert {r["doc_id"]: r["n_entities"] for r in docs} == {"n1": 6, "n2": 1}
    summary = query_db.query(db, "SELECT * FROM v_prediction_runs WHERE pred_run_id = 'span-run'")[0]
    assert summary["n_entities_stored"] == 7


def test_disagreements_between_a_span_run_and_a_flat_run_are_exact_set_differences(tmp_path):
    from storage import predictions as predictions_db

    db = str(tmp_path / "nested.duckdb")
    _store(db, "span-run", SPAN_ROWS)
    _store(db, "flat-run", FLAT_ROWS, decoder="crf")
    rows = predictions_db.prediction_disagreements(db, "span-run", "flat-run")
    got = [(r["side"], r["start"], r["end"], r["label"]) for r in rows]
    only_a = sorted(set(SPAN_ROWS) - set(FLAT_ROWS))
    only_b = sorted(set(FLAT_ROWS) - set(SPAN_ROWS))
    assert sorted(got) == sorted([("only_a", *k) for k in only_a] + [("only_b", *k) for k in only_b])
    assert [g[1:] for g in got if g[0] == "only_a"] == only_a  # by start, then end, then label
    for r in rows:  # every row names the other run's entities it overlaps, nested ones included
        other = FLAT_ROWS if r["side"] == "only_a" else SPAN_ROWS
        expected = {f"{lab}[{s},{e})" for s, e, lab in other if s < r["end"] and r["start"] < e}
        assert set((r["other_run_overlaps"] or "").split()) == expected, r
    assert predictions_db.prediction_disagreements(db, "span-run", "span-run") == []


def test_a_prediction_run_resumes_only_under_the_same_decoder_settings(tmp_path):
    """A run stored before the decoder was recorded is a CRF run and resumes as one; a span run stored
    with one threshold or overlap is replaced, never resumed, under another."""
    from storage import predictions as predictions_db

    db = str(tmp_path / "resume.duckdb")
    base = {"max_len": 64, "stride": 56, "precision": "fp32", "merge": "emissions/even-windows"}
    predictions_db.start_prediction_run(
        db,
        "old",
        model_dir="m",
        run_id=None,
        input_kind="texts",
        input_ref="x",
        config_json=json.dumps(base),
        replace=True,
    )
    predictions_db.finish_prediction_run(db, "old", status="failed", seconds=1.0)
    prev = predictions_db.get_prediction_run(db, "old")
    assert predictions_db._resumable(prev, base | {"decoder": "crf"})
    assert not predictions_db._resumable(prev, base | {"decoder": "span"})
    span = base | {"decoder": "span", "span_threshold": 0.5, "overlap": "allow", "max_span_len": 8}
    predictions_db.start_prediction_run(
        db,
        "span",
        model_dir="m",
        run_id=None,
        input_kind="texts",
        input_ref="x",
        config_json=json.dumps(span),
        replace=True,
    )
    predictions_db.finish_prediction_run(db, "span", status="failed", seconds=1.0)
    prev = predictions_db.get_prediction_run(db, "span")
    assert predictions_db._resumable(prev, span)
    for change in ({"span_threshold": 0.3}, {"overlap": "flat"}, {"max_span_len": 9}):
        assert not predictions_db._resumable(prev, span | change), change


# ----------------------------------------------------------------------------------------- commands
def test_predict_refuses_the_span_options_for_a_crf_model_in_one_line(tmp_path, tiny_encoder_dir, capsys):
    from app import cli
    from tests.test_predict import RAW, build_model_dir

    crf_dir = build_model_dir(tmp_path / "crf", tiny_encoder_dir)
    db = str(tmp_path / "p.duckdb")
    capsys.readouterr()
    for flags, named in (
        (["--span-threshold", "0.3"], "--span-threshold"),
        (["--overlap", "flat"], "--overlap"),
    ):
        argv = ["predict", "--no-prefect", "--db", db, "--model-dir", str(crf_dir), RAW[0], *flags]
        assert cli.main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "decodes with a CRF" in err, err
    assert not (tmp_path / "p.duckdb").exists()  # refused before any run started


def test_a_crf_config_saves_no_span_prediction_options():
    """Older code forbids unknown keys in ner_config.json: unset span options are left out of it."""
    from ner_core.config import NERConfig, PredictionConfig

    saved = json.loads(NERConfig().to_json())
    assert "span_threshold" not in saved["prediction"] and "overlap" not in saved["prediction"]
    given = NERConfig(prediction=PredictionConfig(span_threshold=0.3, overlap="flat"))
    assert NERConfig.model_validate_json(given.to_json()) == given


# ----------------------------------------------------------------------------------------- real span models
def build_span_model_dir(out, encoder_dir, *, seed: int = 0, max_span_len: int = 6, **decoder):
    """An untrained but complete span-decoder model directory (tiny encoder, BiLSTM head, Efficient
    GlobalPointer), deterministic for ``seed``; its span scores are spread out so that some spans of
    every text reach the threshold, some nested."""
    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel

    cfg = NERConfig.model_validate(
        {
            "data": {"dataset": "sample", "max_len": 32},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bilstm", "rnn_units": 16},
            "decoder": {"type": "span", "max_span_len": max_span_len, "head_size": 16, **decoder},
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, tokenizer = load_encoder(cfg.encoder)
        model = NERModel(cfg, list(LABELS), encoder)
        with torch.no_grad():
            model.span.proj.weight.mul_(6.0)
            model.span.bias.bias.add_(-1.0)
    return save_model_dir(out, model, tokenizer, metrics={"note": "untrained span test model", "seed": seed})


@pytest.fixture(scope="module")
def span_model_dir(tmp_path_factory, tiny_encoder_dir):
    return build_span_model_dir(tmp_path_factory.mktemp("span-model") / "model", tiny_encoder_dir)


@pytest.fixture(scope="module")
def span_loaded(span_model_dir):
    from ner_core.artifacts.modeldir import load_model_dir

    return load_model_dir(span_model_dir)


def _by_hand(loaded, text: str, max_len: int, stride: int, threshold: float) -> list[tuple]:
    """Each window encoded alone, every cell at or above the threshold kept from the window where the
    span sits most centrally (brute force over the windows), as (start, end, label, probability)."""
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import EncodedChunk, collate
    from ner_core.inference.tagger import tagging_windows

    al = CharAligner(loaded.tokenizer)
    wins = tagging_windows(len(text), max_len, stride)
    best: dict[tuple, tuple] = {}
    with torch.inference_mode():
        for k, (s, e) in enumerate(wins):
            enc = collate([EncodedChunk(None, al.char_ids(text[s:e]), None)], al.cls_id, al.sep_id, al.pad_id)
            logits, _ = loaded.model.span_logits(enc["input_ids"], enc["attention_mask"])
            probs = torch.sigmoid(logits[0].double())  # (C, n, n)
            for c, i, j in (probs >= threshold).nonzero().tolist():
                cent = (min(i, e - s - 1 - j), -k)
                key = (s + i, s + j + 1, loaded.model.labels[c])
                if key not in best or cent > best[key][0]:
                    best[key] = (cent, float(probs[c, i, j]))
    # only spans whose most central window of all (not only of those scoring them) is the one kept
    out = []
    for (a, b, lab), (cent, p) in best.items():
        owner = max((min(a - s, e - 1 - (b - 1)), -k) for k, (s, e) in enumerate(wins) if s <= a and b <= e)
        if owner == cent:
            out.append((a, b, lab, round(p, 6)))
    return sorted(out, key=lambda x: x[:3])


def test_a_real_span_model_tags_as_its_windows_score_by_hand(span_loaded):
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger

    text = (TEXT * 3)[:150]
    tagger = Tagger.from_loaded(span_loaded, PredictionConfig(window=24, batch_size=5, precision="fp32"))
    assert tagger.stride == 24 - 6 and tagger.span.max_span_len == 6
    got = tagger.predict([text])[0]
    expected = _by_hand(span_loaded, text, 24, 18, 0.5)
    assert [(e.start, e.end, e.label) for e in got] == [x[:3] for x in expected]
    assert [e.confidence for e in got] == pytest.approx([x[3] for x in expected], abs=1e-5)
    nested = [(a, b) for a in got for b in got if a is not b and a.start <= b.start and b.end <= a.end]
    assert len(got) > 5 and nested  # the untrained model's spans overlap: all are kept ("allow")
    doc = tagger.predict_documents([text])[0]
    assert doc.entities == got and doc.uncertainty > 0


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_span_model_tags_in_reduced_precision_with_float32_span_scores(span_loaded, precision):
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger
    from ner_core.runtime.hardware import Hardware

    if precision == "bf16" and not Hardware.detect("cpu").bf16_units:
        pytest.skip("this CPU has no bf16 units")
    seen = []
    tagger = Tagger.from_loaded(span_loaded, PredictionConfig(window=24, precision=precision, device="cpu"))
    real = tagger.model.span_band
    tagger.model.span_band = lambda *a: seen.append(real(*a)[0].dtype) or real(*a)
    texts = [(TEXT * 3)[:150], "北京"]
    got = tagger.predict(texts)
    fp32 = Tagger.from_loaded(
        span_loaded, PredictionConfig(window=24, precision="fp32", device="cpu")
    ).predict(texts)
    assert set(seen) == {torch.float32} and tagger.precision.value == precision
    keys = {(e.start, e.end, e.label) for e in got[0]}
    ref = {(e.start, e.end, e.label) for e in fp32[0]}
    assert len(keys & ref) >= 0.8 * len(ref)  # close to fp32's, not equal
    if precision == "int8":
        assert tagger.model is not span_loaded.model  # a copy; the loaded model is not changed
        assert span_loaded.model.encoder.encoder.layer[0].attention.self.query.__class__ is nn.Linear


def _stored_config(db: str, pred_run_id: str) -> dict:
    import duckdb

    with duckdb.connect(db, read_only=True) as con:
        (config,) = con.execute(
            "SELECT config FROM prediction_runs WHERE pred_run_id = ?", [pred_run_id]
        ).fetchone()
    return json.loads(config)


SPAN_TEXTS = [(TEXT * 2)[:70], "北京大学", "后来。", TEXT[:20]]


def test_predict_cli_stores_a_span_run_with_its_decoder_settings(
    tmp_path, span_model_dir, span_loaded, capsys
):
    """``ner predict`` with a span model: overlapping rows stored as the tagger gives them, the run's
    config records the decoder and the threshold/overlap given; other settings replace the run."""
    from app import cli
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger
    from tests.test_dask_predict import _rows

    files = []
    for i, t in enumerate(SPAN_TEXTS):
        (tmp_path / f"t{i}.txt").write_text(t, encoding="utf-8")
        files.append(str(tmp_path / f"t{i}.txt"))
    db = str(tmp_path / "span.duckdb")
    base = ["predict", "--no-prefect", "--db", db, "--model-dir", str(span_model_dir), *files]
    base += ["--precision", "fp32", "--window", "24"]
    assert cli.main([*base, "--span-threshold", "0.4"]) == 0
    out = json.loads(capsys.readouterr().out)
    config = _stored_config(db, out["pred_run_id"])
    assert {k: config[k] for k in ("decoder", "span_threshold", "overlap", "max_span_len", "merge")} == {
        "decoder": "span",
        "span_threshold": 0.4,
        "overlap": "allow",
        "max_span_len": 6,
        "merge": "spans/most-central-window",
    }
    docs, ents = _rows(db, out["pred_run_id"])
    tagger = Tagger.from_loaded(
        span_loaded, PredictionConfig(window=24, precision="fp32", span_threshold=0.4)
    )
    expected = {Path(f).stem: d for f, d in zip(files, tagger.predict_documents(SPAN_TEXTS), strict=True)}
    stored = {}
    for doc_id, start, end, label, _text, conf in ents:
        stored.setdefault(Path(doc_id).stem, []).append((start, end, label, conf))
    for stem, d in expected.items():
        want = sorted((e.start, e.end, e.label) for e in d.entities)
        assert sorted(r[:3] for r in stored.get(stem, [])) == want, stem
    assert [u for *_, u in docs] == pytest.approx(
        [expected[Path(d[0]).stem].uncertainty for d in docs], abs=1e-4
    )
    assert len(ents) == out["n_entities"]
    assert any(a[0] == b[0] and a[1] <= b[1] and b[2] <= a[2] for a in ents for b in ents if a != b)  # nested
    assert cli.main([*base, "--span-threshold", "0.4", "--overlap", "flat"]) == 0
    flat = json.loads(capsys.readouterr().out)
    assert flat["pred_run_id"] == out["pred_run_id"] and flat["resumed"] is False  # replaced, not resumed
    _, flat_ents = _rows(db, flat["pred_run_id"])
    assert _stored_config(db, flat["pred_run_id"])["overlap"] == "flat" and len(flat_ents) < len(ents)
    for doc in {r[0] for r in flat_ents}:
        spans = sorted((r[1], r[2]) for r in flat_ents if r[0] == doc)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), doc


def test_the_dask_flow_tags_with_a_span_model_as_one_process_does(tmp_path, span_model_dir):
    """The Prefect flow on a Dask LocalCluster and the plain single-process step store the same rows for a
    span model, and both record its decoder."""
    from flows import steps
    from flows.contracts import FilesSource
    from flows.dask_predict import run_dask_predict
    from ner_core.config import PredictionConfig
    from tests.test_dask_predict import _rows, _same

    files = []
    for i, t in enumerate(SPAN_TEXTS):
        (tmp_path / f"t{i}.txt").write_text(t, encoding="utf-8")
        files.append(str(tmp_path / f"t{i}.txt"))
    db, source = str(tmp_path / "dask.duckdb"), FilesSource(files=files)
    options = PredictionConfig(precision="fp32", window=24, span_threshold=0.45)
    docs, kind, ref = steps.load_prediction_input(db, source)
    single = steps.predict_step(
        db, str(span_model_dir), docs, input_kind=kind, input_ref=ref, options=options
    )
    expected = _rows(db, single.pred_run_id)
    state = run_dask_predict(
        db,
        source,
        str(span_model_dir),
        None,
        n_shards=2,
        n_workers=2,
        processes=False,
        return_state=True,
        options=options,
    )
    assert state.is_completed(), state
    out = state.result()
    assert out.pred_run_id == single.pred_run_id and out.n_entities == single.n_entities > 0
    _same(_rows(db, out.pred_run_id), expected)
    config = _stored_config(db, out.pred_run_id)
    assert (config["decoder"], config["span_threshold"], config["overlap"], config["max_span_len"]) == (
        "span",
        0.45,
        "allow",
        6,
    )


def test_serve_tags_with_a_span_model(tmp_path, span_model_dir, span_loaded):
    import httpx

    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger
    from tests.test_serve import start_service, stop_service

    args = ["--window", "24", "--precision", "fp32", "--span-threshold", "0.45", "--overlap", "allow"]
    svc = start_service(span_model_dir, tmp_path / "serve.log", *args)
    try:
        info = httpx.get(f"{svc['url']}/model").json()
        assert info["labels"] == LABELS and info["config"]["decoder"]["type"] == "span"
        assert {k: info["tagger"][k] for k in ("decoder", "span_threshold", "overlap", "stride")} == {
            "decoder": "span",
            "span_threshold": 0.45,
            "overlap": "allow",
            "stride": 18,
        }
        r = httpx.post(f"{svc['url']}/predict", json={"texts": SPAN_TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
    finally:
        stop_service(svc)
    options = PredictionConfig(window=24, precision="fp32", span_threshold=0.45)
    expected = Tagger.from_loaded(span_loaded, options).predict(SPAN_TEXTS)
    for res, exp in zip(results, expected, strict=True):
        assert [(e["start"], e["end"], e["label"]) for e in res["entities"]] == [
            (e.start, e.end, e.label) for e in exp
        ]
        assert [e["confidence"] for e in res["entities"]] == pytest.approx(
            [e.confidence for e in exp], abs=1e-4
        )
    ents = results[0]["entities"]
    assert any(a["start"] <= b["start"] and b["end"] <= a["end"] for a in ents for b in ents if a is not b)


def test_evaluate_model_scores_a_span_model_by_span_sets_and_outermost_tags(tokenizer):
    """Even where gold and predictions happen to be flat, a span model's report says its tag accuracies
    come from the outermost spans (the decoder can nest); the entity scores are exact span-set matches."""
    from ner_core.documents import Document, Entity
    from ner_core.inference.evaluate import evaluate_model

    fake = _DictionarySpanModel(tokenizer, overlap="flat")
    gold = [Entity(start=3, end=7, label="ORG"), Entity(start=0, end=2, label="LOC")]
    docs = [Document(doc_id="a", text=NESTED_TEXT, entities=gold), Document(doc_id="b", text="后来")]
    report = evaluate_model(fake, tokenizer, docs, max_len=16)
    assert report.tags_from == "outermost spans"
    # predicted (flat): 张三 PER, 北京大学 ORG, 华为 ORG; right: 北京大学 ORG
    assert (report.precision, report.recall) == pytest.approx((1 / 3, 1 / 2))


def test_seed_predict_with_a_span_model_writes_outermost_tags_and_every_span(
    tmp_path, monkeypatch, span_model_dir, span_loaded, tiny_encoder_dir, capsys
):
    """``ner predict -test_data``: the tag list holds the tags of the outermost entities and the summary
    says so; the entities file holds every span; --span-threshold reaches the tagger (refused for a CRF
    model in one line)."""
    from app import cli
    from ner_core.config import PredictionConfig
    from ner_core.data.formats.overlaps import outermost
    from ner_core.documents import Entity
    from ner_core.inference.tagger import Tagger
    from ner_core.schemes import spans_to_tags
    from tests.test_predict import build_model_dir

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "texts.txt"
    data.write_text(SPAN_TEXTS[0], encoding="utf-8")
    out = tmp_path / "seed_out"
    argv = [
        "predict",
        "-test_data",
        str(data),
        "-model_configs",
        str(span_model_dir),
        "-output_path",
        str(out),
    ]
    argv += ["--window", "24", "--precision", "fp32", "--span-threshold", "0.45"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        "outermost entities" in summary["tags"]
        and "predict_entities.jsonl holds every entity" in summary["tags"]
    )
    expected = Tagger.from_loaded(
        span_loaded, PredictionConfig(window=24, precision="fp32", span_threshold=0.45)
    )
    ents = expected.predict([SPAN_TEXTS[0]])[0]
    (line,) = (out / "predict_entities.jsonl").read_text(encoding="utf-8").splitlines()
    assert [(e["start"], e["end"], e["label"]) for e in json.loads(line)["entities"]] == [
        (e.start, e.end, e.label) for e in ents
    ]
    ((text, tags),) = json.loads((out / "predict_outputs.txt").read_text(encoding="utf-8"))
    outer = outermost([Entity(start=e.start, end=e.end, label=e.label) for e in ents])
    assert text == SPAN_TEXTS[0] and tags.split(" ") == spans_to_tags(len(text), outer, "BIOES")
    assert len(outer) < len(ents) == summary["n_entities"]
    crf_dir = build_model_dir(tmp_path / "crf", tiny_encoder_dir)
    capsys.readouterr()
    crf_argv = ["predict", "-test_data", str(data), "-model_configs", str(crf_dir), "--overlap", "flat"]
    assert cli.main(crf_argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decodes with a CRF" in err[0], err


def test_predict_refuses_a_stride_that_would_cut_spans_before_any_run(tmp_path, span_model_dir, capsys):
    from app import cli

    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    db = tmp_path / "s.duckdb"
    argv = ["predict", "--db", str(db), "--model-dir", str(span_model_dir), str(tmp_path / "t.txt")]
    capsys.readouterr()
    assert cli.main([*argv, "--window", "24", "--stride", "19"]) != 0  # overlap 5 < max_span_len 6
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--window/--stride: stride 19 leaves windows of 24 overlapping by 5" in err[0], (
        err
    )
    assert "use a stride of at most 18" in err[0] and not db.exists()


def test_span_tagging_in_bounded_groups_gives_the_same_result_and_counts_progress(tokenizer, monkeypatch):
    import ner_core.inference.tagger as predict

    texts = [TEXT[i:] * (1 + i % 3) for i in range(0, 40, 3)] + ["", "北京"]
    tagger = predict.Tagger(_DictionarySpanModel(tokenizer), tokenizer, max_len=16, batch_size=4)
    seen: list[int] = []
    expected = tagger.predict_documents(texts, progress=seen.append)
    assert sum(seen) == sum(map(len, texts)) and len(seen) > 1  # each character counted once
    groups = []
    real = predict.Tagger._span_group
    monkeypatch.setattr(
        predict.Tagger, "_span_group", lambda self, g, *a: groups.append(len(g)) or real(self, g, *a)
    )
    monkeypatch.setattr(predict, "_GROUP_CHARS", 100)
    assert tagger.predict_documents(texts) == expected
    assert len(groups) > 3 and sum(groups) == len(texts)


def test_the_prefect_predict_flow_passes_a_span_model_and_its_options(tmp_path, span_model_dir):
    from flows import pipeline, steps
    from flows.contracts import FilesSource
    from ner_core.config import PredictionConfig
    from tests.test_dask_predict import _rows, _same

    files = []
    for i, t in enumerate(SPAN_TEXTS):
        (tmp_path / f"t{i}.txt").write_text(t, encoding="utf-8")
        files.append(str(tmp_path / f"t{i}.txt"))
    source = FilesSource(files=files)
    options = PredictionConfig(precision="fp32", window=24, overlap="flat")
    flow_db, plain_db = str(tmp_path / "flow.duckdb"), str(tmp_path / "plain.duckdb")
    out = pipeline.predict_flow(flow_db, source, str(span_model_dir), None, options)
    plain = steps.predict_source(plain_db, source, str(span_model_dir), None, options)
    assert out.n_entities == plain.n_entities > 0
    _same(_rows(flow_db, out.pred_run_id), _rows(plain_db, plain.pred_run_id))
    config = _stored_config(flow_db, out.pred_run_id)
    assert (config["decoder"], config["overlap"], config["span_threshold"]) == ("span", "flat", 0.5)


def test_sharded_prediction_refuses_span_options_for_a_crf_model_before_starting_workers(
    tmp_path, tiny_encoder_dir, monkeypatch
):
    import distributed

    from flows.dask_predict import predict_sharded
    from ner_core.config import PredictionConfig
    from ner_core.documents import Document
    from tests.test_predict import build_model_dir

    crf_dir = build_model_dir(tmp_path / "crf", tiny_encoder_dir)
    monkeypatch.setattr(distributed, "LocalCluster", lambda *a, **k: pytest.fail("a cluster was started"))
    with pytest.raises(ValueError, match="apply to a span-decoder model only; this model decodes with a CRF"):
        predict_sharded(
            str(tmp_path / "d.duckdb"),
            str(crf_dir),
            [Document(doc_id="a", text=TEXT)],
            input_kind="texts",
            input_ref="x",
            options=PredictionConfig(precision="fp32", span_threshold=0.3),
        )
    assert not (tmp_path / "d.duckdb").exists()


def test_adding_documents_to_a_span_run_under_other_decoding_settings_is_refused(tmp_path):
    """``--only-new`` adds documents to a stored run (replace=False): under another threshold or overlap its
    rows would come from two settings while the run's config names one."""
    from ner_core.inference.tagger import PredictedEntity
    from storage.predictions import PredictionRunWriter

    db = str(tmp_path / "add.duckdb")
    span = {"decoder": "span", "span_threshold": 0.5, "overlap": "allow", "max_span_len": 6}

    def add(doc_id: str, decoding: dict, replace: bool):
        with PredictionRunWriter(
            db,
            "r",
            model_dir="m",
            run_id=None,
            input_kind="dataset",
            input_ref="x",
            extra=decoding,
            replace=replace,
        ) as run:
            run.write([(doc_id, "北京", [PredictedEntity(0, 2, "LOC", "北京", 0.9)], 0.1)])
        return run

    add("a", span, True)
    assert add("b", span, False).done == {"a"}  # same settings: added
    for change in ({"span_threshold": 0.3}, {"overlap": "flat"}, {"decoder": "crf"}):
        with pytest.raises(ValueError, match="would mix two settings in one run"):
            add("c", span | change, False)
    assert _stored_config(db, "r")["span_threshold"] == 0.5
    add("old", {}, True)  # a run stored before the decoder was recorded is a CRF run
    add("new", {"decoder": "crf"}, False)
