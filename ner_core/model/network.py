"""The tagger: encoder -> dropout -> head -> linear emissions -> constrained CRF, or, with the span
decoder (``config.decoder.type == "span"``), encoder -> dropout -> head -> span scores
(:class:`ner_core.model.span.EfficientGlobalPointer`).

Input rows are ``[CLS] c_1 ... c_n [SEP] [PAD] ...`` (one position per character, see
:mod:`ner_core.data.alignment`). The encoder sees the whole row; ``[CLS]`` and ``[SEP]`` are then sliced off
(``[:, 1:-1]``), so the head and the CRF only see characters, right-padded, and the CRF's first step is
always on. ``char_mask[b, j] = j < attention_mask[b].sum() - 2``.

Rows with no characters (``[CLS] [SEP]`` only) are allowed: their char_mask is all off and they contribute
nothing to the loss (the loss is the mean over rows that have characters; 0 if none has). Decoding is the
CRF's (:meth:`ConstrainedCRF.viterbi_tensor`, :meth:`ConstrainedCRF.marginals`) over the emissions of rows
with characters; :class:`ner_core.inference.tagger.Tagger` does that for whole texts.

A span model (:meth:`NERModel.span_logits`) scores every (start, end, label) of the same character
positions; its targets are the gold spans, its loss the multi-label circle loss
(:func:`ner_core.model.span.circle_loss`), averaged over the (row, label) pairs of rows with characters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ner_core.config import DecoderType, NERConfig, TrainingConfig
from ner_core.model.crf import ConstrainedCRF
from ner_core.model.fast_dropout import use_fast_dropout
from ner_core.model.heads import build_head, one_cpu_thread
from ner_core.model.span import EfficientGlobalPointer, band_mask, circle_loss

__all__ = ["NERModel"]


class NERModel(nn.Module):
    """BERT-family encoder + BiLSTM/BiGRU/IDCNN/none head + CRF.

    Args:
        config: the run's :class:`NERConfig` (encoder dropout and freezing, head, CRF constraints, scheme).
        tags: the tag list, index = tag id (e.g. ``schemes.tag_set(labels, scheme)``, "O" first).
        encoder: a ``transformers.PreTrainedModel`` returning ``last_hidden_state`` ``(B, T, H)``.
    """

    def __init__(self, config: NERConfig, tags: list[str], encoder: nn.Module) -> None:
        if not isinstance(config, NERConfig):
            raise ValueError(f"expected a NERConfig, got {type(config).__name__}")
        span = config.decoder.type is DecoderType.SPAN
        what = "label" if span else "tag"
        if isinstance(tags, str) or not tags or not all(isinstance(t, str) and t for t in tags):
            raise ValueError(f"expected a non-empty list of {what} strings, got {tags!r}")
        if len(set(tags)) != len(tags):
            raise ValueError(f"expected distinct {what}s, got duplicates in {list(tags)}")
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
        if not isinstance(encoder, nn.Module) or not isinstance(hidden, int):
            raise ValueError(
                f"expected a transformers encoder with config.hidden_size, got {type(encoder).__name__}"
            )
        super().__init__()
        self.config = config
        self.decoder = config.decoder.type
        self.encoder = encoder
        if config.encoder.freeze:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.dropout = nn.Dropout(config.encoder.dropout_rate)
        self.head = build_head(config.head, hidden)
        if span:
            self._init_span(list(tags))
        else:
            self._init_crf(list(tags))
        use_fast_dropout(self)  # the encoder's dropouts too: same p, cheaper CPU masks, no parameters

    def _init_crf(self, tags: list[str]) -> None:
        self.tags = tags
        self.classifier = nn.Linear(self.head.output_size, len(self.tags))
        allowed = None
        if self.config.crf.constrained:
            from ner_core import schemes

            allowed = schemes.allowed_transitions(self.tags, self.config.data.scheme)
        self.crf = ConstrainedCRF(len(self.tags), allowed)

    def _init_span(self, labels: list[str]) -> None:
        from ner_core import schemes

        bad = [x for x in labels if x == "O" or x[:2] in ("B-", "I-", "E-", "S-", "M-")]
        if bad:
            raise ValueError(f"a span model takes entity labels (PER, LOC, ...), not tags: got {bad}")
        self.labels = labels
        # the tags of the outermost spans (the seed's tag outputs); the span decoder itself uses none
        self.tags = schemes.tag_set(sorted(labels), self.config.data.scheme)
        self.span = EfficientGlobalPointer(self.head.output_size, len(labels), self.config.decoder.head_size)

    @property
    def num_tags(self) -> int:
        return len(self.tags)

    @property
    def max_span_len(self) -> int | None:
        """The longest span a span model scores (``config.decoder.max_span_len``; ``None``: no limit)."""
        return self.config.decoder.max_span_len

    # ------------------------------------------------------------------ inputs
    def _check(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"expected input_ids of shape (B, T) with [CLS] ... [SEP], got {got}")
        B, T = input_ids.shape
        if T < 2:
            raise ValueError(f"expected at least 2 positions per row ([CLS] and [SEP]), got T={T}")
        if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, T):
            got = (
                tuple(attention_mask.shape)
                if isinstance(attention_mask, Tensor)
                else type(attention_mask).__name__
            )
            raise ValueError(f"expected attention_mask of shape {(B, T)} matching input_ids, got {got}")
        am = attention_mask.bool()  # (B, T)
        if bool((am.long() != attention_mask.long()).any()):
            raise ValueError("expected attention_mask of 0/1 values")
        if bool((am.sum(dim=1) < 2).any()):
            raise ValueError("expected every row to hold at least [CLS] and [SEP] (attention_mask sum >= 2)")
        if bool((am[:, 1:] & ~am[:, :-1]).any()):
            raise ValueError("expected right-padded attention_mask (no 1 after a 0)")

    def emissions(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-character tag scores.

        Args:
            input_ids, attention_mask: ``(B, T)``, rows ``[CLS] chars [SEP]`` then right padding.

        Returns:
            emissions ``(B, T-2, K)`` and char_mask ``(B, T-2)`` bool.
        """
        if self.decoder is DecoderType.SPAN:
            raise ValueError("a span model has no tag emissions: use span_logits")
        self._check(input_ids, attention_mask)
        T = input_ids.shape[1]
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, H)
        n_chars = attention_mask.long().sum(dim=1) - 2  # (B,)
        char_mask = torch.arange(T - 2, device=input_ids.device).unsqueeze(0) < n_chars.unsqueeze(
            1
        )  # (B, T-2)
        x = self.dropout(hidden[:, 1:-1])  # (B, T-2, H)
        h = self.head(x, char_mask)  # (B, T-2, F)
        with one_cpu_thread(h):  # a product this small costs less than waking torch's other threads
            return self.classifier(h), char_mask  # (B, T-2, K), (B, T-2)

    def _features(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The head's output ``(B, T-2, F)`` and char_mask ``(B, T-2)`` (inputs checked)."""
        self._check(input_ids, attention_mask)
        T = input_ids.shape[1]
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        n_chars = attention_mask.long().sum(dim=1) - 2  # (B,)
        char_mask = torch.arange(T - 2, device=input_ids.device).unsqueeze(0) < n_chars.unsqueeze(1)
        return self.head(self.dropout(hidden[:, 1:-1]), char_mask), char_mask

    def span_logits(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """A span model's scores: ``logits[b, c, i, j]`` (float32, ``(B, C, T-2, T-2)``) of characters
        ``i..j`` inclusive carrying label ``labels[c]``, :data:`ner_core.model.span.MASKED` on every cell
        that is no span (``j < i``, padding, longer than :attr:`max_span_len`); and char_mask ``(B, T-2)``.
        ``sigmoid(logits)`` is each span's probability."""
        if self.decoder is not DecoderType.SPAN:
            raise ValueError("span_logits needs a span model (decoder span); this one decodes with a CRF")
        h, char_mask = self._features(input_ids, attention_mask)  # (B, T-2, F), (B, T-2)
        return self.span(h, char_mask, self.max_span_len), char_mask

    def span_band(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`span_logits` on the band of cells a span can occupy: ``band[b, c, i, w]`` (float32,
        ``(B, C, T-2, W)``, ``W = min(T-2, max_span_len)``) is the score of characters ``i..i+w``; the
        same values, without the dense tensor's cells that can never be a span (what prediction and the
        loss read). See :meth:`ner_core.model.span.EfficientGlobalPointer.band`."""
        if self.decoder is not DecoderType.SPAN:
            raise ValueError("span_band needs a span model (decoder span); this one decodes with a CRF")
        h, char_mask = self._features(input_ids, attention_mask)  # (B, T-2, F), (B, T-2)
        return self.span.band(h, char_mask, self.max_span_len), char_mask

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tags: Tensor) -> Tensor:
        """Mean CRF negative log-likelihood over rows with at least one character; for a span model the
        mean circle loss (:meth:`span_loss`, ``tags`` then being the ``(N, 4)`` span targets).

        Args:
            input_ids, attention_mask: ``(B, T)``; tags: ``(B, T-2)`` long, padding may hold anything.
        """
        if self.decoder is DecoderType.SPAN:
            return self.span_loss(input_ids, attention_mask, tags)
        self._check(input_ids, attention_mask)
        B, T = input_ids.shape
        if not isinstance(tags, Tensor) or tuple(tags.shape) != (B, T - 2):
            got = tuple(tags.shape) if isinstance(tags, Tensor) else type(tags).__name__
            raise ValueError(
                f"expected tags of shape {(B, T - 2)} (characters only, [CLS]/[SEP] off), got {got}"
            )
        em, char_mask = self.emissions(input_ids, attention_mask)  # (B, T-2, K), (B, T-2)
        rows = char_mask[:, 0] if T > 2 else char_mask.new_zeros(B)  # (B,) rows with characters
        if not bool(rows.any()):
            return em.sum() * 0.0  # keeps the graph; nothing to learn from
        tags = tags.long().masked_fill(~char_mask, 0)  # (B, T-2) padding -> a valid id
        # the CRF and the loss stay fp32 under autocast (ner_core.runtime.precision): float32 emissions,
        # autocast off
        with torch.autocast(em.device.type, enabled=False):
            return self.crf.neg_log_likelihood(em[rows].float(), tags[rows], char_mask[rows])

    def span_loss(self, input_ids: Tensor, attention_mask: Tensor, targets: Tensor) -> Tensor:
        """Mean multi-label circle loss (float32) over the (row, label) pairs of rows with characters.

        Args:
            input_ids, attention_mask: ``(B, T)``.
            targets: ``(N, 4)`` long, one gold span per line: ``[row, label_id, start, end_inclusive]`` in
                character positions of the row; every one must be a span the model scores (inside the row's
                characters, at most :attr:`max_span_len` long).
        """
        B = input_ids.shape[0]
        if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.shape[1] != 4:
            got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"expected span targets of shape (N, 4): [row, label, start, end], got {got}")
        # the band holds every valid cell, the dense tensor's others are masked: exp(MASKED) is 0 in the
        # loss, so the banded loss equals the dense one
        band, char_mask = self.span_band(input_ids, attention_mask)  # (B, C, L, W), (B, L)
        L, W = band.shape[2], band.shape[3]
        t = targets.long().to(band.device)
        C = len(self.labels)
        limits = torch.tensor([B, C, L, L], device=t.device)
        if t.numel() and bool(((t < 0) | (t >= limits)).any()):
            raise ValueError(f"span targets outside the batch: rows < {B}, labels < {C}, positions < {L}")
        rows = char_mask[:, 0] if L else char_mask.new_zeros(B)  # (B,) rows with characters
        if not bool(rows.any()):
            return band.sum() * 0.0  # keeps the graph; nothing to learn from
        width = t[:, 3] - t[:, 2]  # (N,) span length - 1: the band column
        no_span = "a span target is no span the model scores (padding, end < start or too long)"
        if bool(((width < 0) | (width >= W)).any()):
            raise ValueError(no_span)
        valid = band_mask(char_mask, W, self.max_span_len)  # (B, L, W)
        gold = torch.zeros_like(band, dtype=torch.bool)  # (B, C, L, W)
        gold[t[:, 0], t[:, 1], t[:, 2], width] = True
        if bool((gold & ~valid[:, None]).any()):
            raise ValueError(no_span)
        with torch.autocast(band.device.type, enabled=False):
            return circle_loss(band, gold, valid)[rows].mean()

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, tcfg: TrainingConfig) -> list[dict]:
        """Optimizer parameter groups with separate learning rates.

        - ``encoder`` / ``encoder_no_decay``: ``tcfg.learning_rate``;
        - ``head`` / ``head_no_decay``: the head AND the emission ``classifier`` (a freshly initialised
          layer like the head), ``tcfg.head_learning_rate``;
        - ``crf``: the transition scores, ``tcfg.crf_learning_rate``, no weight decay.

        Weight decay ``tcfg.weight_decay`` except on biases and LayerNorm weights (every parameter with
        fewer than 2 dimensions). Frozen parameters are left out; empty groups are dropped. Every dict
        has ``name``, ``params``, ``lr`` and ``weight_decay``.
        """
        if not isinstance(tcfg, TrainingConfig):
            raise ValueError(f"expected a TrainingConfig, got {type(tcfg).__name__}")
        buckets: dict[str, list[nn.Parameter]] = {
            "encoder": [],
            "encoder_no_decay": [],
            "head": [],
            "head_no_decay": [],
            "crf": [],
        }
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("crf."):
                buckets["crf"].append(p)
                continue
            part = "encoder" if name.startswith("encoder.") else "head"
            no_decay = p.dim() < 2 or "layernorm" in name.lower() or "layer_norm" in name.lower()
            buckets[part + ("_no_decay" if no_decay else "")].append(p)
        lrs = {"encoder": tcfg.learning_rate, "head": tcfg.head_learning_rate, "crf": tcfg.crf_learning_rate}
        groups = []
        for name, params in buckets.items():
            if not params:
                continue
            base = name.removesuffix("_no_decay")
            decay = 0.0 if (name.endswith("_no_decay") or name == "crf") else tcfg.weight_decay
            groups.append({"name": name, "params": params, "lr": lrs[base], "weight_decay": decay})
        return groups
