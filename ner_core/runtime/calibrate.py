"""How fast this machine runs a model in each precision: a short timing, taken once and cached.

Why measure: the CPU flags do not tell which precision is fastest. An AMD EPYC with AVX512-BF16 and VNNI
but no AMX runs the dynamic int8 encoder faster than bf16 autocast; a Xeon with AMX runs bf16 faster than
int8. So ``auto`` (:func:`ner_core.runtime.precision.choose`) takes the fastest *measured* precision whose
recorded dev F1 is within the tolerance, and this module does the measuring:

- :func:`measure` builds each candidate (an int8 copy, say), runs it once to warm up (kernels are built and
  cached per shape at the first call), then times a few rounds in turn, one call per candidate per round,
  and keeps each candidate's fastest call: other work on the same cores slows some calls, never speeds one
  up. A candidate that fails to build or run (int8 without a quantized engine, a bf16 kernel the CPU lacks)
  is simply not a candidate; its one-line error is kept with the figures.
- :func:`calibrated` caches the figures per machine and model shape (:func:`calibration_key`: the CPU's
  name and the flags that decide its speed, torch's version and threads, the device, what is timed and
  the model's shape) as a small JSON under ``<cache root>/calibration/`` (the root of the converted
  checkpoints, :attr:`ner_core.settings.Settings.cache_dir`), so the timing is taken once per machine,
  torch and model shape. A cache file that cannot be read is measured again and rewritten.
- ``NER_PRECISION_AUTO`` (``fp32``, ``bf16``, ``fp16`` or ``int8``) pins what ``auto`` takes as fastest:
  nothing is timed, the choice is the same on every machine (the test suite sets it). The dev-F1 veto and
  what the device can run still apply (a pinned int8 trains in fp32).

What is timed is given by the caller: prediction times the tagger's whole path (encoder, head, CRF
decoding and marginals) on full windows (:func:`ner_core.inference.tagger.calibrate_prediction`),
training a forward and backward pass of the model on its own window and batch shape
(:mod:`ner_core.training.calibration`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ner_core.config import Precision
from ner_core.runtime.hardware import KNOWN_FLAGS, all_cpu_flags, cpu_model_name
from ner_core.settings import ENV, settings

log = logging.getLogger(__name__)

__all__ = [
    "BUDGET_S",
    "PIN_VARIABLE",
    "ROUNDS",
    "Timing",
    "cache_path",
    "calibrated",
    "calibration_key",
    "measure",
    "model_shape",
    "pinned",
]

#: the environment variable that pins ``auto`` (no timing)
PIN_VARIABLE = ENV["precision_auto"]
#: timed rounds after the warm-up; each candidate keeps its fastest call
ROUNDS = 3
#: seconds after which no further round starts once one has run (a loaded machine times fewer rounds)
BUDGET_S = 4.0
#: CPU flags besides :data:`KNOWN_FLAGS` that change which precision is fastest (vector width, AMX tiles,
#: fp16 units, ARM's vector extensions): part of the cache key
_SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_fp16", "amx_tile", "amx_fp16", "sve", "sve2")
#: the timings' format and what was timed: bumped when the code of a precision's path changes its speed
#: (2: the int8 copy became per-channel, smoothed, FFN output in bf16; windows at stride = window), so a
#: timing cached by older code is not reused
_CACHE_FORMAT = 2
_MAX_CACHE_BYTES = 65_536

#: one timed call: runs the work once and says how many characters it covered
Step = Callable[[], int]


@dataclass(frozen=True)
class Timing:
    """What ``auto`` knows of this machine's speed: characters per second per precision (measured or
    cached), or the precision ``NER_PRECISION_AUTO`` pins."""

    rates: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # the calibration's own wall time, when it was measured
    source: str = "measured"  # measured, cached or pinned
    failed: Mapping[str, str] = field(default_factory=dict)  # precision -> why it could not run
    pinned: Precision | None = None

    def fastest_first(self) -> list[Precision]:
        """The precisions to try, fastest first (the pinned one alone when pinned)."""
        if self.pinned is not None:
            return [self.pinned]
        return [Precision(p) for p in sorted(self.rates, key=lambda p: -self.rates[p])]

    def describe(self) -> str:
        """One line of figures, fastest first (``measured here, chars/s: <precision> <rate>, ...``) and the
        calibration's own time; or what pinned the choice."""
        if self.pinned is not None:
            return f"pinned by {PIN_VARIABLE}={self.pinned} (nothing timed)"
        shown = ", ".join(f"{p} {self.rates[p]:,.0f}" for p in (q.value for q in self.fastest_first()))
        where = "measured here" if self.source == "measured" else "measured on this machine (cached)"
        text = f"{where}, chars/s: {shown or 'nothing ran'} ({self.seconds:.1f} s calibration)"
        if self.failed:
            text += "; not run: " + "; ".join(f"{p}: {why}" for p, why in self.failed.items())
        return text

    def to_dict(self) -> dict:
        """The figures, for a run's stored record or a command's JSON."""
        if self.pinned is not None:
            return {"pinned": self.pinned.value}
        return {
            "chars_per_s": {p: round(r, 1) for p, r in self.rates.items()},
            "seconds": round(self.seconds, 2),
            "source": self.source,
            **({"failed": dict(self.failed)} if self.failed else {}),
        }


