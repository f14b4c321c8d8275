"""Continued masked-language-model pretraining of an encoder on the user's own unlabeled text (``ner adapt``).

Why: a small encoder pretrained on general text meets a user's domain (finance, resumes, ...) cold; a few
minutes of MLM on that domain's raw text, before fine-tuning, is the cheapest known lever ("Don't Stop
Pretraining", Gururangan et al. 2020). The output is an ordinary Hugging Face encoder folder (config,
weights, tokenizer), used as ``--encoder`` like any other; the MLM head is not in it.

The recipe is BERT's: 15 % of the tokens of each window are chosen for prediction, of which 80 % become
``[MASK]``, 10 % a random token and 10 % stay as they are. With a Chinese word segmenter (``jieba``, pure
Python, its dictionary inside the package) the choice is by whole words: every token of a chosen word is
predicted, as in Chinese BERT-wwm; without one, or with ``masking="char"``, by single tokens. The loss is
computed on the chosen positions only (the vocabulary projection of every position would cost several
times the encoder itself for a small model).

MLM head: encoders saved as a bare ``BertModel`` (the default m3e-small) have none. Then one is built and
initialised (a dense + LayerNorm transform, a bias) with its output projection tied to the word
embeddings, as BERT ties it. A folder whose ``safetensors`` weights hold a head of the same shapes (a
``BertForMaskedLM`` checkpoint) gives it its own. The log and the result say which.

Resume: the work folder (``checkpoint.json`` and tensors, :mod:`ner_core.training.run_state`) holds the
model with its head, the optimiser, the step and the RNG states. Windows are visited in an order fixed by
``(seed, pass over the corpus)`` and each step's masks come from a generator seeded by ``(seed, step)``, so
a run killed at any moment and resumed computes the same steps as an uninterrupted one (on CPU, with a
step budget; a time budget makes the learning rate follow the clock). Nothing in a checkpoint runs code
when read, and the encoder folder goes through :func:`ner_core.model.encoder.load_encoder`'s checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor
from tqdm.auto import tqdm

from ner_core.artifacts.modeldir import recover_model_dir
from ner_core.config import EncoderConfig
from ner_core.model.encoder import check_encoder_folder, load_encoder, resolve_encoder
from ner_core.runtime.hardware import default_threads
from ner_core.runtime.precision import autocast
from ner_core.training.loop import make_optimizer, set_seed
from ner_core.training.run_state import (
    CheckpointError,
    EpochStats,
    TrainingState,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = [
    "ADAPT_RECORD",
    "AdaptConfig",
    "AdaptResult",
    "adapt",
    "corpus_sha256",
    "read_corpus",
    "segmenter",
    "split_windows",
]

#: the run's settings and corpus fingerprint in the work folder; the adapted encoder's provenance in ``out``
ADAPT_RECORD = "adapt.json"
#: where a window is cut when it can be (the latest of these in its second half)
_SENTENCE_ENDS = "。！？!?；;\n"
#: the module holding the MLM head, by ``model_type``: the loss runs it on the chosen positions only
_HEADS = {
    "bert": "cls",
    "ernie": "cls",
    "roberta": "lm_head",
    "xlm-roberta": "lm_head",
    "albert": "predictions",
}


class AdaptConfig(BaseModel):
    """The settings of one adapt run (saved in its work folder; ``--resume`` continues with them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    encoder: str = Field("m3e-small", description="the encoder to adapt: short name, folder or cached hub id")
    max_train_seconds: float | None = Field(None, gt=0, description="time budget (all resumes together)")
    max_steps: int | None = Field(None, ge=1, description="step budget (optimiser steps)")
    max_len: int = Field(128, ge=8, le=510, description="characters per training window")
    batch_size: int = Field(32, ge=1, description="windows per step")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate (warm-up, then linear decay)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and norms)")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of the budget spent warming up")
    grad_clip: float = Field(1.0, ge=0, description="gradient norm clip (0: off)")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="share of tokens chosen for prediction")
    masking: Literal["auto", "word", "char"] = Field(
        "auto", description="whole words (jieba) or single tokens; auto: words when jieba is installed"
    )
    seed: int = Field(42, ge=0, description="window order, masks, head initialisation, dropout")
    checkpoint_seconds: float = Field(60.0, gt=0, description="a checkpoint at least this often")
    checkpoint_steps: int | None = Field(None, ge=1, description="... and every this many steps")
    eval_windows: int = Field(64, ge=0, description="windows of the fixed held-out MLM loss (0: none)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (none: the physical cores)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast of encoder and head")

    @model_validator(mode="after")
    def _a_budget(self) -> AdaptConfig:
        if self.max_train_seconds is None and self.max_steps is None:
            raise ValueError("adapt needs a budget: max_train_seconds, max_steps or both")
        return self


