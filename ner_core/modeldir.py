"""Self-contained model directories: save one, copy it anywhere, load it with one call (no DB, no network).

Layout (``FORMAT_VERSION = 1``)::

    <dir>/
      meta.json            {format_version, created_at, torch, transformers, python}
      ner_config.json      the NERConfig the model was built from
      labels.json          {"tags": [...], "scheme": "BIOES", "labels": [...]}
      metrics.json         whatever the trainer passed ({} when none)
      encoder/config.json  the encoder's HF config: rebuilt with AutoConfig + AutoModel.from_config
      model.safetensors    ALL weights (encoder, head, classifier, CRF incl. its constraint masks)
      tokenizer/           tokenizer.save_pretrained(...)

Saving is atomic: everything is written to a temporary sibling folder which is then renamed into place
(an existing directory at ``path`` is replaced only after the new one is complete).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ner_core.config import NERConfig
from ner_core.model import NERModel
from ner_core.schemes import labels_of

__all__ = ["FORMAT_VERSION", "LoadedModel", "ModelDirError", "load_model_dir", "save_model_dir"]

FORMAT_VERSION = 1

META = "meta.json"
CONFIG = "ner_config.json"
LABELS = "labels.json"
METRICS = "metrics.json"
ENCODER_DIR = "encoder"
WEIGHTS = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete, damaged or of an incompatible format version."""


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
    def labels(self) -> list[str]:
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
        _write_json(
            tmp / LABELS,
            {
                "tags": model.tags,
                "scheme": model.config.data.scheme,
                "labels": labels_of(model.tags),
            },
        )
        _write_json(tmp / METRICS, metrics or {})
        model.encoder.config.save_pretrained(str(tmp / ENCODER_DIR))
        from ner_core.modeldir_checks import weights_metadata  # the tags' digest, checked on load

        meta = {"format_version": str(FORMAT_VERSION), **weights_metadata(model.tags)}
        save_model(model, str(tmp / WEIGHTS), metadata=meta)
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        _write_json(
            tmp / META,
            {
                "format_version": FORMAT_VERSION,
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
        print(
            f"{target}: restored the earlier model from {restored.name} (a save was interrupted)", flush=True
        )
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
    p = root / name
    if not p.is_file():
        raise ModelDirError(f"{root}: missing {name}; not a complete model directory")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{root}: {name} is damaged (not valid JSON: {exc})") from None


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a directory written by :func:`save_model_dir`; the model is in eval mode on ``device``."""
    root = Path(path)
    if not root.is_dir():
        interrupted = root.parent.is_dir() and any(root.parent.glob(f".{root.name}.old-*"))
        hint = f" (a save was interrupted: .{root.name}.old-* holds the earlier model)" if interrupted else ""
        raise ModelDirError(f"{root}: model directory not found{hint}")
    meta = _read_json(root, META)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ModelDirError(
            f"{root}: {META} says format_version {version!r}, this code reads format_version {FORMAT_VERSION}"
        )
    try:
        config = NERConfig.model_validate(_read_json(root, CONFIG))
    except ModelDirError:
        raise
    except ValueError as exc:
        raise ModelDirError(f"{root}: {CONFIG} is damaged (not a valid NERConfig: {exc})") from None
    labels = _read_json(root, LABELS)
    tags = labels.get("tags") if isinstance(labels, dict) else None
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise ModelDirError(f"{root}: {LABELS} is damaged (expected a non-empty 'tags' list of strings)")
    scheme = labels.get("scheme", config.data.scheme)
    from ner_core import modeldir_checks as checks  # one line per damaged or tampered file

    checks.check_labels(root, labels, tags, scheme, config)
    metrics = _read_json(root, METRICS) if (root / METRICS).exists() else {}

    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    enc_dir = root / ENCODER_DIR
    if not (enc_dir / "config.json").is_file():
        raise ModelDirError(f"{root}: missing {ENCODER_DIR}/config.json (the encoder's configuration)")
    try:
        enc_config = AutoConfig.from_pretrained(str(enc_dir))
        encoder = AutoModel.from_config(enc_config)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelDirError(f"{root}: {ENCODER_DIR}/config.json is damaged: {exc}") from None
    model = NERModel(config, tags, encoder)
    weights = root / WEIGHTS
    if not weights.is_file():
        raise ModelDirError(f"{root}: missing {WEIGHTS} (the model's weights)")
    checks.check_weights(root, model, tags)
    try:
        load_model(model, str(weights), strict=True, device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ModelDirError(
            f"{root}: {WEIGHTS} is damaged or does not match the configuration: {exc}"
        ) from None
    tok_dir = root / TOKENIZER_DIR
    if not tok_dir.is_dir() or not any(tok_dir.iterdir()):
        raise ModelDirError(f"{root}: missing {TOKENIZER_DIR}/ (the tokenizer files)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelDirError(f"{root}: {TOKENIZER_DIR}/ is damaged: {exc}") from None
    checks.check_tokenizer(root, tokenizer, enc_config)
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        tags=list(tags),
        scheme=str(scheme),
        metrics=metrics if isinstance(metrics, dict) else {},
        path=root,
    )
