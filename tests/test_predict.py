"""Batch prediction: windowed tagging of long texts, the merge rule, confidence, and prediction runs in
DuckDB (replace, resume after an interruption, SQL input, views and the disagreement macro)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from torch import nn

from flows.contracts import FilesSource, SqlSource
from ner_core.config import PredictionConfig
from tests.conftest import REPO, SAMPLE

LABELS = ["FIN", "LOC", "ORG", "PER"]
RAW = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))


def build_model_dir(
    out: Path, encoder_dir: Path, *, seed: int = 0, head: str = "bilstm", max_len: int = 64
) -> Path:
    """An untrained but complete model directory (tiny encoder + head + CRF), deterministic for ``seed``."""
    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    cfg = NERConfig.model_validate(
        {
            "data": {"dataset": "sample", "max_len": max_len},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": head, "rnn_units": 16, "cnn_filters": 16},
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, tokenizer = load_encoder(cfg.encoder)
        model = NERModel(cfg, tag_set(LABELS, cfg.data.scheme), encoder)
        with torch.no_grad():  # make entities likely from an untrained model: louder emissions
            model.classifier.weight.mul_(20.0)
    return save_model_dir(out, model, tokenizer, metrics={"note": "untrained test model", "seed": seed})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("pred-model") / "model", tiny_encoder_dir)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("pred-model-b") / "model", tiny_encoder_dir, seed=1)


@pytest.fixture(scope="module")
def loaded(model_dir):
    from ner_core.artifacts.modeldir import load_model_dir

    return load_model_dir(model_dir)


@pytest.fixture(scope="module")
def long_text() -> str:
    text = "".join(Path(p).read_text(encoding="utf-8") for p in RAW)
    while len(text) < 5000:
        text += text
    return text[:5000]


def _docs(n: int = 7):
    from ner_core.documents import Document

    texts = [Path(p).read_text(encoding="utf-8").strip() for p in RAW]
    lines = [ln for t in texts for ln in t.split("\n") if ln.strip()]
    docs = [Document(doc_id=f"d{i:02d}", text=t) for i, t in enumerate(texts)]
    docs += [Document(doc_id=f"l{i:02d}", text=t) for i, t in enumerate(lines[: max(0, n - len(docs))])]
    return docs[:n]


# ----------------------------------------------------------------------------------------- fakes
class _PositionFreeModel(nn.Module):
    """Emissions depend only on the character id (no context): the stitched emissions of any windows are
    then exactly the whole text's, so windowed tagging must equal whole-text tagging, whatever the windows
    and whatever the CRF (with ``transitions``: random learned scores and the scheme's constraints, the
    CRF's context crossing every window edge; else no transitions at all)."""

    def __init__(self, tags: list[str], vocab: int, seed: int = 0, transitions: bool = False):
        from ner_core.config import NERConfig
        from ner_core.model.crf import ConstrainedCRF
        from ner_core.schemes import allowed_transitions

        super().__init__()
        self.tags = tags
        self.config = NERConfig.model_validate({"data": {"scheme": "BIOES"}})
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, len(tags), generator=g) * 3)  # (V, K)
        self.crf = ConstrainedCRF(len(tags), allowed_transitions(tags, "BIOES") if transitions else None)
        with torch.no_grad():
            for p in self.crf.parameters():
                p.copy_(torch.rand(p.shape, generator=g) * 4 - 2) if transitions else p.zero_()

    def emissions(self, ids, att):
        em = self.table[ids[:, 1:-1]]  # (B, T, K)
        n = att.long().sum(1) - 2  # (B,)
        mask = torch.arange(ids.shape[1] - 2).unsqueeze(0) < n.unsqueeze(1)  # (B, T)
        return em, mask


class _EdgeModel(_PositionFreeModel):
    """Tags S-X on the first and last 4 positions of every window, O elsewhere."""

    def emissions(self, ids, att):
        B, T2 = ids.shape
        n = att.long().sum(1) - 2  # (B,)
        pos = torch.arange(T2 - 2).unsqueeze(0).expand(B, -1)  # (B, T)
        edge = (pos < 4) | (pos >= (n.unsqueeze(1) - 4))  # (B, T)
        em = torch.full((B, T2 - 2, len(self.tags)), -10.0)  # (B, T, K)
        em[..., self.tags.index("O")] = 0.0
        em[..., self.tags.index("S-X")] = torch.where(edge, 10.0, -10.0)
        mask = pos < n.unsqueeze(1)  # (B, T)
        return em, mask


# ----------------------------------------------------------------------------------------- tagger
def test_long_text_gets_a_tag_for_every_char_and_is_deterministic(loaded, long_text):
    from ner_core.inference.tagger import Tagger

    tagger = Tagger.from_loaded(loaded, PredictionConfig(window=64, stride=32, batch_size=16))
    ((tags, probs),) = tagger.tag_texts([long_text])
    assert len(tags) == len(probs) == 5000
    assert set(tags) <= set(loaded.tags) and len(set(tags)) > 1
    assert all(0.0 <= p <= 1.0 + 1e-6 for p in probs)
    again = Tagger.from_loaded(loaded, PredictionConfig(window=64, stride=32, batch_size=7)).tag_texts(
        [long_text, "短文本"], confidence=False
    )
    assert again[0][0] == tags  # batch composition does not change the tags
    assert again[0][1] == [1.0] * 5000 and len(again[1][0]) == 3
    seen: list[int] = []  # progress counts each character once, overlaps or not: a bar ends at 100%
    Tagger.from_loaded(loaded, PredictionConfig(window=64, stride=16, batch_size=4)).tag_texts(
        [long_text, "", "短文本"], progress=seen.append
    )
    assert sum(seen) == 5003 and len(seen) > 1 and min(seen) >= 0


