"""Training loop: AdamW with warm-up and linear decay, separate encoder / head / CRF learning rates,
gradient clipping and accumulation, length-bucketed batches, mixed precision on CUDA, early stopping and
learning-rate reduction on dev entity F1 (strict), a checkpoint every epoch and exact resumption.

Resumption: the checkpoint (:mod:`ner_core.checkpoint`) holds model, optimiser, schedule position,
plateau state, history and the torch / python / numpy RNG states at the end of the epoch. Batch order
depends only on ``(seed, epoch)``. A run killed after epoch k and resumed therefore computes epochs k+1..
exactly as the uninterrupted run (on CPU).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ner_core.alignment import CharAligner
from ner_core.batching import TaggedDataset
from ner_core.checkpoint import EpochStats, TrainingState, load_checkpoint, save_checkpoint
from ner_core.config import NERConfig
from ner_core.documents import Document
from ner_core.encoder import load_encoder
from ner_core.evaluation import evaluate_model
from ner_core.model import NERModel
from ner_core.modeldir import save_model_dir
from ner_core.schemes import tag_set


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    best_epoch: int
    best_dev_f1: float | None
    history: list[EpochStats] = field(default_factory=list)
    stopped_reason: str = ""
    seconds: float = 0.0


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _lr_factor(
    step: int, warmup: int, total: int, time_fraction: float | None = None, warmup_ratio: float = 0.0
) -> float:
    """Linear warm-up then linear decay to 0, over ``total`` optimiser steps.

    With a time budget (``time_fraction`` = elapsed / budget, evaluation included) the schedule also runs
    on the clock and the one further along wins: warm-up ends after ``warmup_ratio`` of the budget at the
    latest and the rate reaches 0 when the budget does. Without this, a budget that allows only a few of
    ``max_epochs`` epochs would stop while still warming up (seen: finance, 1 of 50 epochs, LR at 1/4
    of its peak). Clock-driven rates make a budgeted run depend on the machine's speed, as its number of
    epochs already does.
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
) -> TrainResult:
    """Train a model; the best one (dev entity F1) is saved to ``run_dir/model``.

    ``labels`` are the entity labels fixed when the dataset was ingested; the tag set is derived from them
    and the run's scheme. With ``resume=True`` the run continues from the checkpoint in ``run_dir``.
    """
    t0 = time.perf_counter()
    tc = config.training
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not train_docs:
        raise ValueError("no training documents: the training split is empty")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = torch.device(tc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {tc.device!r} requested but CUDA is not available on this machine")
    set_seed(tc.seed)
    (run_dir / "config.json").write_text(config.to_json(), encoding="utf-8")

    tags = tag_set(sorted(labels), config.data.scheme)
    encoder, tokenizer = load_encoder(config.encoder)
    model = NERModel(config, tags, encoder).to(device)
    aligner = CharAligner(tokenizer)
    train_set = TaggedDataset(train_docs, aligner, tags, config.data.scheme, config.data.max_len)

    groups = model.param_groups(tc)
    for g in groups:
        g["initial_lr"] = g["lr"]
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / tc.batch_size) / tc.grad_accum_steps)
    n_epochs = tc.hard_epochs or tc.max_epochs
    total_steps = steps_per_epoch * n_epochs
    warmup_steps = int(total_steps * tc.warmup_ratio)
    use_amp = tc.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    state = TrainingState()
    if resume:
        ckpt = load_checkpoint(run_dir)
        model.load_state_dict(ckpt.model)
        # JSON has no tuples: give values such as AdamW's betas back the type the optimiser built them with
        groups = [
            {k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()}
            for saved, now in zip(ckpt.optimizer["param_groups"], optimizer.param_groups)
        ]
        optimizer.load_state_dict({**ckpt.optimizer, "param_groups": groups})
        scaler.load_state_dict(ckpt.scaler)
        state = ckpt.state
        state.restore_rng()
    history = state.history
    stopped = ""
    model_dir = run_dir / "model"

    for epoch in range(state.epoch + 1, n_epochs + 1):
        ep_t0 = time.perf_counter()
        model.train()
        loss_sum, loss_n, n_seen, chars_seen = 0.0, 0, 0, 0
        n_batches = math.ceil(len(train_set) / tc.batch_size)
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch}/{n_epochs}",
            disable=not progress,
            leave=False,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
        optimizer.zero_grad(set_to_none=True)
        budget_hit = False
        for bi, batch in enumerate(
            train_set.batches(tc.batch_size, shuffle=True, seed=tc.seed * 1000 + epoch)
        ):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = model(batch["input_ids"], batch["attention_mask"], batch["tags"])
            scaler.scale(loss / tc.grad_accum_steps).backward()
            loss_sum += float(loss.detach())
            loss_n += 1
            n_seen += batch["input_ids"].size(0)
            chars_seen += int(batch["attention_mask"].sum()) - 2 * batch["input_ids"].size(0)
            if (bi + 1) % tc.grad_accum_steps == 0 or bi + 1 == n_batches:
                fraction = (
                    (state.elapsed + time.perf_counter() - ep_t0) / tc.max_train_seconds
                    if tc.max_train_seconds
                    else None
                )
                factor = (
                    _lr_factor(state.step, warmup_steps, total_steps, fraction, tc.warmup_ratio)
                    * state.plateau_scale
                )
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                if tc.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_sum / loss_n:.3f}",
                sent_s=f"{n_seen / max(time.perf_counter() - ep_t0, 1e-9):.1f}",
            )
            if tc.max_train_seconds and state.elapsed + time.perf_counter() - ep_t0 > tc.max_train_seconds:
                budget_hit = True
                break
        bar.close()
        train_seconds = time.perf_counter() - ep_t0
        report = (
            evaluate_model(
                model,
                tokenizer,
                dev_docs,
                max_len=config.data.max_len,
                batch_size=max(tc.batch_size, 32),
                device=tc.device,
            )
            if dev_docs
            else None
        )
        f1 = report.f1 if report else None
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / max(1, loss_n),
            dev_f1=f1,
            dev_precision=report.precision if report else None,
            dev_recall=report.recall if report else None,
            dev_char_accuracy=report.char_accuracy if report else None,
            dev_sentence_accuracy=report.sentence_accuracy if report else None,
            learning_rate=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - ep_t0,
            sentences_per_second=n_seen / max(train_seconds, 1e-9),
            chars_per_second=chars_seen / max(train_seconds, 1e-9),
        )
        improved = state.best_f1 is None or (f1 is not None and f1 > state.best_f1)
        if improved or not tc.best_fit:
            state.best_f1, state.best_epoch = f1, epoch
            state.bad_epochs = state.plateau_bad = 0
            stats.is_best = True
            save_model_dir(
                model_dir,
                model,
                tokenizer,
                metrics={
                    "best_epoch": epoch,
                    "dev": report.summary() if report else None,
                    **(extra_metadata or {}),
                },
            )
        else:
            state.bad_epochs += 1
            state.plateau_bad += 1
            if state.plateau_bad >= tc.reduce_lr_patience:
                state.plateau_scale *= tc.reduce_lr_factor
                state.plateau_bad = 0
        history.append(stats)
        state.epoch = epoch
        state.elapsed += stats.seconds
        state.capture_rng()
        save_checkpoint(
            run_dir,
            state,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
        )
        if on_epoch:
            on_epoch(stats)
        if progress:
            dev = f"dev F1 {f1 * 100:.2f}" if f1 is not None else "no dev set"
            print(
                f"epoch {epoch}: loss {stats.train_loss:.4f}, {dev}, {stats.sentences_per_second:.1f} sent/s, "
                f"{stats.seconds:.1f} s{' *best*' if stats.is_best else ''}",
                flush=True,
            )
        if budget_hit:
            stopped = f"time budget of {tc.max_train_seconds:.0f} s reached"
            break
        if tc.best_fit and not tc.hard_epochs and state.bad_epochs >= tc.early_stop_patience:
            stopped = f"early stop: no dev F1 gain for {state.bad_epochs} epochs"
            break
    else:
        stopped = f"finished {n_epochs} epochs"
    (run_dir / "history.json").write_text(
        json.dumps([asdict(h) for h in history], indent=2), encoding="utf-8"
    )
    return TrainResult(
        run_dir=run_dir,
        model_dir=model_dir,
        best_epoch=state.best_epoch,
        best_dev_f1=state.best_f1,
        history=history,
        stopped_reason=stopped,
        seconds=time.perf_counter() - t0,
    )
