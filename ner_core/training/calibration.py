"""``--precision auto`` for training: the precision that trains the run's model fastest on this machine.

The candidates are those :func:`ner_core.runtime.precision.measurable` names for training: fp32 and bf16
where the CPU has bf16 units; on CUDA fp32, bf16 where the GPU has it, and fp16 (trained with a gradient
scaler). Each is timed on a forward and backward pass of the run's own model (encoder, head and CRF loss)
over a few full windows of the run's length, once per machine, torch and model shape
(:func:`ner_core.runtime.calibrate.calibrated`; ``NER_PRECISION_AUTO`` pins it without timing). A CPU
without bf16 units has nothing to choose between and trains in fp32 without building anything.

The decision is made once, before a run starts (:func:`flows.steps.train_step` stores it in the run's
configuration), so a resumed run trains in the precision it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ner_core.config import NERConfig, Precision
from ner_core.model.encoder import load_encoder
from ner_core.model.network import NERModel
from ner_core.runtime.calibrate import Timing, calibrated, calibration_key, model_shape, pinned
from ner_core.runtime.hardware import Hardware, default_threads
from ner_core.runtime.precision import Choice, autocast, choose, is_auto, measurable
from ner_core.schemes import tag_set

__all__ = ["choose_training_precision"]

#: windows per timed forward and backward pass (at most the batch size)
_WINDOWS = 4


def choose_training_precision(config: NERConfig, labels: Sequence[str]) -> Choice:
    """The precision ``config.training`` trains in here: as asked, or for ``auto`` the fastest measured
    (see the module's doc)."""
    tc = config.training
    hardware = Hardware.detect(tc.device)
    timing: Timing | None = None
    if is_auto(tc.precision) and len(measurable("training", hardware)) > 1:
        timing = pinned()
        if timing is None:
            threads = tc.num_threads or default_threads()
            if threads:  # timed on the threads the run trains on (part of the cache key)
                torch.set_num_threads(threads)
            timing = _time_training(config, labels, hardware)
    return choose(tc.precision, purpose="training", hardware=hardware, timing=timing)


def _time_training(config: NERConfig, labels: Sequence[str], hardware: Hardware) -> Timing:
    """Build the run's model (the random number generators left as they were) and time one forward and
    backward pass per candidate precision on full windows."""
    device = torch.device(config.training.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        encoder, _ = load_encoder(config.encoder)
        span = config.decoder.type == "span"  # a span model: labels, span targets (none: all negatives)
        tags = sorted(labels) if span else tag_set(sorted(labels), config.data.scheme)
        model = NERModel(config, tags, encoder).to(device).train()
        n = max(1, min(config.training.batch_size, _WINDOWS))
        length = config.data.max_len
        vocab = max(2, int(getattr(encoder.config, "vocab_size", 2)))
        ids = (torch.arange(n * (length + 2)) * 7919 % (vocab - 1) + 1).view(n, length + 2).to(device)
        mask = torch.ones_like(ids)
        outside = tags.index("O") if "O" in tags else 0
        gold = (
            torch.zeros((0, 4), dtype=torch.long, device=device)
            if span
            else torch.full((n, length), outside, dtype=torch.long, device=device)
        )

        def build(p: Precision) -> Callable[[], Callable[[], int]]:
            def step() -> int:
                with autocast(p, device.type):  # encoder + head; the CRF loss stays fp32
                    loss = model(ids, mask, gold)
                loss.backward()
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return n * length

            return lambda: step

        # a span model's timing is its own (the key of a CRF model's stays as it was)
        decoder = {"decoder": "span", "head_size": config.decoder.head_size} if span else {}
        shape = model_shape(model, window=length, windows=n, frozen=config.encoder.freeze, **decoder)
        key = calibration_key("training", device, shape)
        return calibrated(key, {p: build(p) for p in measurable("training", hardware)}, purpose="training")
