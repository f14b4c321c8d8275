"""The model directory's entity-confidence temperatures (``calibration.json``): read, checked, written.

Written at the end of training (:mod:`ner_core.training.precision_record`), one temperature per precision
the machine scored dev in, with what the fit saw::

    {"format_version": 1, "split": "dev", "cpu": "...", "device": "cpu",
     "precisions": {"fp32": {"temperature": 1.4, "n_entities": 812, "ece_raw": 0.04,
                             "ece_calibrated": 0.01}, ...}}

A model directory may come from anyone, so the file is untrusted like the rest of it: at most
:data:`MAX_BYTES`, a regular file inside the directory, a format version this code knows, precisions it
knows, and temperatures finite and within :data:`T_BOUNDS` (the fit's own search range: a temperature
outside it was not written by the fit). Anything else is refused with one line naming the file
(:class:`~ner_core.artifacts.layout.ModelDirError`). A directory without the file has no temperature: it
loads and predicts exactly as before, with raw confidences only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner_core.artifacts.layout import CALIBRATION, ModelDirError
from ner_core.config import Precision
from ner_core.model import untrusted

__all__ = [
    "CALIBRATION_VERSION",
    "MAX_BYTES",
    "T_BOUNDS",
    "CalibrationRecord",
    "PrecisionCalibration",
    "check_temperature",
    "clear_calibration",
    "read_calibration",
    "write_calibration",
]

#: the format version this code writes and reads
CALIBRATION_VERSION = 1
#: a few precisions' figures take a few hundred bytes
MAX_BYTES = 64 * 1024
#: the temperatures a fit may return and a file may hold (a temperature scales every CRF score or span
#: logit by 1/T: 0.05 sharpens twentyfold, 20 flattens twentyfold, far beyond what calibration needs)
T_BOUNDS = (0.05, 20.0)
_PRECISIONS = tuple(p.value for p in Precision if p is not Precision.AUTO)


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a refusal stays one short line whatever the file holds."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_temperature(value: Any, where: str = "temperature") -> float:
    """``value`` as a float temperature: finite and within :data:`T_BOUNDS`; else ``ValueError`` naming
    ``where``."""
    lo, hi = T_BOUNDS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__} {_shown(value)}")
    t = float(value)
    if not math.isfinite(t) or not lo <= t <= hi:
        raise ValueError(f"{where}: expected a finite temperature in [{lo}, {hi}], got {_shown(value)}")
    return t


@dataclass(frozen=True)
class PrecisionCalibration:
    """The temperature fitted for one precision and what the fit saw: the predicted entities it scored and
    the expected calibration error before and after, on the split it was fitted on."""

    temperature: float
    n_entities: int
    ece_raw: float
    ece_calibrated: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "n_entities": self.n_entities,
            "ece_raw": self.ece_raw,
            "ece_calibrated": self.ece_calibrated,
        }


@dataclass(frozen=True)
class CalibrationRecord:
    """``calibration.json``: per precision its :class:`PrecisionCalibration`; the split the temperatures
    were fitted on, the CPU and device that scored it."""

    precisions: dict[str, PrecisionCalibration] = field(default_factory=dict)
    split: str = "dev"
    cpu: str = ""
    device: str = "cpu"

    def temperature_for(self, precision: str | Precision) -> float | None:
        """The temperature of ``precision``, else fp32's (the same weights: closest at every precision),
        else ``None``."""
        for p in (str(Precision(precision).value), Precision.FP32.value):
            if p in self.precisions:
                return self.precisions[p].temperature
        return None


def _number(raw: dict, key: str, where: str, *, lo: float, hi: float, integer: bool = False) -> float:
    v = raw.get(key)
    ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
    if not ok or not lo <= v <= hi:  # NaN fails the comparison; a huge int is never converted
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{where}: expected {key} as {kind} in [{lo}, {hi}], got {_shown(v)}")
    return v


def _entry(raw: Any, where: str) -> PrecisionCalibration:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    return PrecisionCalibration(
        temperature=check_temperature(raw.get("temperature"), f"{where}.temperature"),
        n_entities=int(_number(raw, "n_entities", where, lo=0, hi=2**53, integer=True)),
        ece_raw=float(_number(raw, "ece_raw", where, lo=0.0, hi=1.0)),
        ece_calibrated=float(_number(raw, "ece_calibrated", where, lo=0.0, hi=1.0)),
    )


def _parse(raw: Any) -> CalibrationRecord:
    """The record of a parsed ``calibration.json``; ``ValueError`` saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != CALIBRATION_VERSION or isinstance(version, bool):
        raise ValueError(f"unknown format_version {_shown(version)} (this code reads {CALIBRATION_VERSION})")
    precisions = raw.get("precisions")
    if not isinstance(precisions, dict):
        raise ValueError(f"expected 'precisions' as an object, got {type(precisions).__name__}")
    unknown = sorted(str(k) for k in precisions if k not in _PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision {_shown(unknown[0])} (known: {', '.join(_PRECISIONS)})")
    texts = {k: raw.get(k, "") for k in ("split", "cpu", "device")}
    bad = next((k for k, v in texts.items() if not isinstance(v, str) or len(v) > 200), None)
    if bad:
        raise ValueError(f"expected {bad!r} as a string of at most 200 characters")
    return CalibrationRecord(
        precisions={k: _entry(v, k) for k, v in precisions.items()},
        split=texts["split"] or "dev",
        cpu=texts["cpu"],
        device=texts["device"] or "cpu",
    )


def read_calibration(path: str | os.PathLike | None) -> CalibrationRecord | None:
    """The model directory's ``calibration.json``; ``None`` when there is none (or no directory);
    :class:`ModelDirError` in one line naming the file when it is refused (see the module docstring)."""
    if path is None:
        return None
    root = Path(path)
    if not os.path.lexists(root / CALIBRATION):
        return None
    try:
        data = untrusted.read_capped(root, CALIBRATION, MAX_BYTES, "a calibration file")
        return _parse(json.loads(data.decode("utf-8")))
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{root / CALIBRATION}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ModelDirError(f"{root / CALIBRATION}: refused: {exc}") from None


def write_calibration(path: str | os.PathLike, record: CalibrationRecord) -> Path:
    """Write ``calibration.json`` into the model directory ``path`` (through a temporary file, then a
    rename); what is written is checked as a read would check it."""
    data = {
        "format_version": CALIBRATION_VERSION,
        "split": record.split,
        "cpu": record.cpu,
        "device": record.device,
        "precisions": {k: v.to_dict() for k, v in record.precisions.items()},
    }
    _parse(json.loads(json.dumps(data)))  # never write what a read refuses
    p = Path(path) / CALIBRATION
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def clear_calibration(path: str | os.PathLike) -> bool:
    """Remove the model directory's ``calibration.json`` (a refit that fitted nothing must not leave an
    earlier fit's temperatures beside new weights); whether there was one."""
    p = Path(path) / CALIBRATION
    if not os.path.lexists(p):
        return False
    p.unlink()
    return True
