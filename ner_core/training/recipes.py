"""Training recipes that small encoders gain from (issue 26), each an option of :class:`TrainingConfig`
and off by default:

- :func:`layer_groups`: layer-wise learning-rate decay (``layer_lr_decay``). The layers near the output
  are the most task-specific and move most; the embeddings and low layers hold general knowledge that a
  small labelled set would otherwise wear away. Each layer is an optimiser group of its own, named
  (``encoder.layer.3``), so a checkpoint's groups are matched by name (:func:`match_groups`).
- :class:`FGM`: fast gradient method on the word embeddings (``adversarial="fgm"``): a second forward and
  backward pass with the embeddings moved by ``epsilon * g / ||g||``, then restored exactly. Only the rows
  of the batch's tokens move (the only rows with a gradient), so the copy kept for the restore is small.
- :class:`EMA`: an exponential moving average of the trainable weights (``ema_decay``), updated after each
  optimiser step, which the dev evaluation and the saved model use instead of the raw weights.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["EMA", "FGM", "layer_groups", "match_groups"]

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

    def __init__(self, embedding: nn.Embedding, epsilon: float) -> None:
        if not embedding.weight.requires_grad:
            raise ValueError(
                "adversarial fgm moves the word embeddings along their gradient, but the encoder is frozen: "
                "drop --freeze_encoder or use --adversarial none"
            )
        self.weight = embedding.weight
        self.epsilon = epsilon

    def rows_grad(self, input_ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """The batch's token ids (unique) and the embedding gradient on their rows now (``None``: none)."""
        rows = input_ids.unique()
        grad = self.weight.grad
        return rows, (grad[rows].clone() if grad is not None else None)

    @contextlib.contextmanager
    def attack(self, rows: Tensor, grad_before: Tensor | None) -> Iterator[bool]:
        """Move the embedding rows by ``epsilon * g / ||g||`` while inside; put them back bit for bit on exit.
        Yields whether they were moved."""
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
