"""Folders from anyone: what is checked before anything is loaded or built from them.

An encoder folder (``ner train --encoder DIR``, a hub id's cached snapshot) and a model directory
(``ner serve --model-dir``, ``ner predict``, the dashboard's Try-it page) may come from anywhere. Nothing in
them runs, and nothing in them makes this process allocate more than their real files hold:

- **No code.** A configuration with ``auto_map`` (``config.json``, ``tokenizer_config.json``) is refused
  before transformers reads it (transformers would ask "run the custom code? [y/N]" and run the ``.py``
  beside it on a yes), and every loader passes ``trust_remote_code=False``.
- **Files.** Every entry of a folder read is a regular file or a folder (no FIFO, device or socket), a
  symlink only when it resolves inside the folder's root, and each file read is no larger than its cap
  (:data:`MAX_JSON_BYTES`, :data:`MAX_TOKENIZER_JSON_BYTES`, :data:`MAX_VOCAB_BYTES`); reads stop at the
  cap whatever the file says.
- **Weights before building.** The weights' shapes are read from bounded bytes (a safetensors header's
  length is its first 8 bytes, capped at :data:`MAX_HEADER_BYTES`; a ``pytorch_model.bin``'s pickle, capped
  alike, unpickled by torch's weights-only loader onto the meta device), and every tensor must lie in the
  file's real data: bytes in holes of a sparse file do not count (:func:`data_bytes`). The caller then
  compares them with the model the configuration builds on the meta device (no memory) before building it
  for real (:func:`meta_shapes`).
- **Tokenizer before loading.** The tokens a vocabulary can hold are counted in bounded memory (the lines
  of ``vocab.txt``; at most half the quotes of ``tokenizer.json`` / ``vocab.json``) and compared with the
  encoder's ``vocab_size``, which the weights have confirmed.

Every refusal is one :class:`UntrustedFileError` line that names the file and the problem.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "MAX_TOKENIZER_JSON_BYTES",
    "MAX_VOCAB_BYTES",
    "TensorShapes",
    "UntrustedFileError",
    "bound_module_counts",
    "check_entries",
    "check_tokenizer_files",
    "config_from_dict",
    "data_bytes",
    "data_segments",
    "meta_shapes",
    "read_capped",
    "read_json",
    "refuse_custom_code",
    "safetensors_shapes",
    "torch_bin_shapes",
]

MiB = 1 << 20
#: a JSON configuration: ``config.json``, ``tokenizer_config.json``, ``special_tokens_map.json``, ...
MAX_JSON_BYTES = 4 * MiB
#: a fast tokenizer's ``tokenizer.json`` (bert-base-chinese's: 0.3 MB; a 250k-token one: about 17 MB)
MAX_TOKENIZER_JSON_BYTES = 64 * MiB
#: ``vocab.txt``, ``vocab.json``, ``merges.txt``, SentencePiece models (a 250k-token vocab.txt: about 3 MB)
MAX_VOCAB_BYTES = 32 * MiB
#: a safetensors header, or a pytorch_model.bin's pickle (BERT-large's header: about 30 KB)
MAX_HEADER_BYTES = 16 * MiB
#: entries of one folder looked at
MAX_ENTRIES = 10_000
#: configuration fields that multiply the modules a configuration builds (layers, groups), and the least
#: limit of their product (else: the tensors the weights hold)
COUNT_FIELDS = ("num_hidden_layers", "num_layers", "n_layer", "num_hidden_groups", "inner_group_num")
MIN_COUNT_LIMIT = 256
#: strings a tokenizer file may hold per token of the encoder's embedding (BPE merges, added tokens), + slack
STRINGS_PER_TOKEN, STRING_SLACK = 4, 10_000
#: bytes a SentencePiece model may take per token of the encoder's embedding, + slack
MODEL_BYTES_PER_TOKEN, MODEL_BYTES_SLACK = 256, MiB

#: bytes per element of each safetensors dtype
_SAFETENSORS_DTYPES = dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3"), 1)
_SAFETENSORS_DTYPES |= dict.fromkeys(("I16", "U16", "F16", "BF16"), 2)
_SAFETENSORS_DTYPES |= dict.fromkeys(("I32", "U32", "F32"), 4) | dict.fromkeys(("I64", "U64", "F64"), 8)


class UntrustedFileError(ValueError):
    """A file of an untrusted folder is refused; the message is one line naming it and the problem."""


def _mib(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n:,} bytes"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def _real(root: Path, rel: str) -> Path:
    """The real path of ``root / rel``: refused when it is a symlink (or under one) that leaves ``root``."""
    path = root / rel
    real = path.resolve()
    base = root.resolve()
    if real != base and base not in real.parents:
        raise UntrustedFileError(
            f"{root}: {rel} is a symlink to {real}, outside the folder; copy the file into the folder instead"
        )
    return real


def _regular(root: Path, rel: str, *, cap: int | None = None, what: str = "") -> tuple[Path, int]:
    """``(real path, size)`` of the regular file ``root / rel``, checked: inside ``root``, regular, at most
    ``cap`` bytes."""
    real = _real(root, rel)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise UntrustedFileError(f"{root}: {rel} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFileError(f"{root}: {rel} is {_kind(st.st_mode)}; expected a regular file")
    if cap is not None and st.st_size > cap:
        raise UntrustedFileError(
            f"{root}: {rel} is {st.st_size:,} bytes, more than the {_mib(cap)} "
            f"{what or 'such a file'} may have"
        )
    return real, st.st_size


def read_capped(root: Path, rel: str, cap: int, what: str = "") -> bytes:
    """The bytes of ``root / rel`` (see :func:`_regular`); the read stops at ``cap`` whatever the file is."""
    real, _ = _regular(root, rel, cap=cap, what=what)
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped since the check
            raise UntrustedFileError(f"{root}: {rel} is not a regular file")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise UntrustedFileError(f"{root}: {rel} grew past the {_mib(cap)} {what or 'such a file'} may have")
    return data


def read_json(root: Path, rel: str, cap: int = MAX_JSON_BYTES, what: str = "a JSON file") -> Any:
    """``root / rel`` parsed as JSON (at most ``cap`` bytes, see :func:`read_capped`)."""
    data = read_capped(root, rel, cap, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UntrustedFileError(f"{root}: {rel} is damaged (not valid JSON: {exc})") from None
    except RecursionError:
        raise UntrustedFileError(f"{root}: {rel} is damaged (JSON nested too deep)") from None


def refuse_custom_code(config: Any, root: Path, rel: str) -> None:
    """Refuse a configuration that names custom code (``auto_map``): nothing from a folder ever runs."""
    if isinstance(config, dict) and "auto_map" in config:
        names = config["auto_map"]
        shown = ", ".join(map(str, names)) if isinstance(names, dict) else type(names).__name__
        raise UntrustedFileError(
            f"{root}: {rel} has auto_map ({shown[:120]}): it asks to run custom code from the folder, which "
            "this program never does; use a model whose model_type transformers knows"
        )


def config_from_dict(config: Any, root: Path, rel: str):
    """The transformers configuration for the dict read from ``root / rel``: refused with ``auto_map``, or
    without a ``model_type`` transformers knows (no class from the folder is ever looked up)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(config, dict):
        raise UntrustedFileError(f"{root}: {rel} is damaged (expected a JSON object)")
    refuse_custom_code(config, root, rel)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise UntrustedFileError(
            f"{root}: {rel} has model_type {model_type!r}, which transformers does not know "
            "(a BERT-family encoder's config.json names one, e.g. 'bert')"
        )
    try:
        return CONFIG_MAPPING[model_type].from_dict(dict(config))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UntrustedFileError(f"{root}: {rel} is damaged: {' '.join(str(exc).split())[:200]}") from None