class AdaptResult(BaseModel):
    """What an adapt run did; also written as ``adapt.json`` into the adapted encoder folder."""

    model_config = ConfigDict(extra="forbid")

    out_dir: str
    source_encoder: str
    masking: Literal["word", "char"]
    segmenter: str | None
    mlm_head: str = Field(description="where the MLM head's weights came from")
    steps: int
    windows: int
    corpus_texts: int
    corpus_sha256: str
    source: dict | None = Field(None, description="how the corpus was named: files, or a dataset version")
    seconds: float = Field(description="training seconds, all resumes together")
    steps_per_second: float
    eval_loss_before: float | None = Field(description="MLM loss on the fixed held-out windows, at step 0")
    eval_loss_after: float | None
    train_loss_first: float | None = Field(description="mean training loss of the first logged interval")
    train_loss_last: float | None
    stopped_reason: str


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------
def read_corpus(files: Sequence[str | os.PathLike]) -> list[str]:
    """The texts of ``files``: one text a line, or any format :func:`ner_core.data.formats.read_file`
    reads (labels, if any, are ignored). A missing or unreadable file is refused in one line."""
    from ner_core.data.formats import read_file

    if not files:
        raise ValueError("no corpus files given")
    texts: list[str] = []
    for f in files:
        result = read_file(f)
        if result.fatal:
            first = result.problems[0] if result.problems else None
            why = f": {getattr(first, 'message', first)}" if first else ""
            raise ValueError(f"{f}: cannot be read as a corpus ({result.format}){why}")
        texts.extend(r[1] for r in result.records if r[1].strip())
    if not texts:
        raise ValueError(f"{', '.join(map(str, files))}: no text in the corpus")
    return texts


