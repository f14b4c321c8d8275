"""Training loop: AdamW with warm-up and linear decay, separate encoder / head / CRF learning rates,
gradient clipping and accumulation, length-bucketed batches, mixed precision on CUDA, early stopping and
learning-rate reduction on dev entity F1 (strict), a checkpoint every epoch and exact resumption.

Resumption: the checkpoint (:mod:`ner_core.training.run_state`) holds model, optimiser, schedule position,
plateau state, history and the torch / python / numpy RNG states at the end of the epoch. Batch order
depends only on ``(seed, epoch)``. A run killed after epoch k and resumed therefore computes epochs k+1..
exactly as the uninterrupted run (on CPU).

A span-decoder run (``config.decoder.type == "span"``) trains on documents whose entities may overlap
(nested, or one span with two labels), with span targets (:mod:`ner_core.data.span_batching`) and dev F1
from exact span sets (:mod:`ner_core.training.span_eval`); its open decoder settings are fixed when it
starts (:func:`resolve_decoder`) and saved with the model.

Recipes (:mod:`ner_core.training.recipes`, each off unless its option is set): layer-wise learning-rate
decay (``layer_lr_decay``: one named optimiser group per encoder layer; a checkpoint's groups are matched
to the optimiser's by name), FGM or PGD adversarial training on the word embeddings (``adversarial``: the
adversarial passes use the run's loss, distillation's too), an encoder learning rate chosen by the encoder's
size (``learning_rate="auto"``: resolved when the run starts, the number saved) and a moving average of the
weights (``ema_decay``: dev F1 and the saved model use the average, which the checkpoint holds too, so a
resumed run continues it exactly).

Silver documents (``silver=``, self-training's: :mod:`ner_core.training.self_training`) train beside the
gold ones with the loss weight ``training.silver_weight`` (:func:`weighted_loss`); the decoder's open
settings are fixed from the gold documents alone.

Distillation (``distill=``, :class:`ner_core.training.distillation.Distiller`): its unlabeled documents train
beside the gold ones at gold weight 0, the batches carry the teacher's input ids, and its loss (gold plus the
teacher's soft targets) replaces :func:`weighted_loss`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ner_core.artifacts.modeldir import recover_model_dir, save_model_dir
from ner_core.config import DecoderType, NERConfig, TrainingConfig
from ner_core.data.alignment import CharAligner
from ner_core.data.batching import TaggedDataset
from ner_core.data.span_batching import SpanDataset, count_longer, span_stats
from ner_core.documents import Document
from ner_core.inference.evaluate import evaluate_model
from ner_core.metrics import EvaluationReport
from ner_core.model.encoder import check_window, load_encoder
from ner_core.model.network import NERModel
from ner_core.runtime.hardware import default_threads
from ner_core.runtime.precision import Choice, autocast, needs_grad_scaler
from ner_core.schemes import tag_set
from ner_core.training.calibration import choose_training_precision
from ner_core.training.precision_record import record_dev_f1
from ner_core.training.recipes import EMA, FGM, PGD, layer_groups, match_groups, resolve_learning_rate
from ner_core.training.run_state import (
    EpochStats,
    TrainingState,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ner_core.training.span_eval import evaluate_spans

log = logging.getLogger(__name__)

__all__ = [
    "EpochStats",
    "TrainResult",
    "lr_factor",
    "make_optimizer",
    "resolve_decoder",
    "set_seed",
    "train",
    "weighted_loss",
]


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    best_epoch: int
    best_dev_f1: float | None
    history: list[EpochStats] = field(default_factory=list)
    stopped_reason: str = ""
    seconds: float = 0.0
    precision: str = "fp32"


def train(
    config: NERConfig,
    train_docs: Sequence[Document],
    dev_docs: Sequence[Document],
    labels: Sequence[str],
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    extra_metadata: dict | None = None,
    precision: Choice | None = None,
    silver: Sequence[Document] = (),
    distill: Any = None,
) -> TrainResult:
    """Train a model; the best one (dev entity F1) is saved to ``run_dir/model``.

    ``labels`` are the entity labels fixed when the dataset was ingested; the tag set is derived from them
    and the run's scheme. With ``resume=True`` the run continues from the checkpoint in ``run_dir``.
    ``precision``: the choice already made for ``config.training.precision`` (its reason is printed);
    by default it is made here. At the end the best model's dev F1 in each precision is recorded
    (:func:`ner_core.training.precision_record.record_dev_f1`). ``silver``: machine-labelled documents
    trained on with the loss weight ``training.silver_weight`` (self-training). ``distill``: a
    :class:`ner_core.training.distillation.Distiller` (its teacher's targets join the loss).
    """
    t0 = time.perf_counter()
    run = _set_up(config, train_docs, labels, Path(run_dir), precision, silver, distill)
    state = _resume(run) if resume else TrainingState()
    stopped = ""
    for epoch in range(state.epoch + 1, run.n_epochs + 1):
        ep_t0 = time.perf_counter()
        totals = _train_epoch(run, state, epoch, ep_t0, progress)
        with run.ema.applied() if run.ema else contextlib.nullcontext():  # the average is what is scored
            stats, report = _evaluate(run, epoch, totals, dev_docs, ep_t0)
            _keep_best(run, state, stats, report, extra_metadata)
        _checkpoint(run, state, stats)
        if on_epoch:
            on_epoch(stats)
        _log_epoch(stats)
        stopped = _stop_reason(run.config.training, state, totals.budget_hit)
        if stopped:
            break
    else:
        stopped = f"finished {run.n_epochs} epochs"
    history = [asdict(h) for h in state.history]
    (run.run_dir / "history.json").write_text(json.dumps(history, indent=2), encoding="utf-8")
    record_dev_f1(run.model_dir, dev_docs, device=config.training.device, trained_in=run.precision)
    return TrainResult(
        run_dir=run.run_dir,
        model_dir=run.model_dir,
        best_epoch=state.best_epoch,
        best_dev_f1=state.best_f1,
        history=state.history,
        stopped_reason=stopped,
        seconds=time.perf_counter() - t0,
        precision=str(run.precision),
    )


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What a run builds once, before its first epoch."""

    config: NERConfig
    run_dir: Path
    device: torch.device
    model: NERModel
    tokenizer: Any
    train_set: TaggedDataset | SpanDataset
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str
    n_epochs: int
    total_steps: int
    warmup_steps: int
    adversary: FGM | None = None  #: FGM or PGD
    ema: EMA | None = None
    distill: Any = None  #: a Distiller, whose loss replaces weighted_loss

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"


def make_optimizer(groups: list[dict], weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused (one kernel over every parameter, on CPU as on CUDA) where torch has
    that kernel for the device: the unfused update spent about a quarter of a bf16 training step on CPU
    (``bench/bench_train.py --throughput``). It is also what HF's Trainer uses by default
    (``adamw_torch_fused`` with torch >= 2.8). The update is the same AdamW; only the kernel differs."""
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=fused or None)


def _set_up(
    config: NERConfig,
    train_docs: Sequence[Document],
    labels: Sequence[str],
    run_dir: Path,
    choice: Choice | None,
    silver: Sequence[Document] = (),
    distill: Any = None,
) -> _Run:
    """Check the device, seed every RNG, save the config, build model, data, optimiser and schedule."""
    tc = config.training
    run_dir.mkdir(parents=True, exist_ok=True)
    if not train_docs:
        raise ValueError("no training documents: the training split is empty")
    threads = tc.num_threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(tc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {tc.device!r} requested but CUDA is not available on this machine")
    choice = choice or choose_training_precision(config, labels)
    log.info("%s", choice.line("training"))
    set_seed(tc.seed)

    span = config.decoder.type is DecoderType.SPAN
    if span:
        config, notes = resolve_decoder(config, train_docs)
        for note in notes:
            log.info("%s", note)
    encoder, tokenizer = load_encoder(config.encoder)
    config = resolve_learning_rate(config, encoder)  # "auto": the number, saved below and with the model
    tc = config.training
    (run_dir / "config.json").write_text(config.to_json(), encoding="utf-8")
    check_window(config.data.max_len, encoder.config)
    model = NERModel(config, sorted(labels) if span else tag_set(sorted(labels), config.data.scheme), encoder)
    model = model.to(device)
    train_set = _dataset(config, model, CharAligner(tokenizer), train_docs, silver, distill)

    groups = layer_groups(model, model.param_groups(tc), tc.layer_lr_decay, _n_layers(encoder))
    for g in groups:
        g["initial_lr"] = g["lr"]
    optimizer = make_optimizer(groups, tc.weight_decay, device)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / tc.batch_size) / tc.grad_accum_steps)
    n_epochs = tc.hard_epochs or tc.max_epochs
    total_steps = steps_per_epoch * n_epochs
    use_scaler = needs_grad_scaler(choice.precision)
    return _Run(
        config=config,
        run_dir=run_dir,
        device=device,
        model=model,
        tokenizer=tokenizer,
        train_set=train_set,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=use_scaler),
        precision=choice.precision,
        n_epochs=n_epochs,
        total_steps=total_steps,
        warmup_steps=int(total_steps * tc.warmup_ratio),
        adversary=_adversary(model, config.training),
        ema=EMA(model, tc.ema_decay) if tc.ema_decay else None,
        distill=distill,
    )


def _adversary(model: NERModel, tc: TrainingConfig) -> FGM | None:
    """The run's attack on the word embeddings (``adversarial``), or ``None``."""
    embedding = model.encoder.get_input_embeddings()
    if tc.adversarial == "fgm":
        return FGM(embedding, tc.adv_epsilon)
    if tc.adversarial == "pgd":
        return PGD(embedding, tc.adv_epsilon, tc.adv_steps, tc.adv_alpha)
    return None


def _dataset(
    config: NERConfig,
    model: NERModel,
    aligner: CharAligner,
    gold: Sequence[Document],
    silver: Sequence[Document],
    distill: Any = None,
) -> Any:
    """The training set: the gold documents, then the silver ones with their loss weight; distilling, then
    the unlabeled ones at weight 0, each batch with the teacher's input ids too."""
    extra = list(distill.unlabeled) if distill else []
    docs = [*gold, *silver, *extra]
    weights = [1.0] * len(gold) + [config.training.silver_weight] * len(silver) if silver else None
    if extra:
        weights = (weights or [1.0] * len(gold)) + [0.0] * len(extra)
    max_len = config.data.max_len
    if model.decoder is DecoderType.SPAN:
        out = SpanDataset(docs, aligner, model.labels, max_len, config.decoder.max_span_len, weights)
    else:
        out = TaggedDataset(docs, aligner, model.tags, config.data.scheme, max_len, weights)
    return distill.dataset(out) if distill else out


def _n_layers(encoder: Any) -> int:
    """The encoder's number of transformer layers (its HF config's ``num_hidden_layers``)."""
    n = getattr(encoder.config, "num_hidden_layers", None) or getattr(encoder.config, "num_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"layer_lr_decay: the encoder's config names no number of layers ({n!r})")
    return n


def _resume(run: _Run) -> TrainingState:
    """Load the run's checkpoint into model, optimiser, scaler and the global RNGs; return its state.

    A run killed before its first checkpoint starts again from the beginning: the model, optimiser and
    RNGs are still as :func:`_set_up` seeded them, so the result equals an uninterrupted run's.
    """
    recover_model_dir(run.model_dir)  # what a kill during a model save left behind
    if not has_checkpoint(run.run_dir):
        log.info(
            "%s: no checkpoint yet (stopped before its first epoch ended): training this run from the "
            "beginning",
            run.run_dir,
        )
        return TrainingState()
    ckpt = load_checkpoint(run.run_dir)
    run.model.load_state_dict(ckpt.model)
    # JSON has no tuples: give values such as AdamW's betas back the type the optimiser built them with
    # how the update runs (fused, foreach) is this machine's choice, not the checkpoint's
    live = run.optimizer.param_groups
    where = str(run.run_dir / "checkpoint.json")
    groups = [
        {
            **{k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()},
            **{k: now[k] for k in ("fused", "foreach") if k in now},
        }
        for saved, now in zip(match_groups(ckpt.optimizer["param_groups"], live, where), live, strict=True)
    ]
    run.optimizer.load_state_dict({**ckpt.optimizer, "param_groups": groups})
    run.scaler.load_state_dict(ckpt.scaler)
    if run.ema:
        run.ema.load_state_dict(ckpt.extra, where)
    ckpt.state.restore_rng()
    return ckpt.state


# ----------------------------------------------------------------------------------------------
# One epoch
# ----------------------------------------------------------------------------------------------
@dataclass
class _EpochTotals:
    loss_sum: float = 0.0
    loss_n: int = 0
    n_seen: int = 0
    chars_seen: int = 0
    positions: int = 0
    padded: int = 0
    budget_hit: bool = False


def _train_epoch(run: _Run, state: TrainingState, epoch: int, ep_t0: float, progress: bool) -> _EpochTotals:
    """One pass over the training set (stopped early when the time budget runs out)."""
    tc = run.config.training
    run.model.train()
    totals = _EpochTotals()
    n_batches = math.ceil(len(run.train_set) / tc.batch_size)
    bar = tqdm(
        total=n_batches,
        desc=f"epoch {epoch}/{run.n_epochs}",
        disable=not progress,
        leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    run.optimizer.zero_grad(set_to_none=True)
    for bi, batch in enumerate(
        run.train_set.batches(tc.batch_size, shuffle=True, seed=tc.seed * 1000 + epoch)
    ):
        batch = {k: v.to(run.device) for k, v in batch.items()}
        loss = _forward_backward(run, batch)
        totals.loss_sum += float(loss.detach())
        totals.loss_n += 1
        totals.n_seen += batch["input_ids"].size(0)
        totals.chars_seen += int(batch["attention_mask"].sum()) - 2 * batch["input_ids"].size(0)
        totals.positions += batch["attention_mask"].numel()
        totals.padded += batch["attention_mask"].numel() - int(batch["attention_mask"].sum())
        if (bi + 1) % tc.grad_accum_steps == 0 or bi + 1 == n_batches:
            _optimizer_step(run, state, ep_t0)
        bar.update(1)
        bar.set_postfix(
            loss=f"{totals.loss_sum / totals.loss_n:.3f}",
            sent_s=f"{totals.n_seen / max(time.perf_counter() - ep_t0, 1e-9):.1f}",
        )
        if tc.max_train_seconds and state.elapsed + time.perf_counter() - ep_t0 > tc.max_train_seconds:
            totals.budget_hit = True
            break
    bar.close()
    return totals


def _forward_backward(run: _Run, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's loss and its backward pass (scaled for AMP and accumulation); with FGM or PGD a pass on
    embeddings moved along this batch's gradient adds its gradient too (PGD's earlier steps only move
    them). Every pass uses the same loss (distillation's when distilling). Returns the clean loss."""
    accum = run.config.training.grad_accum_steps
    adversary = run.adversary
    before = adversary.rows_grad(batch["input_ids"]) if adversary else None
    loss_of = run.distill.loss if run.distill else weighted_loss

    def scaled_loss() -> torch.Tensor:
        """The loss at the embeddings as they are now, scaled for the backward pass."""
        with autocast(run.precision, run.device.type):  # encoder + head; the CRF and the loss stay fp32
            now = loss_of(run.model, batch)
        return run.scaler.scale(now / accum)

    with autocast(run.precision, run.device.type):
        loss = loss_of(run.model, batch)
    run.scaler.scale(loss / accum).backward()
    if adversary and before is not None:
        with adversary.attack(*before, scaled_loss) as moved:
            if moved:
                scaled_loss().backward()
    return loss


def weighted_loss(model: NERModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's loss: the model's mean over rows, or with ``batch["weight"]`` (B,) (silver documents)
    ``sum_b w_b * loss_b / B``, each row's loss scaled by its document's weight (as Keras' sample weights:
    a batch of silver documents at weight w counts w times a gold batch, and a row of weight 0 adds nothing
    to the gradient).

    The model gives the mean loss over the rows it is handed, so the rows of each distinct weight go through
    it as one sub-batch (same width and padding, hence the same per-row values as in the whole batch) and
    the means are combined; rows of weight 0 are not run. A batch without ``weight`` is one call, as before
    self-training existed.
    """
    gold = batch["tags"] if "tags" in batch else batch["targets"]  # span model: (N, 4) targets
    weight = batch.get("weight")
    if weight is None:
        return model(batch["input_ids"], batch["attention_mask"], gold)
    B = weight.shape[0]
    total = None
    for w in sorted({float(x) for x in weight.tolist()}):
        if w == 0.0:
            continue
        rows = (weight == w).nonzero().squeeze(1)  # (R,)
        part = model(batch["input_ids"][rows], batch["attention_mask"][rows], _rows_of(gold, rows, B, batch))
        total = part * (w * len(rows) / B) if total is None else total + part * (w * len(rows) / B)
    if total is None:  # every row weighs 0: a zero loss that still reaches every parameter the batch uses
        return model(batch["input_ids"], batch["attention_mask"], gold) * 0.0
    return total


def _rows_of(gold: torch.Tensor, rows: torch.Tensor, B: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The targets of batch rows ``rows``: tags ``(R, T)``, or span targets ``(N', 4)`` renumbered."""
    if "tags" in batch:
        return gold[rows]
    new = torch.full((B,), -1, dtype=torch.long, device=gold.device)  # (B,) old row -> new row
    new[rows] = torch.arange(len(rows), device=gold.device)
    kept = gold[new[gold[:, 0]] >= 0]  # (N', 4)
    return torch.cat([new[kept[:, 0]].unsqueeze(1), kept[:, 1:]], dim=1)


def _optimizer_step(run: _Run, state: TrainingState, ep_t0: float) -> None:
    """Set the scheduled learning rates, clip, step the optimiser (through the AMP scaler)."""
    tc = run.config.training
    fraction = (
        (state.elapsed + time.perf_counter() - ep_t0) / tc.max_train_seconds if tc.max_train_seconds else None
    )
    factor = (
        lr_factor(state.step, run.warmup_steps, run.total_steps, fraction, tc.warmup_ratio)
        * state.plateau_scale
    )
    for g in run.optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    if tc.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema:
        run.ema.update()
    state.step += 1


# ----------------------------------------------------------------------------------------------
# Evaluate, keep best
# ----------------------------------------------------------------------------------------------
def _evaluate(
    run: _Run, epoch: int, totals: _EpochTotals, dev_docs: Sequence[Document], ep_t0: float
) -> tuple[EpochStats, EvaluationReport | None]:
    """Score the model on the dev split (if any) and sum the epoch up."""
    tc = run.config.training
    train_seconds = time.perf_counter() - ep_t0
    score = evaluate_spans if run.model.decoder is DecoderType.SPAN else evaluate_model
    report = (
        score(
            run.model,
            run.tokenizer,
            dev_docs,
            max_len=run.config.data.max_len,
            batch_size=max(tc.batch_size, 32),
            device=tc.device,
        )
        if dev_docs
        else None
    )
    stats = EpochStats(
        epoch=epoch,
        train_loss=totals.loss_sum / max(1, totals.loss_n),
        dev_f1=report.f1 if report else None,
        dev_precision=report.precision if report else None,
        dev_recall=report.recall if report else None,
        dev_char_accuracy=report.char_accuracy if report else None,
        dev_sentence_accuracy=report.sentence_accuracy if report else None,
        learning_rate=_reported_lr(run),
        seconds=time.perf_counter() - ep_t0,
        sentences_per_second=totals.n_seen / max(train_seconds, 1e-9),
        chars_per_second=totals.chars_seen / max(train_seconds, 1e-9),
        padding_share=totals.padded / max(1, totals.positions),
    )
    return stats, report


def _reported_lr(run: _Run) -> float:
    """The learning rate an epoch reports: the first group's; with layer-wise decay, whose first group is
    the embeddings', the undecayed encoder rate on the same schedule (what ``learning_rate`` names)."""
    g = run.optimizer.param_groups[0]
    decay = run.config.training.layer_lr_decay
    if decay is None or decay == 1.0:
        return g["lr"]
    return g["lr"] / g["initial_lr"] * run.config.training.learning_rate


def _keep_best(
    run: _Run,
    state: TrainingState,
    stats: EpochStats,
    report: EvaluationReport | None,
    extra_metadata: dict | None,
) -> None:
    """Save the model directory when dev F1 improved (every epoch without ``best_fit``); otherwise count
    the epoch towards early stopping and reduce the learning rate on a plateau."""
    tc = run.config.training
    f1 = stats.dev_f1
    improved = state.best_f1 is None or (f1 is not None and f1 > state.best_f1)
    if improved or not tc.best_fit:
        state.best_f1, state.best_epoch = f1, stats.epoch
        state.bad_epochs = state.plateau_bad = 0
        stats.is_best = True
        save_model_dir(
            run.model_dir,
            run.model,
            run.tokenizer,
            metrics={
                "best_epoch": stats.epoch,
                "dev": report.summary() if report else None,
                **(extra_metadata or {}),
            },
        )
        return
    state.bad_epochs += 1
    state.plateau_bad += 1
    if state.plateau_bad >= tc.reduce_lr_patience:
        state.plateau_scale *= tc.reduce_lr_factor
        state.plateau_bad = 0


# ----------------------------------------------------------------------------------------------
# Checkpoint, stop
# ----------------------------------------------------------------------------------------------
def _checkpoint(run: _Run, state: TrainingState, stats: EpochStats) -> None:
    """Close the epoch in ``state`` and write the checkpoint (RNG states as they are now)."""
    state.history.append(stats)
    state.epoch = stats.epoch
    state.elapsed += stats.seconds
    state.capture_rng()
    save_checkpoint(
        run.run_dir,
        state,
        model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict(),
        extra=run.ema.state_dict() if run.ema else None,
    )


def _stop_reason(tc: TrainingConfig, state: TrainingState, budget_hit: bool) -> str:
    """Why training stops after this epoch; empty to go on."""
    if budget_hit:
        return f"time budget of {tc.max_train_seconds:.0f} s reached"
    if tc.best_fit and not tc.hard_epochs and state.bad_epochs >= tc.early_stop_patience:
        return f"early stop: no dev F1 gain for {state.bad_epochs} epochs"
    return ""


def _log_epoch(stats: EpochStats) -> None:
    dev = f"dev F1 {stats.dev_f1 * 100:.2f}" if stats.dev_f1 is not None else "no dev set"
    best = " *best*" if stats.is_best else ""
    log.info(
        "epoch %d: loss %.4f, %s, %.1f sent/s, %.1f%% padding, %.1f s%s",
        stats.epoch,
        stats.train_loss,
        dev,
        stats.sentences_per_second,
        100 * (stats.padding_share or 0),
        stats.seconds,
        best,
    )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def resolve_decoder(config: NERConfig, train_docs: Sequence[Document]) -> tuple[NERConfig, list[str]]:
    """A span run's decoder settings fixed from its training data, and the lines that say so.

    ``max_span_len`` left open becomes the longest training entity; ``overlap`` left open becomes
    ``allow`` when the training data nests (or gives a span two labels), else ``flat``. Both are saved in
    the run's configuration and the model directory. The lines count the gold entities the limit leaves
    out (never scored, so never predicted). A CRF configuration is returned as it is, without lines.
    """
    dec = config.decoder
    if dec.type is not DecoderType.SPAN:
        return config, []
    stats = span_stats(train_docs)
    limit = dec.max_span_len or max(1, stats.longest)
    overlap = dec.overlap or ("allow" if stats.nested else "flat")
    config = config.with_overrides({"decoder.max_span_len": limit, "decoder.overlap": overlap})
    source = "given" if dec.max_span_len else "the training data's longest entity"
    longer = count_longer(train_docs, limit)
    nested = "has nested or overlapping entities" if stats.nested else "is flat"
    notes = [
        f"span decoder: max_span_len {limit} ({source}); spans longer than that are not scored: "
        f"{longer} of {stats.entities} gold training entities are longer and left out",
        f"span decoder: overlap {overlap} ({'given' if dec.overlap else f'the training data {nested}'}), "
        f"threshold {dec.threshold}",
    ]
    return config, notes


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def lr_factor(
    step: int, warmup: int, total: int, time_fraction: float | None = None, warmup_ratio: float = 0.0
) -> float:
    """Linear warm-up then linear decay to 0, over ``total`` optimiser steps.

    With a time budget (``time_fraction`` = elapsed / budget, evaluation included) the schedule also runs
    on the clock and the one further along wins: warm-up ends after ``warmup_ratio`` of the budget at the
    latest and the rate reaches 0 when the budget does. Without this, a budget that allows only a few of
    ``max_epochs`` epochs would stop while still warming up, far below the peak rate. Clock-driven rates
    make a budgeted run depend on the machine's speed, as its number of epochs already does.
    """
    by_steps = (
        (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    )
    if time_fraction is None:
        return by_steps
    t = min(1.0, max(0.0, time_fraction))
    in_warmup_by_time = warmup_ratio > 0 and t < warmup_ratio
    if step < warmup and in_warmup_by_time:  # both still warming up: the further one
        return max(by_steps, t / warmup_ratio)
    by_time = max(0.0, (1.0 - t) / (1.0 - warmup_ratio))
    if step < warmup:  # the clock ended the warm-up
        return by_time
    if in_warmup_by_time:  # the steps ended the warm-up
        return by_steps
    return min(by_steps, by_time)
