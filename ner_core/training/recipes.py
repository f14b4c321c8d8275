"""Training recipes that small encoders gain from (issue 26), each an option of :class:`TrainingConfig`
and off by default:

- :func:`layer_groups`: layer-wise learning-rate decay (``layer_lr_decay``). The layers near the output
  are the most task-specific and move most; the embeddings and low layers hold general knowledge that a
  small labelled set would otherwise wear away. Each layer is an optimiser group of its own, named
  (``encoder.layer.3``), so a checkpoint's groups are matched by name (:func:`match_groups`).
- :class:`FGM`: fast gradient method on the word embeddings (``adversarial="fgm"``): a second forward and
  backward pass with the embeddings moved by ``epsilon * g / ||g||``, then restored exactly. Only the rows
  of the batch's tokens move (the only rows with a gradient), so the copy kept for the restore is small.
- :class:`PGD`: projected gradient descent on the same rows (``adversarial="pgd"``, Madry et al. 2018, as
  Chinese NER competitions use it): ``adv_steps`` moves of norm ``adv_alpha``, each kept within the L2 ball
  of radius ``adv_epsilon``; only the last adversarial pass's parameter gradient is kept.
- :func:`encoder_learning_rate`: the encoder's learning rate by its size (``learning_rate="auto"``).
- :class:`EMA`: an exponential moving average of the trainable weights (``ema_decay``), updated after each
  optimiser step, which the dev evaluation and the saved model use instead of the raw weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ner_core.config import NERConfig

log = logging.getLogger(__name__)

__all__ = [
    "EMA",
    "FGM",
    "LR_BY_SIZE",
    "PGD",
    "encoder_learning_rate",
    "layer_groups",
    "match_groups",
    "resolve_learning_rate",
]

_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def _depth(name: str, n_layers: int) -> int:
    """Where an encoder parameter sits: 0 the embeddings, i + 1 transformer layer i, n_layers + 1 what
    comes after the layers (a pooler)."""
    m = _LAYER.search(name)
    if m:
        return int(m.group(1)) + 1
    if "embeddings" in name:
        return 0
    return n_layers + 1


def layer_groups(model: nn.Module, groups: list[dict], decay: float | None, n_layers: int) -> list[dict]:
    """``groups`` (:meth:`NERModel.param_groups`) with the encoder's groups split by layer.

    Transformer layer ``i`` (0-based, of ``L = n_layers``) gets the encoder rate times ``decay ** (L - i)``
    and the embeddings ``decay ** (L + 1)``, as in ELECTRA and BEiT, where the head (here also the CRF or
    span decoder) counts as layer ``L + 1`` at the full rate; parameters after the layers (a pooler, unused
    by the taggers) get the full rate too. Groups are named
    ``encoder.embeddings``, ``encoder.layer.<i>``, ``encoder.top``, each with ``_no_decay`` for the
    parameters without weight decay. Without decay (``None`` or 1.0) ``groups`` is returned unchanged, so
    a run keeps the groups its checkpoints were written with.
    """
    if decay is None or decay == 1.0:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    out: list[dict] = []
    for g in groups:
        base = g["name"].removesuffix("_no_decay")
        if base != "encoder":
            out.append(g)
            continue
        suffix = g["name"][len(base) :]
        by_depth: dict[int, list[nn.Parameter]] = {}
        for p in g["params"]:
            by_depth.setdefault(_depth(names[id(p)].removeprefix("encoder."), n_layers), []).append(p)
        for depth in sorted(by_depth):
            if depth == 0:
                label, scale = "embeddings", decay ** (n_layers + 1)
            elif depth <= n_layers:
                label, scale = f"layer.{depth - 1}", decay ** (n_layers - depth + 1)
            else:
                label, scale = "top", 1.0
            name = f"encoder.{label}{suffix}"
            out.append({**g, "name": name, "params": by_depth[depth], "lr": g["lr"] * scale})
    return out


def match_groups(saved: list[dict], live: list[dict], where: str) -> list[dict]:
    """The checkpoint's parameter groups ``saved`` put in the order of the optimiser's ``live`` groups, by
    their names: torch's ``load_state_dict`` pairs groups by position, which would hand one layer's
    moments to another when the groups change (layer-wise decay changes their number). A checkpoint whose
    groups carry no names (none written here lacks them) is taken in its own order."""
    if not all("name" in g for g in saved):
        return saved
    by_name = {g["name"]: g for g in saved}
    live_names = [g.get("name") for g in live]
    if sorted(by_name) != sorted(n for n in live_names if n is not None) or len(by_name) != len(saved):
        raise ValueError(
            f"{where}: the checkpoint's optimiser groups {sorted(by_name)} are not this run's "
            f"{sorted(n for n in live_names if n)}: it was written with other training settings "
            "(layer_lr_decay, a frozen encoder, ...)"
        )
    ordered = [by_name[n] for n in live_names]
    for s, now in zip(ordered, live, strict=True):
        if len(s["params"]) != len(now["params"]):
            raise ValueError(
                f"{where}: optimiser group {s['name']!r} has {len(s['params'])} parameters in the checkpoint "
                f"and {len(now['params'])} in this run"
            )
    return ordered


class FGM:
    """Fast gradient method on an encoder's word embeddings (Miyato et al. 2017; the "FGM" of Chinese NER
    competitions). Use, after the clean loss's backward pass::

        with fgm.attack(input_ids, grad_before):
            adv_loss(...).backward()

    ``grad_before`` (:meth:`rows_grad`, taken before the clean backward) is what earlier micro-batches of a
    gradient accumulation left in the embedding's gradient, so that the direction is this batch's own.
    The gradient may be scaled (AMP's grad scaler): its direction is the same; a gradient that is zero or
    not finite (a scaler's overflow) skips the attack.
    """

    name = "fgm"

    def __init__(self, embedding: nn.Embedding, epsilon: float) -> None:
        if not embedding.weight.requires_grad:
            raise ValueError(
                f"adversarial {self.name} moves the word embeddings along their gradient, but the encoder is "
                "frozen: drop --freeze_encoder or use --adversarial none"
            )
        self.weight = embedding.weight
        self.epsilon = epsilon

    def rows_grad(self, input_ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """The batch's token ids (unique) and the embedding gradient on their rows now (``None``: none)."""
        rows = input_ids.unique()
        grad = self.weight.grad
        return rows, (grad[rows].clone() if grad is not None else None)

    @contextlib.contextmanager
    def attack(
        self, rows: Tensor, grad_before: Tensor | None, ascent: Callable[[], Tensor] | None = None
    ) -> Iterator[bool]:
        """Move the embedding rows by ``epsilon * g / ||g||`` while inside; put them back bit for bit on exit.
        Yields whether they were moved. ``ascent`` (PGD's further steps) is not used: FGM takes one step."""
        grad = self.weight.grad
        g = None if grad is None else grad[rows].float()
        if g is not None and grad_before is not None:
            g = g - grad_before.float()
        norm = None if g is None else torch.linalg.vector_norm(g)
        if g is None or norm is None or not torch.isfinite(norm) or float(norm) == 0.0:
            yield False
            return
        data = self.weight.data
        backup = data[rows].clone()
        data[rows] = (backup.float() + self.epsilon * g / norm).to(data.dtype)
        try:
            yield True
        finally:
            data[rows] = backup


class PGD(FGM):
    """Projected gradient descent on the word embeddings (Madry et al. 2018), in the form NLP uses it (the
    "PGD" of Chinese NER competitions): after the clean pass, ``steps`` moves of the batch's embedding rows,
    each ``alpha * g / ||g||`` along the gradient ``g`` at the point reached, the total perturbation
    ``delta`` projected back onto the ball ``||delta|| <= epsilon`` after each move. ``||.||`` is the L2
    (Frobenius) norm over the whole block of moved rows, as FGM normalises ``g``. Use as FGM's::

        with pgd.attack(rows, grad_before, ascent) as moved:
            if moved:
                adv_loss(...).backward()

    The first move follows the clean pass's gradient (this batch's own, as FGM's); each further one runs
    ``ascent()`` (the adversarial loss at the point reached) and takes only the embedding's gradient of it
    (``torch.autograd.grad``): no parameter's ``.grad`` changes, so the parameter gradient kept is the
    clean pass's plus the final adversarial pass's (the caller's backward inside the block), the
    intermediate ones discarded without copying every parameter's gradient. The rows are restored bit for
    bit on exit, as FGM's.

    The first move is ``min(alpha, epsilon) * g / ||g||``, its exact projection, so ``steps=1,
    alpha=epsilon`` is FGM's update bit for bit. ``alpha`` defaults to ``epsilon / steps``: ``steps`` moves
    along one direction just reach the bound (``epsilon`` 1.0, 3 steps: 0.33, close to the 0.3 of the
    competitions' code). A further gradient that is zero, missing or not finite (a grad scaler's overflow)
    ends the ascent where it is. The extra forward passes draw dropout from the run's global generator,
    whose state the checkpoint holds, so a resumed run repeats them exactly.
    """

    name = "pgd"

    def __init__(
        self, embedding: nn.Embedding, epsilon: float, steps: int, alpha: float | None = None
    ) -> None:
        super().__init__(embedding, epsilon)
        if steps < 1:
            raise ValueError(f"adversarial pgd: adv_steps must be at least 1, got {steps}")
        self.steps = steps
        self.alpha = alpha if alpha is not None else epsilon / steps

    @contextlib.contextmanager
    def attack(
        self, rows: Tensor, grad_before: Tensor | None, ascent: Callable[[], Tensor] | None = None
    ) -> Iterator[bool]:
        """Move the rows ``steps`` times (``ascent``: the adversarial loss to differentiate, called before
        each move after the first) while inside; put them back bit for bit on exit. Yields whether they
        were moved."""
        grad = self.weight.grad
        g = None if grad is None else grad[rows].float()
        if g is not None and grad_before is not None:
            g = g - grad_before.float()
        norm = _finite_norm(g)
        if g is None or norm is None:
            yield False
            return
        data = self.weight.data
        backup = data[rows].clone()
        try:
            delta = min(self.alpha, self.epsilon) * g / norm
            data[rows] = (backup.float() + delta).to(data.dtype)
            for _ in range(self.steps - 1):
                g = self._ascent_grad(rows, ascent)
                norm = _finite_norm(g)
                if g is None or norm is None:
                    break
                delta = self._project(delta + self.alpha * g / norm)
                data[rows] = (backup.float() + delta).to(data.dtype)
            yield True
        finally:
            data[rows] = backup

    def _ascent_grad(self, rows: Tensor, ascent: Callable[[], Tensor] | None) -> Tensor | None:
        """The gradient of ``ascent()`` on the rows, leaving every ``.grad`` as it is."""
        if ascent is None:
            raise ValueError("adversarial pgd: more than one step needs the adversarial loss (ascent)")
        (full,) = torch.autograd.grad(ascent(), self.weight, allow_unused=True)
        return None if full is None else full[rows].float()

    def _project(self, delta: Tensor) -> Tensor:
        """``delta`` scaled back onto the ball of radius epsilon when it lies outside."""
        n = float(torch.linalg.vector_norm(delta))
        return delta * (self.epsilon / n) if n > self.epsilon else delta


def _finite_norm(g: Tensor | None) -> Tensor | None:
    """``||g||`` when it is finite and not zero (a direction to move along), else ``None``."""
    if g is None:
        return None
    norm = torch.linalg.vector_norm(g)
    return norm if torch.isfinite(norm) and float(norm) != 0.0 else None


#: The encoder's learning rate by its parameter count (embeddings included): ``(below this many, rate)``,
#: the first that fits. Sources:
#:
#: - under 40M, 1e-4: MiniRBT (iflytek/MiniRBT, README, "best learning rate" and usage advice): after a
#:   learning-rate search its small Chinese models (RBT3 38.5M, RBT4-H312 11.4M, MiniRBT 10-12M) did best
#:   at 1e-4 on 6 of 7 Chinese tasks (5e-5 on the seventh), with more epochs than base models. m3e-small
#:   (4 layers, hidden 512) has 24M.
#: - under 300M, 5e-5: the top of BERT's fine-tuning range (Devlin et al. 2019: 5e-5, 3e-5, 2e-5) and this
#:   platform's default. MiniRBT's same search found 2e-5 to 3e-5 best for the 102M RoBERTa-wwm-ext on
#:   its (not NER) tasks: the bench, not this table, should settle the base rate. The 300M bound keeps
#:   multilingual base models (XLM-R base, 278M, most of it a 250k-word embedding) with the base models.
#: - larger (BERT/RoBERTa-large, ~330M), 2e-5: RoBERTa (Liu et al. 2019) fine-tuned its large model with
#:   1e-5 to 3e-5; large models' fine-tuning is unstable at base rates.
LR_BY_SIZE: tuple[tuple[float, float], ...] = ((40e6, 1e-4), (300e6, 5e-5), (math.inf, 2e-5))


def encoder_learning_rate(n_params: int) -> float:
    """The encoder learning rate :data:`LR_BY_SIZE` gives an encoder of ``n_params`` parameters."""
    return next(rate for below, rate in LR_BY_SIZE if n_params < below)


def resolve_learning_rate(config: NERConfig, encoder: nn.Module) -> NERConfig:
    """``config`` with ``learning_rate="auto"`` replaced by the number :func:`encoder_learning_rate` gives
    ``encoder`` (logged with its parameter count): the run's saved configuration and model directory then
    hold the rate actually used, so a re-run from them is exact. An explicit rate is returned unchanged."""
    if config.training.learning_rate != "auto":
        return config
    n = sum(p.numel() for p in encoder.parameters())
    rate = encoder_learning_rate(n)
    log.info(
        "encoder learning rate %g: learning_rate auto, the encoder has %.1fM parameters (table: %s)",
        rate,
        n / 1e6,
        ", ".join(f"< {b / 1e6:g}M {r:g}" if math.isfinite(b) else f"else {r:g}" for b, r in LR_BY_SIZE),
    )
    return config.with_overrides({"training.learning_rate": rate})


class EMA:
    """An exponential moving average of a model's trainable parameters, kept in fp32.

    The decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``): early on the average follows the weights closely,
    so a short run's average is not dominated by the random initialisation of the head.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        out = {f"ema.{n}": t for n, t in zip(self.names, self.shadow, strict=True)}
        out["ema_updates"] = torch.tensor([self.updates], dtype=torch.int64)
        return out

    def load_state_dict(self, tensors: dict[str, Tensor], where: str) -> None:
        missing = [n for n in self.names if f"ema.{n}" not in tensors]
        if missing or "ema_updates" not in tensors:
            raise ValueError(
                f"{where}: the checkpoint has no moving average for {missing[:3] or ['its update count']}: "
                "it was written without ema_decay (or with other trainable parameters); resume with the "
                "run's own settings"
            )
        for t, n in zip(self.shadow, self.names, strict=True):
            t.copy_(tensors[f"ema.{n}"])
        self.updates = int(tensors["ema_updates"][0])

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights while inside, its own after."""
        raw = [p.detach().clone() for p in self.params]
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)
        try:
            yield
        finally:
            for p, r in zip(self.params, raw, strict=True):
                p.copy_(r)
