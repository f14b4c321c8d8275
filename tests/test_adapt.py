"""``ner adapt``: continued MLM pretraining on unlabeled text. The loss falls on a small corpus, whole-word
masking keeps words whole at BERT's rates, the output is an encoder folder that loads and trains a NER model,
a run killed with SIGKILL and resumed ends exactly where an uninterrupted one ends, and bad input gets one
line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SAMPLE


def _sample_texts() -> list[str]:
    texts = []
    for split in ("train", "dev"):
        with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    return texts


def _config(encoder, **kw):
    from ner_core.training.adapt import AdaptConfig

    base = {
        "encoder": str(encoder),
        "max_len": 32,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "num_threads": 1,
        "eval_windows": 16,
    }
    return AdaptConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def adapted(tiny_encoder_dir, tmp_path_factory):
    """One short adapt run of the tiny encoder on a small, repeated corpus (80 steps)."""
    from ner_core.training.adapt import adapt

    tmp = tmp_path_factory.mktemp("adapt")
    texts = _sample_texts()[:40] * 3
    cfg = _config(tiny_encoder_dir, max_steps=80, checkpoint_steps=20)
    result = adapt(cfg, texts, tmp / "work", tmp / "out", progress=False)
    return result, tmp


def test_mlm_loss_falls_on_a_small_repeated_corpus(adapted):
    result, tmp = adapted
    assert result.steps == 80 and result.stopped_reason == "step budget of 80 reached"
    assert result.masking == "word" and result.segmenter.startswith("jieba")
    assert "initialised" in result.mlm_head and "tied" in result.mlm_head
    # the held-out windows' masks are fixed, so the two losses are comparable
    assert result.eval_loss_after < result.eval_loss_before - 0.5, result
    assert result.train_loss_last < result.train_loss_first
    assert not (tmp / "work").exists()  # finished: the checkpoints are gone


def test_output_is_an_encoder_folder_that_loads_and_trains_a_ner_model(adapted, tiny_encoder_dir):
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_NAME

    from ner_core.config import EncoderConfig, NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.training.loop import train
    from tests.test_training import _docs

    result, tmp = adapted
    out = Path(result.out_dir)
    weights = load_file(out / SAFE_WEIGHTS_NAME)
    assert not [k for k in weights if k.startswith(("cls.", "lm_head.", "predictions."))]  # no MLM head
    encoder, tokenizer = load_encoder(EncoderConfig(name=str(out)))
    source, _ = load_encoder(EncoderConfig(name=str(tiny_encoder_dir)))
    emb = encoder.embeddings.word_embeddings.weight
    assert emb.shape == source.embeddings.word_embeddings.weight.shape
    assert not torch.equal(emb, source.embeddings.word_embeddings.weight)  # adapted, not copied
    assert json.loads((out / "adapt.json").read_text())["steps"] == 80

    config = NERConfig.model_validate(
        {
            "data": {"max_len": 48},
            "encoder": {"name": str(out)},
            "head": {"type": "bigru", "rnn_units": 16},
            "training": {"batch_size": 16, "learning_rate": 1e-3, "hard_epochs": 1, "num_threads": 1},
        }
    )
    res = train(config, _docs("train", 32), _docs("dev", 8), ["FIN", "LOC", "ORG", "PER"], tmp / "ner")
    assert res.best_epoch == 1 and (res.model_dir / SAFE_WEIGHTS_NAME).is_file()


def test_whole_word_masking_keeps_words_whole_at_bert_rates(tiny_encoder_dir, tmp_path):
    from ner_core.config import EncoderConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.training.adapt import masked_batch, segmenter, split_windows

    _, tok = load_encoder(EncoderConfig(name=str(tiny_encoder_dir)))
    cut, name = segmenter("auto", tmp_path)
    assert name.startswith("jieba") and list(tmp_path.glob("jieba*.cache"))  # its cache: in our folder
    windows = split_windows(_sample_texts(), 64)
    cfg = _config(tiny_encoder_dir, max_steps=1, max_len=64)
    batch = masked_batch(tok, windows, cut, torch.Generator().manual_seed(0), cfg)
    enc = tok(windows, truncation=True, max_length=66, padding=True, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"])
    chosen = batch["labels"] != -100
    real = batch["attention_mask"].bool() & (ids != tok.cls_token_id) & (ids != tok.sep_token_id)
    split_words = 0
    for r, text in enumerate(windows):
        pos = 0
        starts = {}
        for w, word in enumerate(cut(text)):
            for c in range(pos, pos + len(word)):
                starts[c] = w
            pos += len(word)
        by_word: dict[int, set[bool]] = {}
        for i, (s, e) in enumerate(enc["offset_mapping"][r]):
            if e > s:
                by_word.setdefault(starts[s], set()).add(bool(chosen[r, i]))
        split_words += sum(len(v) > 1 for v in by_word.values())
    assert split_words == 0  # every word is chosen whole or not at all
    share = chosen.sum() / real.sum()
    assert 0.10 < share <= 0.16, share
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    kept = (batch["input_ids"] == ids) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.06)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1, abs=0.05)
    assert torch.equal(batch["labels"][chosen], ids[chosen])  # the original ids are the targets

    char = masked_batch(tok, windows, None, torch.Generator().manual_seed(0), cfg)
    assert 0.13 < (char["labels"] != -100).sum() / real.sum() <= 0.16


def _ner(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "adapt", "--no-prefect", *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


def _result(out: str) -> dict:
    return json.loads(out[out.index("{") :])


def test_killed_run_resumes_to_the_same_encoder(tiny_encoder_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_NAME

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_sample_texts()), encoding="utf-8")
    common = ["--encoder", str(tiny_encoder_dir), "--corpus", str(corpus), "--max_steps", "120"]
    common += ["--checkpoint_steps", "10", "--batch_size", "8", "--max_len", "32", "--num_threads", "1"]
    full = _ner(*common, "--out", str(tmp_path / "full"))
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out

    killed = _ner(*common, "--out", str(tmp_path / "killed"))
    ckpt = tmp_path / "killed.adapt" / "checkpoint.json"
    deadline = time.time() + 600
    while time.time() < deadline and not ckpt.is_file() and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists(), "the run finished before it was killed"
    at = json.loads(ckpt.read_text())["state"]["step"]
    assert 0 < at < 120

    resumed = _ner("--out", str(tmp_path / "killed"), "--resume")
    out_r, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out_r
    assert f"resuming at step {at}" in out_r
    a, b = _result(out), _result(out_r)
    assert a["steps"] == b["steps"] == 120
    assert a["eval_loss_after"] == pytest.approx(b["eval_loss_after"], rel=1e-6)
    w_full = load_file(tmp_path / "full" / SAFE_WEIGHTS_NAME)
    w_res = load_file(tmp_path / "killed" / SAFE_WEIGHTS_NAME)
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        assert (w_full[k] - w_res[k]).abs().max() < 1e-6, k


def _one_line(capsys, argv: list[str]) -> str:
    from app.cli import main

    assert main(["adapt", "--no-prefect", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gets_one_line(tiny_encoder_dir, tmp_path, capsys):
    missing = tmp_path / "no-such.txt"
    enc = ["--encoder", str(tiny_encoder_dir)]
    out = ["--out", str(tmp_path / "out")]
    err = _one_line(capsys, [*enc, "--corpus", str(missing), "--max_steps", "5", *out])
    assert str(missing) in err and "no such file" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert str(empty) in _one_line(capsys, [*enc, "--corpus", str(empty), "--max_steps", "5", *out])
    corpus = tmp_path / "c.txt"
    corpus.write_text("张三在北京工作\n", encoding="utf-8")
    assert "budget" in _one_line(capsys, [*enc, "--corpus", str(corpus), *out])
    assert "no adapt run to resume" in _one_line(capsys, [*out, "--resume"])
    assert "drop --max_steps" in _one_line(capsys, [*out, "--resume", "--max_steps", "3"])
    (tmp_path / "exists").mkdir()
    err = _one_line(
        capsys, [*enc, "--corpus", str(corpus), "--max_steps", "5", "--out", str(tmp_path / "exists")]
    )
    assert "exists" in err


def test_resume_refuses_a_changed_corpus(tiny_encoder_dir, tmp_path):
    from ner_core.training.adapt import adapt

    cfg = _config(tiny_encoder_dir, max_steps=2, eval_windows=0)
    work, out = tmp_path / "work", tmp_path / "out"
    (work).mkdir()
    with pytest.raises(ValueError, match="no adapt run to resume"):
        adapt(cfg, ["张三在北京工作"], work, out, resume=True, progress=False)
    # a run started (its settings saved) and then killed before its first checkpoint
    from ner_core.training.adapt import _check_folders, corpus_sha256

    _check_folders(cfg, corpus_sha256(["张三在北京工作"]), 1, work, out, False, None)
    with pytest.raises(ValueError, match="the corpus is not the one"):
        adapt(cfg, ["李四去上海"], work, out, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"these differ: \['max_steps'\]"):
        adapt(
            _config(tiny_encoder_dir, max_steps=3, eval_windows=0), ["张三在北京工作"], work, out, resume=True
        )
    res = adapt(cfg, ["张三在北京工作"], work, out, resume=True, progress=False)  # from the beginning
    assert res.steps == 2 and (out / "config.json").is_file()


def test_adapt_step_reads_a_stored_dataset(tiny_encoder_dir, tmp_path):
    from flows import steps
    from flows.adapt import adapt_step

    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "sample", {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev")})
    cfg = _config(tiny_encoder_dir, max_steps=2, eval_windows=0, masking="char")
    res = adapt_step(cfg, str(tmp_path / "out"), dataset="sample", split="dev", db_path=db, progress=False)
    n_dev = sum(1 for line in open(SAMPLE / "dev.jsonl", encoding="utf-8") if line.strip())
    assert res.corpus_texts == n_dev and res.masking == "char" and res.segmenter is None
    assert res.source == {"dataset": "sample", "split": "dev", "version": 1, "db": str(Path(db).resolve())}
    with pytest.raises(ValueError, match="exactly one"):
        adapt_step(cfg, str(tmp_path / "o2"), corpus=["x.txt"], dataset="sample", db_path=db)


def _family_folder(tiny_encoder_dir, folder: Path, model) -> Path:
    """``model`` saved with the tiny encoder's tokenizer: an encoder folder of another kind."""
    from transformers import AutoTokenizer

    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_encoder_dir)).save_pretrained(str(folder))
    return folder


