"""int8 copies of a model's encoder that keep its accuracy (CPU prediction).

Why plain dynamic int8 (``torch.ao.quantization.quantize_dynamic`` with its default qconfig) loses entity
F1 on some models: it gives each weight matrix one scale (per tensor) and quantises each batch's
activations to 7 bits (``reduce_range``) with one scale for the whole batch. A BERT-family encoder has
outliers in both places, worst in the FFN's second Linear (``output.dense``): a few weight rows hundreds
of times larger than the rest set the weight scale, so most weights round to 0 or +-1, and its input (the
GELU output) spans from about -0.17 to a few large channels, so the typical activation is smaller than one
quantisation step. The error this adds to the emissions is about the same on every model; what differs
is how many of a model's decisions sit near the boundary, which is why a model with a low F1 (a hard
10-type data set) loses points where a confident one does not.

What this module does instead (``bench/bench_int8.py`` measures each choice, per data set and per layer):

* **per-channel weights** (one scale per output row, symmetric int8): an outlier row no longer coarsens
  the others;
* **full 8-bit activations** where the CPU accumulates u8 x s8 products in 32 bits (AVX512-VNNI or AMX:
  ``reduce_range`` exists only to avoid the 16-bit saturation of older AVX2 kernels), so activations keep
  twice the resolution; 7 bits elsewhere;
* **layers kept in float** by group (:data:`GROUPS`: ``attn_qkv``, ``attn_out``, ``ffn_in``, ``ffn_out``,
  ``pooler``), by ``group@layer`` (``ffn_out@2``) or by full module name;
* **int8 weights with bf16 activations** (``activations="bf16"``): weight-only int8
  (``torch.ops.aten._weight_int8pack_mm``), for CPUs with bf16 units, where the activations need no
  quantisation at all.

The API is torch's own quantised CPU kernels, called directly: ``torch.ops.quantized.linear_prepack`` /
``linear_dynamic`` (fbgemm/x86, the kernels eager ``torch.ao`` dynamic quantisation runs on, but with the
per-channel weights and the ``reduce_range`` choice that its ``nn.quantized.dynamic.Linear`` does not
expose) and ``aten._weight_int8pack_mm``. No new dependency, no tracing or export of the Hugging Face
encoder (PT2E needs an exportable graph and ``torch.compile`` to run fast), no calibration pass, and the
quantised modules are ordinary ``nn.Module`` s, so a copy pickles and moves like the float model.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from ner_core.runtime.hardware import Hardware

__all__ = [
    "GROUPS",
    "Int8Linear",
    "QuantizeError",
    "Bf16Linear",
    "WeightOnlyInt8Linear",
    "activation_ranges",
    "synthetic_batches",
    "full_range_ok",
    "group_of",
    "int8_copy",
    "quantizable",
]

log = logging.getLogger(__name__)


class QuantizeError(ValueError):
    """An int8 request that cannot be built here (one line: what was asked and why not)."""


#: Linear groups of a BERT-family encoder layer, by the pattern of the module name that marks each
GROUPS: dict[str, re.Pattern] = {
    "attn_qkv": re.compile(r"attention\.self\.(query|key|value)$|attention\.(query|key|value)$"),
    "attn_out": re.compile(r"attention\.output\.dense$|attention\.dense$"),
    "ffn_in": re.compile(r"intermediate\.dense$|\.ffn$"),
    "ffn_out": re.compile(r"(?<!attention\.)output\.dense$|\.ffn_output$"),
    "pooler": re.compile(r"pooler\.dense$"),
}
_LAYER = re.compile(r"layers?\.(\d+)\.")
#: the units that make 8-bit activations safe (32-bit accumulation of u8 x s8 products)
_FULL_RANGE_FLAGS = ("avx512_vnni", "amx_int8")

Activations = Literal["dynamic", "bf16"]


def group_of(name: str) -> tuple[str, int | None]:
    """``(group, layer index)`` of an encoder Linear by its module name (``other`` when no group fits)."""
    layer = _LAYER.search(name)
    index = int(layer.group(1)) if layer else None
    for group, pattern in GROUPS.items():
        if pattern.search(name):
            return group, index
    return "other", index


def _kept(name: str, keep_float: frozenset[str]) -> bool:
    group, index = group_of(name)
    return name in keep_float or group in keep_float or f"{group}@{index}" in keep_float


def _check_keep(keep_float: Iterable[str]) -> frozenset[str]:
    if isinstance(keep_float, str):
        keep_float = [k for k in keep_float.split(",") if k]
    out = frozenset(keep_float)
    for k in out:
        group = k.split("@", 1)[0]
        if "@" in k and (group not in GROUPS or not k.split("@", 1)[1].isdigit()):
            raise QuantizeError(
                f"keep_float entry {k!r}: expected GROUP@LAYER with GROUP one of {list(GROUPS)}"
            )
    return out


def full_range_ok(hardware: Hardware | None = None) -> bool:
    """Whether 8-bit (not 7-bit) dynamic activations are safe on this CPU's int8 kernels."""
    hw = hardware or Hardware.detect("cpu")
    return any(f in hw.cpu_flags for f in _FULL_RANGE_FLAGS)


