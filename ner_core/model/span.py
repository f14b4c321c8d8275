"""The span decoder: Efficient GlobalPointer with rotary position encoding, and its loss.

Every span ``(i, j, c)`` (characters ``i..j`` inclusive, label ``c``) gets a score of its own, so entities
may nest or share a span with two labels; a span is an entity when ``sigmoid(score) >= threshold``.
Efficient GlobalPointer (Su Jianlin, kexue.fm/archives/8877, after GlobalPointer, archives/8373) shares
one start/end projection between the labels and adds a per-label bias for the start and for the end::

    s_c(i, j) = <R_i q_i, R_j k_j> / sqrt(d) + b_c^start . h_i + b_c^end . h_j

with ``[q_i; k_i]`` the projection of character ``i``'s features and ``R_i`` its rotation (RoPE), which
makes the first term depend on ``i`` and ``j`` only through ``j - i``: the decoder sees span lengths
without learning them per position. The features are layer-normalised first (not in Su's code, which
projects BERT's output, already normalised): a BiLSTM's or IDCNN's outputs start out small, and a score
that is a product of two projections of small features moves slowly, so without it a span decoder
behind a head learnt much more slowly than behind the encoder alone. Cells that are no span (``j < i``,
padding, longer than ``max_span_len``) are set to :data:`MASKED` (finite, so sums stay defined;
``sigmoid`` gives 0).

The projection, the scores and the loss run in float32 even under autocast: a score near the threshold
loses its resolution in bf16 (8 bits of mantissa), as the CRF's scores would.

The loss is GlobalPointer's multi-label "circle" cross-entropy (Su, kexue.fm/archives/7359): for one row
and label, with ``P`` its gold spans and ``N`` every other valid cell,
``log(1 + sum_{N} e^{s}) + log(1 + sum_{P} e^{-s})``, which pushes every positive above 0 and every
negative below it without weighting the (many) negatives by hand.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "MASKED",
    "EfficientGlobalPointer",
    "band_mask",
    "band_width",
    "circle_loss",
    "decode_spans",
    "rope",
    "span_mask",
    "to_band",
]

#: the score of a cell that is no span: far below any real score, finite (``-inf`` would make 0 * inf)
MASKED = -1e12


#: RoPE's cos/sin tables by (length, dim, device, dtype): every window of a run has one of a few lengths,
#: so the tables are computed once instead of on every batch (bounded: cleared when it holds too many)
_ROPE_TABLES: dict[tuple[int, int, str, torch.dtype], tuple[Tensor, Tensor]] = {}
_ROPE_TABLES_MAX = 64


def _rope_tables(L: int, D: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` ``(L, D/2)`` of the angles ``p * 10000^(-2m/D)``, computed in float32."""
    key = (L, D, str(device), dtype)
    tables = _ROPE_TABLES.get(key)
    if tables is None:
        # plain tensors even when first asked for under inference_mode, so training may use them later
        with torch.inference_mode(False), torch.no_grad():
            inv = torch.pow(10000.0, -torch.arange(0, D, 2, dtype=torch.float32, device=device) / D)
            angle = torch.arange(L, dtype=torch.float32, device=device)[:, None] * inv[None, :]  # (L, D/2)
            tables = (angle.cos().to(dtype), angle.sin().to(dtype))
        if len(_ROPE_TABLES) >= _ROPE_TABLES_MAX:
            _ROPE_TABLES.clear()
        _ROPE_TABLES[key] = tables
    return tables


def rope(x: Tensor) -> Tensor:
    """Rotary position encoding of ``x`` ``(B, L, D)`` (``D`` even): pair ``(x_{2m}, x_{2m+1})`` at position
    ``p`` is rotated by the angle ``p * 10000^(-2m/D)``. So ``<rope(q)_i, rope(k)_j>`` is a function of
    ``q_i``, ``k_j`` and ``j - i``."""
    _, L, D = x.shape
    cos, sin = _rope_tables(L, D, x.device, x.dtype)  # (L, D/2)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, L, D/2)
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (B, L, D/2, 2)
    return out.flatten(-2)  # (B, L, D)


