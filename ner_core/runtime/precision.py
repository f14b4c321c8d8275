"""Numeric precision: which one a run uses (``auto``, ``fp32``, ``bf16``, ``fp16``, ``int8``) and why.

The setting itself is :class:`ner_core.config.Precision`; what the machine has is
:class:`ner_core.runtime.hardware.Hardware`. ``auto`` with a :class:`ner_core.runtime.calibrate.Timing`
(what the runs that hold a model pass: the tagger, training, the Dask driver) takes the fastest *measured*
precision among :func:`measurable` that the dev-F1 record does not veto: the CPU flags say what can run, not
what runs fastest (an EPYC with AVX512-BF16 and VNNI but no AMX runs int8 faster than bf16, a Xeon with AMX
the other way round). Without a timing ``auto`` falls back to the hardware rule below; where the CPU flags
cannot be read no unit is assumed and the choice is the conservative one.

===============  ==========================================  ==============================================
device           training (``auto``)                         prediction (``auto``)
===============  ==========================================  ==============================================
CUDA             bf16 where the GPU supports it, else fp16   the same (no int8: dynamic int8 is CPU-only)
                 with a gradient scaler
CPU, AMX-BF16 /  bf16 autocast                               bf16 autocast, then int8, then fp32
AVX512-BF16
other CPUs       fp32                                        int8 dynamic quantisation, then fp32
===============  ==========================================  ==============================================

Accuracy decides with speed: at the end of training the best model is scored on dev in every precision the
machine can run and the entity F1 of each is written to ``precision.json`` in the model directory
(:func:`ner_core.training.precision_record.record_dev_f1`; :class:`DevF1Record` is what it holds). At
prediction ``auto`` walks the measured order (or the list above) and skips any precision whose recorded dev
F1 is more than :data:`F1_TOLERANCE` (0.2 points) below fp32's; a model directory without the record is
decided by speed alone and says so.

What runs in reduced precision: the encoder and the head only (:func:`autocast` around them). The CRF's
likelihood, Viterbi and marginals, and the loss, always run in float32 on float32 emissions
(:meth:`ner_core.model.network.NERModel.forward`, :class:`ner_core.inference.tagger.Tagger`). Weights are
always kept and
saved in float32: a model directory trained in bf16 is an ordinary fp32 model directory, and precision is a
run-time choice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from ner_core.config import Precision
from ner_core.runtime.calibrate import Timing
from ner_core.runtime.hardware import Hardware

__all__ = [
    "F1_TOLERANCE",
    "Choice",
    "DevF1Record",
    "PrecisionError",
    "autocast",
    "choose",
    "int8_copy",
    "is_auto",
    "measurable",
    "needs_grad_scaler",
]


class PrecisionError(ValueError):
    """A precision this device or this torch cannot run (one line: what was asked, why not, what to use)."""


#: a precision is skipped by ``auto`` when its recorded dev entity F1 is lower than fp32's by more than this
F1_TOLERANCE = 0.002
_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


# ------------------------------------------------------------------------------------- the record
@dataclass
class DevF1Record:
    """``precision.json``: the best model's dev entity F1 in each precision, and where it was measured."""

    dev_f1: dict[str, float]
    trained_in: str = "fp32"
    device: str = "cpu"
    cpu: str = ""
    tolerance: float = F1_TOLERANCE
    extra: dict = field(default_factory=dict)

    def blocks(self, p: Precision) -> str | None:
        """Why ``auto`` must not pick ``p`` (its dev F1 is too far below fp32's), else ``None``."""
        base, got = self.dev_f1.get(Precision.FP32.value), self.dev_f1.get(p.value)
        if p is Precision.FP32 or base is None or got is None:
            return None
        if got < base - self.tolerance:
            gap = (base - got) * 100
            return f"{p} dev F1 {got * 100:.2f} is {gap:.2f} points below fp32's {base * 100:.2f}"
        return None


# ------------------------------------------------------------------------------------- the choice
@dataclass(frozen=True)
class Choice:
    """The precision a run uses, what was asked for and why (:meth:`line` is printed at a run's start)."""

    precision: Precision
    requested: Precision
    reason: str
    timing: Timing | None = None  # what ``auto`` measured (or the pin), for a run's record

    def line(self, purpose: str) -> str:
        asked = "" if self.requested is self.precision else f" (asked {self.requested})"
        return f"precision {self.precision}{asked} for {purpose}: {self.reason}"


def _hardware_note(hw: Hardware) -> str:
    if hw.device == "cuda":
        return "CUDA GPU with bf16" if hw.cuda_bf16 else "CUDA GPU without bf16"
    if hw.bf16_units:
        return f"CPU has bf16 units ({', '.join(hw.bf16_units)})"
    if hw.int8_units:
        return f"CPU has int8 dot-product units ({', '.join(hw.int8_units)}), no bf16 units"
    if not hw.cpu_flags:
        return "no bf16 or int8 units found in the CPU flags (or none readable)"
    return "CPU without bf16 or int8 units"


