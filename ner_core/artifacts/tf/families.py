"""Which encoder family a TF1 checkpoint holds, and which HF parameter each of its variables fills.

bert4keras loads more than Google's BERT and ALBERT, so the seed's users hold these checkpoints too:

- ``bert``: Google's BERT (and RoBERTa-wwm in BERT layout): ``bert/encoder/layer_N/...``.
- ``bert_factorised``: BERT with factorised embeddings (``embedding_size`` < ``hidden_size``, a
  ``bert/encoder/embedding_hidden_mapping_in`` projection and one set of weights per layer; several small
  Chinese RoBERTa / SimBERT releases). Written as HF ALBERT with one hidden group per layer: ALBERT's
  embeddings are the same (word + position + segment, LayerNorm over ``embedding_size``, then the
  projection, as bert4keras computes them) and an ALBERT layer is a post-LayerNorm BERT layer under other
  names. ``BertModel`` has no projection, so it cannot hold this layout.
- ``albert``: Google's ALBERT, shared ``bert/encoder/transformer/group_N/inner_group_M/...``.
- ``electra``: ELECTRA discriminators (Google's code, the ``electra/`` prefix, an optional
  ``electra/embeddings_project``); the generator and the pre-training heads are skipped. HF
  ``ElectraModel`` has no pooler, so ``electra/pooler/...`` (when present) is skipped too.
- ``roformer``: RoFormer (v1): BERT's variable names without ``bert/embeddings/position_embeddings``
  (rotary positions, computed, not stored). NEZHA has the same names, so the two are told apart by the
  config (NEZHA's ``max_relative_position`` / ``use_relative_position``; RoFormer's ``model_type``) or
  by the caller's ``family``; with neither, the checkpoint is refused rather than guessed. HF
  ``RoFormerModel`` has no pooler either; its sinusoidal table is computed here as transformers does.

- ``brightmart_albert``: brightmart's albert_zh (``bert/embeddings/word_embeddings_2``, one
  ``bert/encoder/layer_shared/...`` BERT layer used by every layer). Its code projects the word embeddings
  (``word_embeddings @ word_embeddings_2``, no bias) *before* adding the hidden-size position and segment
  embeddings and normalising, which HF ALBERT's embeddings (normalise, then project) cannot do in that
  order; the product is linear, so it is computed once (as bojone/albert_zh converts these checkpoints for
  bert4keras) and written as ALBERT with ``embedding_size = hidden_size``, one shared group and an
  identity ``embedding_hidden_mapping_in``: the same arithmetic, the sharing kept. Its pre-LayerNorm
  variant (config ``ln_type: preln``) has no HF model and is refused.

Refused, each naming the variables or config keys that identify it: NEZHA (transformers 5 has no NEZHA
model), RoFormer-V2 (no biases, no LayerNorm parameters: no HF model), brightmart's pre-LN albert_zh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ner_core.artifacts.tf.reader import TFCheckpointError

__all__ = [
    "FAMILIES",
    "Computed",
    "Family",
    "computed_parameters",
    "detect_layout",
    "expected_variables",
    "resolve_family",
    "rotary_table",
]

#: what a caller may name (``--family``); ``bert`` covers factorised BERT too, as in bert4keras
FAMILIES = ("bert", "albert", "roformer", "electra", "nezha")
_MAPPING_IN = "bert/encoder/embedding_hidden_mapping_in"
_ELECTRA_PROJECT = "electra/embeddings_project"
_NEZHA_KEYS = ("max_relative_position", "use_relative_position")


@dataclass(frozen=True)
class Family:
    """A checkpoint layout this module converts."""

    name: str  # "bert", "bert_factorised", "albert", "electra", "roformer", "brightmart_albert"
    root: str  # the encoder's TF scope
    model_type: str  # the HF model written
    factorised: bool = False  # embeddings smaller than the hidden size, projected

    @property
    def label(self) -> str:
        """How the checkpoint was read, for messages."""
        return _LABELS.get(self.name, self.name)

    @property
    def has_pooler(self) -> bool:
        return self.model_type in ("bert", "albert")


_LABELS = {
    "bert_factorised": "BERT with factorised embeddings",
    "brightmart_albert": "brightmart's albert_zh layout",
    "electra": "ELECTRA",
    "roformer": "RoFormer",
}

# per-layer variables: TF suffix under the layer scope -> HF suffix under the layer module
BERT_LAYER = {
    "attention/self/query": "attention.self.query",
    "attention/self/key": "attention.self.key",
    "attention/self/value": "attention.self.value",
    "attention/output/dense": "attention.output.dense",
    "attention/output/LayerNorm": "attention.output.LayerNorm",
    "intermediate/dense": "intermediate.dense",
    "output/dense": "output.dense",
    "output/LayerNorm": "output.LayerNorm",
}
#: a BERT layer's TF variables -> the same arithmetic in an HF ALBERT layer
BERT_LAYER_AS_ALBERT = {
    "attention/self/query": "attention.query",
    "attention/self/key": "attention.key",
    "attention/self/value": "attention.value",
    "attention/output/dense": "attention.dense",
    "attention/output/LayerNorm": "attention.LayerNorm",
    "intermediate/dense": "ffn",
    "output/dense": "ffn_output",
    "output/LayerNorm": "full_layer_layer_norm",
}
ALBERT_LAYER = {
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
ROTARY = "encoder.embed_positions.weight"  # RoFormer's sinusoidal table: computed, not read


# ---------------------------------------------------------------------------------------- detection


def detect_layout(names: list[str] | set[str]) -> str:
    """The layout the variable names show: ``bert``, ``bert_factorised``, ``albert``, ``electra``,
    ``no_positions`` (RoFormer or NEZHA), ``roformer_v2``, ``brightmart_albert`` or ``unknown``."""
    names = set(names)
    if any("/layer_shared/" in n or n.startswith("bert/embeddings/word_embeddings_2") for n in names):
        return "brightmart_albert"
    if any(n.startswith("bert/encoder/transformer/") for n in names):
        return "albert"
    if any(n.startswith("electra/encoder/layer_") for n in names):
        return "electra"
    if not any(n.startswith("bert/encoder/layer_") for n in names):
        return "unknown"
    layer0 = "bert/encoder/layer_0/attention"
    if f"{layer0}/self/query/kernel" in names and not any(
        n.startswith((f"{layer0}/output/LayerNorm/", f"{layer0}/self/query/bias")) for n in names
    ):
        return "roformer_v2"
    if "bert/embeddings/position_embeddings" not in names:
        return "no_positions"
    return "bert_factorised" if f"{_MAPPING_IN}/kernel" in names else "bert"


def _is_nezha(raw: dict[str, Any]) -> list[str]:
    """The NEZHA config keys ``raw`` sets (relative positions), or []."""
    if raw.get("use_relative_position") is False:
        return []
    return [k for k in _NEZHA_KEYS if k in raw]


def _refuse_layout(layout: str, where: Path) -> None:
    if layout == "roformer_v2":
        raise TFCheckpointError(
            f"{where}: RoFormer-V2 layout (bert/encoder/layer_0/attention/self/query/kernel without a bias "
            "and no LayerNorm variables); transformers has no model for it"
        )


def _no_positions(family: str | None, raw: dict[str, Any], names: set[str], where: Path, cfg: Path) -> Family:
    """RoFormer, when the caller or the config says so; else refused (NEZHA has the same names)."""
    if family == "roformer" or (family is None and raw.get("model_type") == "roformer"):
        return Family("roformer", "bert", "roformer", factorised=f"{_MAPPING_IN}/kernel" in names)
    found = "bert/encoder/layer_N/... without bert/embeddings/position_embeddings"
    if family is not None:
        raise TFCheckpointError(
            f"{where}: {found} (rotary or relative positions: RoFormer or NEZHA), not {family}"
        )
    raise TFCheckpointError(
        f"{where}: {found}: rotary or relative positions (RoFormer or NEZHA, which share BERT's other "
        f"variable names) and {cfg.name} names neither; give --family roformer for a RoFormer checkpoint "
        "(NEZHA cannot be converted: transformers 5 has no NEZHA model)"
    )


def _brightmart(family: str | None, raw: dict[str, Any], where: Path, cfg: Path) -> Family:
    found = "brightmart's albert_zh layout (bert/embeddings/word_embeddings_2, bert/encoder/layer_shared/...)"
    if family not in (None, "albert"):
        raise TFCheckpointError(f"{where}: {found}, not {family}")
    if raw.get("ln_type", "postln") != "postln":
        raise TFCheckpointError(
            f"{where}: {found} with {cfg.name} ln_type {raw['ln_type']!r} (pre-LayerNorm layers): "
            "transformers has no model for it"
        )
    return Family("brightmart_albert", "bert", "albert")


def _check_albert_flag(layout: str, family: str | None, albert: bool | None, where: Path) -> None:
    """The caller's ALBERT flag / family against a BERT or ALBERT layout."""
    if layout == "albert" and family not in (None, "albert"):
        raise TFCheckpointError(
            f"{where}: holds Google ALBERT variables (bert/encoder/transformer/group_0/...), not {family}"
        )
    if layout == "albert" and family is None and albert is False:
        raise TFCheckpointError(
            f"{where}: holds Google ALBERT variables (bert/encoder/transformer/group_0/...), but -albert "
            "was not given: add -albert (the seed's flag for ALBERT checkpoints)"
        )
    if layout == "bert_factorised" and family == "albert":
        raise TFCheckpointError(
            f"{where}: holds BERT variables with factorised embeddings (bert/encoder/layer_N/... and "
            f"{_MAPPING_IN}, one set of weights per layer), not ALBERT's shared "
            "bert/encoder/transformer/group_N/...: drop -albert (bert4keras loads it as BERT)"
        )
    if layout == "bert" and family == "albert":
        raise TFCheckpointError(
            f"{where}: holds BERT variables (bert/encoder/layer_N/...), but ALBERT was asked for (-albert): "
            "drop -albert, or give an ALBERT checkpoint"
        )
    if layout in ("bert", "bert_factorised") and family not in (None, "bert"):
        raise TFCheckpointError(
            f"{where}: holds BERT variables (bert/encoder/layer_N/... with "
            f"bert/embeddings/position_embeddings), not {family}"
        )


