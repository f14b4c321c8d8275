"""Self-contained model directories: save one, copy it anywhere, load it with one call (no DB, no network).

The files and their names are :mod:`ner_core.artifacts.layout`'s; the checks that turn a damaged or tampered
file into one line are :mod:`ner_core.artifacts.checks`.

Saving is atomic: everything is written to a temporary sibling folder which is then renamed into place
(an existing directory at ``path`` is replaced only after the new one is complete).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ner_core.artifacts import checks
from ner_core.artifacts.layout import (
    CONFIG,
    ENCODER_DIR,
    FORMAT_VERSION,
    LABELS,
    META,
    METRICS,
    PRECISION_RECORD,
    READABLE_VERSIONS,
    SPAN_FORMAT_VERSION,
    SPAN_LABELS,
    TOKENIZER_DIR,
    WEIGHTS,
    ModelDirError,
    is_model_dir,
)
from ner_core.config import DecoderType, NERConfig
from ner_core.model import untrusted
from ner_core.model.network import NERModel
from ner_core.runtime.precision import DevF1Record
from ner_core.schemes import labels_of

__all__ = [
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelDirError",
    "is_model_dir",
    "load_model_dir",
    "model_identity",
    "read_metrics",
    "read_precision_record",
    "read_saved_config",
    "recover_model_dir",
    "save_model_dir",
    "saved_labels",
    "write_precision_record",
]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: NERModel
    tokenizer: Any
    config: NERConfig
    tags: list[str]
    scheme: str
    metrics: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def decoder(self) -> DecoderType:
        """``crf`` or ``span`` (the model's ``config.decoder.type``)."""
        return self.config.decoder.type

    @property
    def labels(self) -> list[str]:
        """The entity labels: a span model's own list (index = label id), else those of the tags."""
        if self.decoder is DecoderType.SPAN:
            return list(self.model.labels)
        return labels_of(self.tags)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")


def save_model_dir(
    path: str | os.PathLike, model: NERModel, tokenizer: Any, metrics: dict | None = None
) -> Path:
    """Write ``model``, ``tokenizer`` (and ``metrics``) as a self-contained directory at ``path``."""
    if not isinstance(model, NERModel):
        raise ValueError(f"expected a NERModel, got {type(model).__name__}")
    if not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(
            f"expected a transformers tokenizer with save_pretrained, got {type(tokenizer).__name__}"
        )
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"expected metrics to be a dict or None, got {type(metrics).__name__}")
    import transformers
    from safetensors.torch import save_model

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_model_dir(target)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_json(tmp / CONFIG, json.loads(model.config.to_json()))
        version, ids = _write_labels(tmp, model)
        _write_json(tmp / METRICS, metrics or {})
        model.encoder.config.save_pretrained(str(tmp / ENCODER_DIR))
        # the digest of the tags (a span model's labels), checked on load
        meta = {"format_version": str(version), **checks.weights_metadata(ids)}
        save_model(model, str(tmp / WEIGHTS), metadata=meta)
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        _write_json(
            tmp / META,
            {
                "format_version": version,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        )
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)  # the earlier model back in place
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _out_of_space(exc):
            kept = "the earlier model there is intact" if target.exists() else "nothing was written there"
            raise ModelDirError(
                f"{target}: cannot save the model, the disk is full ({' '.join(str(exc).split())}); {kept}: "
                f"free some space and run it again"
            ) from exc
        raise
    return target


def _write_labels(tmp: Path, model: NERModel) -> tuple[int, list[str]]:
    """``labels.json`` (a CRF model) or ``span_labels.json`` (a span model); returns the directory's
    format version and the list the weights' digest covers (tags, or a span model's labels)."""
    scheme = model.config.data.scheme
    if model.decoder is DecoderType.SPAN:
        _write_json(tmp / SPAN_LABELS, {"labels": model.labels, "scheme": scheme, "decoder": "span"})
        return SPAN_FORMAT_VERSION, list(model.labels)
    _write_json(tmp / LABELS, {"tags": model.tags, "scheme": scheme, "labels": labels_of(model.tags)})
    return FORMAT_VERSION, list(model.tags)


def recover_model_dir(path: str | os.PathLike) -> list[Path]:
    """Tidy what killed saves left beside ``path``; returns the folders removed.

    A kill between the two renames of a save leaves no directory at ``path`` and the earlier model in
    ``.<name>.old-*``: the newest of those is renamed back to ``path``. Every other ``.<name>.tmp-*`` (a
    save killed while writing) and ``.<name>.old-*`` is removed; ``path`` itself never is.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    tmp_prefix, old_prefix = f".{target.name}.tmp-", f".{target.name}.old-"
    siblings = [p for p in target.parent.iterdir() if p.name.startswith((tmp_prefix, old_prefix))]
    olds = sorted((p for p in siblings if p.name.startswith(old_prefix)), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        restored = olds.pop()
        os.replace(restored, target)
        siblings.remove(restored)
        log.warning("%s: restored the earlier model from %s (a save was interrupted)", target, restored.name)
    removed = []
    for p in siblings:
        if p.name != target.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _out_of_space(exc: BaseException) -> bool:
    """Whether a save failed for want of space (ENOSPC, or EFBIG under a file-size limit); safetensors
    and tokenizers report it as their own exceptions with the OS's text."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
        return True
    return isinstance(exc, Exception) and any(
        t in str(exc) for t in ("No space left on device", "File too large", "Errno 28", "Errno 27")
    )


