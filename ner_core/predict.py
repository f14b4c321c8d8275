"""Tagging texts of any length with a trained model.

Long texts are tagged whole: overlapping windows of ``max_len`` characters every ``stride`` characters;
each character keeps the tag from the window in which it sits most centrally (largest distance to the
window's nearer edge), so no character is predicted at a window's ragged edge when a better window
exists. Spans are then read off the merged tag sequence (lenient reading, see
:func:`ner_core.schemes.tags_to_spans`).

Confidence of an entity: the minimum, over the entity's characters, of the CRF's posterior marginal
probability of the predicted tag at that character (forward-backward in the window that supplied the
tag). It is 1.0 only when the CRF is certain of every character of the span.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ner_core.alignment import CharAligner
from ner_core.data import EncodedChunk, collate, sliding_windows
from ner_core.schemes import tags_to_spans


@dataclass(frozen=True)
class PredictedEntity:
    start: int
    end: int
    label: str
    text: str
    confidence: float


class Tagger:
    """Batched, windowed inference for an :class:`ner_core.model.NERModel`."""

    def __init__(self, model, tokenizer, *, max_len: int, stride: int | None = None, batch_size: int = 32,
                 device: str = "cpu"):
        if max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.model = model.eval()
        self.aligner = CharAligner(tokenizer)
        self.tags: list[str] = list(model.tags)
        self.scheme: str = model.config.data.scheme
        self.max_len = max_len
        self.stride = stride or max(1, max_len // 2)
        if self.stride > max_len:
            raise ValueError(f"stride ({self.stride}) must not exceed max_len ({max_len})")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model.to(self.device)

    @classmethod
    def from_loaded(cls, loaded, *, max_len: int | None = None, stride: int | None = None,
                    batch_size: int = 32, device: str = "cpu") -> "Tagger":
        return cls(loaded.model, loaded.tokenizer, max_len=max_len or loaded.config.data.max_len,
                   stride=stride, batch_size=batch_size, device=device)

    @torch.inference_mode()
    def tag_texts(self, texts: Sequence[str], *, confidence: bool = True,
                  progress: Callable[[int], None] | None = None) -> list[tuple[list[str], list[float]]]:
        """Per text: one tag per character and the marginal probability of that tag."""
        windows: list[tuple[int, int, int]] = []  # (text index, start, end)
        for ti, text in enumerate(texts):
            if text:
                windows.extend((ti, s, e) for s, e in sliding_windows(len(text), self.max_len, self.stride))
        tags_out = [["O"] * len(t) for t in texts]
        prob_out = [[1.0] * len(t) for t in texts]
        best = [[-1] * len(t) for t in texts]  # centrality of the window that supplied each char's tag
        order = sorted(range(len(windows)), key=lambda w: windows[w][2] - windows[w][1])
        for b in range(0, len(order), self.batch_size):
            batch_w = [windows[w] for w in order[b : b + self.batch_size]]
            items = [EncodedChunk(None, self.aligner.char_ids(texts[ti][s:e]), None) for ti, s, e in batch_w]
            enc = collate(items, self.aligner.cls_id, self.aligner.sep_id, self.aligner.pad_id)
            ids = enc["input_ids"].to(self.device)  # (B, T+2)
            att = enc["attention_mask"].to(self.device)  # (B, T+2)
            emissions, mask = self.model.emissions(ids, att)  # (B, T, K), (B, T)
            paths = self.model.crf.decode(emissions, mask)
            if confidence:
                marg = self.model.crf.marginals(emissions, mask).float().cpu()  # (B, T, K)
            for r, ((ti, s, e), path) in enumerate(zip(batch_w, paths)):
                for j, tag_id in enumerate(path):
                    i = s + j
                    central = min(j, e - s - 1 - j)
                    if central > best[ti][i]:
                        best[ti][i] = central
                        tags_out[ti][i] = self.tags[tag_id]
                        prob_out[ti][i] = float(marg[r, j, tag_id]) if confidence else 1.0
            if progress is not None:
                progress(sum(e - s for _, s, e in batch_w))
        return list(zip(tags_out, prob_out))

    def predict(self, texts: Sequence[str], *, confidence: bool = True,
                progress: Callable[[int], None] | None = None) -> list[list[PredictedEntity]]:
        """Entities per text, half-open character spans over the original text."""
        out = []
        for text, (tags, probs) in zip(texts, self.tag_texts(texts, confidence=confidence, progress=progress)):
            ents = []
            for sp in tags_to_spans(tags, self.scheme):
                conf = min(probs[sp.start : sp.end]) if confidence else 1.0
                ents.append(PredictedEntity(sp.start, sp.end, sp.label, text[sp.start : sp.end], round(conf, 6)))
            out.append(ents)
        return out