def resolve_family(
    names: list[str],
    raw: dict[str, Any],
    *,
    albert: bool | None,
    family: str | None,
    where: Path,
    config_path: Path,
) -> Family:
    """The family to convert, from the variable ``names``, the config dict ``raw`` and what the caller
    named (``albert`` True: ALBERT; ``family``: one of :data:`FAMILIES`); refused in one line when the
    checkpoint is not one this module converts or disagrees with what was named."""
    if family is not None and family not in FAMILIES:
        raise TFCheckpointError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    if albert and family not in (None, "albert"):
        raise TFCheckpointError(f"-albert and --family {family} contradict each other")
    family = "albert" if albert else family
    names_set = set(names)
    layout = detect_layout(names_set)
    _refuse_layout(layout, where)
    if layout == "unknown":
        sample = ", ".join(names[:3]) or "no variables"
        raise TFCheckpointError(
            f"{where}: no BERT, ALBERT, ELECTRA or RoFormer encoder variables (found {sample}, ...)"
        )
    nezha = _is_nezha(raw) if layout in ("bert", "bert_factorised", "no_positions") else []
    if family == "nezha" or nezha:
        why = f"{config_path.name} sets {', '.join(nezha)}" if nezha else "--family nezha"
        raise TFCheckpointError(
            f"{where}: NEZHA ({why}; variables bert/encoder/layer_N/...): transformers 5 has no NEZHA model, "
            "so it cannot be converted"
        )
    if layout == "brightmart_albert":
        return _brightmart(family, raw, where, config_path)
    if layout == "no_positions":
        return _no_positions(family, raw, names_set, where, config_path)
    if layout == "electra":
        if family not in (None, "electra"):
            raise TFCheckpointError(
                f"{where}: holds ELECTRA variables (electra/encoder/layer_N/...), not {family}"
            )
        return Family("electra", "electra", "electra", factorised=f"{_ELECTRA_PROJECT}/kernel" in names_set)
    if family == "electra":
        raise TFCheckpointError(f"{where}: no ELECTRA variables (electra/encoder/layer_N/...)")
    if family == "roformer" and layout != "albert":
        raise TFCheckpointError(
            f"{where}: holds bert/embeddings/position_embeddings (absolute positions), so not RoFormer"
        )
    _check_albert_flag(layout, family, albert, where)
    if layout == "albert":
        return Family("albert", "bert", "albert", factorised=True)
    if layout == "bert_factorised":
        return Family("bert_factorised", "bert", "albert", factorised=True)
    return Family("bert", "bert", "bert")


