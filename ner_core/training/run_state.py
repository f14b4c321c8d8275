"""A training run's state between epochs and its checkpoint on disk, which loading never executes.

Layout, in the run directory (``FORMAT_VERSION = 1``)::

    checkpoint.json                 {format_version, tensors: {file, sha256}, state, optimizer, scaler}
    checkpoint-e0003.safetensors    model.<name>, optimizer.<param index>.<key>, rng.torch, and the
                                    tensors of training recipes (``ema.<name>``, ``ema_updates``)

``state`` is a :class:`TrainingState` (counters, plateau state, history, the Python and numpy RNG states
as lists of ints); ``optimizer`` holds the optimiser's ``param_groups`` and any non-tensor per-parameter
values, its tensors are in the safetensors file; ``scaler`` is the AMP grad scaler's (plain numbers).
Neither file can run code when read: no pickle anywhere.

Atomic: the tensors are written to a temporary file and renamed to a name of their own (one per epoch),
then ``checkpoint.json``, which names that file and its SHA-256, is written the same way and replaces the
previous one; older tensor files are removed after. A reader therefore always sees a complete JSON naming
a complete tensor file, whatever moment a run was killed at; a tensor file that does not match its hash
is refused.

Checkpoints written before this format (``checkpoint.pt``, a pickle) are converted once on resume: read
with ``torch.load(weights_only=True)``, which builds tensors and plain containers only, plus the numpy
globals that ``np.random.get_state()``'s array needs; anything else in the pickle is refused unread.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FORMAT_VERSION",
    "CHECKPOINT",
    "LEGACY_CHECKPOINT",
    "Checkpoint",
    "CheckpointError",
    "EpochStats",
    "TrainingState",
    "has_checkpoint",
    "load_checkpoint",
    "remove_stale_temps",
    "save_checkpoint",
]

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.json"
LEGACY_CHECKPOINT = "checkpoint.pt"
_TENSOR_PREFIX = "checkpoint-e"


class CheckpointError(ValueError):
    """A checkpoint is damaged, inconsistent, of another format version, or unsafe to read."""


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    dev_f1: float | None
    dev_precision: float | None
    dev_recall: float | None
    dev_char_accuracy: float | None
    dev_sentence_accuracy: float | None
    learning_rate: float
    seconds: float
    sentences_per_second: float
    chars_per_second: float
    is_best: bool = False
    #: share of padded positions in the epoch's batches (None in checkpoints written before it was measured)
    padding_share: float | None = None


@dataclass
class TrainingState:
    """What the training loop carries from one epoch to the next, RNG states included."""

    epoch: int = 0
    step: int = 0
    plateau_scale: float = 1.0
    best_f1: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    plateau_bad: int = 0
    history: list[EpochStats] = field(default_factory=list)
    elapsed: float = 0.0
    #: ``random.getstate()`` as ``[version, [625 ints], gauss_next]``
    python_rng: list | None = None
    #: ``np.random.get_state()`` as ``["MT19937", [624 ints], pos, has_gauss, cached_gaussian]``
    numpy_rng: list | None = None
    #: ``torch.get_rng_state()``; saved with the tensors, not in the JSON
    torch_rng: Tensor | None = None

    def capture_rng(self) -> None:
        """Record the global torch, Python and numpy generators' states."""
        self.torch_rng = torch.get_rng_state()
        self.python_rng = _python_rng_json(random.getstate())
        self.numpy_rng = _numpy_rng_json(np.random.get_state())

    def restore_rng(self) -> None:
        """Put the recorded states back into the global generators."""
        if self.torch_rng is None or self.python_rng is None or self.numpy_rng is None:
            raise CheckpointError("the training state has no RNG states to restore")
        torch.set_rng_state(self.torch_rng)
        version, internal, gauss_next = self.python_rng
        random.setstate((version, tuple(internal), gauss_next))
        name, keys, pos, has_gauss, cached = self.numpy_rng
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "torch_rng"}
        out["history"] = [asdict(h) for h in self.history]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], torch_rng: Tensor | None) -> TrainingState:
        data = dict(data)
        data["history"] = [EpochStats(**h) for h in data.get("history", [])]
        return cls(**data, torch_rng=torch_rng)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the training state and the state dicts to hand to ``load_state_dict``."""

    state: TrainingState
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    #: tensors of training recipes (the moving average's ``ema.<name>``); empty in checkpoints without them
    extra: dict[str, Tensor] = field(default_factory=dict)


def _python_rng_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [int(version), [int(x) for x in internal], gauss_next]


def _numpy_rng_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [str(name), [int(x) for x in keys], int(pos), int(has_gauss), float(cached)]


# ----------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------
def _flatten_optimizer(optimizer_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state dict -> (tensors by ``optimizer.<param index>.<key>``, JSON part)."""
    tensors: dict[str, Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, per_param in optimizer_state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{int(index)}.{key}"] = value
            else:
                values.setdefault(str(int(index)), {})[key] = value
    return tensors, {"param_groups": optimizer_state["param_groups"], "values": values}


def _own_storage(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, each with storage of its own (safetensors refuses tensors that share one, as
    tied weights do); only the second and later users of a storage are copied."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that checkpoint writes killed midway left in ``run_dir``
    (``.checkpoint-e*.safetensors.tmp-*``, ``.checkpoint.json.tmp-*``); returns them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.iterdir() if p.name.startswith(".checkpoint") and ".tmp-" in p.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    run_dir: str | os.PathLike,
    state: TrainingState,
    model: dict[str, Tensor],
    optimizer: dict[str, Any],
    scaler: dict[str, Any],
    extra: dict[str, Tensor] | None = None,
) -> Path:
    """Write the checkpoint of ``state`` (RNG states captured) and the three state dicts into ``run_dir``;
    returns the path of ``checkpoint.json``. ``extra``: further tensors (names without ``model.``,
    ``optimizer.`` or ``rng.``), given back as :attr:`Checkpoint.extra`."""
    from safetensors.torch import save_file

    if state.torch_rng is None:
        raise ValueError("capture the RNG states (TrainingState.capture_rng) before saving a checkpoint")
    run_dir = Path(run_dir)
    remove_stale_temps(run_dir)
    opt_tensors, opt_json = _flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = state.torch_rng
    for k, v in (extra or {}).items():
        if k.split(".", 1)[0] in ("model", "optimizer", "rng"):
            raise ValueError(f"extra checkpoint tensor {k!r} uses a reserved prefix")
        tensors[k] = v
    tensors = _own_storage(tensors)
    name = f"{_TENSOR_PREFIX}{state.epoch:04d}.safetensors"
    _write_atomic(run_dir / name, lambda p: save_file(tensors, str(p)))
    doc = {
        "format_version": FORMAT_VERSION,
        "tensors": {"file": name, "sha256": _sha256(run_dir / name)},
        "state": state.to_json(),
        "optimizer": opt_json,
        "scaler": scaler,
    }
    text = json.dumps(doc, indent=1)
    _write_atomic(run_dir / CHECKPOINT, lambda p: p.write_text(text, encoding="utf-8"))
    for old in run_dir.glob(f"{_TENSOR_PREFIX}*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return run_dir / CHECKPOINT


# ----------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------
def _unflatten_optimizer(tensors: dict[str, Tensor], opt_json: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for index, values in opt_json.get("values", {}).items():
        state.setdefault(int(index), {}).update(values)
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            index, key = name.removeprefix("optimizer.").split(".", 1)
            state.setdefault(int(index), {})[key] = value
    return {"state": dict(sorted(state.items())), "param_groups": opt_json["param_groups"]}


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a checkpoint (of this format or the pickled one before it)."""
    run_dir = Path(run_dir)
    return (run_dir / CHECKPOINT).is_file() or (run_dir / LEGACY_CHECKPOINT).is_file()


def load_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """Read ``run_dir``'s checkpoint (converting a pre-format ``checkpoint.pt`` once, see the module doc).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        CheckpointError: damaged, inconsistent, another format version, or a pickle that is unsafe to read.
    """
    run_dir = Path(run_dir)
    remove_stale_temps(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file() and (run_dir / LEGACY_CHECKPOINT).is_file():
        _convert_legacy(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged (not valid JSON: {exc})") from None
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r}, this code reads format_version {FORMAT_VERSION}"
        )
    try:
        tensors = _read_tensors(run_dir, doc["tensors"])
        state = TrainingState.from_json(doc["state"], torch_rng=tensors.pop("rng.torch"))
        optimizer = _unflatten_optimizer(tensors, doc["optimizer"])
        scaler = doc["scaler"]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k: v for k, v in tensors.items() if not k.startswith(("model.", "optimizer."))}
    return Checkpoint(state=state, model=model, optimizer=optimizer, scaler=scaler, extra=extra)


def _read_tensors(run_dir: Path, ref: dict[str, str]) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    name = ref["file"]
    tensor_path = run_dir / name
    if Path(name).name != name or not tensor_path.is_file():
        raise CheckpointError(f"{run_dir / CHECKPOINT}: names {name!r}, which is not in {run_dir}")
    if _sha256(tensor_path) != ref["sha256"]:
        raise CheckpointError(f"{tensor_path}: its SHA-256 does not match {CHECKPOINT}; damaged or replaced")
    # copies: the optimiser keeps the tensors it is given and updates them in place
    return {k: v.clone() for k, v in load_file(str(tensor_path)).items()}


# ----------------------------------------------------------------------------------------------
# Legacy
# ----------------------------------------------------------------------------------------------
def _legacy_globals() -> list:
    """What ``np.random.get_state()``'s uint32 array needs to be rebuilt; nothing that can run code."""
    from numpy._core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def _convert_legacy(run_dir: Path) -> None:
    """Rewrite a pickled ``checkpoint.pt`` (training before this format) as a checkpoint of this format."""
    legacy = run_dir / LEGACY_CHECKPOINT
    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            old = torch.load(legacy, map_location="cpu", weights_only=True)
        state = TrainingState.from_json(old["state"], torch_rng=old["torch_rng"])
        state.python_rng = _python_rng_json(old["py_rng"])
        state.numpy_rng = _numpy_rng_json(old["np_rng"])
        model, optimizer, scaler = old["model"], old["optimizer"], old["scaler"]
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0].split(". ")[0]
        raise CheckpointError(
            f"{legacy}: refused: this pickle needs more than tensors and numpy arrays to load ({reason}), "
            "so reading it could run code; start the run again instead of resuming it"
        ) from None
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(
            f"{legacy}: not a checkpoint of the previous format ({type(exc).__name__}: {exc}); "
            "start the run again instead of resuming it"
        ) from None
    save_checkpoint(run_dir, state, model, optimizer, scaler)
    legacy.unlink()
