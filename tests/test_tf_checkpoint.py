"""Google TF1 checkpoints read without TensorFlow, converted to HF folders, proved on what TensorFlow wrote.

The fixtures in ../shared/fixtures/tf-checkpoints/ (see its README) were saved by TensorFlow from Google's
own BERT and ALBERT model code, with the outputs that code computed; the tests skip when they are absent.
Damaged checkpoints are made from copies in tmp_path (the fixtures are read-only).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.tf_bundle_writer import write_bundle
from ner_core.artifacts.tf import convert as tf_convert
from ner_core.artifacts.tf.convert import cached_conversion, convert_checkpoint, is_tf_checkpoint
from ner_core.artifacts.tf.reader import TFCheckpoint, TFCheckpointError, mask_crc, resolve_prefix
from tests.conftest import REPO

FIXTURES = REPO.parent / "shared" / "fixtures" / "tf-checkpoints"
KINDS = {  # fixture folder, config file, checkpoint prefix name, albert
    "bert": ("tf-bert-tiny", "bert_config.json", "bert_model.ckpt", False),
    "albert": ("tf-albert-tiny", "albert_config.json", "albert_model.ckpt", True),
}
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"{FIXTURES} is absent")
pytestmark = needs_fixtures


def _fixture(kind: str) -> tuple[Path, Path, Path, Path, bool]:
    folder, config, prefix, albert = KINDS[kind]
    d = FIXTURES / folder
    return d, d / config, d / prefix, d / "vocab.txt", albert


def _copy(kind: str, tmp_path: Path) -> tuple[Path, Path, Path, bool]:
    """A writable copy of a fixture: (config, prefix, vocab, albert)."""
    d, config, prefix, vocab, albert = _fixture(kind)
    dst = tmp_path / d.name
    shutil.copytree(d, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst / config.name, dst / prefix.name, dst / vocab.name, albert


def _model_variables(ckpt: TFCheckpoint) -> list[str]:
    return [n for n in ckpt.names() if not n.endswith(("/adam_m", "/adam_v")) and n != "global_step"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for kind in KINDS:
        _, config, prefix, vocab, albert = _fixture(kind)
        out[kind] = tmp_path_factory.mktemp("converted") / kind
        convert_checkpoint(config, prefix, vocab, out[kind], albert=albert)
    return out


def _max_diffs(model, kind: str) -> tuple[float, float]:
    """Largest |difference| of the sequence output on real tokens and of the pooled output."""
    d = _fixture(kind)[0]
    e = np.load(d / "expected.npz")
    model.eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(e["input_ids"]).long(),
            attention_mask=torch.from_numpy(e["input_mask"]).long(),
        )
    real = e["input_mask"] == 1
    seq = np.abs(out.last_hidden_state.numpy()[real] - e["sequence_output"][real]).max()
    pooled = np.abs(out.pooler_output.numpy() - e["pooled_output"]).max()
    return float(seq), float(pooled)


# ------------------------------------------------------------------------------------------------ reader


@pytest.mark.parametrize("kind", KINDS)
def test_reader_lists_the_variables_tensorflow_saved(kind):
    d, _, prefix, _, _ = _fixture(kind)
    ckpt = TFCheckpoint(prefix)
    expected = json.loads((d / "expected.json").read_text(encoding="utf-8"))["variables"]
    assert _model_variables(ckpt) == expected
    assert ckpt.header.num_shards == 1 and not ckpt.header.big_endian
    slots = [n for n in ckpt.names() if n.endswith(("/adam_m", "/adam_v"))]
    assert len(slots) == 2 * len(expected)
    step = ckpt.read("global_step")
    assert step.dtype == np.int64 and step.shape == ()
    emb = ckpt.read("bert/embeddings/word_embeddings")
    assert emb.shape == (
        129,
        json.loads(_fixture(kind)[1].read_text())["embedding_size" if kind == "albert" else "hidden_size"],
    )
    assert emb.dtype == np.float32 and 0.1 < float(emb.std()) < 0.3  # N(0, 0.2), not zeros or garbage


def test_prefix_resolution_accepts_prefix_index_file_and_folder(tmp_path):
    d, _, prefix, _, _ = _fixture("bert")
    assert resolve_prefix(prefix) == prefix
    assert resolve_prefix(f"{prefix}.index") == prefix
    assert resolve_prefix(d) == prefix  # via the `checkpoint` file
    assert resolve_prefix(f"{prefix}.data-00000-of-00001") == prefix
    config, copy, _, _ = _copy("bert", tmp_path)
    (copy.parent / "checkpoint").unlink()
    assert resolve_prefix(copy.parent) == copy  # the only *.index
    shutil.copy(f"{copy}.index", copy.parent / "other.ckpt.index")
    with pytest.raises(TFCheckpointError, match="several checkpoints"):
        resolve_prefix(copy.parent)
    assert is_tf_checkpoint(prefix) and is_tf_checkpoint(f"{prefix}.index") and is_tf_checkpoint(d)
    assert not is_tf_checkpoint(config) and not is_tf_checkpoint(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize("kind", KINDS)
def test_converted_model_reproduces_googles_outputs(converted, kind):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(converted[kind])
    assert type(model).__name__ == ("AlbertModel" if kind == "albert" else "BertModel")
    assert model.config.hidden_act == "gelu_new"
    seq, pooled = _max_diffs(model, kind)
    assert seq <= 1e-5 and pooled <= 1e-5, (seq, pooled)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_gelu_would_drift(converted, kind):
    """The reason for gelu_new: the same weights with HF's exact (erf) GELU miss the 1e-5 bound."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(converted[kind], hidden_act="gelu")
    assert model.config.hidden_act == "gelu"
    seq, pooled = _max_diffs(model, kind)
    assert max(seq, pooled) > 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_converted_tokenizer_with_char_alignment_gives_the_expected_ids(converted, kind):
    from ner_core.config import EncoderConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.model.encoder import load_encoder

    model, tokenizer = load_encoder(EncoderConfig(name=str(converted[kind])))  # the platform's own loading
    assert type(model).__name__ == ("AlbertModel" if kind == "albert" else "BertModel")
    d = _fixture(kind)[0]
    texts = json.loads((d / "expected.json").read_text(encoding="utf-8"))["texts"]
    expected = np.load(d / "expected.npz")["input_ids"]
    ids = CharAligner(tokenizer).encode(texts)["input_ids"].numpy()
    width = ids.shape[1]
    assert (ids == expected[:, :width]).all()
    assert (expected[:, width:] == 0).all()  # the rest is padding