def _proj_order(d: int, device: torch.device) -> Tensor:
    """The projection's ``2d`` outputs (``q_m`` at ``2m``, ``k_m`` at ``2m + 1``) reordered as ``q``'s even
    then odd dimensions, then ``k``'s: RoPE rotates the pairs ``(q_{2n}, q_{2n+1})``, here contiguous."""
    return torch.cat([torch.arange(r, 2 * d, 4, device=device) for r in (0, 2, 1, 3)])


def span_mask(char_mask: Tensor, max_span_len: int | None) -> Tensor:
    """``(B, L, L)`` bool: cell ``(i, j)`` is a span (``i <= j``, both characters, ``j - i < max_span_len``
    when a limit is given)."""
    L = char_mask.shape[1]
    idx = torch.arange(L, device=char_mask.device)
    width = idx[None, :] - idx[:, None]  # (L, L) j - i
    ok = width >= 0
    if max_span_len is not None:
        ok = ok & (width < max_span_len)
    return ok[None] & char_mask[:, :, None] & char_mask[:, None, :]  # (B, L, L)


def band_width(L: int, max_span_len: int | None) -> int:
    """``W``, the number of span lengths a band of ``L`` characters holds: ``min(L, max_span_len)``."""
    return L if max_span_len is None else min(L, max_span_len)


def _band_index(L: int, W: int, device: torch.device) -> Tensor:
    """``(L, W)`` long: ``i + w``, the end of the span of start ``i`` and length ``w + 1``, clipped to the
    last position (the clipped cells are masked)."""
    return (torch.arange(L, device=device)[:, None] + torch.arange(W, device=device)[None, :]).clamp(
        max=max(L - 1, 0)
    )


def band_mask(char_mask: Tensor, W: int, max_span_len: int | None) -> Tensor:
    """``(B, L, W)`` bool: band cell ``(i, w)``, the span ``i..i+w``, is a span (both ends characters,
    ``i + w < L``, ``w < max_span_len`` when a limit is given): :func:`span_mask` read along the band."""
    L = char_mask.shape[1]
    i = torch.arange(L, device=char_mask.device)[:, None]
    w = torch.arange(W, device=char_mask.device)[None, :]
    ok = (i + w) < L  # (L, W)
    if max_span_len is not None:
        ok = ok & (w < max_span_len)
    end_ok = char_mask[:, _band_index(L, W, char_mask.device)]  # (B, L, W)
    return ok[None] & char_mask[:, :, None] & end_ok


def to_band(logits: Tensor, W: int) -> Tensor:
    """Dense scores ``(..., L, L)`` as a band ``(..., L, W)``: ``band[..., i, w] = logits[..., i, i + w]``,
    :data:`MASKED` where ``i + w >= L``."""
    L = logits.shape[-1]
    idx = _band_index(L, W, logits.device)  # (L, W)
    band = torch.gather(logits, -1, idx.expand(logits.shape[:-1] + (W,)))
    beyond = (torch.arange(L, device=logits.device)[:, None] + torch.arange(W, device=logits.device)) >= L
    return band.masked_fill(beyond, MASKED)