def _int8_weight(weight: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``weight`` (out, in): the int8 values and the scale of each row (or one)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().expand(w.size(0))  # (out,)
    scale = (amax / 127.0).clamp(min=1e-12)  # (out,)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)  # (out, in)
    return q, scale


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per row or per tensor) and dynamically quantised activations,
    on torch's quantised CPU kernels; float in, float out."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        per_channel: bool = True,
        reduce_range: bool = True,
        smooth: torch.Tensor | None = None,
    ):
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        if smooth is not None:  # x W^T = (x / s)(W s)^T: the input's outlier channels move into the weights
            weight = weight * smooth[None, :]
        self.register_buffer("inv_smooth", None if smooth is None else (1.0 / smooth).float())  # (in,)
        q, scale = _int8_weight(weight, per_channel)
        zeros = torch.zeros_like(scale, dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        with warnings.catch_warnings():  # quantized tensors are marked deprecated; the int8 kernels take them
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
            if per_channel:
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
            else:
                qw = torch._make_per_tensor_quantized_tensor(q, float(scale[0]), 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.per_channel, self.reduce_range = per_channel, reduce_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if self.inv_smooth is None else x.float() * self.inv_smooth
        y = torch.ops.quantized.linear_dynamic(xf, self._packed, reduce_range=self.reduce_range)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        bits = 7 if self.reduce_range else 8
        smooth = ", smoothed" if self.inv_smooth is not None else ""
        shape = f"in={self.in_features}, out={self.out_features}"
        return f"{shape}, {weights} int8 weights, {bits}-bit inputs{smooth}"


class WeightOnlyInt8Linear(nn.Module):
    """``nn.Linear`` with per-channel int8 weights and bf16 activations (no activation quantisation):
    ``aten._weight_int8pack_mm`` dequantises each weight row by its scale inside the matmul."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, scale = _int8_weight(linear.weight, True)
        self.register_buffer("weight_int8", q)  # (out, in)
        self.register_buffer("scale", scale.to(torch.bfloat16))  # (out,)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).clone()
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scale)  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, per-channel int8 weights, bf16 activations"


def activation_ranges(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per encoder Linear (by module name), the largest ``|input|`` of each input channel over ``batches``
    of ``(input_ids, attention_mask)``: the calibration that :func:`int8_copy`'s ``ranges`` smooths by."""
    encoder = model.encoder
    ranges: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, _output):
            amax = inputs[0].detach().float().reshape(-1, module.in_features).abs().amax(0)  # (in,)
            ranges[name] = torch.maximum(ranges[name], amax) if name in ranges else amax

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in encoder.named_modules() if type(m) is nn.Linear]
    try:
        with torch.inference_mode():
            for input_ids, attention_mask in batches:
                encoder(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    return ranges


def _smoothing(name: str, linear: nn.Linear, amax: torch.Tensor | None, alpha: float) -> torch.Tensor | None:
    """SmoothQuant's per-input-channel factor ``max|x_j|^a / max|W_:j|^(1-a)`` (``None`` without a range)."""
    if amax is None:
        return None
    if amax.shape != (linear.in_features,):
        raise QuantizeError(
            f"activation range for {name} has shape {tuple(amax.shape)}, "
            f"expected ({linear.in_features},): ranges from another model?"
        )
    w = linear.weight.detach().float().abs().amax(0).clamp(min=1e-5)  # (in,)
    return (amax.float().clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(min=1e-2, max=1e2)


class Bf16Linear(nn.Module):
    """A layer kept out of int8, in bf16: bf16 weights and matmul, float in, float out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).clone())
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def synthetic_batches(
    tokenizer, *, rows: int = 256, length: int = 128, batch_size: int = 32, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Calibration rows without texts: ``[CLS]`` + random one-character tokens of the vocabulary +
    ``[SEP]`` (seeded), for :func:`activation_ranges` where no training texts are at hand."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    ids = sorted(i for t, i in vocab.items() if len(t) == 1 and i not in special)
    if not ids or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise QuantizeError(
            "synthetic calibration needs a tokenizer with [CLS], [SEP] and one-character tokens"
        )
    pool = torch.tensor(ids)
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, rows, batch_size):
        n = min(batch_size, rows - start)
        body = pool[torch.randint(len(pool), (n, length - 2), generator=g)]  # (n, length-2)
        cls = torch.full((n, 1), tokenizer.cls_token_id)
        sep = torch.full((n, 1), tokenizer.sep_token_id)
        input_ids = torch.cat([cls, body, sep], dim=1)  # (n, length)
        out.append((input_ids, torch.ones_like(input_ids)))
    return out


def quantizable(encoder: nn.Module) -> list[tuple[str, str, int | None]]:
    """``(module name, group, layer)`` of every ``nn.Linear`` in ``encoder``, in module order."""
    return [(n, *group_of(n)) for n, m in encoder.named_modules() if type(m) is nn.Linear]


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def int8_copy(
    model,
    *,
    per_channel: bool = True,
    keep_float: Iterable[str] = (),
    activations: Activations = "dynamic",
    full_range: bool | None = None,
    ranges: dict[str, torch.Tensor] | None = None,
    alpha: float = 0.8,
    kept: Literal["fp32", "bf16"] = "fp32",
):
    """A copy of ``model`` whose encoder Linear layers hold int8 weights (CPU); the given model is unchanged.

    Args:
        model: a NERModel (anything with an ``encoder``); the head, the classifier and the CRF stay float32.
        per_channel: one weight scale per output row (``False``: one per matrix, as ``quantize_dynamic``).
        keep_float: Linear layers left in float32: group names (:data:`GROUPS`), ``group@layer`` or full
            module names of the encoder (a comma-separated string works too).
        activations: ``dynamic`` (int8 x int8 kernels, activations quantised per batch) or ``bf16`` (int8
            weights only; run the copy under bf16 autocast).
        full_range: 8-bit activations (``None``: where :func:`full_range_ok`; ``True`` elsewhere risks the
            16-bit saturation of AVX2 kernels).
        ranges: :func:`activation_ranges` of the float model on calibration texts: each Linear's input is
            divided per channel by SmoothQuant's factor (``alpha`` between the input's and the weight's
            range) and the weight multiplied by it, so outlier channels no longer set the input's step.
        kept: what the ``keep_float`` layers run in: ``fp32``, or ``bf16`` (bf16 weights and matmul, for
            CPUs with bf16 units: a kept layer then costs about what an int8 one does).
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise QuantizeError(f"int8 needs a model with an encoder module, got {type(model).__name__}")
    if activations not in ("dynamic", "bf16"):
        raise QuantizeError(f"activations must be 'dynamic' or 'bf16', got {activations!r}")
    if kept not in ("fp32", "bf16"):
        raise QuantizeError(f"kept must be 'fp32' or 'bf16', got {kept!r}")
    if activations == "dynamic" and "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"  # prepacked weights belong to the engine that packed them
    keep = _check_keep(keep_float)
    reduce_range = not (full_range_ok() if full_range is None else full_range)
    out = copy.deepcopy(model).cpu()
    done = 0
    for name, _group, _layer in quantizable(out.encoder):
        linear = out.encoder.get_submodule(name)
        if _kept(name, keep):
            if kept == "bf16":
                _set(out.encoder, name, Bf16Linear(linear))
            continue
        if activations == "bf16":
            new: nn.Module = WeightOnlyInt8Linear(linear)
        else:
            smooth = _smoothing(name, linear, (ranges or {}).get(name), alpha)
            new = Int8Linear(linear, per_channel=per_channel, reduce_range=reduce_range, smooth=smooth)
        _set(out.encoder, name, new)
        done += 1
    log.debug("int8 copy: %d encoder Linear layers quantised, kept float: %s", done, sorted(keep) or "none")
    return out.eval()