def corpus_sha256(texts: Iterable[str]) -> str:
    """A fingerprint of the texts in order: a resumed run must see the corpus it started on."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def split_windows(texts: Iterable[str], max_len: int) -> list[str]:
    """Each text cut into windows of at most ``max_len`` characters, at a sentence end where one lies in a
    window's second half. BERT's tokenizer gives a Chinese character one token and a Latin word no more
    tokens than letters, so a window fits ``max_len`` tokens."""
    out = []
    for text in texts:
        rest = text.strip()
        while rest:
            if len(rest) <= max_len:
                out.append(rest)
                break
            at = max(rest.rfind(c, max_len // 2, max_len) for c in _SENTENCE_ENDS)
            cut = at + 1 if at >= 0 else max_len
            if rest[:cut].strip():
                out.append(rest[:cut].strip())
            rest = rest[cut:].lstrip()
    return out


def segmenter(masking: str, cache_dir: Path):
    """``(cut, name)``: a function from a text to its words (covering it), or ``None`` for token masking.

    ``jieba`` keeps a cache of its prefix dictionary; it goes to ``cache_dir`` (the run's own work folder),
    never to the shared temporary folder, where another user could have left a file for it to unmarshal.
    """
    if masking == "char":
        return None, None
    try:
        import jieba
    except ImportError:
        if masking == "word":
            raise ValueError(
                "whole-word masking needs jieba (pip install jieba); or use char masking"
            ) from None
        log.info("adapt: jieba is not installed: masking single tokens instead of whole words")
        return None, None
    jieba.setLogLevel(logging.WARNING)
    tk = jieba.Tokenizer()
    tk.tmp_dir = str(cache_dir)
    tk.initialize()
    return (lambda text: tk.lcut(text, HMM=True)), f"jieba {getattr(jieba, '__version__', '?')}"


# ----------------------------------------------------------------------------------------------
# Masking
# ----------------------------------------------------------------------------------------------
def _word_groups(text: str, offsets: list, special: list[bool], cut) -> list[list[int]]:
    """Token positions grouped by word (one group a token without a segmenter); specials left out."""
    if cut is None:
        return [[i] for i, s in enumerate(special) if not s]
    char_word = np.zeros(len(text), dtype=np.int64)
    pos = 0
    for w, word in enumerate(cut(text)):
        char_word[pos : pos + len(word)] = w
        pos += len(word)
    groups: dict[int, list[int]] = {}
    for i, (s, e) in enumerate(offsets):
        if not special[i] and e > s:
            groups.setdefault(int(char_word[min(s, len(text) - 1)]), []).append(i)
    return list(groups.values())


def _choose(groups: list[list[int]], mask_prob: float, gen: torch.Generator) -> list[int]:
    """Whole groups in random order until ``mask_prob`` of the tokens are chosen (a group that would
    overshoot is skipped, as BERT-wwm does); at least one token of a non-empty window."""
    n = sum(len(g) for g in groups)
    budget = max(1, round(n * mask_prob)) if n else 0
    chosen: list[int] = []
    for gi in torch.randperm(len(groups), generator=gen).tolist():
        if len(chosen) + len(groups[gi]) <= budget:
            chosen.extend(groups[gi])
            if len(chosen) >= budget:
                break
    return chosen


def masked_batch(tokenizer, windows: Sequence[str], cut, gen: torch.Generator, cfg: AdaptConfig) -> dict:
    """``{input_ids, attention_mask, labels}`` (each ``(B, T)``): the windows tokenized, the chosen tokens'
    ids in ``labels`` (-100 elsewhere) and 80 / 10 / 10 % of them masked / replaced / kept in the input."""
    enc = tokenizer(
        list(windows),
        truncation=True,
        max_length=cfg.max_len + 2,
        padding=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    ids = enc["input_ids"]  # (B, T)
    special = (enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)).tolist()
    labels = torch.full_like(ids, -100)
    for r, text in enumerate(windows):
        chosen = _choose(
            _word_groups(text, enc["offset_mapping"][r].tolist(), special[r], cut), cfg.mask_prob, gen
        )
        labels[r, chosen] = ids[r, chosen]
    selected = labels != -100
    roll = torch.rand(ids.shape, generator=gen)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[selected & (roll < 0.8)] = tokenizer.mask_token_id
    swap = selected & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return {"input_ids": inputs, "attention_mask": enc["attention_mask"], "labels": labels}


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def _build_mlm(encoder_name: str, seed: int) -> tuple[Any, Any, Any, str]:
    """``(mlm model, its base encoder, tokenizer, where the head came from)``: the encoder loaded through
    :func:`load_encoder` (its checks), put inside the family's masked-LM model, head tied to the word
    embeddings; a head in the folder's safetensors weights is loaded, else it stays initialised."""
    from transformers import AutoModelForMaskedLM

    encoder, tokenizer = load_encoder(EncoderConfig(name=encoder_name))
    if tokenizer.mask_token_id is None or not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"encoder {encoder_name!r}: its tokenizer has no [MASK] token or no offsets (not fast)"
        )
    config = encoder.config
    config.tie_word_embeddings = True
    set_seed(seed)
    try:
        mlm = AutoModelForMaskedLM.from_config(config, trust_remote_code=False)
    except ValueError as exc:
        raise ValueError(f"encoder {encoder_name!r}: no masked-LM model for it: {str(exc)[:200]}") from None
    setattr(mlm, mlm.base_model_prefix, encoder)  # the loaded weights (and pooler) instead of fresh ones
    mlm.tie_weights()
    out_emb, in_emb = mlm.get_output_embeddings(), mlm.get_input_embeddings()
    if out_emb is None or out_emb.weight is not in_emb.weight:
        raise ValueError(f"encoder {encoder_name!r}: cannot tie an MLM head to its word embeddings")
    return mlm, encoder, tokenizer, _head_from_weights(mlm, Path(resolve_encoder(encoder_name)))