# ---------------------------------------------------------------------------------------- mapping


def _leaves(tf_scope: str, hf_module: str, leaves) -> dict[str, tuple[str, bool]]:
    return {f"{tf_scope}/{tf}": (f"{hf_module}.{hf}", transpose) for tf, hf, transpose in leaves}


def _scope(tf_scope: str, hf_module: str) -> dict[str, tuple[str, bool]]:
    """One dense or LayerNorm scope (told apart by the last TF name part)."""
    is_norm = tf_scope.rsplit("/", 1)[-1].startswith("LayerNorm")
    return _leaves(tf_scope, hf_module, _NORM_LEAVES if is_norm else _DENSE_LEAVES)


def _embeddings(fam: Family) -> dict[str, tuple[str, bool]]:
    out: dict[str, tuple[str, bool]] = {}
    kinds = (
        ("token_type_embeddings",)
        if fam.name == "brightmart_albert"
        else ("word_embeddings", "token_type_embeddings")
    )
    if fam.name != "roformer":
        kinds += ("position_embeddings",)
    for emb in kinds:
        out[f"{fam.root}/embeddings/{emb}"] = (f"embeddings.{emb}.weight", False)
    out.update(_scope(f"{fam.root}/embeddings/LayerNorm", "embeddings.LayerNorm"))
    if fam.name in ("albert", "bert_factorised"):
        out.update(_scope(_MAPPING_IN, "encoder.embedding_hidden_mapping_in"))
    elif fam.name == "roformer" and fam.factorised:
        out.update(_scope(_MAPPING_IN, "embeddings_project"))
    elif fam.name == "electra" and fam.factorised:
        out.update(_scope(_ELECTRA_PROJECT, "embeddings_project"))
    return out