@pytest.mark.parametrize("transitions", [False, True])
def test_windowed_equals_whole_text_when_the_model_has_no_context(loaded, long_text, transitions):
    from ner_core.inference.tagger import Tagger

    fake = _PositionFreeModel(loaded.tags, vocab=len(loaded.tokenizer), transitions=transitions)
    whole = Tagger(fake, loaded.tokenizer, max_len=510, stride=510).tag_texts([long_text[:500]])[0]
    for max_len, stride in ((64, 32), (64, 1), (50, 50), (17, 5)):
        win = Tagger(fake, loaded.tokenizer, max_len=max_len, stride=stride).tag_texts([long_text[:500]])[0]
        assert win[0] == whole[0], (max_len, stride)
        assert win[1] == pytest.approx(whole[1], abs=1e-5)


def test_the_crf_runs_over_the_whole_text_so_tags_never_break_the_scheme(loaded, long_text):
    """Per-window decoding merged by tags could join a B-X of one window to an O or I-Y of the next;
    one CRF pass over the stitched emissions cannot: every sequence is valid in the model's scheme."""
    from ner_core.inference.tagger import Tagger
    from ner_core.schemes import validate_tags

    texts = [long_text[i : i + 700] for i in range(0, 4200, 700)]
    for max_len, stride in ((16, 9), (32, 28), (24, 3)):
        for tags, _ in Tagger.from_loaded(loaded, PredictionConfig(window=max_len, stride=stride)).tag_texts(
            texts
        ):
            assert validate_tags(tags, loaded.scheme) == [], (max_len, stride)


def test_the_whole_text_crf_equals_decoding_the_stitched_emissions_directly(loaded, long_text):
    """The tagger's result, recomputed by hand: the emissions of each character from its most central
    window (windows encoded one at a time), then the model's CRF on the whole text."""
    import numpy as np

    from ner_core.data.batching import EncodedChunk, collate
    from ner_core.inference.tagger import Tagger, tagging_windows

    text = long_text[:300]
    tagger = Tagger.from_loaded(
        loaded, PredictionConfig(window=40, stride=30, batch_size=5, precision="fp32")
    )
    tags, probs = tagger.tag_texts([text])[0]
    K = len(loaded.tags)
    em = np.zeros((len(text), K), np.float32)
    best = np.full(len(text), -1)
    with torch.inference_mode():
        for s, e in tagging_windows(len(text), 40, 30):
            enc = collate(
                [EncodedChunk(None, tagger.aligner.char_ids(text[s:e]), None)],
                tagger.aligner.cls_id,
                tagger.aligner.sep_id,
                tagger.aligner.pad_id,
            )
            w = loaded.model.emissions(enc["input_ids"], enc["attention_mask"])[0][0].numpy()  # (n, K)
            for j in range(e - s):
                if min(j, e - s - 1 - j) > best[s + j]:
                    best[s + j], em[s + j] = min(j, e - s - 1 - j), w[j]
        em_t = torch.from_numpy(em).unsqueeze(0)
        mask = torch.ones(1, len(text), dtype=torch.bool)
        path = loaded.model.crf.decode(em_t, mask)[0]
        marg = loaded.model.crf.marginals(em_t, mask, backend="torch")[0]
    assert tags == [loaded.tags[k] for k in path]
    assert probs == pytest.approx([float(marg[t, k]) for t, k in enumerate(path)], abs=1e-5)


def test_without_the_c_kernels_the_tagger_gives_the_same_result(loaded, long_text, monkeypatch):
    from ner_core.inference.tagger import Tagger
    from ner_core.model import _ckernel

    texts = [long_text[:1500], long_text[1500:1600], "短"]
    tagger = Tagger.from_loaded(loaded, PredictionConfig(window=48, stride=40))
    expected = tagger.tag_texts(texts)
    monkeypatch.setattr(_ckernel, "load", lambda: None)  # as on a machine without a C compiler
    got = tagger.tag_texts(texts)
    for (t1, p1), (t2, p2) in zip(expected, got, strict=True):
        assert t1 == t2 and p1 == pytest.approx(p2, abs=1e-5)