def _head_from_weights(mlm, folder: Path) -> str:
    """Load the MLM head's tensors from the folder's (already checked) safetensors weights, when each of
    its parameters is there under one of its names (tied ones have several) with its shape; returns where
    the head came from, for the log and the result."""
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_NAME

    initialised = "initialised (the encoder's weights hold no MLM head), tied to the word embeddings"
    embedding = mlm.get_input_embeddings().weight
    base = {id(q) for q in mlm.get_submodule(mlm.base_model_prefix).parameters()}
    names: dict[int, list[str]] = {}  # the head's parameters (by identity) -> their names
    params = {}
    for n, p in mlm.named_parameters(remove_duplicate=False):
        if p is not embedding and id(p) not in base:
            names.setdefault(id(p), []).append(n)
            params[id(p)] = p
    path = folder / SAFE_WEIGHTS_NAME
    if not path.is_file() or not names:
        return initialised
    with safe_open(str(path), framework="pt") as fh:
        held = set(fh.keys())
        found = {}
        for pid, ns in names.items():
            n = next((n for n in ns if n in held), None)
            if n is None or tuple(fh.get_slice(n).get_shape()) != tuple(params[pid].shape):
                return initialised
            found[pid] = fh.get_tensor(n)
    with torch.no_grad():
        for pid, tensor in found.items():
            params[pid].copy_(tensor)
    return "the encoder's own (from its weights), tied to the word embeddings"


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Named groups (a resume matches them by name): weight decay on matrices, none on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights once
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def _mlm_loss(run: _Run, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy over the chosen positions: the head runs on those only when its module is known."""
    head = getattr(run.model, _HEADS.get(run.model.config.model_type, ""), None)
    labels = batch["labels"]
    with autocast(run.config.precision, run.device.type):
        if head is None:
            return run.model(**batch).loss
        hidden = run.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        chosen = labels != -100
        logits = head(hidden.last_hidden_state[chosen])  # (N chosen, V)
    return torch.nn.functional.cross_entropy(logits.float(), labels[chosen])


def _lr_scale(cfg: AdaptConfig, step: int, elapsed: float) -> float:
    """Linear warm-up over ``warmup_ratio`` of the budget, then linear decay to 0 at its end; with both a
    step and a time budget the one further along sets the rate (as :func:`ner_core.training.loop.lr_factor`
    does for training)."""
    by_steps = step / cfg.max_steps if cfg.max_steps else 0.0
    by_time = elapsed / cfg.max_train_seconds if cfg.max_train_seconds else 0.0
    p = min(1.0, max(by_steps, by_time))
    wr = cfg.warmup_ratio
    if p < wr:
        first = (step + 1) / cfg.max_steps if cfg.max_steps else 0.0
        return min(1.0, max(p, first) / wr)
    return max(0.0, (1.0 - p) / (1.0 - wr))


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What a run builds once, before its first step."""

    config: AdaptConfig
    work_dir: Path
    out_dir: Path
    device: torch.device
    model: Any  # the masked-LM model; ``encoder`` is its base, the part that is saved
    encoder: Any
    tokenizer: Any
    head_note: str
    cut: Any
    segmenter_name: str | None
    windows: list[str]
    eval_batches: list[dict]
    optimizer: torch.optim.Optimizer
    corpus_sha: str
    n_texts: int
    source: dict | None
    order: tuple[int, np.ndarray] | None = None  # (pass over the corpus, its window order)


@dataclass
class _Interval:
    """Totals between two checkpoints (one history entry)."""

    t0: float
    steps: int = 0
    loss_sum: float = 0.0
    windows: int = 0
    chars: int = 0


def adapt(
    config: AdaptConfig,
    texts: Sequence[str],
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    source: dict | None = None,
) -> AdaptResult:
    """Continue MLM pretraining of ``config.encoder`` on ``texts``; the adapted encoder goes to ``out_dir``.

    ``work_dir`` holds the run's settings and checkpoints while it runs (it is removed when the encoder is
    saved); ``resume=True`` continues the run found there, with the same settings and corpus. ``source``
    (how the texts were named: files or a dataset) is recorded with the settings.
    """
    t0 = time.perf_counter()
    run = _set_up(config, texts, Path(work_dir), Path(out_dir), resume, source)
    before = _eval_loss(run)  # the model as built, before any checkpoint is loaded
    state = _resume(run) if resume else TrainingState()
    stopped = _train(run, state, progress)
    result = _result(run, state, before, _eval_loss(run), stopped)
    _save_encoder(run, result)
    shutil.rmtree(run.work_dir, ignore_errors=True)
    log.info(
        "adapt: %s; %d steps in %.0f s (%.2f steps/s), held-out MLM loss %s -> %s, encoder saved to %s "
        "(%.0f s in all)",
        stopped,
        result.steps,
        result.seconds,
        result.steps_per_second,
        _fmt(before),
        _fmt(result.eval_loss_after),
        run.out_dir,
        time.perf_counter() - t0,
    )
    return result


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def load_record(work_dir: str | os.PathLike) -> dict:
    """The settings a run in ``work_dir`` started with: ``{config, corpus_sha256, texts, source}``."""
    path = Path(work_dir) / ADAPT_RECORD
    if not path.is_file():
        raise ValueError(f"{work_dir}: no adapt run to resume (no {ADAPT_RECORD} there)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        AdaptConfig.model_validate(record["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged ({' '.join(str(exc).split())[:200]})") from None
    return record


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _check_folders(cfg: AdaptConfig, sha: str, n: int, work: Path, out: Path, resume: bool, source) -> None:
    """A fresh run needs a new ``out`` and no interrupted run in ``work``; a resumed one the settings and
    corpus it started with. A kill during the output's save is tidied first."""
    recover_model_dir(out)
    if resume:
        if not (work / ADAPT_RECORD).is_file() and (out / ADAPT_RECORD).is_file():
            raise ValueError(f"{out}: that adapt run has finished; nothing to resume")
        saved = load_record(work)
        mine = cfg.model_dump(mode="json")
        differ = sorted(k for k in mine if saved["config"].get(k) != mine[k])
        if differ:
            raise ValueError(
                f"{work}: --resume continues with the run's own settings; these differ: {differ}"
            )
        if saved.get("corpus_sha256") != sha:
            raise ValueError(f"{work}: the corpus is not the one this run started on ({n} texts now)")
        return
    if out.exists():
        raise ValueError(f"{out} exists: choose another output folder, or remove it")
    if has_checkpoint(work):
        raise ValueError(f"{work} holds an interrupted adapt run: resume it (--resume), or remove the folder")
    work.mkdir(parents=True, exist_ok=True)
    record = {"config": cfg.model_dump(mode="json"), "corpus_sha256": sha, "texts": n, "source": source}
    _write_json(work / ADAPT_RECORD, record)


def _set_up(cfg: AdaptConfig, texts, work: Path, out: Path, resume: bool, source) -> _Run:
    """Check the folders, build model, windows, held-out batches and optimiser; seed every RNG."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("the corpus has no text")
    sha = corpus_sha256(texts)
    _check_folders(cfg, sha, len(texts), work, out, resume, source)
    threads = cfg.num_threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} requested but CUDA is not available on this machine")
    cut, seg_name = segmenter(cfg.masking, work)
    model, encoder, tokenizer, head_note = _build_mlm(cfg.encoder, cfg.seed)
    windows = split_windows(texts, cfg.max_len)
    train_windows, eval_batches = _hold_out(cfg, windows, tokenizer, cut)
    log.info(
        "adapt %s: %d texts -> %d windows of <= %d chars; masking %s; MLM head %s",
        cfg.encoder,
        len(texts),
        len(windows),
        cfg.max_len,
        f"whole words ({seg_name})" if cut else "single tokens",
        head_note,
    )
    model.to(device)
    optimizer = make_optimizer(_param_groups(model, cfg.weight_decay), cfg.weight_decay, device)
    set_seed(cfg.seed)  # dropout's RNG from here on, whatever building the model drew
    return _Run(
        config=cfg,
        work_dir=work,
        out_dir=out,
        device=device,
        model=model,
        encoder=encoder,
        tokenizer=tokenizer,
        head_note=head_note,
        cut=cut,
        segmenter_name=seg_name,
        windows=train_windows,
        eval_batches=[{k: v.to(device) for k, v in b.items()} for b in eval_batches],
        optimizer=optimizer,
        corpus_sha=sha,
        n_texts=len(texts),
        source=source,
    )


def _hold_out(cfg: AdaptConfig, windows: list[str], tokenizer, cut) -> tuple[list[str], list[dict]]:
    """``(training windows, held-out batches)``: ``eval_windows`` windows chosen by the seed, masked once;
    they are left out of training when the corpus has ten times as many, else (a small corpus) kept in."""
    if not cfg.eval_windows:
        return windows, []
    rng = np.random.default_rng([cfg.seed, 1])
    picked = sorted(
        rng.choice(len(windows), size=min(cfg.eval_windows, len(windows)), replace=False).tolist()
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    held = [windows[i] for i in picked]
    batches = [
        masked_batch(tokenizer, held[i : i + cfg.batch_size], cut, gen, cfg)
        for i in range(0, len(held), cfg.batch_size)
    ]
    if len(windows) < 10 * cfg.eval_windows:
        return windows, batches
    keep = set(picked)
    return [w for i, w in enumerate(windows) if i not in keep], batches


def _resume(run: _Run) -> TrainingState:
    """The checkpoint's model, optimiser and RNG states; a run killed before its first checkpoint starts
    again from the beginning (everything is still as :func:`_set_up` seeded it)."""
    if not has_checkpoint(run.work_dir):
        log.info("%s: no checkpoint yet: adapting from the beginning", run.work_dir)
        return TrainingState()
    ckpt = load_checkpoint(run.work_dir)
    try:
        run.model.load_state_dict(ckpt.model)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{run.work_dir}: the checkpoint does not fit the model: {str(exc)[:200]}"
        ) from None
    live = run.optimizer.param_groups
    saved = ckpt.optimizer["param_groups"]
    if [g.get("name") for g in saved] != [g["name"] for g in live]:
        raise CheckpointError(f"{run.work_dir}: the checkpoint's parameter groups are not this run's")
    groups = [  # JSON has no tuples (AdamW's betas); fused / foreach are this machine's choice
        {
            **{k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in s.items()},
            **{k: now[k] for k in ("fused", "foreach") if k in now},
        }
        for s, now in zip(saved, live, strict=True)
    ]
    run.optimizer.load_state_dict({**ckpt.optimizer, "param_groups": groups})
    ckpt.state.restore_rng()
    log.info(
        "%s: resuming at step %d (%.0f s of training done)", run.work_dir, ckpt.state.step, ckpt.state.elapsed
    )
    return ckpt.state


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------
def _stop_reason(cfg: AdaptConfig, step: int, elapsed: float) -> str:
    if cfg.max_steps and step >= cfg.max_steps:
        return f"step budget of {cfg.max_steps} reached"
    if cfg.max_train_seconds and elapsed >= cfg.max_train_seconds:
        return f"time budget of {cfg.max_train_seconds:g} s reached"
    return ""


def _train(run: _Run, state: TrainingState, progress: bool) -> str:
    """Steps until a budget is spent, a checkpoint every ``checkpoint_steps`` / ``checkpoint_seconds``."""
    cfg = run.config
    t0, done_before = time.perf_counter(), state.elapsed
    interval = _Interval(t0=t0)
    bar = tqdm(
        total=cfg.max_steps,
        initial=state.step,
        desc="adapt",
        unit="step",
        disable=not progress,
        leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    run.model.train()
    while not (stopped := _stop_reason(cfg, state.step, done_before + time.perf_counter() - t0)):
        loss, windows, chars = _step(run, state, done_before + time.perf_counter() - t0)
        interval.steps, interval.loss_sum = interval.steps + 1, interval.loss_sum + loss
        interval.windows, interval.chars = interval.windows + windows, interval.chars + chars
        now = time.perf_counter()
        bar.update(1)
        bar.set_postfix(
            loss=f"{interval.loss_sum / interval.steps:.3f}",
            steps_s=f"{interval.steps / (now - interval.t0):.2f}",
        )
        due = cfg.checkpoint_steps and state.step % cfg.checkpoint_steps == 0
        if due or now - interval.t0 >= cfg.checkpoint_seconds:
            state.elapsed = done_before + now - t0
            _checkpoint(run, state, interval)
            interval = _Interval(t0=time.perf_counter())
    bar.close()
    state.elapsed = done_before + time.perf_counter() - t0
    if interval.steps:
        _checkpoint(run, state, interval)
    return stopped


def _step(run: _Run, state: TrainingState, elapsed: float) -> tuple[float, int, int]:
    """One optimiser step on the next batch of windows; returns (loss, windows, characters)."""
    cfg = run.config
    n = len(run.windows)
    per_pass = -(-n // cfg.batch_size)
    epoch, bi = divmod(state.step, per_pass)
    if run.order is None or run.order[0] != epoch:
        run.order = (epoch, np.random.default_rng([cfg.seed, 2, epoch]).permutation(n))
    picked = [run.windows[i] for i in run.order[1][bi * cfg.batch_size : (bi + 1) * cfg.batch_size]]
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + state.step) % 2**63)
    batch = {k: v.to(run.device) for k, v in masked_batch(run.tokenizer, picked, run.cut, gen, cfg).items()}
    loss = _mlm_loss(run, batch)
    loss.backward()
    scale = _lr_scale(cfg, state.step, elapsed)
    for g in run.optimizer.param_groups:
        g["lr"] = cfg.learning_rate * scale
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return float(loss.detach()), len(picked), sum(len(w) for w in picked)


def _checkpoint(run: _Run, state: TrainingState, interval: _Interval) -> None:
    """Close the interval in the history and write the checkpoint. ``run_state`` names a checkpoint's tensor
    file by ``state.epoch``; the step goes there, so that each checkpoint has a file of its own (the write is
    atomic only then)."""
    seconds = max(time.perf_counter() - interval.t0, 1e-9)
    stats = EpochStats(
        epoch=state.step,
        train_loss=interval.loss_sum / interval.steps,
        dev_f1=None,
        dev_precision=None,
        dev_recall=None,
        dev_char_accuracy=None,
        dev_sentence_accuracy=None,
        learning_rate=run.optimizer.param_groups[0]["lr"],
        seconds=seconds,
        sentences_per_second=interval.windows / seconds,
        chars_per_second=interval.chars / seconds,
    )
    state.history.append(stats)
    state.epoch = state.step
    state.capture_rng()
    save_checkpoint(run.work_dir, state, run.model.state_dict(), run.optimizer.state_dict(), {})
    log.info(
        "adapt step %d: MLM loss %.4f, %.2f steps/s, %.0f chars/s, lr %.2e",
        state.step,
        stats.train_loss,
        interval.steps / seconds,
        stats.chars_per_second,
        stats.learning_rate,
    )


@torch.no_grad()
def _eval_loss(run: _Run) -> float | None:
    """The MLM loss on the held-out windows, their masks fixed at set-up (comparable across the run)."""
    if not run.eval_batches:
        return None
    was_training = run.model.training
    run.model.eval()
    total, count = 0.0, 0
    for b in run.eval_batches:
        n = int((b["labels"] != -100).sum())
        total += float(_mlm_loss(run, b)) * n
        count += n
    run.model.train(was_training)
    return total / max(1, count)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def _result(run: _Run, state: TrainingState, before, after, stopped: str) -> AdaptResult:
    h = state.history
    return AdaptResult(
        out_dir=str(run.out_dir),
        source_encoder=run.config.encoder,
        masking="word" if run.cut else "char",
        segmenter=run.segmenter_name,
        mlm_head=run.head_note,
        steps=state.step,
        windows=len(run.windows),
        corpus_texts=run.n_texts,
        corpus_sha256=run.corpus_sha,
        source=run.source,
        seconds=round(state.elapsed, 3),
        steps_per_second=state.step / max(state.elapsed, 1e-9),
        eval_loss_before=before,
        eval_loss_after=after,
        train_loss_first=h[0].train_loss if h else None,
        train_loss_last=h[-1].train_loss if h else None,
        stopped_reason=stopped,
    )


def _save_encoder(run: _Run, result: AdaptResult) -> None:
    """The encoder (no MLM head), its tokenizer and ``adapt.json``, as one folder renamed into place (the
    earlier one, left by a kill after a save, is replaced only once the new one is complete)."""
    out = run.out_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        run.encoder.save_pretrained(str(tmp))
        run.tokenizer.save_pretrained(str(tmp))
        _write_json(tmp / ADAPT_RECORD, result.model_dump(mode="json"))
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check_encoder_folder(out)  # what was written loads as any encoder folder does