# ------------------------------------------------------------------------------------- the key
def model_shape(model, **extra) -> dict:
    """What of a model sets its speed: the encoder's size, the head's configuration and the number of tags
    (the CRF's cost grows with its square), plus ``extra`` (window, batch)."""
    enc = getattr(getattr(model, "encoder", None), "config", None)
    sizes = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    encoder = {k: getattr(enc, k, None) for k in sizes}
    head = getattr(getattr(model, "config", None), "head", None)
    return {
        "encoder": encoder,
        "head": head.model_dump(mode="json") if hasattr(head, "model_dump") else repr(head),
        "tags": len(getattr(model, "tags", ())),
        **extra,
    }


def calibration_key(purpose: str, device: str | torch.device, shape: Mapping) -> dict:
    """The cache key: what is timed, on which machine, torch and threads, for which model shape."""
    dev = torch.device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model_name()
    flags = all_cpu_flags()
    return {
        "format": _CACHE_FORMAT,
        "purpose": purpose,
        "device": dev.type,
        "processor": where,
        "cpu_flags": sorted(f for f in flags if f in (*KNOWN_FLAGS, *_SPEED_FLAGS, "bf16", "i8mm")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": dict(shape),
    }


def cache_path(key: Mapping) -> Path:
    """``<cache root>/calibration/<purpose>-<hash of the key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return settings().cache_dir / "calibration" / f"{key.get('purpose', 'timing')}-{digest}.json"


# ------------------------------------------------------------------------------------- timing
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def measure(
    candidates: Mapping[Precision, Callable[[], Step]], *, rounds: int = ROUNDS, budget_s: float = BUDGET_S
) -> Timing:
    """Build every candidate's step (``candidates[p]()``), warm each up once, then time up to ``rounds``
    rounds of one call per candidate in turn (no new round after ``budget_s`` seconds in all, once one
    has run); each keeps its fastest call. fp32 failing is the model's own error and is raised; any other
    failure leaves that precision out."""
    t0 = time.perf_counter()
    steps: dict[Precision, Step] = {}
    failed: dict[str, str] = {}
    for p, build in candidates.items():
        try:
            step = build()
            step()  # warm-up: kernels and their caches are built at the first call of a shape
        except Exception as exc:  # a precision that cannot run here is not a candidate
            if Precision(p) is Precision.FP32:
                raise
            failed[Precision(p).value] = _one_line(exc)
            continue
        steps[Precision(p)] = step
    best: dict[str, float] = {}
    for r in range(max(1, rounds)):
        if r and time.perf_counter() - t0 > budget_s:
            break
        for p, step in steps.items():
            start = time.perf_counter()
            chars = step()
            rate = chars / max(time.perf_counter() - start, 1e-9)
            best[p.value] = max(best.get(p.value, 0.0), rate)
    return Timing(rates=best, seconds=time.perf_counter() - t0, source="measured", failed=failed)


def pinned() -> Timing | None:
    """The timing ``NER_PRECISION_AUTO`` pins, or ``None`` when it is unset."""
    pin = settings().precision_auto
    return Timing(source="pinned", pinned=Precision(pin)) if pin else None


def _read(path: Path, key: Mapping) -> Timing | None:
    """The cached timing at ``path`` for ``key``; ``None`` when missing, unreadable or for another key."""
    try:
        if path.stat().st_size > _MAX_CACHE_BYTES:
            raise ValueError("larger than a calibration file")
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("key") != json.loads(json.dumps(key, default=str)):
            raise ValueError("made for another machine or model")
        rates = {Precision(p).value: float(r) for p, r in raw["chars_per_s"].items()}
        if not rates or not all(math.isfinite(r) and r > 0 for r in rates.values()):
            raise ValueError("no positive figures")
        failed = {Precision(p).value: str(why) for p, why in raw.get("failed", {}).items()}
        return Timing(rates, float(raw["seconds"]), "cached", failed)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.info("%s: cannot use this calibration (%s), timing again", path, _one_line(exc))
        return None


def _write(path: Path, key: Mapping, timing: Timing) -> None:
    """Write the cache file through a temporary file and a rename; a cache that cannot be written only
    means the next run times again."""
    data = {"key": key, **timing.to_dict(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.info("%s: cannot cache the calibration (%s)", path, _one_line(exc))
        tmp.unlink(missing_ok=True)


def calibrated(key: Mapping, candidates: Mapping[Precision, Callable[[], Step]], *, purpose: str) -> Timing:
    """The pinned timing, else the cached one for ``key``, else :func:`measure` now (and cache it).

    ``purpose`` names what is timed in the log line (``prediction``, ``training``)."""
    pin = pinned()
    if pin is not None:
        return pin
    path = cache_path(key)
    timing = _read(path, key)
    if timing is None:
        timing = measure(candidates)
        _write(path, key, timing)
        log.info("calibrated precision for %s: %s", purpose, timing.describe())
    return timing
