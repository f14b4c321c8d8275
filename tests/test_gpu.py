"""What a machine with CUDA runs (marker ``gpu``; every test skips cleanly without CUDA): a training step in
each precision the GPU has, prediction, the CRF's torch paths (the C kernels are CPU-only) against the CPU
kernels, and memory given back between runs."""

from __future__ import annotations

import gc

import pytest
import torch

from tests.conftest import SAMPLE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

LABELS = ["FIN", "LOC", "ORG", "PER"]


def _precisions() -> list[str]:
    return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])


def _config(encoder_dir, precision: str):
    from ner_core.config import NERConfig

    return NERConfig.model_validate(
        {
            "data": {"max_len": 48},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bilstm", "rnn_units": 16},
            "training": {
                "hard_epochs": 1,
                "batch_size": 16,
                "device": "cuda",
                "precision": precision,
                "warmup_ratio": 0.0,
            },
        }
    )


def _docs(split: str, n: int):
    from ner_core.data.formats import read_file

    return read_file(SAMPLE / f"{split}.jsonl").documents[:n]


def _free() -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "auto"])
def test_a_training_step_and_prediction_in_each_precision_give_memory_back(
    tiny_encoder_dir, tmp_path, precision
):
    from ner_core.artifacts.modeldir import load_model_dir, read_precision_record
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger
    from ner_core.training.loop import train

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    baseline = _free()
    res = train(
        _config(tiny_encoder_dir, precision),
        _docs("train", 48),
        _docs("dev", 16),
        LABELS,
        tmp_path / "run",
        progress=False,
    )
    assert res.precision in _precisions()
    assert torch.isfinite(torch.tensor(res.history[0].train_loss))
    record = read_precision_record(res.model_dir)
    assert record is not None and {"fp32", "fp16", "int8"} <= set(record.dev_f1)
    loaded = load_model_dir(res.model_dir, device="cuda")
    for p in _precisions():
        tagger = Tagger.from_loaded(loaded, PredictionConfig(device="cuda", precision=p))
        ((tags, probs),) = tagger.tag_texts(["张三在北京的中国银行工作，李四去了上海。" * 20])
        assert len(tags) == len(probs) == 400 and all(0.0 <= x <= 1.0 + 1e-6 for x in probs)
        del tagger
    del loaded, res
    assert _free() <= baseline + 1024  # every tensor of the run given back


def test_the_crf_torch_paths_on_cuda_match_the_cpu_kernels():
    from ner_core.model.crf import ConstrainedCRF
    from ner_core.schemes import allowed_transitions, tag_set

    tags = tag_set(LABELS, "BIOES")
    torch.manual_seed(0)
    crf = ConstrainedCRF(len(tags), allowed_transitions(tags, "BIOES"))
    em = torch.randn(6, 50, len(tags))  # (B, T, K)
    lengths = torch.tensor([50, 49, 30, 7, 1, 50])
    mask = torch.arange(50).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    paths_cpu, _ = crf.viterbi_tensor(em, mask)
    marg_cpu = crf.marginals(em, mask)
    gpu = crf.to("cuda")
    paths_gpu, _ = gpu.viterbi_tensor(em.cuda(), mask.cuda())
    marg_gpu = gpu.marginals(em.cuda(), mask.cuda())
    assert paths_gpu.is_cuda and torch.equal(paths_gpu.cpu() * mask, paths_cpu * mask)
    assert torch.allclose(marg_gpu.cpu(), marg_cpu, atol=1e-5)
    tags_t = paths_cpu.clamp_min(0)
    nll = gpu.neg_log_likelihood(em.cuda().half(), tags_t.cuda(), mask.cuda())  # fp16 emissions in
    assert nll.dtype == torch.float32 and torch.isfinite(nll)