def _read_json(root: Path, name: str) -> Any:
    """``root / name`` parsed as JSON: a regular file inside ``root`` of at most
    :data:`ner_core.model.untrusted.MAX_JSON_BYTES`, else :class:`ModelDirError`."""
    if not os.path.lexists(root / name):
        raise ModelDirError(f"{root}: missing {name}; not a complete model directory")
    try:
        return untrusted.read_json(root, name)
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None


def _check_entries(root: Path) -> None:
    """Every entry of the directory, ``encoder/`` and ``tokenizer/`` is a regular file or a folder, and a
    symlink only when it stays inside the directory (:func:`ner_core.model.untrusted.check_entries`)."""
    try:
        untrusted.check_entries(root)
        for sub in (ENCODER_DIR, TOKENIZER_DIR):
            if (root / sub).is_dir():
                untrusted.check_entries(root, sub)
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None


def _format_version(root: Path) -> int:
    """``meta.json``'s format version, one this code reads; else :class:`ModelDirError` (a newer one: a
    line that says to upgrade)."""
    meta = _read_json(root, META)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version in READABLE_VERSIONS and isinstance(version, int):
        return version
    readable = " and ".join(map(str, READABLE_VERSIONS))
    if isinstance(version, int) and not isinstance(version, bool) and version > max(READABLE_VERSIONS):
        raise ModelDirError(
            f"{root}: written by a newer version of this software ({META} format_version {version}; this "
            f"code reads format_version {readable}): upgrade to load it"
        )
    raise ModelDirError(
        f"{root}: {META} says format_version {version!r}, this code reads format_version {readable}"
    )


def _read_parts(root: Path) -> tuple[NERConfig, list[str], str, dict]:
    """``meta.json``'s format version, then ``ner_config.json``, ``labels.json`` (checked against it) and
    ``metrics.json``: ``(config, tags, scheme, metrics)``; for a span model the second item is its label
    list (``span_labels.json``)."""
    version = _format_version(root)
    try:
        config = NERConfig.model_validate(_read_json(root, CONFIG))
    except ModelDirError:
        raise
    except ValueError as exc:
        raise ModelDirError(f"{root}: {CONFIG} is damaged (not a valid NERConfig: {exc})") from None
    metrics = _read_json(root, METRICS) if os.path.lexists(root / METRICS) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    span = config.decoder.type is DecoderType.SPAN
    if span != (version == SPAN_FORMAT_VERSION):
        raise ModelDirError(
            f"{root}: {META} format_version {version} does not go with {CONFIG}'s decoder "
            f"{config.decoder.type.value!r} (a span model is version {SPAN_FORMAT_VERSION}, a CRF model "
            f"{FORMAT_VERSION}); one of them was edited"
        )
    if span:
        data = _read_json(root, SPAN_LABELS)
        labels = checks.check_span_labels(root, data, config)
        return config, labels, str(data.get("scheme", config.data.scheme)), metrics
    labels = _read_json(root, LABELS)
    tags = labels.get("tags") if isinstance(labels, dict) else None
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise ModelDirError(f"{root}: {LABELS} is damaged (expected a non-empty 'tags' list of strings)")
    scheme = labels.get("scheme", config.data.scheme)
    checks.check_labels(root, labels, tags, scheme, config)
    return config, tags, str(scheme), metrics


def _encoder_config(root: Path):
    """``encoder/config.json`` as a transformers configuration: capped, no ``auto_map``, a model type
    transformers knows (:func:`ner_core.model.untrusted.config_from_dict`)."""
    rel = f"{ENCODER_DIR}/config.json"
    if not os.path.lexists(root / rel):
        raise ModelDirError(f"{root}: missing {ENCODER_DIR}/config.json (the encoder's configuration)")
    try:
        return untrusted.config_from_dict(untrusted.read_json(root, rel), root, rel)
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None