@pytest.mark.parametrize("kind", KINDS)
def test_conversion_report_counts_what_was_mapped_and_skipped(converted, kind):
    report = json.loads((converted[kind] / "conversion_report.json").read_text(encoding="utf-8"))
    d, _, prefix, _, _ = _fixture(kind)
    n_model = len(json.loads((d / "expected.json").read_text(encoding="utf-8"))["variables"])
    assert report["model_type"] == kind
    assert report["skipped"] == {
        "optimizer_slots": 2 * n_model,
        "global_step": 1,
        "pretraining_heads": 7,
        "other": 0,
    }
    assert report["mapped"] == n_model - 7
    sources = {Path(s["path"]).name: s for s in report["sources"]}
    assert sources[f"{prefix.name}.index"]["bytes"] == Path(f"{prefix}.index").stat().st_size
    assert all(len(s["sha256"]) == 64 for s in sources.values())
    assert {p.name for p in converted[kind].iterdir()} >= {"config.json", "model.safetensors", "vocab.txt"}


# ------------------------------------------------------------------------------------------------ bad input


def _damage_truncate(config, prefix):
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-100])


def _damage_flip(config, prefix):
    data = Path(f"{prefix}.data-00000-of-00001")
    entry = TFCheckpoint(prefix).entries["bert/encoder/embedding_hidden_mapping_in/kernel"]
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x10
    data.write_bytes(bytes(raw))


