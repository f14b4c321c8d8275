"""One model position per character.

Chinese NER is labelled per character (Python ``str`` index = Unicode code point), so the encoder
input must hold exactly one token per character: ``input_ids[b, 1 + i]`` is character ``i`` of text
``b`` (position 0 is ``[CLS]``, position ``len(text) + 1`` is ``[SEP]``). A WordPiece tokenizer run
over the text would merge "iPhone15" into sub-words and break that mapping, so :class:`CharAligner`
never runs the tokenizer: it maps each character to a vocabulary id through a per-character cache.

Lookup order for one character ``c`` (first hit wins):

1. ``c`` itself in the vocabulary;
2. ``c.lower()`` if lower-casing is on: the tokenizer lower-cases (e.g. bert-base-chinese), or the
   vocabulary has no upper-case ASCII letter at all (m3e-small ships the uncased bert-base-chinese
   vocabulary with a cased tokenizer, which would turn every upper-case letter into ``[UNK]``);
3. the NFKC form of ``c`` if it is one character (full-width ``'１'`` -> ``'1'``, ``'Ａ'`` -> ``'A'``),
   and its lower-case form if the tokenizer lower-cases (``'Ａ'`` -> ``'a'``);
4. if lower-casing is on (and so, like BERT, accents are stripped): the character without its
   combining marks (``'é'`` -> ``'e'``);
4b. typographic punctuation folded to ASCII (:data:`PUNCT_FOLD`: curly quotes -> ``"``/``'``,
   dashes -> ``-``, ``…`` -> ``.``), which the bert-base-chinese vocabulary lacks although Chinese
   news text uses them often (they would otherwise be ``[UNK]``);
5. whitespace (``str.isspace``: space, tab, newline, U+3000, no-break space, ...) -> the whitespace
   token ``[unused1]`` if the vocabulary has it, else ``[UNK]``: whitespace keeps its position;
6. the WordPiece continuation form ``'##' + candidate`` for the candidates of steps 1-4b, only
   reached when the bare forms are missing;
7. the unknown token ``[UNK]`` (emoji, rare characters).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["PUNCT_FOLD", "WHITESPACE_TOKEN", "CharAligner"]

WHITESPACE_TOKEN = "[unused1]"

#: Typographic punctuation -> ASCII stand-in, tried after the NFKC step.
PUNCT_FOLD: dict[str, str] = {
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),  # “ ” „ ‟ ″ « »
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),  # ‘ ’ ‚ ‛ ′
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),  # ‐ ‑ ‒ – — ― −
    "\u2026": ".",  # …
}


def _tokenizer_lowercases(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` lower-cases its input (fast backend normaliser, else ``do_lower_case``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None) if backend is not None else None
    if normalizer is not None:
        try:
            return normalizer.normalize_str("A") == "a"
        except Exception:  # pragma: no cover - exotic normaliser
            pass
    flag = getattr(tokenizer, "do_lower_case", None)
    if flag is None:
        flag = getattr(tokenizer, "init_kwargs", {}).get("do_lower_case", False)
    return bool(flag)


class _CharCache(dict):
    """char -> id; a missing character is resolved once and remembered."""

    def __init__(self, resolve):
        super().__init__()
        self._resolve = resolve

    def __missing__(self, ch: str) -> int:
        value = self._resolve(ch)
        self[ch] = value
        return value


class CharAligner:
    """Maps text to token ids with exactly one id per character.

    Args:
        tokenizer: any Hugging Face BERT-family tokenizer (fast or slow) with ``get_vocab()`` and
            ``cls_token``, ``sep_token``, ``pad_token`` and ``unk_token`` in its vocabulary.
        lowercase: ``None`` (default): on when the tokenizer lower-cases or the vocabulary has no
            upper-case ASCII letter; ``True``/``False`` forces steps 2-4 of the lookup on or off. The
            default depends only on the tokenizer saved with a model, so training and serving agree;
            a model trained with an explicit setting must be served with the same one.

    Attributes: ``cls_id``, ``sep_id``, ``pad_id``, ``unk_id``, ``whitespace_id``, ``lowercase``,
    ``vocab_size``.
    """

    def __init__(self, tokenizer: Any, *, lowercase: bool | None = None) -> None:
        get_vocab = getattr(tokenizer, "get_vocab", None)
        if get_vocab is None:
            raise ValueError(
                f"expected a Hugging Face tokenizer with get_vocab(), got {type(tokenizer).__name__}"
            )
        vocab: dict[str, int] = dict(get_vocab())
        if not vocab:
            raise ValueError("expected a tokenizer with a non-empty vocabulary, got an empty one")
        ids = {}
        for role in ("cls", "sep", "pad", "unk"):
            token = getattr(tokenizer, f"{role}_token", None)
            if token is None or str(token) not in vocab:
                raise ValueError(
                    f"expected the tokenizer's {role}_token in its vocabulary, got {token!r} "
                    f"(vocabulary of {len(vocab)} tokens)"
                )
            ids[role] = vocab[str(token)]
        self.cls_id: int = ids["cls"]
        self.sep_id: int = ids["sep"]
        self.pad_id: int = ids["pad"]
        self.unk_id: int = ids["unk"]
        self.whitespace_id: int = vocab.get(WHITESPACE_TOKEN, self.unk_id)
        if lowercase is None:
            uncased_vocab = not any(c in vocab for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            lowercase = _tokenizer_lowercases(tokenizer) or uncased_vocab
        self.lowercase: bool = bool(lowercase)
        self.vocab_size: int = max(vocab.values()) + 1
        self._vocab = vocab
        self._id_to_token: dict[int, str] = {i: t for t, i in vocab.items()}
        self._cache = _CharCache(self._resolve)
        # Pre-compute every single-character vocabulary entry (step 1 of the lookup).
        for token, idx in vocab.items():
            if len(token) == 1:
                self._cache[token] = idx

    # ------------------------------------------------------------------ lookup

    def _candidates(self, ch: str) -> list[str]:
        cands = [ch]
        if self.lowercase:
            cands.append(ch.lower())
        nfkc = unicodedata.normalize("NFKC", ch)
        if len(nfkc) == 1:
            cands.append(nfkc)
            if self.lowercase:
                cands.append(nfkc.lower())
        if self.lowercase:
            stripped = "".join(c for c in unicodedata.normalize("NFD", nfkc) if not unicodedata.combining(c))
            if len(stripped) == 1:
                cands.append(stripped.lower())
        if ch in PUNCT_FOLD:
            cands.append(PUNCT_FOLD[ch])
        return list(dict.fromkeys(cands))  # de-duplicated, order kept

    def _resolve(self, ch: str) -> int:
        if len(ch) != 1:
            raise ValueError(f"expected a single character, got {ch!r}")
        cands = self._candidates(ch)
        for cand in cands:
            if cand in self._vocab:
                return self._vocab[cand]
        if ch.isspace():
            return self.whitespace_id
        for cand in cands:
            if "##" + cand in self._vocab:
                return self._vocab["##" + cand]
        return self.unk_id

    # ------------------------------------------------------------------ public API

    def char_ids(self, text: str) -> list[int]:
        """One vocabulary id per character of ``text``: ``len(result) == len(text)``."""
        if not isinstance(text, str):
            raise ValueError(f"expected a str, got {type(text).__name__}")
        return list(map(self._cache.__getitem__, text))

    def tokens(self, text: str) -> list[str]:
        """The vocabulary token used for each character of ``text`` (for debugging and the UI)."""
        return [self._id_to_token.get(i, "[UNK]") for i in self.char_ids(text)]

    def encode(self, texts: Sequence[str], max_chars: int | None = None) -> dict[str, torch.Tensor]:
        """Batch ``texts`` as ``[CLS] chars [SEP]`` + right padding.

        Returns ``input_ids`` (B, T) and ``attention_mask`` (B, T), both ``torch.long``, with
        ``T = max(len(text)) + 2``; character ``i`` of text ``b`` sits at ``input_ids[b, i + 1]``.
        A text longer than ``max_chars`` raises ``ValueError`` (window long texts before encoding).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"expected a sequence of str, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("expected at least one text, got an empty sequence")
        if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 0):
            raise ValueError(f"expected max_chars to be a non-negative int or None, got {max_chars!r}")
        rows = []
        for b, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"expected texts[{b}] to be a str, got {type(text).__name__}")
            if max_chars is not None and len(text) > max_chars:
                raise ValueError(
                    f"texts[{b}] has {len(text)} characters, more than max_chars={max_chars}; "
                    "split long texts into windows before encoding"
                )
            rows.append(self.char_ids(text))
        B, T = len(rows), max(len(r) for r in rows) + 2
        input_ids = np.full((B, T), self.pad_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros((B, T), dtype=np.int64)  # (B, T)
        for b, row in enumerate(rows):
            n = len(row)
            input_ids[b, 0] = self.cls_id
            input_ids[b, 1 : n + 1] = row
            input_ids[b, n + 1] = self.sep_id
            attention_mask[b, : n + 2] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),  # (B, T)
            "attention_mask": torch.from_numpy(attention_mask),  # (B, T)
        }

    def unk_count(self, text: str) -> int:
        """How many characters of ``text`` map to the unknown token."""
        return sum(1 for i in self.char_ids(text) if i == self.unk_id)