def check_entries(root: Path, rel: str = "") -> list[str]:
    """The names in folder ``root / rel`` (sorted), after checking each is a regular file or a folder, and
    a symlink only when it resolves inside ``root`` (see :func:`_real`)."""
    folder = root / rel if rel else root
    names: list[str] = []
    with os.scandir(folder) as it:
        for entry in it:
            if len(names) >= MAX_ENTRIES:
                raise UntrustedFileError(f"{root}: {rel or '.'} holds more than {MAX_ENTRIES:,} entries")
            names.append(entry.name)
    for name in sorted(names):
        sub = f"{rel}/{name}" if rel else name
        real = _real(root, sub)
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            raise UntrustedFileError(f"{root}: {sub} is a broken symlink") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UntrustedFileError(f"{root}: {sub} is {_kind(mode)}; expected a regular file")
    return sorted(names)


# ----------------------------------------------------------------------------------------- extents
def data_segments(path: str | os.PathLike) -> list[tuple[int, int]]:
    """The ``[start, end)`` byte ranges of the file at ``path`` that hold data, in order; the rest of its
    size is holes (a sparse file), which read as zeros but are not stored. A file whose allocated blocks
    cover its size has none; otherwise ``SEEK_DATA`` / ``SEEK_HOLE`` find them. Where the file system cannot
    tell (no ``SEEK_DATA``), its allocated bytes (``st_blocks``) count as one range from the start."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        size = st.st_size
        allocated = getattr(st, "st_blocks", size // 512 + 1) * 512
        if allocated >= size:  # every byte has its block: no holes
            return [(0, size)]
        if not hasattr(os, "SEEK_DATA"):
            return [(0, allocated)]
        segments: list[tuple[int, int]] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole after pos
                    break
                return [(0, allocated)]  # EINVAL / ENOTSUP: no hole information here
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end))
            pos = end
        return segments
    finally:
        os.close(fd)


def data_bytes(path: str | os.PathLike) -> int:
    """Bytes of the file at ``path`` that hold data: its size less its holes (:func:`data_segments`)."""
    return sum(end - start for start, end in data_segments(path))


@dataclass(frozen=True)
class TensorShapes:
    """What a weights file says it holds, read from bounded bytes."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    nbytes: int  # bytes of tensor data it declares

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())