def _damage_index_byte(config, prefix):
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0x01
    index.write_bytes(bytes(raw))


BAD = {
    "truncated data shard": (_damage_truncate, r"truncated data shard"),
    "one flipped byte": (
        _damage_flip,
        r"checksum mismatch in variable bert/encoder/embedding_hidden_mapping_in/kernel",
    ),
    "flipped index byte": (_damage_index_byte, r"\.index: checksum mismatch in the data block"),
    "missing .index": (lambda c, p: Path(f"{p}.index").unlink(), r"\.index: missing"),
    "missing shard": (lambda c, p: Path(f"{p}.data-00000-of-00001").unlink(), r"missing data shard"),
    "config sizes disagree": (
        lambda c, p: c.write_text(
            c.read_text().replace('"intermediate_size": 64', '"intermediate_size": 48')
        ),
        r"variable bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel has shape "
        r"\(32, 64\), but albert_config\.json gives \(32, 48\)",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoint_gives_one_clear_line(tmp_path, case):
    damage, pattern = BAD[case]
    config, prefix, vocab, albert = _copy("albert", tmp_path)
    damage(config, prefix)
    out = tmp_path / "out"
    with pytest.raises(TFCheckpointError, match=pattern) as info:
        convert_checkpoint(config, prefix, vocab, out, albert=albert)
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written


def test_a_prefix_that_names_nothing(tmp_path):
    _, config, _, vocab, _ = _fixture("bert")
    with pytest.raises(TFCheckpointError, match=r"nope\.ckpt: names no TensorFlow checkpoint"):
        convert_checkpoint(config, tmp_path / "nope.ckpt", vocab, tmp_path / "out")


@pytest.mark.parametrize(
    ("layers", "pattern"),
    [
        (1, r"variable bert/encoder/layer_1/\S+ is not part of the bert model that bert_config\.json"),
        (3, r"no variable bert/encoder/layer_2/\S+ \(for encoder\.layer\.2\.\S+\)"),
    ],
)
def test_config_layer_count_must_match_the_checkpoint(tmp_path, layers, pattern):
    config, prefix, vocab, _ = _copy("bert", tmp_path)
    config.write_text(config.read_text().replace('"num_hidden_layers": 2', f'"num_hidden_layers": {layers}'))
    with pytest.raises(TFCheckpointError, match=pattern):
        convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=False)


@pytest.mark.parametrize(
    ("kind", "flag", "pattern"), [("bert", True, "drop -albert"), ("albert", False, "add -albert")]
)
def test_albert_flag_mismatch_is_explained(tmp_path, kind, flag, pattern):
    _, config, prefix, vocab, _ = _fixture(kind)
    with pytest.raises(TFCheckpointError, match=pattern) as info:
        convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=flag)
    assert "\n" not in str(info.value)


def test_albert_none_detects_the_layout(tmp_path):
    _, config, prefix, vocab, _ = _fixture("albert")
    assert convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=None).model_type == "albert"


def test_brightmart_albert_layout_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    names = [
        "bert/embeddings/word_embeddings",
        "bert/embeddings/word_embeddings_2",
        "bert/encoder/layer_shared/attention/self/query/kernel",
        "global_step",
    ]
    prefix = write_bundle(
        tmp_path / "albert_model.ckpt",
        [(n, rng.standard_normal((4, 4)).astype(np.float32)) for n in names[:-1]]
        + [("global_step", np.int64(7))],
    )
    _, config, _, vocab, _ = _fixture("albert")
    with pytest.raises(TFCheckpointError, match="brightmart's albert_zh layout"):
        convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=True)