def _check_runnable(p: Precision, purpose: str, hw: Hardware) -> str:
    """Refuse ``p`` in one line where it cannot run; otherwise a note on how well it fits the device."""
    if p is Precision.INT8 and purpose == "training":
        raise PrecisionError(
            "precision int8 is for prediction only (dynamic quantisation of Linear layers): "
            "train in auto, fp32 or bf16"
        )
    if p is Precision.INT8 and hw.device != "cpu":
        raise PrecisionError(
            f"precision int8 runs on CPU only (torch's dynamic quantisation), but the device is {hw.device}: "
            "use --device cpu, or auto, bf16 or fp16 on the GPU"
        )
    if p is Precision.INT8 and not hw.int8:
        raise PrecisionError(
            f"precision int8 needs torch's dynamic quantisation, missing in torch {torch.__version__}"
        )
    if p is Precision.BF16 and hw.device == "cuda" and not hw.cuda_bf16:
        raise PrecisionError("precision bf16: this GPU does not support bf16; use fp16 or auto")
    if p is Precision.FP16 and hw.device == "cpu" and not hw.cpu_fp16:
        raise PrecisionError(
            f"precision fp16 on CPU is not supported by torch {torch.__version__}: use bf16, int8 or auto"
        )
    if p is Precision.BF16 and hw.device == "cpu" and not hw.bf16_units:
        return "asked for; this CPU has no bf16 units, so bf16 is emulated and slow"
    if p is Precision.FP16 and hw.device == "cpu":
        return "asked for; CPU fp16 autocast (few CPUs run it fast)"
    return f"asked for ({_hardware_note(hw)})"


def _candidates(purpose: str, hw: Hardware) -> list[Precision]:
    """``auto``'s preference order, fastest first (fp32 last: always allowed)."""
    if hw.device == "cuda":
        return [Precision.BF16 if hw.cuda_bf16 else Precision.FP16, Precision.FP32]
    fast: list[Precision] = [Precision.BF16] if hw.bf16_units else []
    if purpose != "training" and hw.int8:
        fast.append(Precision.INT8)
    return [*fast, Precision.FP32]


def is_auto(requested: str | Precision | None) -> bool:
    """Whether ``requested`` leaves the choice to ``auto`` (``None`` does)."""
    return requested is None or str(requested).strip().lower() == Precision.AUTO.value


def measurable(purpose: str, hw: Hardware) -> list[Precision]:
    """What ``auto`` times on ``hw`` for ``purpose``, fp32 first: what runs natively there (no emulated bf16
    on a CPU without bf16 units, no CPU fp16, int8 for prediction on a CPU only); one entry means there is
    nothing to choose between."""
    if hw.device == "cuda":
        return [Precision.FP32, *([Precision.BF16] if hw.cuda_bf16 else []), Precision.FP16]
    out = [Precision.FP32, *([Precision.BF16] if hw.bf16_units else [])]
    return out + ([Precision.INT8] if purpose != "training" and hw.int8 else [])


def _measured_order(purpose: str, hw: Hardware, timing: Timing) -> list[Precision]:
    """The timing's order, keeping what can run for ``purpose`` on ``hw``; fp32 last when it was slower
    or not timed."""
    out: list[Precision] = []
    for p in timing.fastest_first():
        try:
            _check_runnable(p, purpose, hw)
        except PrecisionError:
            continue
        out.append(p)
    return out if Precision.FP32 in out else [*out, Precision.FP32]


def _why(p: Precision, purpose: str, hw: Hardware, record: DevF1Record | None, timing: Timing | None) -> str:
    note = _hardware_note(hw) if timing is None else timing.describe()
    if purpose == "training":
        if timing is None and p is Precision.FP32:
            return f"{note}: fp32 is the fast safe choice for training"
        return note
    if record is None:
        rule = "the hardware rule alone decided" if timing is None else "the timing alone decided"
        return f"{note}; no dev-F1 record in the model directory, so {rule}"
    seen = ", ".join(f"{k} {v * 100:.2f}" for k, v in sorted(record.dev_f1.items()))
    why = f"{note}; recorded dev F1 {seen}"
    if p.value not in record.dev_f1:
        why += f" ({p} not recorded: the {'hardware rule' if timing is None else 'timing'} decided)"
    return why