class EfficientGlobalPointer(nn.Module):
    """Span scores ``(B, C, L, L)`` from features ``(B, L, F)``; see the module's doc.

    Args:
        in_features: ``F``, the head's output size.
        num_labels: ``C``.
        head_size: ``d``, the size of the start and of the end projection (even).
    """

    def __init__(self, in_features: int, num_labels: int, head_size: int = 64) -> None:
        if head_size < 2 or head_size % 2:
            raise ValueError(f"expected an even head_size >= 2, got {head_size}")
        if num_labels < 1:
            raise ValueError(f"expected at least one label, got {num_labels}")
        super().__init__()
        self.head_size = head_size
        self.num_labels = num_labels
        self.norm = nn.LayerNorm(in_features)
        self.proj = nn.Linear(in_features, 2 * head_size)  # [q_i; k_i] interleaved
        self.bias = nn.Linear(2 * head_size, 2 * num_labels)  # per label: start bias, end bias

    def _parts(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """float32 ``q``, ``k`` ``(B, L, d)`` (rotated) and the label biases ``(B, 2C, L)`` (start, end
        interleaved, halved); call with autocast off.

        ``q`` and ``k`` are :func:`rope` of the projection's even and odd outputs, with their dimensions
        in another order (the rotated even pair members first, then the odd ones): a dot product does not
        depend on the order of the dimensions, so the scores are the same, and the projection's rows taken
        in that order give contiguous blocks to rotate instead of every fourth output."""
        B, L, _ = h.shape
        d = self.head_size
        order = _proj_order(d, h.device)  # [q even, q odd, k even, k odd] of the interleaved outputs
        y = F.linear(self.norm(h.float()), self.proj.weight[order], self.proj.bias[order])  # (B, L, 2d)
        bias = F.linear(y, self.bias.weight[:, order], self.bias.bias)  # = self.bias(proj(...)), (B, L, 2C)
        cos, sin = _rope_tables(L, d, h.device, y.dtype)  # (L, d/2)
        cos, sin = cos[:, None], sin[:, None]  # (L, 1, d/2): the same for q and k
        v = y.view(B, L, 2, 2, d // 2)  # (B, L, q|k, even|odd, d/2)
        even, odd = v[:, :, :, 0], v[:, :, :, 1]  # (B, L, 2, d/2)
        rot = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=3)  # (B, L, 2, 2, d/2)
        q, k = rot[:, :, 0].reshape(B, L, d), rot[:, :, 1].reshape(B, L, d)  # (B, L, d) each
        return q, k, bias.transpose(1, 2) / 2  # (B, 2C, L)

    def forward(self, h: Tensor, char_mask: Tensor, max_span_len: int | None = None) -> Tensor:
        """``h`` ``(B, L, F)`` (any dtype), ``char_mask`` ``(B, L)`` bool -> float32 scores ``(B, C, L, L)``,
        :data:`MASKED` on every cell that is no span."""
        with torch.autocast(h.device.type, enabled=False):
            q, k, bias = self._parts(h)
            scores = torch.einsum("bmd,bnd->bmn", q, k) / math.sqrt(self.head_size)  # (B, L, L)
            # start bias indexed by the row (i), end bias by the column (j)
            logits = scores[:, None] + bias[:, 0::2, :, None] + bias[:, 1::2, None, :]  # (B, C, L, L)
            valid = span_mask(char_mask, max_span_len)  # (B, L, L)
            return logits.masked_fill(~valid[:, None], MASKED)

    def band(self, h: Tensor, char_mask: Tensor, max_span_len: int | None = None) -> Tensor:
        """The scores of :meth:`forward` on the band of cells a span can occupy, ``(B, C, L, W)`` float32
        with ``W = band_width(L, max_span_len)``: ``band[b, c, i, w]`` is the score of characters
        ``i..i+w``, :data:`MASKED` where that is no span. Every span the model scores is in the band, and
        the band is ``L / W`` times smaller than the dense ``(B, C, L, L)``, most of which is masked."""
        with torch.autocast(h.device.type, enabled=False):
            q, k, bias = self._parts(h)
            B, L, _ = q.shape
            W = band_width(L, max_span_len)
            idx = _band_index(L, W, h.device)  # (L, W) the end of each band cell
            # the same product as forward's, read on the band: one matrix product beats W small ones
            scores = torch.einsum("bmd,bnd->bmn", q, k)  # (B, L, L)
            scores = torch.gather(scores, 2, idx.expand(B, L, W)) / math.sqrt(self.head_size)  # (B, L, W)
            logits = scores[:, None] + bias[:, 0::2, :, None]  # (B, C, L, W) start bias by the row (i)
            logits += bias[:, 1::2, idx]  # end bias by the span's end (i + w); in place, as forward's order
            return logits.masked_fill_(~band_mask(char_mask, W, max_span_len)[:, None], MASKED)


def circle_loss(logits: Tensor, gold: Tensor, valid: Tensor) -> Tensor:
    """Multi-label circle cross-entropy per (row, label), over the row's valid cells: ``(B, C)`` float32.

    Args:
        logits: ``(B, C, L, L)`` scores.
        gold: ``(B, C, L, L)`` bool, the gold spans (only valid cells may be set).
        valid: ``(B, L, L)`` bool, the cells that are spans.
    """
    s = logits.float().flatten(2)  # (B, C, L*L)
    pos = gold.flatten(2)  # (B, C, L*L)
    ok = valid.flatten(1)[:, None, :].expand_as(pos)  # (B, C, L*L)
    neg_scores = s.masked_fill(pos | ~ok, MASKED)  # negatives: their score
    pos_scores = (-s).masked_fill(~pos, MASKED)  # positives: minus their score
    zero = s.new_zeros(s.shape[:2] + (1,))  # the "1 +" inside each log
    neg = torch.logsumexp(torch.cat((neg_scores, zero), dim=-1), dim=-1)  # (B, C)
    pos_l = torch.logsumexp(torch.cat((pos_scores, zero), dim=-1), dim=-1)  # (B, C)
    return neg + pos_l


@torch.no_grad()
def decode_spans(
    logits: Tensor, char_mask: Tensor, threshold: float, overlap: str = "allow", *, band: bool = False
) -> list[list[tuple[int, int, int, float]]]:
    """Entities per row from span scores: every cell with ``sigmoid >= threshold``, as
    ``(start, end_exclusive, label_id, probability)`` sorted by position.

    ``overlap="flat"`` keeps a non-overlapping subset, greedily by probability (the highest first, then
    the earlier, then the shorter span); ``"allow"`` keeps every one (nested, two labels on one span).
    ``band=True``: ``logits`` is the band ``(B, C, L, W)`` of :meth:`EfficientGlobalPointer.band` (cell
    ``(i, w)`` the span ``i..i+w``), which gives the same entities as the dense scores.
    """
    if overlap not in ("allow", "flat"):
        raise ValueError(f"expected overlap 'allow' or 'flat', got {overlap!r}")
    probs = torch.sigmoid(logits.float())  # (B, C, L, L) or (B, C, L, W), 0 on masked cells
    probs = probs.masked_fill(~char_mask[:, None, :, None], 0.0)
    hits = (probs >= threshold).nonzero()  # (N, 4): b, c, i, j (or w)
    found = probs[hits[:, 0], hits[:, 1], hits[:, 2], hits[:, 3]].tolist()
    if band:
        hits[:, 3] += hits[:, 2]  # width -> last
    rows: list[list[tuple[int, int, int, float]]] = [[] for _ in range(logits.shape[0])]
    for (b, c, i, j), p in zip(hits.tolist(), found, strict=True):
        rows[b].append((i, j + 1, c, p))
    for b, spans in enumerate(rows):
        if overlap == "flat":
            spans = _greedy_flat(spans)
        rows[b] = sorted(spans, key=lambda s: (s[0], s[1], s[2]))
    return rows


def _greedy_flat(spans: list[tuple[int, int, int, float]]) -> list[tuple[int, int, int, float]]:
    kept: list[tuple[int, int, int, float]] = []
    taken: set[int] = set()
    for s in sorted(spans, key=lambda s: (-s[3], s[0], s[1] - s[0], s[2])):
        if not taken.intersection(range(s[0], s[1])):
            kept.append(s)
            taken.update(range(s[0], s[1]))
    return kept