def test_partitioned_variables_are_refused_by_name(tmp_path, monkeypatch):
    import bench.tf_bundle_writer as writer

    real = writer.encode_entry
    monkeypatch.setattr(
        writer, "encode_entry", lambda *a: real(*a) + b"\x3a\x00"
    )  # one empty slice (field 7)
    prefix = write_bundle(tmp_path / "p.ckpt", [("w/part", np.zeros(3, np.float32))])
    with pytest.raises(TFCheckpointError, match=r"p\.ckpt\.index: variable w/part is partitioned"):
        TFCheckpoint(prefix).read("w/part")


def test_existing_out_dir_is_refused(tmp_path):
    _, config, prefix, vocab, _ = _fixture("bert")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(TFCheckpointError, match="already exists and is not empty"):
        convert_checkpoint(config, prefix, vocab, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ cache


def test_cache_converts_once_and_keys_on_the_index(tmp_path, monkeypatch):
    config, prefix, vocab, albert = _copy("bert", tmp_path)
    root = tmp_path / "cache"
    first = cached_conversion(config, prefix, vocab, albert=albert, cache_root=root)
    assert (first / "model.safetensors").is_file()

    def no_second_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(tf_convert, "convert_checkpoint", no_second_conversion)
    assert cached_conversion(config, prefix.parent, vocab, albert=albert, cache_root=root) == first
    with pytest.raises(TFCheckpointError, match="drop -albert"):  # the flag is still checked when cached
        cached_conversion(config, prefix, vocab, albert=True, cache_root=root)
    monkeypatch.undo()

    ckpt = TFCheckpoint(prefix)  # the same variables, one value changed: a new .index (new checksum)
    order = sorted(ckpt.entries.values(), key=lambda e: e.offset)
    tensors = [(e.name, np.array(ckpt.read(e.name))) for e in order]
    tensors = [(n, np.int64(8) if n == "global_step" else a) for n, a in tensors]
    del ckpt
    write_bundle(prefix, tensors)
    second = cached_conversion(config, prefix, vocab, albert=albert, cache_root=root)
    assert second != first and (second / "conversion_report.json").is_file()
    assert sorted(p.name for p in root.iterdir()) == sorted([first.name, second.name])  # no temp left


def test_cache_root_defaults_to_ner_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NER_CACHE_DIR", str(tmp_path))
    assert tf_convert.default_cache_root() == tmp_path / "converted"
    monkeypatch.delenv("NER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # one cache root with the C kernels (ner_core.settings): not ~/.cache/ner any more
    assert tf_convert.default_cache_root() == tmp_path / "xdg" / "zh-ner" / "converted"


def test_a_conversion_cached_by_earlier_code_under_the_old_root_is_reused(tmp_path, monkeypatch):
    """Before the cache roots became one, conversions went to ~/.cache/ner/converted: found there, still
    reused (the key hashes the inputs), and nothing is converted again."""
    _, config, prefix, vocab, albert = _fixture("bert")
    old_root = tmp_path / "home" / ".cache" / "ner" / "converted"
    earlier = cached_conversion(config, prefix, vocab, albert=albert, cache_root=old_root)
    monkeypatch.setattr(tf_convert, "LEGACY_CACHE_ROOT", old_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NER_CACHE_DIR", raising=False)
    monkeypatch.setattr(tf_convert, "convert_checkpoint", lambda *a, **k: pytest.fail("converted again"))
    assert cached_conversion(config, prefix, vocab, albert=albert) == earlier
    assert not (tmp_path / "xdg").exists()  # read from the old root, nothing written to the new one


# ------------------------------------------------------------------------------------------------ CLI


def _parser():
    from app.commands import convert_checkpoint as convert

    p = argparse.ArgumentParser(prog="ner")
    convert.add_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_convert_checkpoint_end_to_end(tmp_path, capsys):
    _, config, prefix, vocab, _ = _fixture("albert")
    out = tmp_path / "albert-hf"
    argv = ["convert-checkpoint", "-bert_config", str(config), "-bert_checkpoint", str(prefix)]
    args = _parser().parse_args([*argv, "-bert_vocab", str(vocab), "-albert", "--out", str(out)])
    assert args.func(args) == 0
    assert "25 variables mapped" in capsys.readouterr().out
    from transformers import AutoModel

    assert _max_diffs(AutoModel.from_pretrained(out), "albert")[0] <= 1e-5
    capsys.readouterr()  # transformers' loading progress

    args = _parser().parse_args([*argv, "-bert_vocab", str(vocab), "--out", str(tmp_path / "x")])
    assert args.func(args) == 2  # no -albert for an ALBERT checkpoint
    err = capsys.readouterr().err.strip()
    assert err.startswith("ner convert-checkpoint: error: ") and "add -albert" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ writer


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_writer_reproduces_what_tensorflow_wrote(tmp_path, kind):
    """The bench's writer, given a fixture's tensors in the fixture's order, writes the same bytes."""
    _, _, prefix, _, _ = _fixture(kind)
    ckpt = TFCheckpoint(prefix)
    order = sorted(ckpt.entries.values(), key=lambda e: e.offset)
    ours = write_bundle(tmp_path / prefix.name, ((e.name, ckpt.read(e.name)) for e in order))
    data = ".data-00000-of-00001"
    assert Path(f"{ours}{data}").read_bytes() == Path(f"{prefix}{data}").read_bytes()
    assert TFCheckpoint(ours).entries == ckpt.entries  # the reader parses the same entries
    assert Path(f"{ours}.index").read_bytes() == Path(f"{prefix}.index").read_bytes()


def test_writer_splits_large_indexes_into_blocks_the_reader_follows(tmp_path):
    tensors = [(f"v/{i:04d}", np.full(2, i, np.float32)) for i in range(300)]
    prefix = write_bundle(tmp_path / "m.ckpt", tensors, block_size=1024)
    ckpt = TFCheckpoint(prefix)
    assert ckpt.names() == [n for n, _ in tensors]
    assert float(ckpt.read("v/0299")[1]) == 299.0
    assert mask_crc(0) == 0xA282EAD8


def test_compressed_blocks_and_big_endian_bundles_are_refused(tmp_path, monkeypatch):
    import struct

    import bench.tf_bundle_writer as writer
    from ner_core.artifacts.tf.reader import masked_crc32c

    prefix = write_bundle(tmp_path / "c.ckpt", [("w", np.zeros(3, np.float32))])
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    # the data block starts at byte 0; its trailer is the first type byte followed by a matching CRC
    n = next(
        i
        for i in range(len(raw) - 5)
        if raw[i + 1 : i + 5] == struct.pack("<I", masked_crc32c(bytes(raw[: i + 1])))
    )
    raw[n] = 1  # "snappy", with a valid CRC, so the compression is what gets refused
    raw[n + 1 : n + 5] = struct.pack("<I", masked_crc32c(bytes(raw[: n + 1])))
    index.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"c\.ckpt\.index: data block at byte 0 is snappy-compressed"):
        TFCheckpoint(prefix)

    monkeypatch.setattr(writer, "encode_header", lambda: b"\x08\x01\x10\x01")  # endianness = BIG
    prefix = write_bundle(tmp_path / "b.ckpt", [("w", np.zeros(3, np.float32))])
    with pytest.raises(TFCheckpointError, match=r"b\.ckpt\.index: a big-endian bundle"):
        TFCheckpoint(prefix)


# ------------------------------------------------------------------------------------------------ untrusted


def _zeros_crc(n: int) -> int:
    """The masked CRC32C of ``n`` zero bytes (what a hole reads as), computed 1 MiB at a time."""
    import google_crc32c

    crc, zeros = 0, bytes(1 << 20)
    while n:
        k = min(n, len(zeros))
        crc, n = google_crc32c.extend(crc, zeros[:k]), n - k
    return mask_crc(crc)


def _rewrite_index(prefix: Path, entries: dict[str, tuple]) -> None:
    """Write ``prefix.index`` anew: one shard, ``entries`` name -> (dtype code, shape, offset, size, crc)."""
    import bench.tf_bundle_writer as writer

    pairs = [(b"", writer.encode_header())]
    pairs += sorted(
        (n.encode(), writer.encode_entry(d, s, 0, o, z, c)) for n, (d, s, o, z, c) in entries.items()
    )
    writer._write_table(Path(f"{prefix}.index"), pairs, writer.BLOCK_SIZE)


def _declare_word_embeddings(tmp_path: Path, rows: int, *, sparse: bool) -> tuple[Path, Path, Path]:
    """A copy of the BERT fixture whose word embeddings (and config) say ``rows`` rows: with ``sparse``, the
    rows are a hole appended to the shard (``truncate``), with a checksum that matches the zeros it reads
    as; otherwise the index keeps the embeddings' real offset and size. (config, prefix, vocab)."""
    config, prefix, vocab, _ = _copy("bert", tmp_path)
    ckpt = TFCheckpoint(prefix)
    entries = {n: (e.dtype_code, e.shape, e.offset, e.size, e.crc32c) for n, e in ckpt.entries.items()}
    raw = json.loads(config.read_text())
    name, hidden = "bert/embeddings/word_embeddings", raw["hidden_size"]
    shard = Path(f"{prefix}.data-00000-of-00001")
    if sparse:
        end, size = shard.stat().st_size, rows * hidden * 4
        entries[name] = (1, (rows, hidden), end, size, _zeros_crc(size))
        with open(shard, "r+b") as fh:
            fh.truncate(end + size)
    else:
        entries[name] = (1, (rows, hidden), *entries[name][2:])
    _rewrite_index(prefix, entries)
    config.write_text(json.dumps(raw | {"vocab_size": rows}))
    return config, prefix, vocab


def _cli_error(capsys, config, prefix, vocab, out) -> str:
    argv = ["convert-checkpoint", "-bert_config", str(config), "-bert_checkpoint", str(prefix)]
    args = _parser().parse_args([*argv, "-bert_vocab", str(vocab), "--out", str(out)])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ner convert-checkpoint: error: ") and "\n" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))  # nothing (half-)written
    return err


def test_a_sparse_shard_is_refused_before_anything_is_written(tmp_path, capsys):
    """A shard whose tensors lie in a hole (an 88 KiB file truncated to 1 GB, say) passes a size check; it
    is measured by its data, so the conversion refuses before writing (it wrote the declared size)."""
    config, prefix, vocab = _declare_word_embeddings(tmp_path, 100_000, sparse=True)
    shard = Path(f"{prefix}.data-00000-of-00001")
    if shard.stat().st_blocks * 512 >= shard.stat().st_size:
        pytest.skip("this file system stores no holes")
    with pytest.raises(TFCheckpointError) as info:
        convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=False)
    msg = str(info.value)
    assert msg.startswith(f"{shard}: holds ") and "\n" not in msg
    assert "variable bert/embeddings/word_embeddings declares 12,800,000 bytes of which" in msg
    assert "are holes" in msg and not (tmp_path / "out").exists()
    err = _cli_error(capsys, config, prefix, vocab, tmp_path / "o")
    assert "bert/embeddings/word_embeddings declares" in err
    with pytest.raises(TFCheckpointError, match="are holes"):  # the reader alone refuses it too
        TFCheckpoint(prefix).read("bert/embeddings/word_embeddings")


def test_zero_runs_stored_as_holes_still_convert(tmp_path):
    """Adam slots saved before the first step are zeros, which sparse-aware copies store as holes (the
    shared fixtures are such files): a checkpoint copied so still converts."""
    _, config, prefix, vocab, _ = _fixture("bert")
    dst = tmp_path / "sparse"
    dst.mkdir()
    for src in prefix.parent.iterdir():
        with open(src, "rb") as fi, open(dst / src.name, "wb") as fo:
            while block := fi.read(4096):  # as cp --sparse=always: seek over zero blocks
                fo.seek(len(block), 1) if not block.strip(b"\0") else fo.write(block)
            fo.truncate()
    shard = dst / f"{prefix.name}.data-00000-of-00001"
    from ner_core.artifacts.tf.reader import data_segments

    if sum(b - a for a, b in data_segments(shard)) >= shard.stat().st_size:
        pytest.skip("this file system stores no holes")
    report = convert_checkpoint(dst / config.name, dst / prefix.name, dst / vocab.name, tmp_path / "out")
    assert report.mapped == 39 and (tmp_path / "out" / "model.safetensors").is_file()


def test_a_shape_past_int64_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """numpy's int64 product of (2**62 + 1, 4) wraps around to 4: the exact size is compared instead."""
    import bench.tf_bundle_writer as writer

    real = writer.encode_entry
    monkeypatch.setattr(writer, "encode_entry", lambda code, shape, *a: real(code, (2**62 + 1, 4), *a))
    prefix = write_bundle(tmp_path / "p.ckpt", [("w", np.zeros(4, np.float32))])
    monkeypatch.undo()
    pattern = (
        r"p\.ckpt\.index: variable w: shape \(4611686018427387905, 4\) of float32 needs "
        r"73,786,976,294,838,206,480 bytes, the index gives 16$"
    )
    with pytest.raises(TFCheckpointError, match=pattern):
        TFCheckpoint(prefix).read("w")
    # the same through the converter (config and checkpoint agreeing on 2**62 + 1 rows): one line, exit 2
    config, prefix, vocab = _declare_word_embeddings(tmp_path / "c", 2**62 + 1, sparse=False)
    err = _cli_error(capsys, config, prefix, vocab, tmp_path / "out")
    assert "variable bert/embeddings/word_embeddings: shape (4611686018427387905, 32) of float32 needs" in err


def test_a_config_with_more_layers_than_the_checkpoint_can_fill_is_refused_at_once(tmp_path):
    config, prefix, vocab, _ = _copy("bert", tmp_path)
    config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1000000'))
    with pytest.raises(TFCheckpointError, match=r"bert_config\.json: asks for num_hidden_layers 1,000,000"):
        convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=False)


