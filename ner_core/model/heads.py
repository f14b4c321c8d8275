"""Layers between the encoder and the CRF, chosen through one Enum-keyed factory.

Every head maps ``x (B, T, H)`` and a right-padded bool ``mask (B, T)`` to ``(B, T, output_size)``.

- ``bilstm`` / ``bigru``: bidirectional RNN (``rnn_units`` per direction, so
  ``output_size = 2 * rnn_units``), ``rnn_num_hidden_layers`` stacked, dropout between layers and on
  the output. Padding never reaches a real position (the backward direction reads each row reversed
  within its length) and padded outputs are 0.
- ``idcnn`` (Strubell et al. 2017, "Fast and Accurate Entity Recognition with Iterated Dilated
  Convolutions"): a linear input projection to ``cnn_filters``, then ONE block of dilated ``Conv1d``
  layers (dilations ``cnn_dilations``, kernel ``cnn_kernel_size``, ReLU) applied ``cnn_blocks`` times
  with the same weights, dropout after each application. Padded positions are zeroed after every
  layer, so a right-padded row gives the same outputs as the unpadded row. ``output_size = cnn_filters``
  (the last block's output, as in the paper's final prediction).
- ``none``: identity (``output_size = input_size``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ner_core.config import HeadConfig, HeadType
from ner_core.runtime.hardware import bf16_lstm_runs

__all__ = ["BiRNNHead", "IDCNNHead", "IdentityHead", "build_head", "head_choices", "one_cpu_thread"]


def _check_inputs(x: Tensor, mask: Tensor, input_size: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != input_size:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (B, T, {input_size}), got {got}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(x.shape[:2]) or mask.dtype != torch.bool:
        got = (tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"expected a bool mask of shape {tuple(x.shape[:2])}, got {got}")


class IdentityHead(nn.Module):
    """No layers: the encoder's (dropped-out) output goes straight to the emission layer."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = input_size

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, H), mask (B, T) bool -> (B, T, H), unchanged."""
        _check_inputs(x, mask, self.input_size)
        return x


class BiRNNHead(nn.Module):
    """Bidirectional LSTM or GRU over right-padded rows, each direction run as its own one-way pass.

    The parameters are one ``nn.LSTM``/``nn.GRU`` (``bidirectional=True``), so model directories keep their
    layout. The computation is not the packed-sequence path, which runs in float32 step by step on CPU
    (and is several times slower forward and backward): the forward direction runs over the padded rows as
    they are (padding comes after every real position, so it never reaches one), and the backward direction
    over each row reversed *within its length* (:func:`_reverse_within`), its output reversed back. Both
    are then plain padded RNN calls, which oneDNN runs fused, and in bf16 under autocast. The result equals
    the packed computation (to float rounding, tested), padding included: padded outputs are 0. A batch
    without padding (most prediction batches: windows are sorted by length) goes through the bidirectional
    RNN in one call.
    """

    def __init__(self, cell: type[nn.LSTM | nn.GRU], input_size: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.input_size = input_size
        self.rnn = cell(
            input_size,
            cfg.rnn_units,
            num_layers=cfg.rnn_num_hidden_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout_rate if cfg.rnn_num_hidden_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.output_size = 2 * cfg.rnn_units
        # one-way templates, run with the bidirectional RNN's weights (torch.func.functional_call): on the
        # meta device and out of the module's registry, so they hold no memory and never reach a state dict
        units = cfg.rnn_units
        self._one_way: list[nn.Module] = [
            cell(input_size if layer == 0 else 2 * units, units, batch_first=True, device="meta")
            for layer in range(cfg.rnn_num_hidden_layers)
        ]
        # per layer, the (forward, backward) one-way passes quantized to int8 by :meth:`quantize_int8`
        self._int8: list[tuple[nn.Module, nn.Module]] | None = None
        self._bf16_inference = False  # set by :meth:`run_in_bf16`

    def quantize_int8(self) -> None:
        """Run this head's inference in int8 from now on: each direction of each layer as a dynamically
        quantized one-way RNN (``torch.ao``'s int8 weights, activations quantized per call, CPU only),
        built from the float weights, which stay as they are (and are what a state dict holds; training
        still uses them). In place: for the copy of a model that int8 prediction makes, whose encoder's
        products are int8 already, so the head no longer runs float products beside them."""
        quantize_dynamic = torch.ao.quantization.quantize_dynamic
        cell = type(self.rnn)
        passes = []
        for layer, template in enumerate(self._one_way):
            pair = []
            for reverse in (False, True):
                one = cell(template.input_size, template.hidden_size, batch_first=True)
                with torch.no_grad():
                    for name, _ in one.named_parameters():  # weight_ih_l0 <- weight_ih_l{layer}[_reverse]
                        source = name.replace("_l0", f"_l{layer}" + ("_reverse" if reverse else ""))
                        getattr(one, name).copy_(getattr(self.rnn, source))
                with warnings.catch_warnings():  # torch marks the eager API deprecated; it runs int8 here
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
                    pair.append(quantize_dynamic(nn.Sequential(one.eval()), {cell}, dtype=torch.qint8)[0])
            passes.append((pair[0], pair[1]))
        self._int8 = passes

    def _direction(self, layer: int, x: Tensor, reverse: bool) -> Tensor:
        """One direction of one layer over padded rows ``x (B, T, I)`` -> ``(B, T, U)``."""
        if self._int8 is not None and not torch.is_grad_enabled():
            out, _ = self._int8[layer][int(reverse)](x.float())
            return out
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        weights = {
            f"{name}_l0": getattr(self.rnn, f"{name}{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        out, _ = torch.func.functional_call(self._one_way[layer], weights, (x,))
        return out

    def _float32_rnn(self, x: Tensor) -> bool:
        """Whether this call must run its RNN in float32 under CPU bf16 autocast: always for the GRU (oneDNN
        has no bf16 GRU: autocast sends it to a reference kernel several times slower than float32, measured
        in ``bench/bench_heads.py``), and for the LSTM on a CPU whose oneDNN cannot run a bf16 LSTM
        (:func:`ner_core.runtime.hardware.bf16_lstm_runs`). Every other layer keeps the run's precision."""
        if not (
            x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        ):
            return False
        return isinstance(self.rnn, nn.GRU) or not bf16_lstm_runs()

    def run_in_bf16(self) -> None:
        """Run this head's inference under CPU bf16 autocast from now on, whatever the caller's precision:
        for an int8 copy's LSTM on a CPU with bf16 units, where oneDNN's bf16 LSTM beats the int8 one."""
        self._bf16_inference = True

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, H), mask (B, T) bool right-padded -> (B, T, 2 * rnn_units), zero on padding."""
        _check_inputs(x, mask, self.input_size)
        with one_cpu_thread(x):
            if self._bf16_inference and x.device.type == "cpu" and not torch.is_grad_enabled():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self._forward(x, mask).to(x.dtype)
            if self._float32_rnn(x):
                with torch.autocast("cpu", enabled=False):
                    return self._forward(x.float(), mask)
            return self._forward(x, mask)

    def _forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = x.shape
        if T == 0:
            return x.new_zeros(B, 0, self.output_size)
        if bool(mask.all()) and (self._int8 is None or torch.is_grad_enabled()):
            # no padding (most prediction batches): torch's own bidirectional pass
            y, _ = self.rnn(x)  # (B, T, 2U)
            return self.dropout(y)
        index = _reverse_index(mask)  # (B, T)
        h = x
        for layer in range(self.rnn.num_layers):
            if layer:
                h = nn.functional.dropout(h, self.rnn.dropout, self.training)  # between layers, as nn.LSTM
            forward = self._direction(layer, h, reverse=False)  # (B, T, U)
            backward = _reverse_within(self._direction(layer, _reverse_within(h, index), reverse=True), index)
            h = torch.cat([forward, backward], dim=-1)  # (B, T, 2U)
        y = h * mask.unsqueeze(2).to(h.dtype)  # (B, T, 2U)
        return self.dropout(y)


@contextlib.contextmanager
def one_cpu_thread(x: Tensor) -> Iterator[None]:
    """One torch thread for an inference pass of small products on CPU (an RNN, the classifier), the
    caller's setting restored after.

    An RNN is a chain of small per-step products: split over several threads, every step waits for all of
    them, and on a busy machine each such wait can last a scheduler time slice, so the threaded pass is
    many times slower than one thread (``bench/bench_predict.py``); a product as small as the classifier's
    costs less than waking the other threads at all. Training (gradients on) keeps torch's setting: its
    backward pass has other costs."""
    threads = torch.get_num_threads()
    if threads == 1 or x.device.type != "cpu" or torch.is_grad_enabled():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _reverse_index(mask: Tensor) -> Tensor:
    """For right-padded ``mask (B, T)``: the position each position takes when every row's real part is
    reversed in place and its padding stays where it is (the index is its own inverse) -> ``(B, T)`` long."""
    B, T = mask.shape
    steps = torch.arange(T, device=mask.device).unsqueeze(0).expand(B, T)  # (B, T)
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    return torch.where(mask, lengths - 1 - steps, steps)  # (B, T)


def _reverse_within(x: Tensor, index: Tensor) -> Tensor:
    """``x (B, T, F)`` with each row's real positions reversed (``index`` from :func:`_reverse_index`)."""
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))  # (B, T, F)


