"""Convert TF1 BERT / ALBERT / ELECTRA / RoFormer checkpoints into ordinary Hugging Face model folders.

Google's releases (``chinese_L-12_H-768_A-12``, the RoBERTa-wwm releases in BERT layout, Google-format
ALBERT) ship ``bert_config.json`` / ``albert_config.json``, ``*.ckpt.index`` + ``*.ckpt.data-*`` and
``vocab.txt``. :func:`convert_checkpoint` reads them with :mod:`ner_core.artifacts.tf.reader` (no TensorFlow)
and writes a folder that ``AutoModel`` / ``AutoTokenizer`` load like any other encoder:
``config.json``, ``model.safetensors``, ``vocab.txt`` + tokenizer files, and ``conversion_report.json``.
The other layouts bert4keras loads (factorised-embedding BERT, ELECTRA, RoFormer, brightmart's albert_zh)
are told apart, or refused, by :mod:`ner_core.artifacts.tf.families`.

How the variables map: the expected TensorFlow names are generated from the config (one entry per HF
parameter of the model written), so every encoder parameter is filled from exactly one variable (or, for
the few a family does not store, computed: RoFormer's sinusoidal table, brightmart's projected word
embeddings), or the conversion fails naming what is missing. Dense kernels are stored ``(in, out)`` by
TensorFlow and ``(out, in)`` by torch: they are transposed. Optimiser slots (``adam_m`` / ``adam_v``),
``global_step`` and the pre-training heads (``cls/...``) are skipped and counted; a variable under
``bert/`` that the config does not account for (more layers than ``num_hidden_layers``, say) is an error.

Why ``gelu_new`` by default: Google's model code computes GELU with the tanh approximation, which HF calls
``gelu_new``, and the seed's users ran it so; HF's ``gelu`` is the exact erf form, which bert4keras
computes by default. ``gelu="erf"`` (``--gelu erf``) writes that instead; the report records which.

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

from ner_core.artifacts.tf.families import (
    FAMILIES,
    Computed,
    Family,
    computed_parameters,
    detect_layout,
    expected_variables,
    resolve_family,
    skip_kind,
)
from ner_core.artifacts.tf.reader import MAX_INDEX_BYTES, TFCheckpoint, TFCheckpointError, resolve_prefix
from ner_core.settings import settings

__all__ = [
    "CONVERTER_VERSION",
    "FAMILIES",
    "GELU",
    "TFCheckpointError",
    "ConversionReport",
    "CheckpointFile",
    "cached_conversion",
    "convert_checkpoint",
    "detect_layout",
    "expected_variables",
    "is_tf_checkpoint",
]

CONVERTER_VERSION = 1  # part of the cache key: bump when the output of a conversion changes
MAX_CONFIG_BYTES = 4 << 20  # a bert_config.json is a few hundred bytes
MAX_VOCAB_BYTES = 32 << 20  # a 250k-token vocab.txt is about 3 MB
REPORT = "conversion_report.json"
WEIGHTS = "model.safetensors"

#: Google ``hidden_act`` -> HF name (Google's ``gelu`` is the tanh approximation).
#: ``--gelu`` -> the HF name of a config's ``gelu``: Google's BERT / ALBERT / ELECTRA code computes the tanh
#: approximation (HF ``gelu_new``), bert4keras the exact erf form (HF ``gelu``)
GELU = {"tanh": "gelu_new", "erf": "gelu"}
#: the config's ``hidden_act`` -> HF name, ``gelu`` decided by ``--gelu``
_ACTIVATIONS = {
    "gelu": None,
    "gelu_new": "gelu_new",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
#: RoFormer's positions are computed up to ``max_position_embeddings``: no variable bounds the table
MAX_ROTARY_POSITIONS = 1 << 17


@dataclass(frozen=True)
class CheckpointFile:
    path: str
    bytes: int
    sha256: str


@dataclass
class ConversionReport:
    """What :func:`convert_checkpoint` read, mapped, skipped and wrote (also ``conversion_report.json``)."""

    model_type: str  # the HF model written: "bert", "albert", "electra", "roformer"
    out_dir: str
    checkpoint: str  # the prefix
    sources: list[CheckpointFile]
    mapped: int  # checkpoint variables written as HF parameters
    parameters: int  # numbers in the written weights
    skipped: dict[str, int]  # kind -> count: optimizer_slots, global_step, pretraining_heads, other (pooler)
    skipped_other: list[str] = field(default_factory=list)  # names of the "other" ones
    hidden_act: str = ""  # HF activation written (the config's gelu -> gelu_new or gelu, by ``gelu``)
    do_lower_case: bool = True
    converter_version: int = CONVERTER_VERSION
    seconds: float = 0.0
    gelu: str = "tanh"  # how the config's "gelu" was read: "tanh" (Google's code) or "erf" (bert4keras)
    family: str = ""  # the checkpoint's layout (families.Family.name); "" in reports of earlier versions
    computed: dict[str, str] = field(default_factory=dict)  # HF parameter -> what it was computed from

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConversionReport:
        data = dict(data)
        data["sources"] = [CheckpointFile(**s) for s in data.get("sources", [])]
        return cls(**data)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()) if n) or "none"
        family = f" ({self.family})" if self.family and self.family != self.model_type else ""
        return (
            f"converted {self.model_type}{family} checkpoint {self.checkpoint} -> {self.out_dir}\n"
            f"  {self.mapped} variables mapped ({self.parameters:,} parameters), skipped: {skipped}\n"
            f"  hidden_act {self.hidden_act} (GELU: --gelu {self.gelu}), lower-case {self.do_lower_case}, "
            f"{self.seconds:.1f} s"
        )


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


def _load_config(path: Path) -> dict[str, Any]:
    """The config file as a JSON object (capped in size); its fields are checked by :func:`_check_config`."""
    try:
        raw = json.loads(_small_file(path, MAX_CONFIG_BYTES, "config file").decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TFCheckpointError(f"{path}: not a readable JSON config: {exc}") from None
    if not isinstance(raw, dict):
        raise TFCheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _check_config(raw: dict[str, Any], path: Path, fam: Family, ckpt: TFCheckpoint) -> None:
    required = (*_REQUIRED, "embedding_size") if fam.factorised else _REQUIRED
    missing = [k for k in required if not isinstance(raw.get(k), int) or raw[k] <= 0]
    if missing:
        ends = ("mapping_in/kernel", "project/kernel")
        projection = next((n for n in ckpt.names() if n.endswith(ends)), "")
        why = f" (the checkpoint has {projection}: factorised embeddings)" if projection else ""
        why = why or " (a Google config?)"
        raise TFCheckpointError(f"{path}: missing or non-positive {', '.join(missing)}{why}")
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise TFCheckpointError(f"{path}: hidden_act {act!r} is not one of {sorted(_ACTIVATIONS)}")
    if raw["hidden_size"] % raw["num_attention_heads"]:
        raise TFCheckpointError(
            f"{path}: hidden_size {raw['hidden_size']} is not divisible by "
            f"num_attention_heads {raw['num_attention_heads']}"
        )
    positions = raw.get("max_position_embeddings", 512)
    if fam.name == "roformer" and not (isinstance(positions, int) and 0 < positions <= MAX_ROTARY_POSITIONS):
        raise TFCheckpointError(
            f"{path}: max_position_embeddings {positions!r}: RoFormer's positions are computed, up to "
            f"{MAX_ROTARY_POSITIONS:,}"
        )


def _hf_config(raw: dict[str, Any], fam: Family, gelu: str):
    """The HF config for a Google / bert4keras config dict (already checked) and the family to write."""
    from transformers import AlbertConfig, BertConfig, ElectraConfig, RoFormerConfig

    act = _ACTIVATIONS[raw.get("hidden_act", "gelu")] or GELU[gelu]
    common = {k: raw[k] for k in _REQUIRED}
    common.update(
        hidden_act=act,
        hidden_dropout_prob=float(raw.get("hidden_dropout_prob", 0.1)),
        attention_probs_dropout_prob=float(raw.get("attention_probs_dropout_prob", 0.1)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
        type_vocab_size=int(raw.get("type_vocab_size", 2)),
        initializer_range=float(raw.get("initializer_range", 0.02)),
        layer_norm_eps=1e-12,  # Google's layer_norm, bert4keras' LayerNormalization
        pad_token_id=0,
    )
    embedding_size = raw["embedding_size"] if fam.factorised else raw["hidden_size"]
    if fam.model_type == "bert":
        return BertConfig(architectures=["BertModel"], **common)
    if fam.model_type == "electra":
        return ElectraConfig(architectures=["ElectraModel"], embedding_size=embedding_size, **common)
    if fam.model_type == "roformer":
        return RoFormerConfig(
            architectures=["RoFormerModel"], embedding_size=embedding_size, rotary_value=False, **common
        )
    groups, inner = int(raw.get("num_hidden_groups", 1)), int(raw.get("inner_group_num", 1))
    if fam.name == "bert_factorised":  # one group of one layer per BERT layer
        groups, inner = raw["num_hidden_layers"], 1
    elif fam.name == "brightmart_albert":  # one shared layer
        groups, inner = 1, 1
    return AlbertConfig(
        architectures=["AlbertModel"],
        embedding_size=embedding_size,
        num_hidden_groups=groups,
        inner_group_num=inner,
        classifier_dropout_prob=float(raw.get("hidden_dropout_prob", 0.1)),
        bos_token_id=None,
        eos_token_id=None,
        **common,
    )


def _bound_counts(raw: dict[str, Any], ckpt: TFCheckpoint, path: Path, fam: Family) -> None:
    """The config's layers (BERT) or groups x inner groups (ALBERT) each need variables of their own, so
    there can be no more of them than the checkpoint has variables: checked before the name table and the
    meta-device model are made for them (a million layers would cost minutes and gigabytes of objects)."""
    fields: tuple[str, ...] = ("num_hidden_layers",)
    if fam.name in ("albert", "brightmart_albert"):  # shared layers: their count costs no objects
        fields = ("num_hidden_groups", "inner_group_num") if fam.name == "albert" else ()
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
    from transformers import AlbertModel, BertModel, ElectraModel, RoFormerModel

    classes = {"albert": AlbertModel, "bert": BertModel, "electra": ElectraModel, "roformer": RoFormerModel}
    try:
        with torch.device("meta"):
            model = classes[hf_config.model_type](hf_config)
    except (RuntimeError, ValueError, OverflowError, TypeError) as exc:  # sizes past int64, say
        why = " ".join(str(exc).split())[:200]
        raise TFCheckpointError(f"{config_path}: describes a model that cannot be built: {why}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------- mapping


@dataclass
class _Plan:
    """Which variable fills which HF parameter, in the order they are written."""

    items: list[tuple[str, str | None, bool, tuple[int, ...]]]  # (hf name, tf name or None, transpose, shape)
    skipped: dict[str, int]
    skipped_other: list[str]
    computed: dict[str, Computed] = field(default_factory=dict)  # hf name -> how (tf name None)


def _skipped(ckpt: TFCheckpoint, used: set[str], fam: Family, hf_config, config_path: Path):
    """Count the checkpoint's variables the model does not use, by kind; refuse an encoder variable the
    config does not account for."""
    skipped = {"optimizer_slots": 0, "global_step": 0, "pretraining_heads": 0, "other": 0}
    other: list[str] = []
    for name in ckpt.names():
        if name in used:
            continue
        kind = skip_kind(name, fam)
        if kind is None:
            raise TFCheckpointError(
                f"{ckpt.index_path}: variable {name} is not part of the {hf_config.model_type} model that "
                f"{config_path.name} describes (its num_hidden_layers / num_hidden_groups disagree?)"
            )
        skipped[kind] = skipped.get(kind, 0) + 1
        if kind == "other":
            other.append(name)
    return skipped, other


def _check_computed(ckpt: TFCheckpoint, computed: dict[str, Computed], shapes, config_path: Path) -> None:
    """A parameter computed from variables (brightmart's word embeddings: a product of two) has the shape
    the config gives, and is not far larger than what the checkpoint really holds: two small factors may
    declare a product of any size."""
    held = sum(e.size for e in ckpt.entries.values())
    for hf_name, how in computed.items():
        missing = [n for n in how.sources if n not in ckpt]
        if missing:
            raise TFCheckpointError(f"{ckpt.index_path}: no variable {missing[0]} (for {hf_name})")
        if len(how.sources) == 2:
            (a, inner), (inner_b, b) = (ckpt.entries[n].shape[:2] for n in how.sources)
            if (a, b) != shapes[hf_name] or inner != inner_b:
                raise TFCheckpointError(
                    f"{ckpt.index_path}: {how.what} is ({a}, {inner}) @ ({inner_b}, {b}), but "
                    f"{config_path.name} gives {shapes[hf_name]}"
                )
        size = math.prod(shapes[hf_name]) * 4
        if size > 4 * held + (1 << 20):
            raise TFCheckpointError(
                f"{ckpt.index_path}: {hf_name} ({how.what}) would be {size:,} bytes, more than 4 times the "
                f"checkpoint's {held:,}; not converted"
            )


def _plan(ckpt: TFCheckpoint, hf_config, config_path: Path, fam: Family) -> _Plan:
    shapes = _expected_shapes(hf_config, config_path)
    wanted = expected_variables(hf_config, fam)
    computed = computed_parameters(fam, shapes)
    unfilled = sorted(set(shapes) - {hf for hf, _ in wanted.values()} - set(computed))
    if unfilled:  # the name table and transformers' model disagree: a bug here, not bad input
        raise RuntimeError(f"no TensorFlow variable is known for HF parameters {unfilled}")
    used = set(wanted) | {n for how in computed.values() for n in how.sources}
    skipped, other = _skipped(ckpt, used, fam, hf_config, config_path)
    read_as = f" (read as {fam.label})" if fam.name not in ("bert", "albert") else ""
    items: list[tuple[str, str | None, bool, tuple[int, ...]]] = []
    for tf_name, (hf_name, transpose) in wanted.items():
        if tf_name not in ckpt:
            raise TFCheckpointError(
                f"{ckpt.index_path}: no variable {tf_name} (for {hf_name}); the checkpoint does not match "
                f"{config_path.name}{read_as}"
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
    _check_computed(ckpt, computed, shapes, config_path)
    items += [(hf_name, None, False, shapes[hf_name]) for hf_name in computed]
    return _Plan(items=items, skipped=skipped, skipped_other=other, computed=computed)


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
        for hf_name, tf_name, transpose, _ in plan.items:
            arr = plan.computed[hf_name].make(ckpt.read) if tf_name is None else ckpt.read(tf_name)
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


def _family(ckpt: TFCheckpoint, config_file: Path, albert, family) -> tuple[Family, dict[str, Any]]:
    """The family to convert and the config dict, checked against each other and the checkpoint."""
    raw = _load_config(config_file)
    fam = resolve_family(
        ckpt.names(), raw, albert=albert, family=family, where=ckpt.index_path, config_path=config_file
    )
    _check_config(raw, config_file, fam, ckpt)
    return fam, raw


def _convert_into(
    tmp: Path, config_file: Path, ckpt: TFCheckpoint, vocab_file: Path, albert, family, gelu: str
) -> ConversionReport:
    t0 = time.perf_counter()
    fam, raw = _family(ckpt, config_file, albert, family)
    _bound_counts(raw, ckpt, config_file, fam)
    ckpt.check_shards()  # before anything is built or written: what the index declares is really there
    hf_config = _hf_config(raw, fam, gelu)
    plan = _plan(ckpt, hf_config, config_file, fam)
    tmp.mkdir(parents=True)
    do_lower_case = _write_tokenizer(tmp, vocab_file, hf_config.vocab_size, hf_config.max_position_embeddings)
    hf_config.save_pretrained(str(tmp))
    parameters = _write_safetensors(tmp / WEIGHTS, ckpt, plan)
    return ConversionReport(
        model_type=hf_config.model_type,
        out_dir="",
        checkpoint=str(ckpt.prefix),
        sources=_sources(ckpt, config_file, vocab_file),
        mapped=len(plan.items) - len(plan.computed) + sum(len(c.sources) for c in plan.computed.values()),
        parameters=parameters,
        skipped=plan.skipped,
        skipped_other=plan.skipped_other,
        hidden_act=hf_config.hidden_act,
        do_lower_case=do_lower_case,
        seconds=round(time.perf_counter() - t0, 3),
        gelu=gelu,
        family=fam.name,
        computed={k: c.what for k, c in plan.computed.items()},
    )


def _check_gelu(gelu: str) -> str:
    if gelu not in GELU:
        raise TFCheckpointError(f"gelu {gelu!r} is not one of {', '.join(GELU)}")
    return gelu


def convert_checkpoint(
    config_file: str | os.PathLike,
    checkpoint: str | os.PathLike,
    vocab_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    albert: bool | None = None,
    family: str | None = None,
    gelu: str = "tanh",
) -> ConversionReport:
    """Convert a TF1 BERT / ALBERT / ELECTRA / RoFormer checkpoint into the HF model folder ``out_dir``.

    ``checkpoint`` is the prefix (``.../bert_model.ckpt``), its ``.index`` file or its folder. ``albert``:
    True / False says whether the checkpoint must be Google's ALBERT (a mismatch is an error), None
    detects it; ``family`` (one of :data:`FAMILIES`) names the family where the variable names cannot
    (RoFormer) and is checked against them. ``gelu``: how the config's ``gelu`` is read, ``tanh`` (Google's
    code, the seed's users) or ``erf`` (bert4keras' default). The folder
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
        config, vocab = Path(config_file).expanduser(), Path(vocab_file).expanduser()
        report = _convert_into(tmp, config, ckpt, vocab, albert, family, _check_gelu(gelu))
        report.out_dir = str(out)
        (tmp / REPORT).write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, out)  # an empty existing out_dir is replaced too
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _cache_key(config_file: Path, checkpoint: str | os.PathLike, vocab_file: Path, gelu: str) -> str:
    """The ``.index`` (every tensor's checksum), config and vocabulary bytes, the converter version, and
    ``gelu`` when it is not the default (so the folders cached before ``--gelu`` existed keep their keys)."""
    index = Path(f"{resolve_prefix(checkpoint)}.index")
    h = hashlib.sha256(f"tf-convert-v{CONVERTER_VERSION}\0".encode())
    if gelu != "tanh":
        h.update(f"gelu={gelu}\0".encode())
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
    family: str | None = None,
    gelu: str = "tanh",
    cache_root: Path | None = None,
) -> Path:
    """The converted HF folder for a TF checkpoint: converted once, then reused.

    The cache key hashes the ``.index`` file (which holds every tensor's checksum), the config and the
    vocabulary; a folder is reused only when complete (its report written last, then renamed into
    place). ``albert`` and ``family`` are checked against the checkpoint on every call, cached or not;
    ``gelu`` is part of the key.
    """
    config_file, vocab_file = Path(config_file).expanduser(), Path(vocab_file).expanduser()
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = _cache_key(config_file, checkpoint, vocab_file, _check_gelu(gelu))
    target = root / key
    found = _cached(root, key, legacy=cache_root is None)
    if found is not None:
        if albert is not None or family is not None:
            _family(TFCheckpoint(checkpoint), config_file, albert, family)  # raises the one-line mismatch
        return found
    try:
        convert_checkpoint(
            config_file, checkpoint, vocab_file, target, albert=albert, family=family, gelu=gelu
        )
    except (TFCheckpointError, OSError):
        if (target / REPORT).is_file():  # another process finished the same conversion first
            return target
        raise
    return target
