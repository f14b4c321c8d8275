"""The model directory's layout: the one place that spells its file names.

Layout (``FORMAT_VERSION = 1``; a span-decoder model ``SPAN_FORMAT_VERSION = 2``)::

    <dir>/
      meta.json            {format_version, created_at, torch, transformers, python}
      ner_config.json      the NERConfig the model was built from
      labels.json          {"tags": [...], "scheme": "BIOES", "labels": [...]}   (CRF models)
      span_labels.json     {"labels": [...], "scheme": "BIOES", "decoder": "span"} (span models, instead)
      metrics.json         whatever the trainer passed ({} when none)
      precision.json       the best model's dev entity F1 per precision (optional; see
                           :mod:`ner_core.training.precision_record`)
      calibration.json     the entity-confidence temperature per precision, fitted on dev (optional;
                           :mod:`ner_core.artifacts.calibration_file`)
      encoder/config.json  the encoder's HF config: rebuilt with AutoConfig + AutoModel.from_config
      model.safetensors    ALL weights (encoder, head, classifier, CRF incl. its constraint masks)
      tokenizer/           tokenizer.save_pretrained(...)

A span model (``ner_config.json``'s ``decoder.type`` is ``span``) has no tag list: it saves its label list
(index = label id) in ``span_labels.json`` and writes format version 2, so that code from before the span
decoder, which reads version 1 only, refuses it in one line instead of misreading it. CRF models keep
version 1 and stay readable by that code. A version this code does not know is refused with a line that
says to upgrade.

Everything else in the project names these files through the constants here (a test checks that no module
outside ``ner_core/artifacts/`` spells one), and asks :func:`is_model_dir` whether a folder is one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CALIBRATION",
    "CONFIG",
    "ENCODER_DIR",
    "FILE_NAMES",
    "FORMAT_VERSION",
    "LABELS",
    "META",
    "METRICS",
    "PRECISION_RECORD",
    "READABLE_VERSIONS",
    "SPAN_FORMAT_VERSION",
    "SPAN_LABELS",
    "TOKENIZER_DIR",
    "WEIGHTS",
    "ModelDirError",
    "is_model_dir",
]

FORMAT_VERSION = 1
#: the format version of a span-decoder model's directory
SPAN_FORMAT_VERSION = 2
#: every format version this code reads
READABLE_VERSIONS = (FORMAT_VERSION, SPAN_FORMAT_VERSION)

META = "meta.json"
CONFIG = "ner_config.json"
LABELS = "labels.json"
SPAN_LABELS = "span_labels.json"
METRICS = "metrics.json"
PRECISION_RECORD = "precision.json"
CALIBRATION = "calibration.json"
ENCODER_DIR = "encoder"
WEIGHTS = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
#: the file names of a model directory (not its folders, whose names are common words)
FILE_NAMES = (META, CONFIG, LABELS, SPAN_LABELS, METRICS, PRECISION_RECORD, CALIBRATION, WEIGHTS)


class ModelDirError(ValueError):
    """A model directory is missing, incomplete, damaged or of an incompatible format version."""


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`ner_core.artifacts.modeldir.save_model_dir` (it has
    ``meta.json``, the file a save writes last). Says nothing about whether it loads."""
    return (Path(path) / META).is_file()
