"""Numeric precision: which one a run uses (``auto``, ``fp32``, ``bf16``, ``fp16``, ``int8``) and why.

``auto`` reads the hardware. torch's public capability calls do not report CPU matrix units (AMX, VNNI), so
the CPU flags come from ``/proc/cpuinfo`` (Linux); where that cannot be read (macOS, Windows, a sandbox) no
flag is assumed and the choice is the conservative one.

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
(:func:`record_dev_f1`). At prediction ``auto`` walks the list above and skips any precision whose recorded
dev F1 is more than :data:`F1_TOLERANCE` (0.2 points) below fp32's; a model directory without the record
falls back to the hardware rule and says so.

What runs in reduced precision: the encoder and the head only (:func:`autocast` around them). The CRF's
likelihood, Viterbi and marginals, and the loss, always run in float32 on float32 emissions
(:meth:`ner_core.model.NERModel.forward`, :class:`ner_core.predict.Tagger`). Weights are always kept and
saved in float32: a model directory trained in bf16 is an ordinary fp32 model directory, and precision is a
run-time choice.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "F1_TOLERANCE",
    "RECORD_FILE",
    "Choice",
    "DevF1Record",
    "Hardware",
    "Precision",
    "PrecisionError",
    "autocast",
    "choose",
    "cpu_model_name",
    "default_threads",
    "int8_copy",
    "parse_cpu_flags",
    "physical_cores",
    "read_cpu_flags",
    "read_record",
    "record_dev_f1",
]


class Precision(StrEnum):
    """The ``precision`` setting of ``ner train``, ``ner predict``, ``ner serve`` and the flows."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


class PrecisionError(ValueError):
    """A precision this device or this torch cannot run (one line: what was asked, why not, what to use)."""


#: CPU flags (``/proc/cpuinfo`` names) that mean bf16 or int8 matrix / dot-product units
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
KNOWN_FLAGS = BF16_FLAGS + INT8_FLAGS
#: ARM ``Features`` names mapped onto the same meaning (Graviton 3+, Neoverse V1/N2: BF16 and I8MM)
_ARM_FLAGS = {"bf16": "arm_bf16", "i8mm": "arm_i8mm"}
#: a precision is skipped by ``auto`` when its recorded dev entity F1 is lower than fp32's by more than this
F1_TOLERANCE = 0.002
RECORD_FILE = "precision.json"
_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