class IDCNNHead(nn.Module):
    """Iterated dilated CNN: one dilated block, applied ``cnn_blocks`` times with shared weights."""

    def __init__(self, input_size: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.input_size = input_size
        self.blocks = cfg.cnn_blocks
        F, k = cfg.cnn_filters, cfg.cnn_kernel_size
        self.projection = nn.Linear(input_size, F)
        self.block = nn.ModuleList(
            nn.Conv1d(F, F, kernel_size=k, dilation=d, padding=d * (k - 1) // 2) for d in cfg.cnn_dilations
        )
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.output_size = F

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, H), mask (B, T) bool right-padded -> (B, T, cnn_filters), zero on padding."""
        _check_inputs(x, mask, self.input_size)
        keep = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        h = self.projection(x).transpose(1, 2) * keep  # (B, F, T)
        for _ in range(self.blocks):
            for conv in self.block:
                h = torch.relu(conv(h)) * keep  # (B, F, T)
            h = self.dropout(h)  # (B, F, T)
        return h.transpose(1, 2)  # (B, T, F)


_FACTORY: dict[HeadType, Callable[[HeadConfig, int], nn.Module]] = {
    HeadType.BILSTM: lambda cfg, n: BiRNNHead(nn.LSTM, n, cfg),
    HeadType.BIGRU: lambda cfg, n: BiRNNHead(nn.GRU, n, cfg),
    HeadType.IDCNN: lambda cfg, n: IDCNNHead(n, cfg),
    HeadType.NONE: lambda cfg, n: IdentityHead(n),
}


def head_choices() -> list[str]:
    return [h.value for h in _FACTORY]


def build_head(cfg: HeadConfig, input_size: int) -> nn.Module:
    """Build the head named by ``cfg.type`` for inputs of ``input_size`` features.

    The module's ``forward(x (B, T, input_size), mask (B, T) bool) -> (B, T, output_size)``; the
    ``output_size`` attribute says the width.
    """
    if not isinstance(cfg, HeadConfig):
        raise ValueError(f"expected a HeadConfig, got {type(cfg).__name__}")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size <= 0:
        raise ValueError(f"expected a positive int input_size, got {input_size!r}")
    raw = cfg.type
    try:
        kind = HeadType(raw.value if isinstance(raw, HeadType) else raw)
    except ValueError:
        raise ValueError(f"unknown head type {raw!r}; choose one of: {', '.join(head_choices())}") from None
    if kind not in _FACTORY:
        raise ValueError(f"unknown head type {raw!r}; choose one of: {', '.join(head_choices())}")
    return _FACTORY[kind](cfg, input_size)