def expected_variables(hf_config, fam: Family | None = None) -> dict[str, tuple[str, bool]]:
    """TF variable name -> (HF parameter name, transpose?) for every parameter of the HF model read from
    the checkpoint (RoFormer's computed :data:`ROTARY` table is not among them)."""
    if fam is None:
        albert = hf_config.model_type == "albert"
        fam = Family("albert", "bert", "albert", True) if albert else Family("bert", "bert", "bert")
    out = _embeddings(fam)
    if fam.name == "brightmart_albert":  # one shared BERT layer
        for tf_part, hf_part in BERT_LAYER_AS_ALBERT.items():
            out.update(
                _scope(
                    f"bert/encoder/layer_shared/{tf_part}",
                    f"encoder.albert_layer_groups.0.albert_layers.0.{hf_part}",
                )
            )
    elif fam.name == "albert":
        for g in range(hf_config.num_hidden_groups):
            for i in range(hf_config.inner_group_num):
                tf = f"bert/encoder/transformer/group_{g}/inner_group_{i}"
                hf = f"encoder.albert_layer_groups.{g}.albert_layers.{i}"
                for tf_part, hf_part in ALBERT_LAYER.items():
                    out.update(_scope(f"{tf}/{tf_part}", f"{hf}.{hf_part}"))
    else:
        for n in range(hf_config.num_hidden_layers):
            tf = f"{fam.root}/encoder/layer_{n}"
            if fam.name == "bert_factorised":  # one ALBERT group of one layer per BERT layer
                hf, table = f"encoder.albert_layer_groups.{n}.albert_layers.0", BERT_LAYER_AS_ALBERT
            else:
                hf, table = f"encoder.layer.{n}", BERT_LAYER
            for tf_part, hf_part in table.items():
                out.update(_scope(f"{tf}/{tf_part}", f"{hf}.{hf_part}"))
    if fam.has_pooler:
        pooler = "pooler" if fam.model_type == "albert" else "pooler.dense"
        out.update(_scope(f"{fam.root}/pooler/dense", pooler))
    return out