# ------------------------------------------------------------------------------------- hardware
def parse_cpu_flags(text: str) -> frozenset[str]:
    """The flags of :data:`KNOWN_FLAGS` (and ARM's ``arm_bf16`` / ``arm_i8mm``) in a ``/proc/cpuinfo`` text.

    Only a flag every listed processor has counts (a machine mixing core types exposes the common set)."""
    per_cpu: list[set[str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in ("flags", "features"):
            continue
        words = set(value.split())
        found = {f for f in KNOWN_FLAGS if f in words}
        found |= {name for arm, name in _ARM_FLAGS.items() if key == "features" and arm in words}
        per_cpu.append(found)
    return frozenset(set.intersection(*per_cpu)) if per_cpu else frozenset()


def read_cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """:func:`parse_cpu_flags` of ``path``; no flags where it cannot be read (not Linux, no permission)."""
    try:
        return parse_cpu_flags(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_model_name(path: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def physical_cores(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """Physical cores this process may run on: the CPUs of ``os.sched_getaffinity`` counted once per
    ``(physical id, core id)`` of ``/proc/cpuinfo`` (hyper-threads share a core); ``os.cpu_count()`` where
    either cannot be read."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        for block in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in block.splitlines())}
            if "processor" in fields and "core id" in fields and int(fields["processor"]) in allowed:
                cores.add((fields.get("physical id", "0"), fields["core id"]))
    except (OSError, ValueError):
        cores = set()
    return max(1, len(cores) or len(allowed))


def default_threads() -> int | None:
    """torch CPU threads when a run does not name them: the physical cores (:func:`physical_cores`), or
    ``None`` (leave torch alone) when ``OMP_NUM_THREADS`` is set: whoever set it decided."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return physical_cores()


def _int8_available() -> bool:
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    quant = getattr(getattr(torch, "ao", None), "quantization", None)
    return hasattr(quant, "quantize_dynamic") and any(e in engines for e in ("x86", "fbgemm", "qnnpack"))


def _cpu_fp16_autocast() -> bool:
    """Whether CPU autocast runs a Linear in float16 in this torch (older ones warn and stay in fp32)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", dtype=torch.float16):
                out = torch.nn.functional.linear(torch.ones(1, 2), torch.ones(2, 2))
        return out.dtype == torch.float16
    except (RuntimeError, TypeError):
        return False


@dataclass(frozen=True)
class Hardware:
    """What the precision choice reads about the device a run uses."""

    device: str  # "cpu" or "cuda"
    cpu_flags: frozenset[str] = frozenset()
    cuda_bf16: bool = False
    cpu_fp16: bool = True
    int8: bool = True

    @classmethod
    def detect(cls, device: str | torch.device = "cpu") -> Hardware:
        kind = torch.device(device).type
        cuda_bf16 = False
        if kind == "cuda" and torch.cuda.is_available():
            cuda_bf16 = bool(torch.cuda.is_bf16_supported())
        return cls(
            device=kind,
            cpu_flags=read_cpu_flags(),
            cuda_bf16=cuda_bf16,
            cpu_fp16=_cpu_fp16_autocast(),
            int8=_int8_available(),
        )

    @property
    def bf16_units(self) -> list[str]:
        return sorted(f for f in self.cpu_flags if f in (*BF16_FLAGS, "arm_bf16"))

    @property
    def int8_units(self) -> list[str]:
        return sorted(f for f in self.cpu_flags if f in (*INT8_FLAGS, "arm_i8mm"))

    def runnable(self) -> list[Precision]:
        """Every precision this device can run (slowly or not), fp32 first."""
        if self.device == "cuda":
            return [Precision.FP32, *([Precision.BF16] if self.cuda_bf16 else []), Precision.FP16]
        out = [Precision.FP32, Precision.BF16]
        return out + ([Precision.INT8] if self.int8 else [])


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


def read_record(model_dir: str | Path | None) -> DevF1Record | None:
    """The model directory's ``precision.json``; ``None`` when there is none or it cannot be read."""
    if model_dir is None:
        return None
    p = Path(model_dir) / RECORD_FILE
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        f1 = {str(k): float(v) for k, v in raw["dev_f1"].items() if v is not None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    known = {k: raw[k] for k in ("trained_in", "device", "cpu", "tolerance") if k in raw}
    return DevF1Record(dev_f1=f1, **known)


def write_record(model_dir: str | Path, record: DevF1Record) -> Path:
    """Write ``precision.json`` into ``model_dir`` (through a temporary file, then a rename)."""
    p = Path(model_dir) / RECORD_FILE
    tmp = p.with_name(p.name + ".tmp")
    data = {
        "dev_f1": record.dev_f1,
        "trained_in": record.trained_in,
        "device": record.device,
        "cpu": record.cpu,
        "tolerance": record.tolerance,
        **record.extra,
    }
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


# ------------------------------------------------------------------------------------- the choice
@dataclass(frozen=True)
class Choice:
    """The precision a run uses, what was asked for and why (:meth:`line` is printed at a run's start)."""

    precision: Precision
    requested: Precision
    reason: str

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


def choose(
    requested: str | Precision | None,
    *,
    purpose: Literal["training", "prediction"],
    hardware: Hardware,
    record: DevF1Record | None = None,
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
    note = _hardware_note(hardware)
    skipped: list[str] = []
    for p in _candidates(purpose, hardware):
        blocked = record.blocks(p) if (record is not None and purpose == "prediction") else None
        if blocked:
            skipped.append(blocked)
            continue
        if purpose == "training":
            why = note if p is not Precision.FP32 else f"{note}: fp32 is the fast safe choice for training"
        elif record is None:
            why = f"{note}; no dev-F1 record in the model directory, so the hardware rule alone decided"
        else:
            seen = ", ".join(f"{k} {v * 100:.2f}" for k, v in sorted(record.dev_f1.items()))
            why = f"{note}; recorded dev F1 {seen}"
            if p.value not in record.dev_f1:
                why += f" ({p} not recorded: the hardware rule decided)"
        if skipped:
            why += "; skipped: " + "; ".join(skipped)
        return Choice(p, asked, why)
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


def int8_copy(model):
    """A copy of ``model`` whose encoder ``nn.Linear`` layers are dynamically quantized to int8 (CPU).

    Only the encoder: the head and the CRF stay float32; the given model is not changed."""
    quantization = getattr(getattr(torch, "ao", None), "quantization", None)
    quantize_dynamic = getattr(quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise PrecisionError(
            f"precision int8 needs torch's dynamic quantization, missing in torch {torch.__version__}"
        )
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    out = copy.deepcopy(model).cpu()
    with warnings.catch_warnings():  # torch marks the eager API deprecated; it is what runs int8 on CPU here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        out.encoder = quantize_dynamic(out.encoder, {torch.nn.Linear}, dtype=torch.qint8)
    return out.eval()


def record_dev_f1(
    model_dir: str | Path,
    dev_docs: Sequence,
    *,
    device: str,
    trained_in: Precision | str,
    batch_size: int = 32,
    precisions: Iterable[Precision] | None = None,
) -> DevF1Record | None:
    """Score the model in ``model_dir`` on ``dev_docs`` in every precision the machine can run (fp32, bf16,
    int8 on CPU; fp32, bf16 where supported and fp16 on CUDA, plus int8 on the CPU) and write
    ``precision.json``. Returns the record (``None`` without dev documents)."""
    from ner_core.evaluation import evaluate_model
    from ner_core.modeldir import load_model_dir

    if not dev_docs or not (Path(model_dir) / "meta.json").is_file():
        return None
    loaded = load_model_dir(model_dir)
    hw = Hardware.detect(device)
    todo = [(p, device) for p in (precisions or hw.runnable())]
    if hw.device == "cuda" and hw.int8 and precisions is None:
        todo.append((Precision.INT8, "cpu"))
    f1: dict[str, float] = {}
    for p, where in todo:
        report = evaluate_model(
            loaded.model,
            loaded.tokenizer,
            dev_docs,
            max_len=loaded.config.data.max_len,
            batch_size=batch_size,
            device=where,
            precision=p,
        )
        f1[p.value] = report.f1
    record = DevF1Record(dev_f1=f1, trained_in=str(trained_in), device=hw.device, cpu=cpu_model_name())
    write_record(model_dir, record)
    return record


def choose_for_model_dir(
    model_dir: str | Path, requested: str | Precision | None = None, *, device: str = "cpu"
) -> Choice:
    """The choice :meth:`ner_core.predict.Tagger.from_loaded` makes for ``model_dir`` on ``device``, without
    loading its weights: ``requested``, else the model's saved ``prediction.precision``, else ``auto``, gated
    by its dev-F1 record (a sharded run decides once, before its workers start)."""
    from ner_core.config import NERConfig

    saved = NERConfig.from_file(Path(model_dir) / "ner_config.json").prediction.precision
    return choose(
        requested or saved or Precision.AUTO,
        purpose="prediction",
        hardware=Hardware.detect(device),
        record=read_record(model_dir),
    )
