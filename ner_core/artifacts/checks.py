"""Checks that turn a damaged or tampered model directory into one line naming the file and the problem.

:func:`ner_core.artifacts.modeldir.load_model_dir` calls them at four points:

- :func:`check_labels` before anything is built: ``labels.json`` agrees with itself and with
  ``ner_config.json`` (distinct tags, an ``O``, every tag valid in the configured scheme, its ``scheme`` and
  ``labels`` fields consistent with the tags);
- :func:`read_weights_header` and :func:`check_weights` before the model is built: ``model.safetensors``'
  header, read in bounded bytes (:func:`ner_core.model.untrusted.safetensors_shapes`: capped, every tensor
  inside the file's real data, a sparse file's holes not counted), is complete (a truncated file fails on
  its header), was saved with these tags (a digest of the tag list in its metadata, written by
  :func:`weights_metadata`), and holds exactly the tensors, of the shapes, that ``ner_config.json`` and
  ``encoder/config.json`` build, compared with the model built on the meta device (the first difference
  is named, with the count of the others), so a configuration never allocates what the file does not hold;
- :func:`check_masks` once the model is built, before the weights are copied into it: files without the
  digest (older ones) are checked through the CRF's stored transition masks;
- :func:`check_tokenizer` after the tokenizer is loaded: its files are there (``transformers`` otherwise
  builds a tokenizer that maps every character to ``[UNK]``, or one without ``[CLS]``/``[SEP]``), it has
  the special tokens the model needs and no token id beyond the encoder's embedding. Before it is loaded,
  :func:`ner_core.model.untrusted.check_tokenizer_files` bounds its files by that embedding.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ner_core import schemes
from ner_core.artifacts.layout import (
    CONFIG,
    ENCODER_DIR,
    LABELS,
    SPAN_LABELS,
    TOKENIZER_DIR,
    WEIGHTS,
    ModelDirError,
)
from ner_core.config import NERConfig
from ner_core.model import untrusted

__all__ = [
    "TAGS_DIGEST",
    "WeightsHeader",
    "check_labels",
    "check_masks",
    "check_span_labels",
    "check_tokenizer",
    "check_weights",
    "read_weights_header",
    "weights_metadata",
]

TAGS_DIGEST = "tags_sha256"  # key in model.safetensors' metadata
_MASKS = ("crf.allowed_start", "crf.allowed_trans", "crf.allowed_end")
# a fast tokenizer's vocabulary is tokenizer.json; a slow one's is one of these
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def _digest(tags: list[str]) -> str:
    return hashlib.sha256(json.dumps(list(tags), ensure_ascii=False).encode("utf-8")).hexdigest()


def weights_metadata(tags: list[str]) -> dict[str, str]:
    """What :func:`ner_core.artifacts.modeldir.save_model_dir` adds to ``model.safetensors``' metadata: a
    digest of
    the tag list, so a later edit of ``labels.json`` (reordered, renamed, added tags) is caught on load."""
    return {TAGS_DIGEST: _digest(tags)}


def check_labels(root: Path, labels: dict, tags: list[str], scheme: Any, config: NERConfig) -> None:
    """``labels.json`` is consistent with itself and with ``ner_config.json``; else :class:`ModelDirError`."""
    want = config.data.scheme
    if str(scheme) != str(want):
        raise ModelDirError(
            f"{root}: {LABELS} says scheme {scheme!r} but {CONFIG} says {str(want)!r}; one of them was edited"
        )
    dup = next((t for i, t in enumerate(tags) if t in tags[:i]), None)
    if dup is not None:
        raise ModelDirError(f"{root}: {LABELS} is damaged: tag {dup!r} is listed twice")
    if "O" not in tags:
        raise ModelDirError(f"{root}: {LABELS} is damaged: no 'O' tag among {len(tags)} tags")
    try:
        schemes.allowed_transitions(tags, want)
    except ValueError as exc:
        raise ModelDirError(f"{root}: {LABELS} is damaged: {exc}") from None
    if "labels" in labels and sorted(map(str, labels["labels"])) != sorted(schemes.labels_of(tags)):
        raise ModelDirError(
            f"{root}: {LABELS} is damaged: its 'labels' {labels['labels']!r} are not the labels of its tags "
            f"{schemes.labels_of(tags)!r}"
        )


def check_span_labels(root: Path, data: Any, config: NERConfig) -> list[str]:
    """A span model's ``span_labels.json``: a non-empty list of distinct label strings (no ``O``, no
    whitespace), its scheme that of ``ner_config.json``; returns the labels, else :class:`ModelDirError`."""
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ModelDirError(
            f"{root}: {SPAN_LABELS} is damaged (expected a non-empty 'labels' list of strings)"
        )
    bad = next((x for x in labels if x == "O" or any(c.isspace() for c in x)), None)
    dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
    if bad is not None or dup is not None:
        what = f"label {dup!r} is listed twice" if dup is not None else f"{bad!r} is no entity label"
        raise ModelDirError(f"{root}: {SPAN_LABELS} is damaged: {what}")
    scheme = data.get("scheme", config.data.scheme)
    if str(scheme) != str(config.data.scheme):
        raise ModelDirError(
            f"{root}: {SPAN_LABELS} says scheme {scheme!r} but {CONFIG} says {str(config.data.scheme)!r}; "
            "one of them was edited"
        )
    return list(labels)


WeightsHeader = untrusted.TensorShapes


def read_weights_header(root: Path) -> WeightsHeader:
    """``model.safetensors``' tensors and metadata from its header alone (bounded bytes; see the module's
    doc); :class:`ModelDirError` for a damaged, truncated, sparse or out-of-folder file."""
    try:
        return untrusted.safetensors_shapes(root, WEIGHTS)
    except untrusted.UntrustedFileError as exc:
        raise ModelDirError(str(exc)) from None


def _shape_problems(file: dict[str, tuple], model: dict[str, tuple]) -> list[str]:
    out = [f"{k} is {list(file[k])} in the file, {list(model[k])} in the model the configuration builds"
           for k in model if k in file and file[k] != model[k]]  # fmt: skip
    out += [f"{k} is missing from the file" for k in model if k not in file]
    out += [f"the file has {k}, which the configuration has no place for" for k in file if k not in model]
    return out


def check_weights(
    root: Path, header: WeightsHeader, wanted: dict[str, tuple[int, ...]], tags: list[str]
) -> None:
    """``model.safetensors`` (its ``header``) fits ``tags`` and the model the directory's configuration
    builds (``wanted``: its state dict's shapes, from the meta device); else :class:`ModelDirError` naming
    the first difference."""
    digest = header.metadata.get(TAGS_DIGEST)
    if digest is not None and digest != _digest(tags):
        raise ModelDirError(
            f"{root}: {LABELS} is not the tag list {WEIGHTS} was saved with "
            "(tags edited, reordered or renamed)"
        )
    n_file = header.shapes.get("classifier.weight", (len(tags),))[0]
    if n_file != len(tags):
        raise ModelDirError(
            f"{root}: {LABELS} lists {len(tags)} tags but {WEIGHTS} was trained with {n_file} "
            "(classifier.weight)"
        )
    problems = _shape_problems(header.shapes, wanted)
    if problems:
        more = f" ({len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise ModelDirError(
            f"{root}: {WEIGHTS} does not match the configuration ({CONFIG}, {ENCODER_DIR}/config.json): "
            f"{problems[0]}{more}"
        )


def check_masks(root: Path, header: WeightsHeader, model: torch.nn.Module) -> None:
    """A file saved before the tags' digest: the CRF's transition masks it holds are the ones the tags of
    ``labels.json`` give (``model``: built from them, the weights not copied in yet); else
    :class:`ModelDirError`."""
    if TAGS_DIGEST in header.metadata:
        return
    from safetensors import safe_open

    buffers = model.state_dict()
    with safe_open(str(root / WEIGHTS), framework="pt") as handle:
        differs = any(
            k in header.shapes and not torch.equal(handle.get_tensor(k), buffers[k].cpu()) for k in _MASKS
        )
    if differs:
        raise ModelDirError(
            f"{root}: the tags of {LABELS} do not give the transitions {WEIGHTS} was trained with "
            "(tags reordered or renamed)"
        )


def check_tokenizer(root: Path, tokenizer: Any, encoder_config: Any) -> None:
    """The loaded tokenizer came from complete files and fits the encoder; else :class:`ModelDirError`."""
    tok_dir = root / TOKENIZER_DIR
    if not (tok_dir / "tokenizer_config.json").is_file():
        raise ModelDirError(
            f"{root}: {TOKENIZER_DIR}/tokenizer_config.json is missing (the special tokens and the tokenizer "
            "class); copy the whole model directory"
        )
    if not any((tok_dir / name).is_file() for name in _VOCAB_FILES):
        raise ModelDirError(
            f"{root}: {TOKENIZER_DIR}/ has no vocabulary file (tokenizer.json or vocab.txt); copy the whole "
            "model directory"
        )
    missing = [n for n in ("cls_token_id", "sep_token_id", "pad_token_id") if getattr(tokenizer, n) is None]
    if missing:
        raise ModelDirError(f"{root}: {TOKENIZER_DIR}/ is damaged: the tokenizer has no {', '.join(missing)}")
    rows = getattr(encoder_config, "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ModelDirError(
            f"{root}: {TOKENIZER_DIR}/ has {len(tokenizer)} tokens but the encoder's embedding has {rows} "
            f"rows ({ENCODER_DIR}/config.json vocab_size): the tokenizer is not this encoder's"
        )
