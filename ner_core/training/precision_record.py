"""The training step that scores the best model in every precision and records it (``precision.json``).

At the end of training the model directory is loaded back and its dev split tagged once per precision the
machine can run; the entity F1 of each goes into the directory's dev-F1 record
(:class:`ner_core.runtime.precision.DevF1Record`, written by
:func:`ner_core.artifacts.modeldir.write_precision_record`), which ``auto`` reads at prediction to skip a
precision that loses accuracy on this model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ner_core.artifacts.layout import is_model_dir
from ner_core.artifacts.modeldir import load_model_dir, write_precision_record
from ner_core.config import Precision
from ner_core.inference.evaluate import evaluate_model
from ner_core.runtime.hardware import Hardware, cpu_model_name
from ner_core.runtime.precision import DevF1Record
from ner_core.training.span_eval import evaluate_spans

__all__ = ["record_dev_f1"]


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
    ``precision.json``. Returns the record (``None`` without dev documents).

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
    score = evaluate_spans if loaded.model.decoder == "span" else evaluate_model
    for p, where in todo:
        report = score(
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
    write_precision_record(model_dir, record)
    return record


def _worth_scoring(hw: Hardware, trained_in: Precision | str) -> list[Precision]:
    """The precisions the machine runs, less bf16 where it is emulated and the run did not train in it."""
    emulated = hw.device == "cpu" and not hw.bf16_units and str(trained_in) != Precision.BF16.value
    return [p for p in hw.runnable() if not (emulated and p is Precision.BF16)]
