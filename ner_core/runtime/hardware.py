"""What this machine can run: CPU flags, the CPU's name, physical cores, threads, and the device facts
the precision choice reads (:class:`Hardware`).

torch's public capability calls do not report CPU matrix units (AMX, VNNI), so the CPU flags come from
``/proc/cpuinfo`` (Linux); where that cannot be read (macOS, Windows, a sandbox) no flag is assumed and every
choice made from them is the conservative one. This module is the one reader of ``/proc/cpuinfo``: the
precision choice, the C kernels' build flags and the benches all ask it.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ner_core.config import Precision

__all__ = [
    "BF16_FLAGS",
    "INT8_FLAGS",
    "KNOWN_FLAGS",
    "Hardware",
    "all_cpu_flags",
    "bf16_lstm_runs",
    "cpu_model_name",
    "default_threads",
    "parse_cpu_flags",
    "physical_cores",
    "read_cpu_flags",
]

#: CPU flags (``/proc/cpuinfo`` names) that mean bf16 or int8 matrix / dot-product units
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
KNOWN_FLAGS = BF16_FLAGS + INT8_FLAGS
#: ARM ``Features`` names mapped onto the same meaning (Graviton 3+, Neoverse V1/N2: BF16 and I8MM)
_ARM_FLAGS = {"bf16": "arm_bf16", "i8mm": "arm_i8mm"}


# ------------------------------------------------------------------------------------- flags
def _flag_sets(text: str) -> list[tuple[str, set[str]]]:
    """``(key, words)`` per processor block of a ``/proc/cpuinfo`` text (``flags`` on x86, ``Features`` on
    ARM)."""
    out: list[tuple[str, set[str]]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key in ("flags", "features"):
            out.append((key, set(value.split())))
    return out


def all_cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """Every CPU flag that all listed processors have (``avx2``, ``fma``, ...); none where ``path`` cannot be
    read."""
    try:
        sets = [words for _, words in _flag_sets(Path(path).read_text(encoding="utf-8", errors="replace"))]
    except OSError:
        return frozenset()
    return frozenset(set.intersection(*sets)) if sets else frozenset()


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The flags of :data:`KNOWN_FLAGS` (and ARM's ``arm_bf16`` / ``arm_i8mm``) in a ``/proc/cpuinfo`` text.

    Only a flag every listed processor has counts (a machine mixing core types exposes the common set)."""
    per_cpu: list[set[str]] = []
    for key, words in _flag_sets(text):
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


@functools.cache
def bf16_lstm_runs() -> bool:
    """Whether this CPU runs an LSTM in bf16 under autocast, forward and backward, found by trying once per
    process on a tiny one (the global RNG untouched). CPU autocast sends ``lstm`` to oneDNN in bf16, and
    oneDNN builds that primitive only with AVX-512 ("could not create a primitive descriptor for the LSTM
    forward propagation primitive" on an AVX2-only CPU); the BiLSTM head then runs its LSTM in float32."""
    with torch.random.fork_rng(devices=[]):
        lstm = torch.nn.LSTM(8, 4, batch_first=True, bidirectional=True)
    # with gradients even when first asked under inference_mode or no_grad (the tagger's): the answer is
    # cached for the process, and a backward there would fail whatever the CPU
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.ones(2, 3, 8, requires_grad=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, _ = lstm(x)
            y.float().sum().backward()
        except RuntimeError:
            return False
    return True


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