@pytest.mark.parametrize(
    ("name", "size", "pattern"),
    [
        ("bert_model.ckpt.index", 300 << 20, r"more than the 256 MiB a checkpoint index may have"),
        ("bert_config.json", 5 << 20, r"more than the 4 MiB a config file may have"),
        ("vocab.txt", 40 << 20, r"more than the 32 MiB a vocabulary file may have"),
    ],
)
def test_oversized_side_files_are_refused_before_they_are_read(tmp_path, name, size, pattern):
    config, prefix, vocab, _ = _copy("bert", tmp_path)
    with open(prefix.parent / name, "r+b") as fh:
        fh.truncate(size)  # a hole: cheap to make, as large as it says when read
    with pytest.raises(TFCheckpointError, match=rf"{name}: {size:,} bytes, {pattern}"):
        convert_checkpoint(config, prefix, vocab, tmp_path / "out", albert=False)


def test_a_checkpoint_file_naming_a_prefix_elsewhere_stays_in_its_folder(tmp_path):
    """TensorFlow writes the training machine's path into ``checkpoint``: a folder never sends the reader to
    a checkpoint outside it; the name is looked for inside the folder."""
    _, mine, _, _ = _copy("bert", tmp_path / "a")
    _, other, _, _ = _copy("albert", tmp_path / "b")
    for named in (str(other), f"../../b/{other.parent.name}/{other.name}"):
        (mine.parent / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
        assert resolve_prefix(mine.parent) == mine
    (mine.parent / "checkpoint").write_text(f'model_checkpoint_path: "/train/run-7/{mine.name}"\n')
    assert resolve_prefix(mine.parent) == mine