def _in_real_data(root: Path, rel: str, real: Path, declared: int) -> None:
    have = data_bytes(real)
    if declared > have:
        raise UntrustedFileError(
            f"{root}: {rel} declares {declared:,} bytes of tensors but holds only {have:,} bytes of data "
            "(a sparse or truncated file)"
        )


def _header_entries(header: dict, where: str, data_size: int) -> tuple[dict[str, tuple[int, ...]], int]:
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in (*shape, begin, end))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise UntrustedFileError(
                f"{where} is damaged: tensor {name[:100]!r} has a malformed header entry"
            )
        if dtype not in _SAFETENSORS_DTYPES:
            raise UntrustedFileError(
                f"{where}: tensor {name[:100]!r} has dtype {str(dtype)[:20]!r}, unknown here"
            )
        if end - begin != math.prod(shape) * _SAFETENSORS_DTYPES[dtype]:
            raise UntrustedFileError(
                f"{where} is damaged: tensor {name[:100]!r} of shape {list(shape)} {dtype} does not fill its "
                f"bytes {begin}..{end}"
            )
        if end > data_size:
            raise UntrustedFileError(
                f"{where} is damaged or truncated: incomplete metadata, tensor {name[:100]!r} needs bytes "
                f"{begin}..{end} of the {data_size:,} after the header"
            )
        shapes[name] = tuple(shape)
        total += end - begin
    return shapes, total


