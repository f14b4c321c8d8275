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
    "WeightOnlyInt8Linear",
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

    def __init__(self, linear: nn.Linear, *, per_channel: bool = True, reduce_range: bool = True):
        super().__init__()
        q, scale = _int8_weight(linear.weight, per_channel)
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
        y = torch.ops.quantized.linear_dynamic(x.float(), self._packed, reduce_range=self.reduce_range)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        bits = 7 if self.reduce_range else 8
        return f"in={self.in_features}, out={self.out_features}, {weights} int8 weights, {bits}-bit inputs"


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
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise QuantizeError(f"int8 needs a model with an encoder module, got {type(model).__name__}")
    if activations not in ("dynamic", "bf16"):
        raise QuantizeError(f"activations must be 'dynamic' or 'bf16', got {activations!r}")
    if activations == "dynamic" and "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"  # prepacked weights belong to the engine that packed them
    keep = _check_keep(keep_float)
    reduce_range = not (full_range_ok() if full_range is None else full_range)
    out = copy.deepcopy(model).cpu()
    done = 0
    for name, _group, _layer in quantizable(out.encoder):
        if _kept(name, keep):
            continue
        linear = out.encoder.get_submodule(name)
        if activations == "bf16":
            new: nn.Module = WeightOnlyInt8Linear(linear)
        else:
            new = Int8Linear(linear, per_channel=per_channel, reduce_range=reduce_range)
        _set(out.encoder, name, new)
        done += 1
    log.debug("int8 copy: %d encoder Linear layers quantised, kept float: %s", done, sorted(keep) or "none")
    return out.eval()
