"""Convert Google TF1 BERT / ALBERT checkpoints into ordinary Hugging Face model folders.

Google's releases (``chinese_L-12_H-768_A-12``, the RoBERTa-wwm releases in BERT layout, Google-format
ALBERT) ship ``bert_config.json`` / ``albert_config.json``, ``*.ckpt.index`` + ``*.ckpt.data-*`` and
``vocab.txt``. :func:`convert_checkpoint` reads them with :mod:`ner_core.artifacts.tf.reader` (no TensorFlow)
and writes a folder that ``AutoModel`` / ``AutoTokenizer`` load like any other encoder:
``config.json``, ``model.safetensors``, ``vocab.txt`` + tokenizer files, and ``conversion_report.json``.

How the variables map: the expected TensorFlow names are generated from the config (one entry per HF
parameter of ``BertModel`` / ``AlbertModel``), so every encoder parameter is filled from exactly one
variable, or the conversion fails naming what is missing. Dense kernels are stored ``(in, out)`` by
TensorFlow and ``(out, in)`` by torch: they are transposed. Optimiser slots (``adam_m`` / ``adam_v``),
``global_step`` and the pre-training heads (``cls/...``) are skipped and counted; a variable under
``bert/`` that the config does not account for (more layers than ``num_hidden_layers``, say) is an error.

Why ``gelu_new``: Google's model code computes GELU with the tanh approximation, which HF calls
``gelu_new``; HF's ``gelu`` is the exact erf form and its outputs drift from the released model's.

Why the BERT tokenizer for ALBERT too: Google's Chinese ALBERT uses the WordPiece ``vocab.txt``; an
``albert`` config would make ``AutoTokenizer`` look for a SentencePiece model, so the tokenizer files
name ``BertTokenizer`` explicitly.

Memory: tensors are read memory-mapped one at a time and streamed into the safetensors file, so the
conversion holds about one tensor (plus its transpose) at a time, never a randomly initialised model.

Untrusted input: a checkpoint may come from anywhere, so before the model is even built on the meta device
the config's layer and group counts must be fillable by the checkpoint's variables, and every data shard
must hold as data the bytes its index declares (:meth:`TFCheckpoint.check_shards`: exact sizes, no sparse
holes); the output is then never larger than what the checkpoint really holds. The config and the
vocabulary are read only up to :data:`MAX_CONFIG_BYTES` / :data:`MAX_VOCAB_BYTES`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ner_core.artifacts.tf.reader import MAX_INDEX_BYTES, TFCheckpoint, TFCheckpointError, resolve_prefix
from ner_core.settings import settings

__all__ = [
    "CONVERTER_VERSION",
    "TFCheckpointError",
    "ConversionReport",
    "CheckpointFile",
    "cached_conversion",
    "convert_checkpoint",
    "detect_layout",
    "is_tf_checkpoint",
]

CONVERTER_VERSION = 1  # part of the cache key: bump when the output of a conversion changes
MAX_CONFIG_BYTES = 4 << 20  # a bert_config.json is a few hundred bytes
MAX_VOCAB_BYTES = 32 << 20  # a 250k-token vocab.txt is about 3 MB
REPORT = "conversion_report.json"
WEIGHTS = "model.safetensors"

#: Google ``hidden_act`` -> HF name (Google's ``gelu`` is the tanh approximation).
_ACTIVATIONS = {
    "gelu": "gelu_new",
    "gelu_new": "gelu_new",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

# per-layer variables: TF suffix under the layer scope -> HF suffix under the layer module
_BERT_LAYER = {
    "attention/self/query": "attention.self.query",
    "attention/self/key": "attention.self.key",
    "attention/self/value": "attention.self.value",
    "attention/output/dense": "attention.output.dense",
    "attention/output/LayerNorm": "attention.output.LayerNorm",
    "intermediate/dense": "intermediate.dense",
    "output/dense": "output.dense",
    "output/LayerNorm": "output.LayerNorm",
}
_ALBERT_LAYER = {
    "attention_1/self/query": "attention.query",
    "attention_1/self/key": "attention.key",
    "attention_1/self/value": "attention.value",
    "attention_1/output/dense": "attention.dense",
    "LayerNorm": "attention.LayerNorm",
    "ffn_1/intermediate/dense": "ffn",
    "ffn_1/intermediate/output/dense": "ffn_output",
    "LayerNorm_1": "full_layer_layer_norm",
}
_DENSE_LEAVES = (("kernel", "weight", True), ("bias", "bias", False))
_NORM_LEAVES = (("gamma", "weight", False), ("beta", "bias", False))
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


@dataclass(frozen=True)
class CheckpointFile:
    path: str
    bytes: int
    sha256: str


@dataclass
class ConversionReport:
    """What :func:`convert_checkpoint` read, mapped, skipped and wrote (also ``conversion_report.json``)."""

    model_type: str  # "bert" or "albert"
    out_dir: str
    checkpoint: str  # the prefix
    sources: list[CheckpointFile]
    mapped: int  # checkpoint variables written as HF parameters
    parameters: int  # numbers in the written weights
    skipped: dict[str, int]  # kind -> count: optimizer_slots, global_step, pretraining_heads, other
    skipped_other: list[str] = field(default_factory=list)  # names of the "other" ones
    hidden_act: str = ""  # HF activation written (Google's gelu -> gelu_new)
    do_lower_case: bool = True
    converter_version: int = CONVERTER_VERSION
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConversionReport:
        data = dict(data)
        data["sources"] = [CheckpointFile(**s) for s in data.get("sources", [])]
        return cls(**data)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()) if n) or "none"
        return (
            f"converted {self.model_type} checkpoint {self.checkpoint} -> {self.out_dir}\n"
            f"  {self.mapped} variables mapped ({self.parameters:,} parameters), skipped: {skipped}\n"
            f"  hidden_act {self.hidden_act}, lower-case {self.do_lower_case}, {self.seconds:.1f} s"
        )


# ---------------------------------------------------------------------------------------- layout


def detect_layout(names: list[str] | set[str]) -> str:
    """``"bert"``, ``"albert"`` (Google's layout), ``"brightmart_albert"`` or ``"unknown"`` from the
    variable names of a checkpoint."""
    names = set(names)
    if any("/layer_shared/" in n or n.startswith("bert/embeddings/word_embeddings_2") for n in names):
        return "brightmart_albert"
    if any(
        n.startswith(("bert/encoder/transformer/", "bert/encoder/embedding_hidden_mapping_in")) for n in names
    ):
        return "albert"
    if any(n.startswith("bert/encoder/layer_") for n in names):
        return "bert"
    return "unknown"


def _check_layout(ckpt: TFCheckpoint, albert: bool | None) -> bool:
    """Whether the checkpoint is ALBERT, checked against the caller's ``albert`` flag."""
    where = ckpt.index_path
    layout = detect_layout(ckpt.names())
    if layout == "brightmart_albert":
        raise TFCheckpointError(
            f"{where}: brightmart's albert_zh layout (variables such as bert/encoder/layer_shared/... or "
            "bert/embeddings/word_embeddings_2), not Google's ALBERT; only Google-format ALBERT is supported"
        )
    if layout == "unknown":
        sample = ", ".join(ckpt.names()[:3]) or "no variables"
        raise TFCheckpointError(f"{where}: no Google BERT or ALBERT encoder variables (found {sample}, ...)")
    if albert is True and layout == "bert":
        raise TFCheckpointError(
            f"{where}: holds BERT variables (bert/encoder/layer_N/...), but ALBERT was asked for (-albert): "
            "drop -albert, or give an ALBERT checkpoint"
        )
    if albert is False and layout == "albert":
        raise TFCheckpointError(
            f"{where}: holds Google ALBERT variables (bert/encoder/transformer/group_0/...), but -albert "
            "was not given: add -albert (the seed's flag for ALBERT checkpoints)"
        )
    return layout == "albert"


# ---------------------------------------------------------------------------------------- config


def _small_file(path: Path, cap: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``cap`` bytes (refused in one line otherwise)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise TFCheckpointError(f"{path}: {what} not found") from None
    if not path.is_file():
        raise TFCheckpointError(f"{path}: {what} is not a regular file")
    if size > cap:
        raise TFCheckpointError(f"{path}: {size:,} bytes, more than the {cap >> 20} MiB a {what} may have")
    with open(path, "rb") as fh:
        return fh.read(cap + 1)


def _read_config(path: Path, is_albert: bool) -> dict[str, Any]:
    try:
        raw = json.loads(_small_file(path, MAX_CONFIG_BYTES, "config file").decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TFCheckpointError(f"{path}: not a readable JSON config: {exc}") from None
    if not isinstance(raw, dict):
        raise TFCheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    required = (*_REQUIRED, "embedding_size") if is_albert else _REQUIRED
    missing = [k for k in required if not isinstance(raw.get(k), int) or raw[k] <= 0]
    if missing:
        raise TFCheckpointError(f"{path}: missing or non-positive {', '.join(missing)} (a Google config?)")
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise TFCheckpointError(f"{path}: hidden_act {act!r} is not one of {sorted(_ACTIVATIONS)}")
    if raw["hidden_size"] % raw["num_attention_heads"]:
        raise TFCheckpointError(
            f"{path}: hidden_size {raw['hidden_size']} is not divisible by "
            f"num_attention_heads {raw['num_attention_heads']}"
        )
    return raw


def _hf_config(raw: dict[str, Any], is_albert: bool):
    """The HF ``BertConfig`` / ``AlbertConfig`` for a Google config dict (already checked)."""
    from transformers import AlbertConfig, BertConfig

    common = {k: raw[k] for k in _REQUIRED}
    common.update(
        hidden_act=_ACTIVATIONS[raw.get("hidden_act", "gelu")],
        hidden_dropout_prob=float(raw.get("hidden_dropout_prob", 0.1)),
        attention_probs_dropout_prob=float(raw.get("attention_probs_dropout_prob", 0.1)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
        type_vocab_size=int(raw.get("type_vocab_size", 2)),
        initializer_range=float(raw.get("initializer_range", 0.02)),
        layer_norm_eps=1e-12,  # Google's layer_norm
        pad_token_id=0,
    )
    if not is_albert:
        return BertConfig(architectures=["BertModel"], **common)
    return AlbertConfig(
        architectures=["AlbertModel"],
        embedding_size=raw["embedding_size"],
        num_hidden_groups=int(raw.get("num_hidden_groups", 1)),
        inner_group_num=int(raw.get("inner_group_num", 1)),
        classifier_dropout_prob=float(raw.get("hidden_dropout_prob", 0.1)),
        bos_token_id=None,
        eos_token_id=None,
        **common,
    )


def _bound_counts(raw: dict[str, Any], ckpt: TFCheckpoint, path: Path, is_albert: bool) -> None:
    """The config's layers (BERT) or groups x inner groups (ALBERT) each need variables of their own, so
    there can be no more of them than the checkpoint has variables: checked before the name table and the
    meta-device model are made for them (a million layers would cost minutes and gigabytes of objects)."""
    fields = ("num_hidden_groups", "inner_group_num") if is_albert else ("num_hidden_layers",)
    counts = {f: raw.get(f, 1) for f in fields}
    bad = [f for f, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise TFCheckpointError(f"{path}: {', '.join(bad)} must be a positive integer")
    if math.prod(counts.values()) > len(ckpt.entries):
        shown = " x ".join(f"{f} {v:,}" for f, v in counts.items())
        raise TFCheckpointError(
            f"{path}: asks for {shown} layers, more than the checkpoint's {len(ckpt.entries):,} variables "
            f"could fill ({ckpt.index_path.name}); the config does not belong to this checkpoint"
        )


def _expected_shapes(hf_config, config_path: Path) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape, from a model built on the meta device (no memory, no init)."""
    import torch
    from transformers import AlbertModel, BertModel

    cls = AlbertModel if hf_config.model_type == "albert" else BertModel
    try:
        with torch.device("meta"):
            model = cls(hf_config)
    except (RuntimeError, ValueError, OverflowError, TypeError) as exc:  # sizes past int64, say
        why = " ".join(str(exc).split())[:200]
        raise TFCheckpointError(f"{config_path}: describes a model that cannot be built: {why}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------- mapping


def _leaves(tf_scope: str, hf_module: str, leaves) -> dict[str, tuple[str, bool]]:
    return {f"{tf_scope}/{tf}": (f"{hf_module}.{hf}", transpose) for tf, hf, transpose in leaves}


def _scope(tf_scope: str, hf_module: str) -> dict[str, tuple[str, bool]]:
    """One dense or LayerNorm scope (told apart by the last TF name part)."""
    is_norm = tf_scope.rsplit("/", 1)[-1].startswith("LayerNorm")
    return _leaves(tf_scope, hf_module, _NORM_LEAVES if is_norm else _DENSE_LEAVES)


def expected_variables(hf_config) -> dict[str, tuple[str, bool]]:
    """TF variable name -> (HF parameter name, transpose?) for every parameter of the HF model."""
    out: dict[str, tuple[str, bool]] = {}
    for emb in _EMBEDDINGS:
        out[f"bert/embeddings/{emb}"] = (f"embeddings.{emb}.weight", False)
    out.update(_scope("bert/embeddings/LayerNorm", "embeddings.LayerNorm"))
    if hf_config.model_type == "albert":
        out.update(_scope("bert/encoder/embedding_hidden_mapping_in", "encoder.embedding_hidden_mapping_in"))
        for g in range(hf_config.num_hidden_groups):
            for i in range(hf_config.inner_group_num):
                tf = f"bert/encoder/transformer/group_{g}/inner_group_{i}"
                hf = f"encoder.albert_layer_groups.{g}.albert_layers.{i}"
                for tf_part, hf_part in _ALBERT_LAYER.items():
                    out.update(_scope(f"{tf}/{tf_part}", f"{hf}.{hf_part}"))
        out.update(_scope("bert/pooler/dense", "pooler"))
    else:
        for n in range(hf_config.num_hidden_layers):
            for tf_part, hf_part in _BERT_LAYER.items():
                out.update(_scope(f"bert/encoder/layer_{n}/{tf_part}", f"encoder.layer.{n}.{hf_part}"))
        out.update(_scope("bert/pooler/dense", "pooler.dense"))
    return out


def _skip_kind(name: str) -> str | None:
    """Why a checkpoint variable is not part of the encoder, or None when it should be."""
    if name.endswith(("/adam_m", "/adam_v", "/Adam", "/Adam_1")):
        return "optimizer_slots"
    if name == "global_step":
        return "global_step"
    if name.startswith("cls/"):
        return "pretraining_heads"
    if name.startswith("bert/"):
        return None
    return "other"


@dataclass
class _Plan:
    """Which variable fills which HF parameter, in the order they are written."""

    items: list[tuple[str, str, bool, tuple[int, ...]]]  # (hf name, tf name, transpose, hf shape)
    skipped: dict[str, int]
    skipped_other: list[str]


def _plan(ckpt: TFCheckpoint, hf_config, config_path: Path) -> _Plan:
    shapes = _expected_shapes(hf_config, config_path)
    wanted = expected_variables(hf_config)
    unfilled = sorted(set(shapes) - {hf for hf, _ in wanted.values()})
    if unfilled:  # the name table and transformers' model disagree: a bug here, not bad input
        raise RuntimeError(f"no TensorFlow variable is known for HF parameters {unfilled}")
    skipped = {"optimizer_slots": 0, "global_step": 0, "pretraining_heads": 0, "other": 0}
    other: list[str] = []
    for name in ckpt.names():
        if name in wanted:
            continue
        kind = _skip_kind(name)
        if kind is None:
            raise TFCheckpointError(
                f"{ckpt.index_path}: variable {name} is not part of the {hf_config.model_type} model that "
                f"{config_path.name} describes (its num_hidden_layers / num_hidden_groups disagree?)"
            )
        skipped[kind] += 1
        if kind == "other":
            other.append(name)
    items = []
    for tf_name, (hf_name, transpose) in wanted.items():
        if tf_name not in ckpt:
            raise TFCheckpointError(
                f"{ckpt.index_path}: no variable {tf_name} (for {hf_name}); the checkpoint does not match "
                f"{config_path.name}"
            )
        hf_shape = shapes[hf_name]
        tf_shape = ckpt.entries[tf_name].shape
        want_tf = hf_shape[::-1] if transpose else hf_shape
        if tf_shape != want_tf:
            raise TFCheckpointError(
                f"{ckpt.index_path}: variable {tf_name} has shape {tf_shape}, but {config_path.name} gives "
                f"{want_tf}"
            )
        items.append((hf_name, tf_name, transpose, hf_shape))
    return _Plan(items=items, skipped=skipped, skipped_other=other)


# ---------------------------------------------------------------------------------------- writing


def _write_safetensors(path: Path, ckpt: TFCheckpoint, plan: _Plan) -> int:
    """Stream every planned tensor (float32) into ``path`` in safetensors format, one at a time; return
    the number of parameters written. Written by hand so no tensor outlives its own write."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for hf_name, _, _, shape in plan.items:
        n = math.prod(shape) * 4  # exact (numpy's int64 product wraps around)
        header[hf_name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _hf_name, tf_name, transpose, _ in plan.items:
            arr = ckpt.read(tf_name)
            if arr.dtype.kind != "f":
                raise TFCheckpointError(
                    f"{ckpt.index_path}: variable {tf_name} holds {arr.dtype}, not floats"
                )
            out = arr.T if transpose else arr
            out = np.ascontiguousarray(out, dtype=np.float32)  # a copy only when transposed or cast
            f.write(memoryview(out).cast("B"))
            del arr, out
    return offset // 4


def _read_vocab(path: Path, vocab_size: int) -> list[str]:
    try:
        tokens = _small_file(path, MAX_VOCAB_BYTES, "vocabulary file").decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TFCheckpointError(f"{path}: not a readable UTF-8 vocabulary: {exc}") from None
    while tokens and not tokens[-1].strip():
        tokens.pop()
    if not tokens:
        raise TFCheckpointError(f"{path}: empty vocabulary")
    if len(tokens) > vocab_size:
        raise TFCheckpointError(
            f"{path}: {len(tokens)} tokens, more than the config's vocab_size {vocab_size}"
        )
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]") if t not in tokens]
    if missing:
        raise TFCheckpointError(f"{path}: no {', '.join(missing)} token (not a BERT WordPiece vocab.txt?)")
    return tokens


def _write_tokenizer(out: Path, vocab_file: Path, vocab_size: int, max_positions: int) -> bool:
    """Copy ``vocab.txt`` and save a BERT WordPiece tokenizer over it; return its ``do_lower_case``.

    Lower-casing is on unless the vocabulary is cased (holds most upper-case ASCII letters), as Google's
    ``uncased`` and Chinese releases expect."""
    from transformers import BertTokenizerFast

    tokens = _read_vocab(vocab_file, vocab_size)
    do_lower_case = sum(c in set(tokens) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ") < 13
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...): load the folder holding vocab.txt
    tok = BertTokenizerFast.from_pretrained(
        str(out), do_lower_case=do_lower_case, tokenize_chinese_chars=True, model_max_length=max_positions
    )
    if len(tok) != len(tokens):
        raise TFCheckpointError(
            f"{vocab_file}: the tokenizer built from it has {len(tok)} tokens, not {len(tokens)}"
        )
    tok.save_pretrained(str(out))
    return do_lower_case


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sources(ckpt: TFCheckpoint, config_file: Path, vocab_file: Path) -> list[CheckpointFile]:
    shards = sorted({ckpt.shard(e) for e in ckpt.entries.values()})
    files = [config_file, ckpt.index_path, *shards, vocab_file]
    return [CheckpointFile(path=str(p), bytes=p.stat().st_size, sha256=_sha256(p)) for p in files]


# ---------------------------------------------------------------------------------------- public API


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a TensorFlow checkpoint: a prefix with a ``.index`` (or with data shards
    but no index, so converting it reports the missing index), an ``.index`` file, or a folder holding a
    ``*.index`` file. Decided by file names only; a damaged checkpoint is still one."""
    p = Path(path).expanduser()
    if p.is_dir():
        return any(p.glob("*.index"))
    if p.name.endswith(".index") and p.is_file():
        return True
    if re.search(r"\.data-\d{5}-of-\d{5}$", p.name) and p.is_file():
        return True
    if Path(f"{p}.index").is_file():
        return True
    return p.parent.is_dir() and any(p.parent.glob(f"{glob.escape(p.name)}.data-*-of-*"))


def _convert_into(
    tmp: Path, config_file: Path, ckpt: TFCheckpoint, vocab_file: Path, albert
) -> ConversionReport:
    t0 = time.perf_counter()
    is_albert = _check_layout(ckpt, albert)
    raw = _read_config(config_file, is_albert)
    _bound_counts(raw, ckpt, config_file, is_albert)
    ckpt.check_shards()  # before anything is built or written: what the index declares is really there
    hf_config = _hf_config(raw, is_albert)
    plan = _plan(ckpt, hf_config, config_file)
    tmp.mkdir(parents=True)
    do_lower_case = _write_tokenizer(tmp, vocab_file, hf_config.vocab_size, hf_config.max_position_embeddings)
    hf_config.save_pretrained(str(tmp))
    parameters = _write_safetensors(tmp / WEIGHTS, ckpt, plan)
    return ConversionReport(
        model_type=hf_config.model_type,
        out_dir="",
        checkpoint=str(ckpt.prefix),
        sources=_sources(ckpt, config_file, vocab_file),
        mapped=len(plan.items),
        parameters=parameters,
        skipped=plan.skipped,
        skipped_other=plan.skipped_other,
        hidden_act=hf_config.hidden_act,
        do_lower_case=do_lower_case,
        seconds=round(time.perf_counter() - t0, 3),
    )


def convert_checkpoint(
    config_file: str | os.PathLike,
    checkpoint: str | os.PathLike,
    vocab_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    albert: bool | None = None,
) -> ConversionReport:
    """Convert a Google TF1 BERT / ALBERT checkpoint into the HF model folder ``out_dir``.

    ``checkpoint`` is the prefix (``.../bert_model.ckpt``), its ``.index`` file or its folder. ``albert``:
    True / False says what the checkpoint must be (a mismatch is an error), None detects it. The folder
    is written to a temporary sibling and renamed into place, so ``out_dir`` is complete or absent; an
    existing non-empty ``out_dir`` is refused. Raises :class:`TFCheckpointError` (one line) on bad input.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TFCheckpointError(f"{out}: already exists and is not empty; choose another --out or remove it")
    ckpt = TFCheckpoint(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        report = _convert_into(
            tmp, Path(config_file).expanduser(), ckpt, Path(vocab_file).expanduser(), albert
        )
        report.out_dir = str(out)
        (tmp / REPORT).write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, out)  # an empty existing out_dir is replaced too
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _cache_key(config_file: Path, checkpoint: str | os.PathLike, vocab_file: Path) -> str:
    """The ``.index`` (every tensor's checksum), config and vocabulary bytes, and the converter version."""
    index = Path(f"{resolve_prefix(checkpoint)}.index")
    h = hashlib.sha256(f"tf-convert-v{CONVERTER_VERSION}\0".encode())
    files = (
        (index, MAX_INDEX_BYTES, "checkpoint index"),
        (config_file, MAX_CONFIG_BYTES, "config file"),
        (vocab_file, MAX_VOCAB_BYTES, "vocabulary file"),
    )
    for path, cap, what in files:
        data = _small_file(path, cap, what)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def default_cache_root() -> Path:
    """``converted/`` under the settings' one cache root (``$NER_CACHE_DIR``, else ``~/.cache/zh-ner``)."""
    return settings().converted_dir


#: where conversions were cached before the cache roots became one: still read (the key hashes the inputs,
#: so a complete folder there is the same conversion), never written
LEGACY_CACHE_ROOT = Path.home() / ".cache" / "ner" / "converted"


def _cached(root: Path, key: str, legacy: bool) -> Path | None:
    """The complete cached folder for ``key`` under ``root`` (or, with ``legacy``, the one an earlier version
    left under :data:`LEGACY_CACHE_ROOT`); ``None`` when there is none."""
    for base in (root, *([LEGACY_CACHE_ROOT] if legacy else [])):
        if (base / key / REPORT).is_file():
            return base / key
    return None


def cached_conversion(
    config_file: str | os.PathLike,
    checkpoint: str | os.PathLike,
    vocab_file: str | os.PathLike,
    *,
    albert: bool | None = None,
    cache_root: Path | None = None,
) -> Path:
    """The converted HF folder for a TF checkpoint: converted once, then reused.

    The cache key hashes the ``.index`` file (which holds every tensor's checksum), the config and the
    vocabulary; a folder is reused only when complete (its report written last, then renamed into
    place). The ``albert`` flag is checked against the checkpoint on every call, cached or not.
    """
    config_file, vocab_file = Path(config_file).expanduser(), Path(vocab_file).expanduser()
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = _cache_key(config_file, checkpoint, vocab_file)
    target = root / key
    found = _cached(root, key, legacy=cache_root is None)
    if found is not None:
        target = found
        report = json.loads((target / REPORT).read_text(encoding="utf-8"))
        detected = report.get("model_type")
        if albert is not None and (detected == "albert") != albert:
            _check_layout(TFCheckpoint(checkpoint), albert)  # raises the one-line mismatch
        return target
    try:
        convert_checkpoint(config_file, checkpoint, vocab_file, target, albert=albert)
    except (TFCheckpointError, OSError):
        if (target / REPORT).is_file():  # another process finished the same conversion first
            return target
        raise
    return target