def _build(root: Path, config: NERConfig, tags: list[str], enc_config) -> NERModel:
    """The model the configuration builds, with the weights of ``model.safetensors``: compared on the meta
    device first (:func:`checks.check_weights`), so nothing is allocated that the file does not hold."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import AutoModel

    if not os.path.lexists(root / WEIGHTS):
        raise ModelDirError(f"{root}: missing {WEIGHTS} (the model's weights)")
    header = checks.read_weights_header(root)

    def build() -> NERModel:
        return NERModel(config, tags, AutoModel.from_config(enc_config, trust_remote_code=False))

    try:
        untrusted.bound_module_counts(enc_config, len(header.shapes), f"{root}: {ENCODER_DIR}/config.json")
        wanted = untrusted.meta_shapes(build)
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelDirError(
            f"{root}: {ENCODER_DIR}/config.json is damaged: {' '.join(str(exc).split())}"
        ) from None
    checks.check_weights(root, header, wanted, tags)
    model = build()
    checks.check_masks(root, header, model)
    try:
        load_model(model, str(root / WEIGHTS), strict=True, device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ModelDirError(
            f"{root}: {WEIGHTS} is damaged or does not match the configuration: {exc}"
        ) from None
    return model


def _load_tokenizer(root: Path, enc_config) -> Any:
    """``tokenizer/``, its files bounded by the encoder's embedding before it is loaded
    (:func:`ner_core.model.untrusted.check_tokenizer_files`) and checked after it is
    (:func:`checks.check_tokenizer`)."""
    from transformers import AutoTokenizer

    tok_dir = root / TOKENIZER_DIR
    if not tok_dir.is_dir() or not any(tok_dir.iterdir()):
        raise ModelDirError(f"{root}: missing {TOKENIZER_DIR}/ (the tokenizer files)")
    try:
        names = sorted(p.name for p in tok_dir.iterdir())
        untrusted.check_tokenizer_files(root, TOKENIZER_DIR, getattr(enc_config, "vocab_size", None), names)
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelDirError(f"{root}: {TOKENIZER_DIR}/ is damaged: {exc}") from None
    checks.check_tokenizer(root, tokenizer, enc_config)
    return tokenizer


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a directory written by :func:`save_model_dir`; the model is in eval mode on ``device``.

    The directory may come from anyone: nothing in it runs and nothing is built before it is checked
    (its entries, each JSON file's size, ``auto_map``, the weights' header against the configuration on
    the meta device, the tokenizer's files against the embedding; :mod:`ner_core.model.untrusted`)."""
    root = Path(path)
    if not root.is_dir():
        interrupted = root.parent.is_dir() and any(root.parent.glob(f".{root.name}.old-*"))
        hint = f" (a save was interrupted: .{root.name}.old-* holds the earlier model)" if interrupted else ""
        raise ModelDirError(f"{root}: model directory not found{hint}")
    _check_entries(root)
    config, tags, scheme, metrics = _read_parts(root)
    enc_config = _encoder_config(root)
    model = _build(root, config, tags, enc_config)
    tokenizer = _load_tokenizer(root, enc_config)
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        tags=list(model.tags),
        scheme=scheme,
        metrics=metrics,
        path=root,
    )


# ----------------------------------------------------------------------------------------- small reads
# What other layers read of a model directory without loading its weights.
def _small(path: str | os.PathLike, name: str) -> bytes | None:
    """The bytes of the model directory's file ``name`` (bounded and checked as :func:`load_model_dir`
    reads them); ``None`` when there is none; :class:`ModelDirError` when it is refused."""
    root = Path(path)
    if not os.path.lexists(root / name):
        return None
    try:
        return untrusted.read_capped(root, name, untrusted.MAX_JSON_BYTES, "a JSON file")
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None


def read_saved_config(path: str | os.PathLike) -> NERConfig:
    """The :class:`NERConfig` a model directory was built from (``ner_config.json``)."""
    data = _small(path, CONFIG)
    if data is None:
        raise FileNotFoundError(f"{Path(path) / CONFIG}: configuration file not found")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{Path(path) / CONFIG}: not valid JSON ({exc})") from None
    return NERConfig.model_validate(raw)


def read_metrics(path: str | os.PathLike) -> dict:
    """What the trainer saved in ``metrics.json`` (``{}`` when the file is absent)."""
    data = _small(path, METRICS)
    return json.loads(data.decode("utf-8")) if data is not None else {}


def saved_labels(path: str | os.PathLike | None) -> list[str]:
    """The label set a model directory saved (``labels.json``'s ``labels``), sorted; ``[]`` when it cannot be
    read (no directory, no file, refused, not JSON, no list)."""
    if not path:
        return []
    try:
        raw = _small(path, LABELS)
        data = json.loads((raw if raw is not None else _small(path, SPAN_LABELS) or b"").decode("utf-8"))
    except (OSError, ValueError):
        return []
    labels = data.get("labels") if isinstance(data, dict) else None
    return sorted({str(x) for x in labels if isinstance(x, str) and x}) if isinstance(labels, list) else []


def model_identity(path: str | os.PathLike) -> str | None:
    """What identifies one save of a model directory: its ``meta.json`` text (written once per save, with a
    timestamp); ``None`` when there is none."""
    data = _small(path, META)
    return data.decode("utf-8") if data is not None else None


# ----------------------------------------------------------------------------------------- precision.json
def read_precision_record(path: str | os.PathLike | None) -> DevF1Record | None:
    """The model directory's ``precision.json``; ``None`` when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        raw = json.loads((_small(path, PRECISION_RECORD) or b"").decode("utf-8"))
        f1 = {str(k): float(v) for k, v in raw["dev_f1"].items() if v is not None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    known = {k: raw[k] for k in ("trained_in", "device", "cpu", "tolerance") if k in raw}
    return DevF1Record(dev_f1=f1, **known)


def write_precision_record(path: str | os.PathLike, record: DevF1Record) -> Path:
    """Write ``precision.json`` into the model directory ``path`` (through a temporary file, then a
    rename)."""
    p = Path(path) / PRECISION_RECORD
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