def safetensors_shapes(root: Path, rel: str) -> TensorShapes:
    """The tensors a safetensors file declares, from its header alone (at most :data:`MAX_HEADER_BYTES`
    read), each checked to lie inside the file's real data."""
    real, size = _regular(root, rel)
    where = f"{root}: {rel}"
    with open(real, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UntrustedFileError(f"{where} is damaged or truncated: {size} bytes, no header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise UntrustedFileError(
                f"{where} declares a {n:,}-byte header, more than the {_mib(MAX_HEADER_BYTES)} allowed"
            )
        if 8 + n > size:
            raise UntrustedFileError(f"{where} is damaged or truncated: its header runs past the end")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UntrustedFileError(f"{where} is damaged or truncated: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UntrustedFileError(f"{where} is damaged: its header is not a JSON object")
    shapes, total = _header_entries(header, where, size - 8 - n)
    _in_real_data(root, rel, real, total)
    meta = header.get("__metadata__")
    meta = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    return TensorShapes(shapes=shapes, metadata=meta, nbytes=total)


def torch_bin_shapes(root: Path, rel: str) -> TensorShapes:
    """The tensors of a torch zip checkpoint (``pytorch_model.bin``): its pickle (at most
    :data:`MAX_HEADER_BYTES`) unpickled by torch's weights-only loader onto the meta device, so no tensor
    data is read; the tensors' bytes must lie in the file's real data."""
    import zipfile

    import torch

    real, _ = _regular(root, rel)
    where = f"{root}: {rel}"
    try:
        with zipfile.ZipFile(real) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith("data.pkl")]
    except (zipfile.BadZipFile, OSError):
        raise UntrustedFileError(
            f"{where} is not a torch zip checkpoint (damaged, or torch's legacy format: re-save it with "
            "torch.save, or as model.safetensors)"
        ) from None
    if len(pickles) != 1 or pickles[0].file_size > MAX_HEADER_BYTES:
        raise UntrustedFileError(f"{where} is damaged or its pickle exceeds {_mib(MAX_HEADER_BYTES)}")
    try:
        state = torch.load(real, map_location="meta", weights_only=True, mmap=True)
    except Exception as exc:  # UnpicklingError (a refused global), RuntimeError (a damaged archive)
        why = " ".join(str(exc).split())[:200]
        raise UntrustedFileError(f"{where} is damaged or not plain tensors: {why}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UntrustedFileError(f"{where} does not hold a flat dict of tensors")
    shapes = {str(k): tuple(v.shape) for k, v in state.items()}
    total = sum(v.numel() * v.element_size() for v in state.values())
    _in_real_data(root, rel, real, total)
    return TensorShapes(shapes=shapes, metadata={}, nbytes=total)


def bound_module_counts(config: Any, n_tensors: int, where: str) -> None:
    """Layer and group counts of a transformers ``config`` may not multiply past the tensors its weights
    hold (or :data:`MIN_COUNT_LIMIT`): checked before even the meta device builds the modules they ask for
    (a million layers cost minutes and gigabytes of module objects, meta or not)."""
    counts = {f: v for f in COUNT_FIELDS if isinstance(v := getattr(config, f, None), int) and v > 0}
    limit = max(n_tensors, MIN_COUNT_LIMIT)
    if math.prod(counts.values()) > limit:
        shown = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        raise UntrustedFileError(
            f"{where} asks for {shown}: more modules than its weights' {n_tensors:,} tensors could fill"
        )


def meta_shapes(build: Callable[[], Any]) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes of the module ``build()`` makes, built on the meta device (no memory, no
    initialisation): what a configuration would allocate, known before anything is allocated."""
    import torch

    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------- tokenizers
def _count(real: Path, byte: bytes) -> tuple[int, bool]:
    """Occurrences of ``byte`` in the file, read 1 MiB at a time; and whether it ends with ``byte``."""
    n, last = 0, b""
    with open(real, "rb") as fh:
        while chunk := fh.read(MiB):
            n += chunk.count(byte)
            last = chunk[-1:]
    return n, last == byte


def _check_strings(root: Path, rel: str, name: str, vocab_size: int) -> None:
    cap = MAX_TOKENIZER_JSON_BYTES if name == "tokenizer.json" else MAX_VOCAB_BYTES
    real, _ = _regular(root, rel, cap=cap, what=f"a {name}")
    quotes, _ = _count(real, b'"')
    if quotes // 2 > STRINGS_PER_TOKEN * vocab_size + STRING_SLACK:
        raise UntrustedFileError(
            f"{root}: {rel} holds up to {quotes // 2:,} strings, more than {STRINGS_PER_TOKEN} per token of "
            f"the encoder's {vocab_size:,}-row embedding (+{STRING_SLACK:,}): not this encoder's tokenizer"
        )


def _check_lines(root: Path, rel: str, name: str, vocab_size: int) -> None:
    real, size = _regular(root, rel, cap=MAX_VOCAB_BYTES, what=f"a {name}")
    newlines, ends = _count(real, b"\n")
    lines = newlines + (1 if size and not ends else 0)  # as readlines() counts them
    limit = vocab_size if name == "vocab.txt" else STRINGS_PER_TOKEN * vocab_size + STRING_SLACK
    if lines > limit:
        raise UntrustedFileError(
            f"{root}: {rel} has {lines:,} lines, more than {'the' if name == 'vocab.txt' else 'fit the'} "
            f"{vocab_size:,} rows of the encoder's embedding (config.json vocab_size): not this encoder's "
            "vocabulary"
        )


#: tokenizer files and how each is bounded: JSON strings, lines, or bytes per token of the embedding
_TOKENIZER_FILES: dict[str, Callable[[Path, str, str, int], None]] = {
    "tokenizer.json": _check_strings,
    "vocab.json": _check_strings,
    "vocab.txt": _check_lines,
    "merges.txt": _check_lines,
}
_MODEL_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def check_tokenizer_files(root: Path, rel: str, vocab_size: int | None, names: Iterable[str]) -> None:
    """The tokenizer files among ``names`` (in folder ``root / rel``, whose entries
    :func:`check_entries` has checked): JSON ones capped and ``tokenizer_config.json`` free of ``auto_map``;
    vocabularies capped, and holding no more tokens than an embedding of ``vocab_size`` rows can take (see
    the module's doc; not counted when ``vocab_size`` is unknown)."""
    rows = vocab_size if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) else 0
    for name in names:
        sub = f"{rel}/{name}" if rel else name
        if not (root / sub).is_file():
            continue
        if name == "tokenizer_config.json":
            refuse_custom_code(read_json(root, sub, what="a tokenizer_config.json"), root, sub)
        elif name in _TOKENIZER_FILES and rows > 0:
            _TOKENIZER_FILES[name](root, sub, name, rows)
        elif name in _TOKENIZER_FILES or name in _MODEL_FILES or name.endswith(".tiktoken"):
            cap = MAX_TOKENIZER_JSON_BYTES if name == "tokenizer.json" else MAX_VOCAB_BYTES
            if rows > 0 and name not in _TOKENIZER_FILES:
                cap = min(cap, MODEL_BYTES_PER_TOKEN * rows + MODEL_BYTES_SLACK)
            _regular(root, sub, cap=cap, what=f"a {name}" + (f" for {rows:,} tokens" if rows else ""))
        elif name.endswith((".json", ".jinja")):
            _regular(root, sub, cap=MAX_JSON_BYTES, what=f"a {name}")