def test_texts_are_tagged_in_bounded_groups_with_the_same_result(loaded, long_text, monkeypatch):
    import ner_core.inference.tagger as predict

    texts = [long_text[i : i + 90 + 7 * i // 100] for i in range(0, 4000, 250)] + [""]
    # fp32: ``auto`` picks dynamic int8 on a CPU without bf16 units, whose activation ranges are per batch,
    # so there other groups give other batches and slightly other scores (see the tagger's docstring)
    options = PredictionConfig(window=32, stride=24, precision="fp32")
    tagger = predict.Tagger.from_loaded(loaded, options)
    expected = tagger.tag_texts(texts)
    groups = []
    real = predict.Tagger._tag_group
    monkeypatch.setattr(
        predict.Tagger, "_tag_group", lambda self, g, *a: groups.append(len(g)) or real(self, g, *a)
    )
    monkeypatch.setattr(predict, "_GROUP_CHARS", 400)
    monkeypatch.setattr(predict, "_CRF_CELLS", 300)  # whole-text CRF batches of one or two rows
    assert tagger.tag_texts(texts) == expected
    assert len(groups) > 3 and sum(groups) == len(texts)


def test_each_char_keeps_the_tag_of_its_most_central_window(loaded):
    from ner_core.inference.tagger import Tagger

    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    fake = _EdgeModel(tags, vocab=len(loaded.tokenizer))
    text = "中" * 500
    got, _ = Tagger(fake, loaded.tokenizer, max_len=64, stride=32).tag_texts([text])[0]
    edges = [i for i, t in enumerate(got) if t == "S-X"]
    # only the text's own ends have no window in which they sit more centrally
    assert edges == [0, 1, 2, 3, 496, 497, 498, 499]


def _encoded_shapes(monkeypatch) -> list[tuple[int, int, int]]:
    """(rows, positions, real characters) of every window batch the tagger encodes from now on."""
    import ner_core.inference.tagger as predict

    seen: list[tuple[int, int, int]] = []
    real = predict.collate

    def spy(*args, **kwargs):
        enc = real(*args, **kwargs)
        rows, positions = enc["input_ids"].shape
        seen.append((rows, positions, int(enc["attention_mask"].sum()) - 2 * rows))
        return enc

    monkeypatch.setattr(predict, "collate", spy)
    return seen


def test_windows_are_as_many_as_fixed_ones_but_spread_evenly_so_every_boundary_overlaps(loaded):
    """As many windows of ``max_len`` as fixed windows every ``stride`` characters (the same encoding work),
    starts at most ``stride`` apart; but no last window pinned to the text's end takes all the surplus
    overlap while the others get the minimum: the overlaps differ by at most one character, so at
    ``stride == max_len`` a text that is not a multiple of the window still has no boundary without
    overlap (a character there would be tagged at a window's edge)."""
    from ner_core.data.batching import sliding_windows
    from ner_core.inference.tagger import Tagger, tagging_windows

    for length in range(1, 400):
        for max_len in (1, 7, 32, 128):
            for stride in {1, max(1, max_len // 2), max_len - max_len // 8, max_len}:
                wins = tagging_windows(length, max_len, stride)
                assert len(wins) == len(sliding_windows(length, max_len, stride)), (length, max_len, stride)
                assert wins[0][0] == 0 and wins[-1][1] == length
                assert {e - s for s, e in wins} == {min(length, max_len)}
                overlaps = [e1 - s2 for (_, e1), (s2, _) in zip(wins, wins[1:], strict=False)]
                assert all(max_len - stride <= o < max_len for o in overlaps), (length, max_len, stride)
                assert not overlaps or max(overlaps) - min(overlaps) <= 1, (length, max_len, stride)
    assert tagging_windows(300, 128, 128) == [(0, 128), (86, 214), (172, 300)]  # fixed: (128, 256) next
    with pytest.raises(ValueError, match="stride \\(9\\) must not exceed max_len \\(8\\)"):
        tagging_windows(20, 8, 9)
    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    fake = _EdgeModel(tags, vocab=len(loaded.tokenizer))  # S-X on the 4 first and last positions of a window
    got, _ = Tagger(fake, loaded.tokenizer, max_len=128, stride=128).tag_texts(["中" * 300])[0]
    assert [i for i, t in enumerate(got) if t == "S-X"] == [0, 1, 2, 3, 296, 297, 298, 299]


def test_reduced_precision_batches_are_rounded_to_16_positions_but_never_beyond_the_window(
    loaded, monkeypatch
):
    """bf16 rounds each batch's positions up to a multiple of 16 (few shapes for oneDNN to compile), but a
    batch of full windows keeps the window's own length: padding it would add positions to every batch."""
    from ner_core.inference.tagger import Tagger

    shapes = _encoded_shapes(monkeypatch)
    tagger = Tagger(loaded.model, loaded.tokenizer, max_len=40, stride=40, batch_size=4, precision="bf16")
    tagger.tag_texts(["中" * 160, "短文本" * 3])  # windows 9, 40, 40, 40 | 40 characters
    assert [(rows, positions) for rows, positions, _ in shapes] == [(4, 42), (1, 42)]  # not (4, 48), (1, 48)
    shapes.clear()
    tagger.tag_texts(["短文本" * 3])
    Tagger(loaded.model, loaded.tokenizer, max_len=40, stride=40, precision="fp32").tag_texts(["短文本" * 3])
    assert [(rows, positions) for rows, positions, _ in shapes] == [(1, 16), (1, 11)]  # fp32, int8: as is


def test_entities_have_true_offsets_and_min_marginal_confidence(loaded):
    from ner_core.inference.tagger import Tagger
    from ner_core.schemes import tags_to_spans

    tagger = Tagger.from_loaded(loaded, PredictionConfig(window=32, stride=16))
    texts = [d.text for d in _docs(5)] + ["", "A股 😀 iPhone 15，余额宝。"]
    preds = tagger.predict(texts)
    tagged = tagger.tag_texts(texts)
    assert len(preds) == len(texts) and preds[-2] == []
    n = 0
    for text, ents, (tags, probs) in zip(texts, preds, tagged, strict=True):
        expected = []
        for s in tags_to_spans(tags, loaded.scheme):  # whitespace at a span's edges is trimmed
            a, b = s.start, s.end
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if a < b:
                expected.append((a, b, s.label))
        assert [(e.start, e.end, e.label) for e in ents] == expected
        for e in ents:
            n += 1
            assert text[e.start : e.end] == e.text and e.label in LABELS
            assert e.confidence == pytest.approx(min(probs[e.start : e.end]), abs=1e-6)
    assert n > 0


def test_document_uncertainty_is_the_summed_token_entropy_of_the_crf_marginals(loaded, long_text):
    """predict_documents: the same entities as predict, and per text -sum_t sum_k p ln p over the CRF
    marginals of the whole text (recomputed here from the emissions with the torch forward-backward)."""
    import numpy as np

    from ner_core.inference.tagger import Tagger

    fake = _PositionFreeModel(loaded.tags, vocab=len(loaded.tokenizer), transitions=True)
    tagger = Tagger(fake, loaded.tokenizer, max_len=40, stride=30)
    texts = [long_text[:90], "", "A股 😀 iPhone 15，余额宝。", long_text[200:230]]
    docs = tagger.predict_documents(texts)
    assert [d.entities for d in docs] == tagger.predict(texts)
    assert docs[1].uncertainty == 0.0 and docs[1].entities == []
    for text, doc in zip(texts, docs, strict=True):
        if not text:
            continue
        ids = torch.tensor(tagger.aligner.char_ids(text)).unsqueeze(0)  # (1, T)
        with torch.inference_mode():
            em = fake.table[ids]  # (1, T, K)
            marg = fake.crf.marginals(em, torch.ones(ids.shape, dtype=torch.bool), backend="torch")[0]
        p = marg.double().numpy()  # (T, K)
        expected = float(-(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum())
        assert doc.uncertainty == pytest.approx(expected, rel=1e-4, abs=1e-4) and doc.uncertainty > 0
    # a model sure of every character (O everywhere): no uncertainty; one without any preference: more
    with torch.no_grad():
        fake.table.zero_()
        fake.table[:, loaded.tags.index("O")] = 50.0
    sure = tagger.predict_documents([texts[0]])[0].uncertainty
    with torch.no_grad():
        fake.table.zero_()
    unsure = tagger.predict_documents([texts[0]])[0].uncertainty
    assert sure < 1e-3 < docs[0].uncertainty < unsure
    assert tagger.tag_texts([texts[0]], confidence=False, uncertainty=True)[0][2] is None


def test_a_prediction_run_stores_each_documents_uncertainty(tmp_path, model_dir, loaded):
    from flows import steps
    from ner_core.inference.tagger import Tagger

    db, docs = str(tmp_path / "u.duckdb"), _docs(4)
    out = steps.predict_step(db, str(model_dir), docs, input_kind="texts", input_ref="four", progress=False)
    with duckdb.connect(db, read_only=True) as con:
        stored = dict(
            con.execute(
                "SELECT doc_id, uncertainty FROM predicted_documents WHERE pred_run_id = ?", [out.pred_run_id]
            ).fetchall()
        )
    expected = Tagger.from_loaded(loaded).predict_documents([d.text for d in docs])
    assert stored == pytest.approx(
        {d.doc_id: e.uncertainty for d, e in zip(docs, expected, strict=True)}, rel=1e-4
    )
    assert all(v > 0 for v in stored.values())


def test_tagger_rejects_bad_input(loaded):
    from ner_core.inference.tagger import Tagger

    with pytest.raises(ValueError, match="stride .* must not exceed max_len"):
        Tagger.from_loaded(loaded, PredictionConfig(window=16, stride=32))
    with pytest.raises(ValueError, match="max_len must be a positive int, got 0"):
        Tagger(loaded.model, loaded.tokenizer, max_len=0)
    tagger = Tagger.from_loaded(loaded, PredictionConfig(window=16))
    with pytest.raises(ValueError, match="expected a sequence of texts .* got str"):
        tagger.predict("张三")
    with pytest.raises(ValueError, match="got int at index 1"):
        tagger.predict(["张三", 3])


# ----------------------------------------------------------------------------------------- prediction runs
def _entity_rows(db: str, pred_run_id: str) -> list[tuple]:
    con = duckdb.connect(db, read_only=True)
    rows = con.execute(
        'SELECT doc_id, "start", "end", label, text, round(confidence, 4) FROM predicted_entities '
        "WHERE pred_run_id = ? ORDER BY ALL",
        [pred_run_id],
    ).fetchall()
    con.close()
    return rows


def test_rerun_replaces_rows_never_duplicates(tmp_path, model_dir):
    from flows import steps

    db, docs = str(tmp_path / "p.duckdb"), _docs(5)
    a = steps.predict_step(
        db, str(model_dir), docs, input_kind="texts", input_ref="five", batch_docs=2, progress=False
    )
    b = steps.predict_step(
        db, str(model_dir), docs, input_kind="texts", input_ref="five", batch_docs=3, progress=False
    )
    assert a.pred_run_id == b.pred_run_id and not b.resumed and b.skipped_already_done == 0
    rows = _entity_rows(db, a.pred_run_id)
    assert len(rows) == a.n_entities == b.n_entities > 0
    assert len(set(rows)) == len(rows)
    con = duckdb.connect(db, read_only=True)
    status, n_docs, cfg = con.execute(
        "SELECT status, n_documents, config FROM prediction_runs WHERE pred_run_id = ?", [a.pred_run_id]
    ).fetchone()
    by_label = dict(
        con.execute(
            "SELECT label, n_entities FROM v_predicted_label_counts WHERE pred_run_id = ?", [a.pred_run_id]
        ).fetchall()
    )
    con.close()
    assert status == "completed" and n_docs == 5 and json.loads(cfg)["max_len"] == 64
    assert sum(by_label.values()) == len(rows)


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path, model_dir, monkeypatch):
    from flows import steps
    from storage import predictions as predictions_db

    docs = _docs(7)
    ref_db = str(tmp_path / "ref.duckdb")
    ref = steps.predict_step(
        ref_db, str(model_dir), docs, input_kind="texts", input_ref="seven", batch_docs=3, progress=False
    )

    db = str(tmp_path / "p.duckdb")
    real_write = predictions_db.write_predictions
    calls = []

    def write_then_fail(*args, **kwargs):
        if calls:
            raise RuntimeError("simulated crash after the first batch")
        calls.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(predictions_db, "write_predictions", write_then_fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        steps.predict_step(
            db, str(model_dir), docs, input_kind="texts", input_ref="seven", batch_docs=3, progress=False
        )
    monkeypatch.setattr(predictions_db, "write_predictions", real_write)
    row = predictions_db.get_prediction_run(db, ref.pred_run_id)
    assert row["status"] == "failed" and row["n_documents"] == 3

    tagged = []
    real_predict = __import__("ner_core.inference.tagger", fromlist=["Tagger"]).Tagger.predict_documents

    def counting_predict(self, texts, **kw):
        tagged.extend(texts)
        return real_predict(self, texts, **kw)

    monkeypatch.setattr("ner_core.inference.tagger.Tagger.predict_documents", counting_predict)
    out = steps.predict_step(
        db, str(model_dir), docs, input_kind="texts", input_ref="seven", batch_docs=3, progress=False
    )
    assert out.resumed and out.skipped_already_done == 3
    assert tagged == [d.text for d in docs[3:]]  # only what was missing
    assert out.n_documents == 7 and out.n_entities == ref.n_entities
    assert _entity_rows(db, out.pred_run_id) == _entity_rows(ref_db, ref.pred_run_id)
    assert predictions_db.get_prediction_run(db, out.pred_run_id)["status"] == "completed"


@pytest.mark.slow
def test_killed_process_resumes(tmp_path, model_dir):
    """A real kill (os._exit) after the first batch leaves status 'running'; the next run resumes."""
    from flows import steps

    docs = _docs(6)
    db = str(tmp_path / "k.duckdb")
    (tmp_path / "docs.json").write_text(json.dumps([d.model_dump() for d in docs], ensure_ascii=False))
    script = f"""
import json, os
from ner_core.documents import Document
from flows import steps
from storage import predictions as predictions_db
from storage import query as query_db
real = predictions_db.write_predictions
def write_then_die(*a, **k):
    real(*a, **k)
    os._exit(137)
predictions_db.write_predictions = write_then_die
docs = [Document(**d) for d in json.load(open({str(tmp_path / "docs.json")!r}, encoding='utf-8'))]
steps.predict_step({db!r}, {str(model_dir)!r}, docs, input_kind="texts", input_ref="six", batch_docs=2,
                   progress=False)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 137, r.stderr[-2000:]
    out = steps.predict_step(
        db, str(model_dir), docs, input_kind="texts", input_ref="six", batch_docs=2, progress=False
    )
    assert out.resumed and out.skipped_already_done == 2 and out.n_documents == 6
    ref = steps.predict_step(
        str(tmp_path / "r.duckdb"),
        str(model_dir),
        docs,
        input_kind="texts",
        input_ref="six",
        batch_docs=2,
        progress=False,
    )
    assert _entity_rows(db, out.pred_run_id) == _entity_rows(str(tmp_path / "r.duckdb"), ref.pred_run_id)


def test_changed_window_settings_replace_instead_of_resuming(tmp_path, model_dir):
    from flows import steps
    from storage import predictions as predictions_db

    docs = _docs(4)
    db = str(tmp_path / "p.duckdb")
    first = steps.predict_step(db, str(model_dir), docs, input_kind="texts", input_ref="four", progress=False)
    predictions_db.finish_prediction_run(db, first.pred_run_id, status="failed", seconds=1.0)
    again = steps.predict_step(
        db,
        str(model_dir),
        docs,
        input_kind="texts",
        input_ref="four",
        options=PredictionConfig(window=32),
        progress=False,
    )
    assert not again.resumed and again.skipped_already_done == 0 and again.n_documents == 4


@pytest.mark.parametrize("stored_merge", [None, "emissions"])
def test_a_run_stored_before_the_whole_text_crf_is_replaced_not_resumed(tmp_path, model_dir, stored_merge):
    """Runs stored by the per-window merge (no "merge" in their config) or with fixed windows every stride
    ("emissions") tagged differently: never mix."""
    from flows import steps
    from storage import predictions as predictions_db

    docs = _docs(4)
    db = str(tmp_path / "p.duckdb")
    first = steps.predict_step(
        db, str(model_dir), docs[:2], input_kind="texts", input_ref="four", progress=False
    )
    predictions_db.finish_prediction_run(db, first.pred_run_id, status="failed", seconds=1.0)
    con = duckdb.connect(db)
    cfg = json.loads(
        con.execute(
            "SELECT config FROM prediction_runs WHERE pred_run_id = ?", [first.pred_run_id]
        ).fetchone()[0]
    )
    assert cfg["merge"] == "emissions/even-windows"
    if stored_merge is None:
        del cfg["merge"]
    else:
        cfg["merge"] = stored_merge
    con.execute(
        "UPDATE prediction_runs SET config = ? WHERE pred_run_id = ?", [json.dumps(cfg), first.pred_run_id]
    )
    con.close()
    again = steps.predict_step(db, str(model_dir), docs, input_kind="texts", input_ref="four", progress=False)
    assert not again.resumed and again.skipped_already_done == 0 and again.n_documents == 4
    same = steps.predict_step(
        db, str(model_dir), docs, input_kind="texts", input_ref="four", progress=False, replace=False
    )
    assert same.resumed and same.skipped_already_done == 4


def test_sql_input_runs_read_only(tmp_path, model_dir):
    from flows import steps

    db = str(tmp_path / "p.duckdb")
    first = steps.predict_step(
        db, str(model_dir), _docs(3), input_kind="texts", input_ref="three", progress=False
    )
    run = first.pred_run_id
    sql = f"SELECT doc_id, text FROM predicted_documents WHERE pred_run_id = '{run}' ORDER BY doc_id"
    docs, kind, ref = steps.load_prediction_input(db, SqlSource(sql=sql))
    assert kind == "sql" and ref == sql and [d.doc_id for d in docs] == ["d00", "d01", "d02"]
    assert docs[0].text == _docs(1)[0].text
    out = steps.predict_step(db, str(model_dir), docs, input_kind=kind, input_ref=ref, progress=False)
    assert out.pred_run_id != first.pred_run_id and out.n_entities == first.n_entities
    with pytest.raises(ValueError, match="read-only"):
        steps.load_prediction_input(db, SqlSource(sql="DELETE FROM prediction_runs"))
    with pytest.raises(ValueError, match="must return columns doc_id and text, got \\['id', 'text'\\]"):
        steps.load_prediction_input(db, SqlSource(sql="SELECT 1 AS id, 'x' AS text"))
    with pytest.raises(ValueError, match="needs 'files', 'dataset' or 'sql'"):
        steps.load_prediction_input(db, {"query": "SELECT 1"})
    for sql in (
        "SELECT 'x' AS doc_id, column0 AS text FROM read_csv('/etc/passwd')",
        "SELECT 'x' AS doc_id, column0 AS text FROM '/etc/passwd'",
    ):
        with pytest.raises(ValueError, match="read-only.*(read_csv|file path)"):
            steps.load_prediction_input(db, SqlSource(sql=sql))
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM prediction_runs").fetchone()[0] == 2
    con.close()


def test_disagreements_between_two_runs_match_set_differences(tmp_path, model_dir, other_model_dir):
    from flows import steps
    from storage import predictions as predictions_db
    from storage import query as query_db

    db, docs = str(tmp_path / "p.duckdb"), _docs(4)
    a = steps.predict_step(db, str(model_dir), docs, input_kind="texts", input_ref="x", progress=False)
    b = steps.predict_step(
        db, str(other_model_dir), docs[:3], input_kind="texts", input_ref="x", progress=False
    )
    ea = {r[:4] for r in _entity_rows(db, a.pred_run_id) if r[0] in {d.doc_id for d in docs[:3]}}
    eb = {r[:4] for r in _entity_rows(db, b.pred_run_id)}
    rows = predictions_db.prediction_disagreements(db, a.pred_run_id, b.pred_run_id)
    only_a = {(r["doc_id"], r["start"], r["end"], r["label"]) for r in rows if r["side"] == "only_a"}
    only_b = {(r["doc_id"], r["start"], r["end"], r["label"]) for r in rows if r["side"] == "only_b"}
    assert only_a == ea - eb and only_b == eb - ea and (only_a or only_b)
    assert predictions_db.prediction_disagreements(db, a.pred_run_id, a.pred_run_id) == []
    ctx = query_db.query(db, "SELECT * FROM document_entities(?, ?)", [a.pred_run_id, "d00"])
    text = docs[0].text
    for r in ctx:
        assert text[r["start"] : r["end"]] == r["text"]
        assert text[: r["start"]].endswith(r["left_context"]) and text[r["end"] :].startswith(
            r["right_context"]
        )
    top = query_db.query(
        db, "SELECT sum(n) AS n FROM v_top_predicted_entities WHERE pred_run_id = ?", [a.pred_run_id]
    )
    assert top[0]["n"] == a.n_entities
    summary = query_db.query(db, "SELECT * FROM v_prediction_runs WHERE pred_run_id = ?", [b.pred_run_id])[0]
    assert summary["n_documents_stored"] == 3 and summary["n_entities_stored"] == b.n_entities


def test_predict_step_rejects_duplicate_doc_ids(tmp_path, model_dir):
    from flows import steps
    from ner_core.documents import Document

    docs = [Document(doc_id="x", text="张三"), Document(doc_id="x", text="李四")]
    with pytest.raises(ValueError, match="duplicate doc_id 'x'"):
        steps.predict_step(
            str(tmp_path / "p.duckdb"), str(model_dir), docs, input_kind="texts", input_ref="d"
        )


# ----------------------------------------------------------------------------------------- speed settings
def test_int8_tagger_quantizes_a_copy_of_the_encoder_only(loaded, long_text):
    from ner_core.inference.tagger import Tagger

    fp = Tagger.from_loaded(loaded, PredictionConfig(window=32, precision="fp32"))
    q = Tagger.from_loaded(loaded, PredictionConfig(window=32, precision="int8"))
    assert q.settings["precision"] == "int8" and fp.settings["precision"] == "fp32"
    from ner_core.runtime.quantize import Int8Linear

    int8 = [m for m in q.model.encoder.modules() if isinstance(m, Int8Linear)]
    assert int8
    assert all(m.per_channel and m.inv_smooth is not None for m in int8)  # smoothed by synthetic ranges
    kept = [n for n, m in q.model.encoder.named_modules() if type(m).__name__ in ("Bf16Linear", "Linear")]
    assert kept and all(n.endswith("output.dense") and "attention" not in n for n in kept)  # the FFN output
    assert type(q.model.classifier) is nn.Linear  # the head and the CRF stay float
    # the loaded model itself is untouched (a copy was quantized): its encoder still has float Linear layers
    assert all(type(m) is nn.Linear for m in loaded.model.encoder.modules() if type(m).__name__ == "Linear")
    ((tags_fp, _),) = fp.tag_texts([long_text])
    ((tags_q, probs_q),) = q.tag_texts([long_text])
    assert len(tags_q) == len(probs_q) == len(long_text)  # every character tagged
    same = sum(a == b for a, b in zip(tags_fp, tags_q, strict=True)) / len(long_text)
    assert same > 0.8, same  # int8 rounding moves some tags of this untrained model, not most of them
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, int8, got 'fp4'"):
        Tagger(loaded.model, loaded.tokenizer, max_len=32, precision="fp4")
    with pytest.raises(ValueError, match="Input should be 'auto', 'fp32', 'bf16', 'fp16' or 'int8'"):
        PredictionConfig(precision="fp4")
    # the retired setting still loads, mapped onto precision
    assert PredictionConfig(quantize="int8").precision == "int8"


def test_from_loaded_takes_the_saved_prediction_settings_unless_overridden(loaded):
    from types import SimpleNamespace

    from ner_core.inference.tagger import Tagger

    cfg = loaded.config.model_copy(
        update={
            "prediction": loaded.config.prediction.model_copy(
                update={"window": 24, "stride": 10, "batch_size": 3}
            )
        }
    )
    saved = SimpleNamespace(model=loaded.model, tokenizer=loaded.tokenizer, config=cfg)
    fp32 = PredictionConfig(precision="fp32")
    assert Tagger.from_loaded(saved, fp32).settings == {
        "max_len": 24,
        "stride": 10,
        "batch_size": 3,
        "device": "cpu",
        "precision": "fp32",
        "merge": "emissions/even-windows",
    }
    options = PredictionConfig(window=40, stride=20, batch_size=5, precision="fp32")
    assert Tagger.from_loaded(saved, options).settings == {
        "max_len": 40,
        "stride": 20,
        "batch_size": 5,
        "device": "cpu",
        "precision": "fp32",
        "merge": "emissions/even-windows",
    }
    # no saved prediction window: the model's training max_len, stride half of it
    assert Tagger.from_loaded(loaded).settings["max_len"] == loaded.config.data.max_len
    assert Tagger.from_loaded(loaded).settings["stride"] == loaded.config.data.max_len  # stride = window
    limit = loaded.model.encoder.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"exceeds the encoder's {limit} positions"):
        Tagger.from_loaded(loaded, PredictionConfig(window=limit))


def test_predict_cli_window_stride_and_precision_reach_the_stored_run(tmp_path, model_dir, capsys):
    from app import cli

    db = str(tmp_path / "cli.duckdb")
    argv = [
        "predict",
        "--no-prefect",
        "--db",
        db,
        "--model-dir",
        str(model_dir),
        RAW[0],
        "--window",
        "20",
        "--stride",
        "7",
        "--batch-size",
        "4",
        "--precision",
        "int8",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [
        "pred_run_id",
        "n_documents",
        "n_entities",
        "n_chars",
        "skipped_already_done",
        "resumed",
        "seconds",
    ]
    with duckdb.connect(db, read_only=True) as con:
        (cfg,) = con.execute(
            "SELECT config FROM prediction_runs WHERE pred_run_id = ?", [out["pred_run_id"]]
        ).fetchone()
    cfg = json.loads(cfg)
    assert {k: cfg[k] for k in ("max_len", "stride", "batch_size", "precision", "device")} == {
        "max_len": 20,
        "stride": 7,
        "batch_size": 4,
        "precision": "int8",
        "device": "cpu",
    }
    for extra, needle in (
        (["--window", "20", "--stride", "30"], "stride (30) must not exceed max_len (20)"),
        (["--window", "0"], "expected a positive integer, got 0"),
        (["--window", "600"], "exceeds the encoder's"),
        (["--precision", "fp4"], "invalid choice: 'fp4'"),
        (["--quantize", "int8"], "--quantize is replaced by --precision (int8 for --quantize int8"),
    ):
        rc = None
        try:
            rc = cli.main(argv[:7] + extra)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------------------- saved settings
@pytest.fixture()
def saved_settings_model_dir(tmp_path, model_dir) -> Path:
    """A copy of the model directory whose saved prediction settings name a batch size and a device."""
    import shutil

    out = tmp_path / "saved-settings" / "model"
    shutil.copytree(model_dir, out)
    cfg = json.loads((out / "ner_config.json").read_text(encoding="utf-8"))
    cfg["prediction"] = {"batch_size": 3, "device": "cuda:3"}
    (out / "ner_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return out


@pytest.fixture()
def tagger_spy(monkeypatch) -> list[dict]:
    """Records the settings every Tagger is built with; builds it on the CPU whatever device was asked."""
    from ner_core.inference.tagger import Tagger

    seen: list[dict] = []
    real_init = Tagger.__init__

    def spy(self, model, tokenizer, **kw):
        seen.append(dict(kw))
        real_init(self, model, tokenizer, **{**kw, "device": "cpu"})

    monkeypatch.setattr(Tagger, "__init__", spy)
    return seen


def test_commands_and_flows_honour_the_saved_device_and_batch_size(
    tmp_path, saved_settings_model_dir, tagger_spy, capsys
):
    from app import cli, serve
    from app.options import prediction_options
    from flows import dask_predict, pipeline, steps

    md, db = str(saved_settings_model_dir), str(tmp_path / "p.duckdb")
    docs = _docs(3)
    assert cli.main(["predict", "--no-prefect", "--db", db, "--model-dir", md, RAW[0]]) == 0
    capsys.readouterr()
    steps.predict_step(db, md, docs, input_kind="texts", input_ref="t", progress=False)
    pipeline.predict_task.fn(db, md, FilesSource(files=[RAW[1]]), None, None)
    dask_predict.tag_shard(md, [("a", "张三在北京")])
    dask_predict.predict_sharded(db, md, docs, input_kind="texts", input_ref="d", n_shards=2, n_workers=1)
    args = cli.build_parser().parse_args(["serve", "--model-dir", md])
    serve.create_app(md, options=prediction_options(args)).state.batcher.close()
    assert len(tagger_spy) == 7  # the plain Dask client tags two shards
    assert all((kw["batch_size"], kw["device"]) == (3, "cuda:3") for kw in tagger_spy), tagger_spy
    # an option given wins over the saved value
    cli.main(["predict", "--no-prefect", "--db", db, "--model-dir", md, RAW[0], "--batch-size", "5"])
    cli.main(["predict", "--no-prefect", "--db", db, "--model-dir", md, RAW[0], "--device", "cpu"])
    assert (tagger_spy[-2]["batch_size"], tagger_spy[-2]["device"]) == (5, "cuda:3")
    assert (tagger_spy[-1]["batch_size"], tagger_spy[-1]["device"]) == (3, "cpu")


def test_a_saved_config_that_names_the_window_max_len_still_loads(tmp_path, model_dir):
    import shutil

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import NERConfig
    from ner_core.inference.tagger import Tagger

    old = {"batch_size": 32, "max_len": 24, "stride": None, "device": "cpu", "num_threads": None}
    assert NERConfig.model_validate({"prediction": {**old, "quantize": "none"}}).prediction.window == 24
    out = tmp_path / "old" / "model"
    shutil.copytree(model_dir, out)
    cfg = json.loads((out / "ner_config.json").read_text(encoding="utf-8"))
    cfg["prediction"] = {**old, "quantize": "none"}
    (out / "ner_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    loaded = load_model_dir(out)
    assert loaded.config.prediction.window == 24 and "max_len" not in loaded.config.prediction.model_dump()
    assert Tagger.from_loaded(loaded).settings["max_len"] == 24
    # the old section's device was a default the commands never used (they tagged on auto): unset now,
    # while a device saved in today's format is honoured
    assert loaded.config.prediction.device is None
    assert PredictionConfig.model_validate({"window": 24, "device": "cpu"}).device == "cpu"
    with pytest.raises(ValueError, match="max_len \\(24\\) and window \\(30\\) disagree"):
        PredictionConfig.model_validate({"max_len": 24, "window": 30})


# ----------------------------------------------------------------------------------------- sources
@pytest.mark.parametrize(
    "value,needle",
    [
        ({"kind": "query", "sql": "SELECT 1"}, "got kind 'query'"),
        ({"text": "a"}, "got no kind (keys ['text'])"),
        ({"files": ["a.txt"], "sql": "SELECT 1"}, "got no kind (keys ['files', 'sql'])"),
        (
            {"kind": "files", "files": []},
            "invalid files prediction source: files: List should have at least 1",
        ),
        ({"kind": "dataset", "dataset": "d", "spilt": "test"}, "spilt: Extra inputs are not permitted"),
        (["a.txt"], "expected a prediction source (FilesSource, DatasetSource or SqlSource), got list"),
    ],
)
def test_a_prediction_source_is_one_kind_and_anything_else_is_one_line(tmp_path, value, needle):
    from flows import steps
    from flows.contracts import parse_source

    for call in (
        lambda: parse_source(value),
        lambda: steps.load_prediction_input(str(tmp_path / "x.db"), value),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert needle in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


def test_a_source_in_its_json_form_is_the_same_source():
    from flows.contracts import DatasetSource, FilesSource, SqlSource, parse_source

    for source in (FilesSource(files=RAW[:1]), DatasetSource(dataset="d"), SqlSource(sql="SELECT 1")):
        assert parse_source(json.loads(source.model_dump_json())) == source
    assert parse_source({"kind": "files", "files": ["a"]}) == FilesSource(files=["a"], text_per_file=True)


def test_a_source_saved_before_the_sources_were_typed_still_parses():
    """Deployments registered before the union pass {"dataset": ...} without a kind: one key names it."""
    from flows.contracts import DatasetSource, FilesSource, SqlSource, parse_source

    assert parse_source({"dataset": "news", "split": None}) == DatasetSource(dataset="news")
    old_files = {"files": ["a"], "text_per_file": False}
    assert parse_source(old_files) == FilesSource(files=["a"], text_per_file=False)
    assert parse_source({"sql": "SELECT 1"}) == SqlSource(sql="SELECT 1")
