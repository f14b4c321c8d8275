"""The tagger: encoder -> dropout -> head -> linear emissions -> constrained CRF.

Input rows are ``[CLS] c_1 ... c_n [SEP] [PAD] ...`` (one position per character, see
:mod:`ner_core.data.alignment`). The encoder sees the whole row; ``[CLS]`` and ``[SEP]`` are then sliced off
(``[:, 1:-1]``), so the head and the CRF only see characters, right-padded, and the CRF's first step is
always on. ``char_mask[b, j] = j < attention_mask[b].sum() - 2``.

Rows with no characters (``[CLS] [SEP]`` only) are allowed: their char_mask is all off and they contribute
nothing to the loss (the loss is the mean over rows that have characters; 0 if none has). Decoding is the
CRF's (:meth:`ConstrainedCRF.viterbi_tensor`, :meth:`ConstrainedCRF.marginals`) over the emissions of rows
with characters; :class:`ner_core.inference.tagger.Tagger` does that for whole texts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ner_core.config import NERConfig, TrainingConfig
from ner_core.model.crf import ConstrainedCRF
from ner_core.model.fast_dropout import use_fast_dropout
from ner_core.model.heads import build_head, one_cpu_thread

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
        if isinstance(tags, str) or not tags or not all(isinstance(t, str) and t for t in tags):
            raise ValueError(f"expected a non-empty list of tag strings, got {tags!r}")
        if len(set(tags)) != len(tags):
            raise ValueError(f"expected distinct tags, got duplicates in {list(tags)}")
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
        if not isinstance(encoder, nn.Module) or not isinstance(hidden, int):
            raise ValueError(
                f"expected a transformers encoder with config.hidden_size, got {type(encoder).__name__}"
            )
        super().__init__()
        self.config = config
        self.tags = list(tags)
        self.encoder = encoder
        if config.encoder.freeze:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.dropout = nn.Dropout(config.encoder.dropout_rate)
        self.head = build_head(config.head, hidden)
        self.classifier = nn.Linear(self.head.output_size, len(self.tags))
        allowed = None
        if config.crf.constrained:
            from ner_core import schemes

            allowed = schemes.allowed_transitions(self.tags, config.data.scheme)
        self.crf = ConstrainedCRF(len(self.tags), allowed)
        use_fast_dropout(self)  # the encoder's dropouts too: same p, cheaper CPU masks, no parameters

    @property
    def num_tags(self) -> int:
        return len(self.tags)

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

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tags: Tensor) -> Tensor:
        """Mean CRF negative log-likelihood over rows with at least one character.

        Args:
            input_ids, attention_mask: ``(B, T)``; tags: ``(B, T-2)`` long, padding may hold anything.
        """
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