def test_a_head_in_the_weights_is_used_and_other_families_adapt(tiny_encoder_dir, tmp_path):
    """A BertForMaskedLM folder gives its own head (not a fresh one); an ELECTRA encoder, whose head this
    module does not run on the chosen positions alone, adapts through the model's own loss."""
    from transformers import AutoConfig, BertForMaskedLM, BertModel, ElectraConfig, ElectraModel

    from ner_core.training.adapt import adapt

    texts = _sample_texts()[:24]
    config = AutoConfig.from_pretrained(str(tiny_encoder_dir))
    torch.manual_seed(1)
    with_head = BertForMaskedLM(config)  # the tiny encoder's weights, a head of its own
    with_head.bert.load_state_dict(
        BertModel.from_pretrained(str(tiny_encoder_dir)).state_dict(), strict=False
    )
    folder = _family_folder(tiny_encoder_dir, tmp_path / "mlm", with_head)
    res = adapt(_config(folder, max_steps=2), texts, tmp_path / "w1", tmp_path / "o1", progress=False)
    assert res.mlm_head.startswith("the encoder's own"), res.mlm_head
    fresh = adapt(
        _config(tiny_encoder_dir, max_steps=2), texts, tmp_path / "w0", tmp_path / "o0", progress=False
    )
    assert fresh.mlm_head.startswith("initialised")
    assert res.eval_loss_before != pytest.approx(fresh.eval_loss_before)  # same encoder, another head

    electra = ElectraConfig(
        vocab_size=config.vocab_size, embedding_size=32, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    folder = _family_folder(tiny_encoder_dir, tmp_path / "electra", ElectraModel(electra))
    res = adapt(_config(folder, max_steps=30), texts * 3, tmp_path / "w2", tmp_path / "o2", progress=False)
    assert res.eval_loss_after < res.eval_loss_before - 0.3
    assert AutoConfig.from_pretrained(res.out_dir).model_type == "electra"


def test_bf16_autocast_adapts_and_saves_fp32_weights(tiny_encoder_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_NAME

    from ner_core.training.adapt import adapt

    cfg = _config(tiny_encoder_dir, max_steps=3, precision="bf16", eval_windows=8)
    res = adapt(cfg, _sample_texts()[:16], tmp_path / "w", tmp_path / "o", progress=False)
    assert res.steps == 3 and res.eval_loss_after is not None
    weights = load_file(Path(res.out_dir) / SAFE_WEIGHTS_NAME)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
