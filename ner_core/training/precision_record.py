"""The training step that scores the best model in every precision and records it (``precision.json``),
and fits its entity-confidence temperatures (``calibration.json``).

At the end of training the model directory is loaded back and its dev split tagged once per precision the
machine can run; the entity F1 of each goes into the directory's dev-F1 record
(:class:`ner_core.runtime.precision.DevF1Record`, written by
:func:`ner_core.artifacts.modeldir.write_precision_record`), which ``auto`` reads at prediction to skip a
precision that loses accuracy on this model.

The same pass fits a temperature per precision on dev's predicted entities
(:mod:`ner_core.inference.calibration`: the encoder runs once, only the CRF's forward-backward, or the
span logits' sigmoid, is redone per candidate temperature) and writes them with the expected calibration
error before and after into ``calibration.json``
(:mod:`ner_core.artifacts.calibration_file`); prediction then adds ``confidence_calibrated`` to every
entity, and an evaluation on test reports the calibration error there.

Split rule: the temperature is fitted on the run's dev split, the split it early-stopped on and never
trained on, and only there. A data set ingested without a dev split trains without one (``ner train`` does
not carve one from train: :func:`storage.datasets.training_documents` returns the stored dev split, empty
here, and the run has no dev score), and then no temperature is fitted: the model's own training
sentences would call it better calibrated than it is, and fitting on test would leave no honest
figure. Such a model has no ``calibration.json``, predicts raw confidences only, and its evaluations
report the raw calibration error (temperature 1.0, fitted on "none"). To calibrate it, ingest with
``--split-ratios`` (a seeded dev split carved from the files) and train again. A precision whose dev
predictions are too few, or all right or all wrong, gets no temperature either (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from ner_core.artifacts.calibration_file import (
    CalibrationRecord,
    PrecisionCalibration,
    clear_calibration,
    write_calibration,
)
from ner_core.artifacts.layout import is_model_dir
from ner_core.artifacts.modeldir import load_model_dir, write_precision_record
from ner_core.config import Precision
from ner_core.inference.calibration import TemperatureFit, fit_crf
from ner_core.inference.tagger import Tagger
from ner_core.runtime.hardware import Hardware, cpu_model_name
from ner_core.runtime.precision import DevF1Record
from ner_core.training.span_eval import fit_spans

__all__ = ["record_dev_f1"]

log = logging.getLogger(__name__)


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
    ``precision.json``; fit each precision's temperature in the same pass and write ``calibration.json``
    (when at least one was fitted). Returns the record (``None`` without dev documents).

    On a CPU without bf16 units bf16 is emulated (about 7x slower than fp32 on an AVX2-only EPYC) and
    ``auto`` never picks it there, so it is scored only when the run trained in it."""
    if not dev_docs or not is_model_dir(model_dir):
        return None
    loaded = load_model_dir(model_dir)
    hw = Hardware.detect(device)
    todo = [(p, device) for p in (precisions or _worth_scoring(hw, trained_in))]
    if hw.device == "cuda" and hw.int8 and precisions is None:
        todo.append((Precision.INT8, "cpu"))
    f1: dict[str, float] = {}
    fits: dict[str, TemperatureFit] = {}
    for p, where in todo:
        kw = dict(max_len=loaded.config.data.max_len, batch_size=batch_size, device=where, precision=p)
        if loaded.model.decoder == "span":
            report, fit = fit_spans(loaded.model, loaded.tokenizer, dev_docs, **kw)
        else:
            report, fit = fit_crf(Tagger(loaded.model, loaded.tokenizer, **kw), dev_docs)
        f1[p.value] = report.f1
        fits[p.value] = fit
    record = DevF1Record(dev_f1=f1, trained_in=str(trained_in), device=hw.device, cpu=cpu_model_name())
    write_precision_record(model_dir, record)
    _write_temperatures(model_dir, fits, hw.device)
    return record


def _write_temperatures(model_dir: str | Path, fits: dict[str, TemperatureFit], device: str) -> None:
    """``calibration.json`` of the fitted temperatures (none, not even an earlier one, when none was
    fitted)."""
    for p, fit in fits.items():
        if not fit.fitted:
            log.info("%s: no confidence temperature for %s: %s", model_dir, p, fit.reason)
    fitted = {
        p: PrecisionCalibration(f.temperature, f.n_entities, f.ece_raw, f.ece_calibrated)
        for p, f in fits.items()
        if f.fitted
    }
    if fitted:
        record = CalibrationRecord(precisions=fitted, split="dev", cpu=cpu_model_name(), device=device)
        write_calibration(model_dir, record)
    else:
        clear_calibration(model_dir)


def _worth_scoring(hw: Hardware, trained_in: Precision | str) -> list[Precision]:
    """The precisions the machine runs, less bf16 where it is emulated and the run did not train in it."""
    emulated = hw.device == "cpu" and not hw.bf16_units and str(trained_in) != Precision.BF16.value
    return [p for p in hw.runnable() if not (emulated and p is Precision.BF16)]
