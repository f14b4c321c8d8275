"""Training: chunking never truncates, epochs and early stopping behave, and a killed training process
resumed with --resume ends exactly where an uninterrupted run with the same seed ends; checkpoints load
without running code, and those of the pickled format before it still resume."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from ner_core.data.batching import chunk_entities, sliding_windows, training_chunks
from ner_core.documents import Document, Entity
from ner_core.schemes import spans_to_tags, validate_tags
from tests.conftest import REPO, SAMPLE


def test_training_chunks_cover_every_character_without_cutting_entities():
    text = (
        "张伟在北京工作。" * 30
    ) + "A" * 300  # 540 chars: sentences, then one long run with no sentence end
    ents = [Entity(start=i * 8, end=i * 8 + 2, label="PER") for i in range(30)]
    ents.append(Entity(start=250, end=300, label="ORG"))  # crosses a natural cut point
    doc = Document(doc_id="d", text=text, entities=ents)
    chunks = training_chunks([doc], max_len=64)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(a.end == b.start for a, b in pairwise(chunks))  # contiguous: nothing dropped
    assert all(0 < len(c) <= 64 for c in chunks)
    cut_points = {c.start for c in chunks[1:]}
    for e in ents:
        assert not any(e.start < p < e.end for p in cut_points), e
    # entities survive whole and every chunk's tags are valid in the scheme
    total = sum(len(chunk_entities(doc, c)) for c in chunks)
    assert total == len(ents)
    for c in chunks:
        tags = spans_to_tags(len(c), chunk_entities(doc, c), "BIOES")
        assert validate_tags(tags, "BIOES") == []


def test_entity_longer_than_max_len_is_cut_and_clipped():
    doc = Document(doc_id="d", text="x" * 100, entities=[Entity(start=10, end=90, label="ORG")])
    chunks = training_chunks([doc], max_len=32)
    assert sum(len(c) for c in chunks) == 100
    pieces = [e for c in chunks for e in chunk_entities(doc, c)]
    assert sum(e.end - e.start for e in pieces) == 80


@pytest.mark.parametrize("length,max_len,stride", [(10, 16, 8), (100, 16, 8), (101, 16, 5), (64, 16, 16)])
def test_sliding_windows_cover_text(length, max_len, stride):
    wins = sliding_windows(length, max_len, stride)
    covered = set()
    for s, e in wins:
        assert 0 <= s < e <= length and e - s <= max_len
        covered.update(range(s, e))
    assert covered == set(range(length)) and wins[-1][1] == length
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(length, 8, 9)


def _docs(split: str, n: int | None = None) -> list[Document]:
    docs = []
    with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            r = json.loads(line)
            docs.append(
                Document(doc_id=f"{split}:{i}", text=r["text"], entities=[Entity(**e) for e in r["entities"]])
            )
    return docs[:n]


def _config(encoder_dir, **training):
    from ner_core.config import NERConfig

    return NERConfig.model_validate(
        {
            "data": {"max_len": 48},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bigru", "rnn_units": 16},
            "training": {"batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.0, **training},
        }
    )


def test_hard_epochs_and_early_stopping(tiny_encoder_dir, tmp_path):
    from ner_core.training.loop import train

    train_docs, dev_docs = _docs("train", 48), _docs("dev", 16)
    labels = ["FIN", "LOC", "ORG", "PER"]
    res = train(
        _config(tiny_encoder_dir, hard_epochs=2, max_epochs=9),
        train_docs,
        dev_docs,
        labels,
        tmp_path / "hard",
        progress=False,
    )
    assert [h.epoch for h in res.history] == [1, 2] and res.stopped_reason == "finished 2 epochs"
    # tiny learning rates: dev F1 cannot improve, so early stopping fires after `patience` epochs
    frozen = _config(
        tiny_encoder_dir,
        max_epochs=9,
        early_stop_patience=2,
        reduce_lr_patience=1,
        learning_rate=1e-12,
        head_learning_rate=1e-12,
        crf_learning_rate=1e-12,
    )
    res = train(frozen, train_docs, dev_docs, labels, tmp_path / "early", progress=False)
    assert len(res.history) == 3 and res.stopped_reason.startswith("early stop")
    assert res.best_epoch == 1
    # LR reduction on plateau: the learning rate after epoch 3 is below the one after epoch 2 by the factor
    lrs = [h.learning_rate for h in res.history]
    assert lrs[2] < lrs[1]


def test_time_budget_stops_training(tiny_encoder_dir, tmp_path):
    from ner_core.training.loop import train

    res = train(
        _config(tiny_encoder_dir, max_epochs=50, max_train_seconds=0.01),
        _docs("train", 64),
        _docs("dev", 8),
        ["FIN", "LOC", "ORG", "PER"],
        tmp_path / "budget",
        progress=False,
    )
    assert len(res.history) == 1 and "time budget" in res.stopped_reason
    assert (res.model_dir / "model.safetensors").exists()


def _ner(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


def test_killed_run_resumes_to_the_same_result(tiny_encoder_dir, tmp_path):
    from flows import steps

    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "sample", {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")})
    common = [
        "train",
        "--no-prefect",
        "--db",
        db,
        "--encoder",
        str(tiny_encoder_dir),
        "--head",
        "bilstm",
        "--rnn_units",
        "16",
        "--max_len",
        "48",
        "--hard_epochs",
        "3",
        "--batch_size",
        "32",
        "--learning_rate",
        "1e-3",
        "--num_threads",
        "1",
    ]
    full = _ner(*common, "--runs-root", str(tmp_path / "full"))
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out
    full_run = json.loads(out[out.index("{") :])

    killed = _ner(*common, "--runs-root", str(tmp_path / "killed"))
    deadline = time.time() + 600
    ckpt = None
    while time.time() < deadline:
        found = list((tmp_path / "killed").glob("*/checkpoint.json"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint written"
    killed.send_signal(signal.SIGKILL)  # mid-run: after epoch 1's checkpoint, during epoch 2
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    run_id = ckpt.parent.name
    assert not (ckpt.parent / "history.json").exists()  # it really did not finish

    # no --runs-root: the run's own directory, configuration and dataset version come from DuckDB
    resumed = _ner("train", "--no-prefect", "--db", db, "--resume", run_id)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    resumed_run = json.loads(out[out.index("{") :])
    assert resumed_run["run_id"] == run_id and Path(resumed_run["run_dir"]) == ckpt.parent

    h_full = json.loads(Path(full_run["run_dir"], "history.json").read_text())
    h_res = json.loads(Path(resumed_run["run_dir"], "history.json").read_text())
    assert [h["epoch"] for h in h_res] == [1, 2, 3]
    for a, b in zip(h_full, h_res, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["dev_f1"] == pytest.approx(b["dev_f1"], abs=1e-9)
    from safetensors.torch import load_file

    w_full = load_file(Path(full_run["model_dir"], "model.safetensors"))
    w_res = load_file(Path(resumed_run["model_dir"], "model.safetensors"))
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        if w_full[k].is_floating_point():
            assert (w_full[k] - w_res[k]).abs().max() < 1e-5, k
        else:
            assert w_full[k].equal(w_res[k]), k


def test_lr_schedule_follows_the_time_budget_when_it_is_shorter_than_max_epochs():
    from ner_core.training.loop import lr_factor

    warmup, total = 50, 500  # 10 % warm-up over 10 epochs of 50 steps
    # no budget: the step schedule alone (unchanged)
    assert lr_factor(0, warmup, total) == pytest.approx(1 / 50)
    assert lr_factor(50, warmup, total) == pytest.approx(1.0)
    assert lr_factor(275, warmup, total) == pytest.approx(0.5)
    # a budget that ends after ~2 epochs: the clock ends the warm-up and drives the decay to 0
    assert lr_factor(5, warmup, total, time_fraction=0.05, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_factor(10, warmup, total, time_fraction=0.1, warmup_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(40, warmup, total, time_fraction=0.55, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_factor(90, warmup, total, time_fraction=1.0, warmup_ratio=0.1) == 0.0
    assert lr_factor(90, warmup, total, time_fraction=1.7, warmup_ratio=0.1) == 0.0  # past the budget
    # a generous budget: the steps are further along, so they set the rate
    assert lr_factor(275, warmup, total, time_fraction=0.2, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_factor(25, warmup, total, time_fraction=0.01, warmup_ratio=0.1) == pytest.approx(26 / 50)
    # no warm-up
    assert lr_factor(0, 0, total, time_fraction=0.0, warmup_ratio=0.0) == pytest.approx(1.0)
    assert lr_factor(0, 0, total, time_fraction=0.75, warmup_ratio=0.0) == pytest.approx(0.25)


LABELS = ["FIN", "LOC", "ORG", "PER"]


def test_checkpoint_is_json_and_safetensors_and_a_changed_tensor_file_is_refused(tiny_encoder_dir, tmp_path):
    from ner_core.training.loop import train
    from ner_core.training.run_state import CheckpointError, load_checkpoint

    run_dir = tmp_path / "run"
    train(
        _config(tiny_encoder_dir, hard_epochs=1),
        _docs("train", 16),
        _docs("dev", 4),
        LABELS,
        run_dir,
        progress=False,
    )
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == [
        "checkpoint-e0001.safetensors",
        "checkpoint.json",
    ]
    doc = json.loads((run_dir / "checkpoint.json").read_text())
    assert doc["format_version"] == 1 and doc["tensors"]["file"] == "checkpoint-e0001.safetensors"
    assert doc["state"]["epoch"] == 1 and doc["state"]["step"] >= 1 and len(doc["state"]["history"]) == 1
    assert len(doc["state"]["python_rng"][1]) == 625 and len(doc["state"]["numpy_rng"][1]) == 624
    assert [g["name"] for g in doc["optimizer"]["param_groups"]][-1] == "crf"
    ckpt = load_checkpoint(run_dir)
    assert ckpt.state.torch_rng.dtype == torch.uint8
    assert ckpt.optimizer["state"][0]["step"].item() == doc["state"]["step"]
    assert "classifier.weight" in ckpt.model

    tensors = run_dir / "checkpoint-e0001.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 does not match checkpoint.json"):
        train(_config(tiny_encoder_dir, hard_epochs=2), _docs("train", 16), [], LABELS, run_dir, resume=True)
    doc["format_version"] = 2
    (run_dir / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format_version 2, this code reads format_version 1"):
        load_checkpoint(run_dir)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path)


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if a loader runs pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_checkpoint_that_would_run_code_is_refused_unread(tiny_encoder_dir, tmp_path):
    from ner_core.training.loop import train
    from ner_core.training.run_state import CheckpointError

    marker = tmp_path / "payload-ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": _Payload(marker), "state": {"epoch": 1}}, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: refused: .*GLOBAL io.open.*could run code"):
        train(_config(tiny_encoder_dir, hard_epochs=2), _docs("train", 8), [], LABELS, run_dir, resume=True)
    assert not marker.exists()
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "checkpoint.json").exists()


def test_a_run_interrupted_under_the_pickled_checkpoint_format_resumes_exactly(legacy_dir, monkeypatch):
    """The fixture's run ...-7b9f2c was killed after epoch 1 of 4 by the code at 3cc253c; run ...-56603a
    is the same run (same seed and data; only the dead window_stride differs), uninterrupted, by that code.

    Resuming restores exactly what the pickle holds: the model, the optimiser's state and every RNG (checked
    right after the restore). The epochs after it ran on this code, whose arithmetic and dropout masks differ
    from 3cc253c's (fused AdamW, oneDNN RNN passes, the C likelihood, fast_dropout's masks), so the rest of
    the trajectory is compared loosely: epoch 2's loss within 1% (an unrestored optimiser state moved it by
    1.8%)."""
    from ner_core.config import NERConfig
    from ner_core.data.formats import read_file
    from ner_core.training import loop as training
    from ner_core.training.run_state import _legacy_globals

    run_dir = Path("runs/20261201-152339-sample-bilstm-7b9f2c")
    with torch.serialization.safe_globals(_legacy_globals()):
        old = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    seen = {}
    real_resume = training._resume

    def spy(run):
        state = real_resume(run)
        seen["model"] = {k: v.clone() for k, v in run.model.state_dict().items()}
        seen["optimizer"] = copy.deepcopy(run.optimizer.state_dict())  # live tensors change in place
        seen["torch_rng"] = torch.get_rng_state().clone()
        return state

    monkeypatch.setattr(training, "_resume", spy)
    config = NERConfig.from_file(run_dir / "config.json")
    train_docs = read_file(SAMPLE / "train.jsonl").documents
    dev_docs = read_file(SAMPLE / "dev.jsonl").documents
    res = training.train(config, train_docs, dev_docs, LABELS, run_dir, resume=True, progress=False)
    assert seen["model"].keys() == old["model"].keys()
    assert all(torch.equal(seen["model"][k], old["model"][k]) for k in old["model"])
    saved_state = old["optimizer"]["state"]
    assert saved_state.keys() == seen["optimizer"]["state"].keys()
    for k, slots in saved_state.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(seen["optimizer"]["state"][k][name], slots[name])
    assert torch.equal(seen["torch_rng"], old["torch_rng"])
    assert [h.epoch for h in res.history] == [1, 2, 3, 4] and res.stopped_reason == "finished 4 epochs"
    assert not (run_dir / "checkpoint.pt").exists()  # converted once, then replaced by the new format
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == [
        "checkpoint-e0004.safetensors",
        "checkpoint.json",
    ]
    uninterrupted = json.loads(Path("runs/20261201-152337-sample-bilstm-56603a/history.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == len(uninterrupted) == 4
    assert history[0]["train_loss"] == uninterrupted[0]["train_loss"]  # the killed run's own epoch
    for ours, theirs in zip(history, uninterrupted, strict=True):
        assert ours["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=1e-9)
    assert history[1]["train_loss"] == pytest.approx(uninterrupted[1]["train_loss"], rel=1e-2)
    assert history[-1]["train_loss"] < history[1]["train_loss"] < history[0]["train_loss"]


def test_checkpoint_round_trips_tensors_that_share_storage(tmp_path):
    """Tied weights share one storage, which safetensors refuses; the checkpoint copies the second user."""
    from ner_core.training.run_state import TrainingState, load_checkpoint, save_checkpoint

    w = torch.randn(4, 3)
    model = {"embeddings.weight": w, "decoder.weight": w, "rows": w[1:]}
    param = torch.nn.Parameter(torch.randn(2))
    opt = torch.optim.AdamW([param], betas=(0.8, 0.9))
    param.grad = torch.ones(2)
    opt.step()
    state = TrainingState(epoch=3, step=7, best_f1=0.5, elapsed=1.25)
    state.capture_rng()
    save_checkpoint(tmp_path, state, model, opt.state_dict(), {"scale": 1024.0, "_growth_tracker": 3})
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.model.keys() == model.keys() and all(torch.equal(ckpt.model[k], model[k]) for k in model)
    assert ckpt.scaler == {"scale": 1024.0, "_growth_tracker": 3}
    assert (ckpt.state.epoch, ckpt.state.step, ckpt.state.best_f1, ckpt.state.elapsed) == (3, 7, 0.5, 1.25)
    saved = opt.state_dict()
    assert ckpt.optimizer["state"].keys() == saved["state"].keys()
    for key, value in saved["state"][0].items():
        assert torch.equal(ckpt.optimizer["state"][0][key], value), key
    assert ckpt.optimizer["param_groups"][0]["betas"] == [
        0.8,
        0.9,
    ]  # JSON: the trainer makes it a tuple again


def test_the_optimiser_is_fused_adamw_where_torch_has_the_kernel():
    """One fused AdamW kernel on CPU (the unfused update cost about a quarter of a bf16 step); the same
    update as the unfused AdamW to float rounding."""
    from ner_core.training.loop import make_optimizer

    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    fused = make_optimizer([{"params": list(a.parameters()), "lr": 1e-2}], 0.01, torch.device("cpu"))
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.01)
    assert fused.param_groups[0]["fused"] is True and plain.param_groups[0]["fused"] is None
    x = torch.randn(5, 6)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            model(x).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