def choose(
    requested: str | Precision | None,
    *,
    purpose: Literal["training", "prediction"],
    hardware: Hardware,
    record: DevF1Record | None = None,
    timing: Timing | None = None,
) -> Choice:
    """The precision a run uses.

    Args:
        requested: ``auto`` (also ``None``) or a precision; an explicit one is used as asked, or refused
            with :class:`PrecisionError` where it cannot run (int8 for training or on a GPU, bf16 on a GPU
            without it, fp16 on a CPU torch without it).
        purpose: ``training`` or ``prediction`` (int8 is prediction-only; ``auto`` trains in fp32 on a CPU
            without bf16 units).
        hardware: :meth:`Hardware.detect` of the run's device.
        record: the model directory's dev-F1 record (prediction): ``auto`` skips what it blocks.
        timing: what :mod:`ner_core.runtime.calibrate` measured (or pinned) on this machine: ``auto`` then
            walks its order, fastest first, instead of the hardware rule's.

    Returns:
        a :class:`Choice`, never ``auto``.
    """
    if purpose not in ("training", "prediction"):
        raise ValueError(f"purpose must be 'training' or 'prediction', got {purpose!r}")
    try:
        asked = Precision(requested or Precision.AUTO)
    except ValueError:
        choices = ", ".join(p.value for p in Precision)
        raise PrecisionError(f"precision must be one of {choices}, got {requested!r}") from None
    if asked is not Precision.AUTO:
        return Choice(asked, asked, _check_runnable(asked, purpose, hardware))
    order = _candidates(purpose, hardware) if timing is None else _measured_order(purpose, hardware, timing)
    skipped: list[str] = []
    for p in order:
        blocked = record.blocks(p) if (record is not None and purpose == "prediction") else None
        if blocked:
            skipped.append(blocked)
            continue
        why = _why(p, purpose, hardware, record, timing)
        if skipped:
            why += "; skipped: " + "; ".join(skipped)
        return Choice(p, asked, why, timing)
    raise AssertionError("fp32 is always a candidate")


# ------------------------------------------------------------------------------------- running
def autocast(precision: Precision | str, device_type: str):
    """The autocast context for the encoder and head at ``precision`` (a no-op for fp32 and int8)."""
    dtype = _DTYPES.get(Precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def needs_grad_scaler(precision: Precision | str) -> bool:
    """fp16 training needs loss scaling (its exponent range is narrow); bf16 has fp32's range."""
    return Precision(precision) is Precision.FP16


#: synthetic calibration rows whose activation ranges smooth the int8 copy (``bench/bench_int8.py``)
INT8_CALIBRATION_ROWS = 64
#: encoder Linear groups the int8 copy keeps out of int8 (in bf16 where the CPU has bf16 units): the FFN's
#: output layer, whose input (the GELU output) synthetic rows do not calibrate well (``bench/bench_int8.py``)
INT8_KEPT = ("ffn_out",)


def int8_copy(model, tokenizer=None):
    """A copy of ``model`` whose encoder ``nn.Linear`` layers run in int8 (CPU); the given model is unchanged.

    Per-channel int8 weights, 8-bit activations where the CPU accumulates int8 products in 32 bits (7-bit
    elsewhere), each Linear's input smoothed per channel (SmoothQuant) by ranges calibrated on
    :data:`INT8_CALIBRATION_ROWS` synthetic rows of ``tokenizer``'s one-character tokens, so no training
    text is needed and the copy is the same for every input, and the :data:`INT8_KEPT` layers in bf16 (fp32
    on CPUs without bf16 units). See :mod:`ner_core.runtime.quantize` for why torch's plain dynamic int8
    lost up to half a point of entity F1 and ``bench/bench_int8.py`` for what each choice wins. Without a
    tokenizer the ranges are skipped (unsmoothed per-channel int8).
    The calibration runs the float encoder once, under bf16 autocast where the CPU has bf16 units.
    Only the encoder: the head and the CRF (or span scores) stay as they are."""
    from ner_core.runtime import quantize

    if not getattr(torch.backends.quantized, "supported_engines", None) or not hasattr(
        torch.ops.quantized, "linear_dynamic"
    ):
        raise PrecisionError(
            f"precision int8 needs torch's quantized CPU kernels, missing in torch {torch.__version__}"
        )
    ranges = None
    if tokenizer is not None:
        encoder_config = getattr(getattr(model, "encoder", None), "config", None)
        positions = getattr(encoder_config, "max_position_embeddings", 0)
        length = min(128, positions) if isinstance(positions, int) and positions > 2 else 128
        batches = quantize.synthetic_batches(tokenizer, rows=INT8_CALIBRATION_ROWS, length=length)
        bf16 = bool(Hardware.detect("cpu").bf16_units)
        was_training = model.training
        model.eval()
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                ranges = quantize.activation_ranges(model, batches)
        finally:
            model.train(was_training)
    kept = "bf16" if Hardware.detect("cpu").bf16_units else "fp32"
    return quantize.int8_copy(model, ranges=ranges, keep_float=INT8_KEPT, kept=kept).eval()
