"""Training recipes (layer-wise LR decay, FGM, EMA, adapt-then-train): each changes training as it says,
a configuration saved without them reads them as off, and a run using them resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ner_core.documents import Document, Entity
from tests.conftest import SAMPLE

LABELS = ["FIN", "LOC", "ORG", "PER"]
RECIPE_FIELDS = ("layer_lr_decay", "adversarial", "adv_epsilon", "ema_decay", "adapt_seconds")


def _docs(split: str, n: int | None = None) -> list[Document]:
    docs = []
    with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            r = json.loads(line)
            docs.append(
                Document(doc_id=f"{split}:{i}", text=r["text"], entities=[Entity(**e) for e in r["entities"]])
            )
    return docs[:n]


def _config(encoder_dir, decoder: str = "crf", **training):
    from ner_core.config import NERConfig

    return NERConfig.model_validate(
        {
            "data": {"max_len": 48},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bigru", "rnn_units": 16},
            "decoder": {"type": decoder},
            "training": {
                "batch_size": 8,
                "learning_rate": 1e-3,
                "warmup_ratio": 0.0,
                "precision": "fp32",
                "best_fit": False,
                "num_threads": 1,
                **training,
            },
        }
    )


@pytest.fixture(scope="module")
def deep_encoder(tmp_path_factory, sample_texts) -> Path:
    """A tiny random BERT with 3 layers, so that layer-wise decay has layers to tell apart."""
    from ner_core.model.encoder import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("deep-encoder"), sample_texts, num_layers=3)


def _train(config, run_dir, n=16, **kw):
    from ner_core.training.loop import train

    return train(config, _docs("train", n), _docs("dev", 4), LABELS, run_dir, progress=False, **kw)


class Killed(Exception):
    pass


def _kill_after_first_epoch(stats):
    if stats.epoch == 1:
        raise Killed  # after epoch 1's checkpoint, as a kill then would


def _killed_then_resumed(config, run_dir: Path, before_resume=None) -> None:
    """Train ``config`` in ``run_dir``, stopped after the checkpoint of epoch 1, then resume it."""
    with pytest.raises(Killed):
        _train(config, run_dir, on_epoch=_kill_after_first_epoch)
    if before_resume:
        before_resume(run_dir)
    _train(config, run_dir, resume=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


# ------------------------------------------------------------------ old configurations
def test_a_configuration_saved_without_the_recipes_reads_them_as_off(tmp_path):
    from ner_core.config import NERConfig

    doc = json.loads(NERConfig().to_json())
    for k in RECIPE_FIELDS:
        doc["training"].pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(doc))
    tc = NERConfig.from_file(tmp_path / "config.json").training
    assert tc.layer_lr_decay is None and tc.adversarial == "none" and tc.ema_decay is None
    assert tc.adapt_seconds is None and tc.adv_epsilon == 1.0


def test_the_recipes_are_flags_of_ner_train_with_their_defaults(capsys):
    from app.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--layer_lr_decay", "--adversarial", "--adv_epsilon", "--ema_decay", "--adapt_seconds"):
        assert flag in out, flag
    assert "(default: None)" in out and "{none,fgm,pgd}" in out


# ------------------------------------------------------------------ layer-wise learning-rate decay
def test_layer_lr_decay_gives_each_encoder_layer_its_named_rate(deep_encoder, tmp_path):
    run = tmp_path / "llrd"
    _train(_config(deep_encoder, hard_epochs=1, layer_lr_decay=0.5), run)
    groups = json.loads((run / "checkpoint.json").read_text())["optimizer"]["param_groups"]
    lr = {g["name"]: g["initial_lr"] for g in groups}
    assert lr["encoder.layer.2"] == pytest.approx(1e-3 * 0.5)  # the top layer: decay^(L - i), L = 3
    assert lr["encoder.layer.1"] == pytest.approx(1e-3 * 0.25)
    assert lr["encoder.layer.0"] == pytest.approx(1e-3 * 0.125)
    assert lr["encoder.embeddings"] == pytest.approx(1e-3 * 0.0625)  # decay^(L + 1)
    assert lr["encoder.layer.0_no_decay"] == lr["encoder.layer.0"]
    assert lr["head"] == pytest.approx(1e-3) and lr["crf"] == pytest.approx(1e-2)
    assert not any(g["name"] in ("encoder", "encoder_no_decay") for g in groups)
    # the epoch reports the encoder's undecayed rate, not the embeddings' (the first group)
    first = json.loads((run / "history.json").read_text())[0]["learning_rate"]
    assert first == pytest.approx(groups[0]["lr"] / 0.0625)
    # the layers' rates differ, so the run differs from one without the decay
    off = tmp_path / "off"
    _train(_config(deep_encoder, hard_epochs=1), off)
    assert {
        g["name"] for g in json.loads((off / "checkpoint.json").read_text())["optimizer"]["param_groups"]
    } >= {
        "encoder",
        "encoder_no_decay",
    }
    key = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(_weights(run)[key], _weights(off)[key])


@pytest.mark.parametrize("decay", [None, 0.8])
def test_a_checkpoint_is_matched_to_the_optimiser_by_group_name(deep_encoder, tmp_path, decay):
    """Groups listed in another order in the checkpoint (by position they would hand one group's moments
    to another) still resume to exactly the uninterrupted run's weights; with decay off, the groups are
    the ones checkpoints were written with before layer-wise decay existed."""
    config = _config(deep_encoder, hard_epochs=2, layer_lr_decay=decay)
    _train(config, tmp_path / "whole")
    names = []

    def reorder(run_dir):
        doc = json.loads((run_dir / "checkpoint.json").read_text())
        names.extend(g["name"] for g in doc["optimizer"]["param_groups"])
        doc["optimizer"]["param_groups"].reverse()
        (run_dir / "checkpoint.json").write_text(json.dumps(doc))

    _killed_then_resumed(config, tmp_path / "part", reorder)
    if decay is None:
        assert names == ["encoder", "encoder_no_decay", "head", "head_no_decay", "crf"]
    else:
        # embeddings, 3 layers and the pooler, each with _no_decay; head, head_no_decay, crf
        assert len(names) == 5 * 2 + 3
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "part"))


def test_a_checkpoint_of_other_groups_is_refused_in_one_line(deep_encoder, tmp_path):
    run = tmp_path / "run"
    _train(_config(deep_encoder, hard_epochs=1), run)
    with pytest.raises(
        ValueError, match=r"checkpoint.json: the checkpoint's optimiser groups .* other training"
    ):
        _train(_config(deep_encoder, hard_epochs=2, layer_lr_decay=0.8), run, resume=True)


# ------------------------------------------------------------------ FGM
def test_fgm_moves_only_the_batch_rows_along_the_gradient_and_restores_them_exactly(tiny_encoder_dir):
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set
    from ner_core.training.recipes import FGM

    config = _config(tiny_encoder_dir)
    encoder, tok = load_encoder(config.encoder)
    torch.manual_seed(0)
    model = NERModel(config, tag_set(LABELS, "BIOES"), encoder)
    enc = tok(["张三在北京工作", "李四去上海"], padding=True, return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    tags = torch.zeros(ids.shape[0], ids.shape[1] - 2, dtype=torch.long)
    weight = model.encoder.get_input_embeddings().weight
    original = weight.detach().clone()
    fgm = FGM(model.encoder.get_input_embeddings(), epsilon=0.5)
    rows, before = fgm.rows_grad(ids)
    clean = model(ids, am, tags)
    clean.backward()
    with fgm.attack(rows, before) as moved:
        assert moved
        delta = weight.detach() - original
        assert float(torch.linalg.vector_norm(delta)) == pytest.approx(0.5, rel=1e-4)
        others = torch.ones(weight.shape[0], dtype=torch.bool)
        others[rows] = False
        assert float(delta[others].abs().max()) == 0.0  # rows of tokens not in the batch stay
        adv = model(ids, am, tags)
    assert torch.equal(weight.detach(), original)  # restored bit for bit
    assert float(adv.detach()) > float(clean.detach())  # the step along the gradient raises the loss


@pytest.mark.parametrize("decoder", ["crf", "span"])
def test_fgm_trains_under_bf16_with_accumulation_and_changes_the_result(tiny_encoder_dir, tmp_path, decoder):
    common = {"hard_epochs": 1, "precision": "bf16", "grad_accum_steps": 2}
    plain = _train(_config(tiny_encoder_dir, decoder, **common), tmp_path / "plain")
    fgm = _train(
        _config(tiny_encoder_dir, decoder, adversarial="fgm", adv_epsilon=1.0, **common), tmp_path / "f"
    )
    assert plain.history[0].train_loss != fgm.history[0].train_loss  # later batches see other weights
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "f")
    key = "encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(a[key], b[key])


def test_fgm_with_a_frozen_encoder_is_refused_in_one_line(tiny_encoder_dir, tmp_path):
    config = _config(tiny_encoder_dir, hard_epochs=1, adversarial="fgm")
    config = config.with_overrides({"encoder.freeze": True})
    with pytest.raises(ValueError, match="the encoder is frozen: drop --freeze_encoder"):
        _train(config, tmp_path / "run")


# ------------------------------------------------------------------ EMA
def test_ema_is_what_is_saved_and_it_continues_exactly_after_a_resume(tiny_encoder_dir, tmp_path):
    from ner_core.training.run_state import load_checkpoint

    config = _config(tiny_encoder_dir, hard_epochs=3, ema_decay=0.9)
    _train(config, tmp_path / "whole")
    ckpt = load_checkpoint(tmp_path / "whole")
    saved = _weights(tmp_path / "whole")
    key = "classifier.weight"
    assert torch.equal(saved[key], ckpt.extra[f"ema.{key}"])  # the average is saved (best_fit off: the last)
    assert not torch.equal(saved[key], ckpt.model[key])  # ... not the raw weights
    assert int(ckpt.extra["ema_updates"][0]) == ckpt.state.step

    _killed_then_resumed(config, tmp_path / "part")
    assert _same(saved, _weights(tmp_path / "part"))


def test_all_recipes_at_once_resume_exactly_on_the_span_decoder(deep_encoder, tmp_path):
    config = _config(
        deep_encoder, "span", hard_epochs=2, ema_decay=0.95, layer_lr_decay=0.8, adversarial="fgm"
    )
    _train(config, tmp_path / "whole")
    _killed_then_resumed(config, tmp_path / "part")
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "part"))


# ------------------------------------------------------------------ adapt then train
def test_adapt_seconds_adapts_the_encoder_on_the_training_texts_then_trains_on_it(tiny_encoder_dir, tmp_path):
    from flows import steps
    from ner_core.training.adapt import ADAPT_RECORD

    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "sample", {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev")})
    config = _config(tiny_encoder_dir, hard_epochs=1, adapt_seconds=1.0).with_overrides(
        {"data.dataset": "sample"}
    )
    out = steps.train_step(db, config, str(tmp_path / "runs"))
    run_dir = Path(out.run_dir)
    record = json.loads((run_dir / "adapted-encoder" / ADAPT_RECORD).read_text())
    assert record["source"]["dataset"] == "sample" and record["source"]["split"] == "train"
    assert not (run_dir / "adapt-work").exists()
    used = json.loads((run_dir / "config.json").read_text())["encoder"]["name"]
    assert used == str(run_dir / "adapted-encoder")
    # the model starts from the adapted encoder, not the original one
    adapted = load_file(str(run_dir / "adapted-encoder" / "model.safetensors"))
    original = load_file(str(Path(tiny_encoder_dir) / "model.safetensors"))
    key = next(k for k in adapted if k.endswith("word_embeddings.weight"))
    assert not torch.equal(adapted[key], original[key])
    # a resume finds the adapted encoder and does not adapt again
    mtime = (run_dir / "adapted-encoder" / ADAPT_RECORD).stat().st_mtime_ns
    steps.train_step(db, config, str(tmp_path / "runs"), run_id=out.run_id, resume=True)
    assert (run_dir / "adapted-encoder" / ADAPT_RECORD).stat().st_mtime_ns == mtime


def test_ner_train_killed_at_a_checkpoint_resumes_with_its_recipes_to_the_same_model(deep_encoder, tmp_path):
    """kill -9 after epoch 1's checkpoint; ``--resume RUN_ID`` reads the recipes back from the run's stored
    configuration and ends with the uninterrupted run's (averaged) weights."""
    import signal
    import time

    from flows import steps
    from tests.test_training import _ner

    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "sample", {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev")})
    common = ["train", "--no-prefect", "--db", db, "--encoder", str(deep_encoder), "--head", "bigru"]
    common += ["--rnn_units", "16", "--max_len", "48", "--hard_epochs", "3", "--batch_size", "32"]
    common += ["--learning_rate", "1e-3", "--num_threads", "1", "--precision", "fp32"]
    common += ["--layer_lr_decay", "0.8", "--adversarial", "fgm", "--ema_decay", "0.9"]
    full = _ner(*common, "--runs-root", str(tmp_path / "full"))
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out
    full_run = json.loads(out[out.index("{") :])

    killed = _ner(*common, "--runs-root", str(tmp_path / "killed"))
    deadline, ckpt = time.time() + 600, None
    while time.time() < deadline and ckpt is None:
        ckpt = next(iter((tmp_path / "killed").glob("*/checkpoint.json")), None)
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint written"
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert not (ckpt.parent / "history.json").exists()  # it really did not finish
    resumed = _ner("train", "--no-prefect", "--db", db, "--resume", ckpt.parent.name)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    stored = json.loads((ckpt.parent / "config.json").read_text())["training"]
    assert (stored["layer_lr_decay"], stored["adversarial"], stored["ema_decay"]) == (0.8, "fgm", 0.9)
    assert _same(_weights(Path(full_run["run_dir"])), _weights(ckpt.parent))


def test_a_config_without_recipes_saves_what_older_code_reads():
    """Older code forbids unknown keys: the recipes (and a prediction dictionary) are left out of a saved
    configuration while off, written when on, and either reads back as it was."""
    import json

    from ner_core.config import NERConfig

    plain = NERConfig()
    saved = json.loads(plain.to_json())
    fields = ("layer_lr_decay", "adversarial", "adv_epsilon", "ema_decay", "adapt_seconds")
    assert not set(fields) & set(saved["training"]) and "dictionary" not in saved["prediction"]
    on = NERConfig.model_validate({"training": {"ema_decay": 0.99, "layer_lr_decay": 0.8}})
    assert {"ema_decay", "layer_lr_decay"} <= set(json.loads(on.to_json())["training"])
    assert NERConfig.model_validate_json(on.to_json()) == on
    assert NERConfig.model_validate_json(plain.to_json()) == plain