def skip_kind(name: str, fam: Family) -> str | None:
    """Why a checkpoint variable is not part of the encoder, or None when it should be."""
    if name.endswith(("/adam_m", "/adam_v", "/Adam", "/Adam_1")):
        return "optimizer_slots"
    if name == "global_step":
        return "global_step"
    if name.startswith(("cls/", "generator/", "generator_predictions/", "discriminator_predictions/")):
        return "pretraining_heads"
    if not fam.has_pooler and name.startswith(f"{fam.root}/pooler/"):
        return "pooler"  # the HF model has none; the NER heads read the sequence output
    if name.startswith(f"{fam.root}/"):
        return None
    return "other"


def rotary_table(n_pos: int, dim: int) -> np.ndarray:
    """RoFormer's sinusoidal table as transformers builds it (``RoFormerSinusoidalPositionalEmbedding``):
    angle ``pos / 10000**(2*(j//2)/dim)``, the sines of the even ``j`` first, then the cosines of the odd."""
    j = np.arange(dim)
    angle = np.arange(n_pos, dtype=np.float64)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    half = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    out = np.empty((n_pos, dim), dtype=np.float32)
    out[:, :half] = np.sin(angle[:, 0::2])
    out[:, half:] = np.cos(angle[:, 1::2])
    return out


@dataclass(frozen=True)
class Computed:
    """An HF parameter made from checkpoint variables (or from nothing) rather than copied from one."""

    sources: tuple[str, ...]  # the TF variables it is made from
    make: Callable[[Callable[[str], np.ndarray]], np.ndarray]  # read(name) -> array -> the parameter
    what: str  # for the conversion report


def _product(read: Callable[[str], np.ndarray]) -> np.ndarray:
    words = np.asarray(read("bert/embeddings/word_embeddings"), dtype=np.float64)
    return (words @ np.asarray(read(BRIGHTMART_PROJECTION), dtype=np.float64)).astype(np.float32)


BRIGHTMART_PROJECTION = "bert/embeddings/word_embeddings_2"


def computed_parameters(fam: Family, shapes: dict[str, tuple[int, ...]]) -> dict[str, Computed]:
    """HF parameter -> how it is made, for the parameters of ``fam`` no single variable holds."""
    if fam.name == "roformer":
        return {ROTARY: Computed((), lambda read: rotary_table(*shapes[ROTARY]), "sinusoidal table")}
    if fam.name != "brightmart_albert":
        return {}
    mapping = "encoder.embedding_hidden_mapping_in"
    hidden = shapes[f"{mapping}.bias"][0]
    return {
        "embeddings.word_embeddings.weight": Computed(
            ("bert/embeddings/word_embeddings", BRIGHTMART_PROJECTION),
            _product,
            "bert/embeddings/word_embeddings @ bert/embeddings/word_embeddings_2",
        ),
        f"{mapping}.weight": Computed((), lambda read: np.eye(hidden, dtype=np.float32), "identity"),
        f"{mapping}.bias": Computed((), lambda read: np.zeros(hidden, dtype=np.float32), "zeros"),
    }
