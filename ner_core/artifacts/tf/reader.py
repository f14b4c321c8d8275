"""Read TensorFlow V2 checkpoints (tensor bundles) without TensorFlow.

A checkpoint ``PREFIX`` (e.g. ``bert_model.ckpt``) is two kinds of files:

- ``PREFIX.index``: an SSTable (LevelDB's table format). Data blocks hold sorted key/value entries with
  prefix-compressed keys and restart points; each block is followed by a 5-byte trailer (compression type,
  masked CRC32C of the block and that type byte); an index block points at the data blocks; a 48-byte
  footer holds the metaindex and index block handles (varints, zero-padded to 40 bytes) and the magic
  number. The empty key holds the ``BundleHeaderProto`` (number of shards, endianness, version); every other
  key is a variable's name and holds its ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked
  CRC32C of the bytes, slices).
- ``PREFIX.data-0000S-of-0000N``: raw tensors, little-endian, C order, at the entry's offset.

Both protobuf messages are decoded by a minimal wire-format parser (varints, length-delimited fields,
fixed32/64), so neither TensorFlow nor protobuf is needed. Every block's and every tensor's checksum is
checked (CRC32C from the ``google-crc32c`` package). What this reader cannot read is refused with a
:class:`TFCheckpointError` naming the file and the variable: partitioned (sliced) variables, compressed
blocks, big-endian bundles, dtypes it does not know. Strings are listed but cannot be read.

Tensors are read memory-mapped, one mapping per tensor, so reading a large checkpoint tensor by tensor
keeps only the tensor in hand resident.

A checkpoint may come from anywhere, so what its index declares is checked against what its files really
hold before anything is read or written from it (:meth:`TFCheckpoint.check_shards`): sizes are exact Python
integers (a shape such as ``(2**62 + 1, 4)`` overflows numpy's int64 arithmetic into a small number), the
index is at most :data:`MAX_INDEX_BYTES`, and the tensors of a shard may not overlap nor declare far more
bytes than the shard holds as data (:func:`beyond_data`). A sparse file's holes read as zeros but are not
stored, so its size says nothing: a few kilobytes truncated to a gigabyte would otherwise be converted into
a gigabyte of weights (:func:`data_segments` measures the data with ``SEEK_DATA`` / ``SEEK_HOLE``).
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from ner_core.model.untrusted import data_segments

__all__ = [
    "TFCheckpointError",
    "BundleHeader",
    "TensorEntry",
    "TFCheckpoint",
    "DTYPES",
    "MAX_INDEX_BYTES",
    "TABLE_MAGIC",
    "beyond_data",
    "data_segments",
    "mask_crc",
    "masked_crc32c",
    "resolve_prefix",
    "shard_path",
]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked CRC32C
_MASK_DELTA = 0xA282EAD8
#: an index file this reader reads whole (BERT-large with its Adam slots: about 60 KB)
MAX_INDEX_BYTES = 256 << 20
#: bytes in holes a file may declare per byte of data, plus :data:`HOLE_SLACK`: optimiser slots saved
#: before the first step are zeros, which sparse-aware copies (cp, rsync -S, tar -S) store as holes; the
#: two Adam slots of a model are twice its size (the shared test fixtures are such files)
HOLES_PER_DATA_BYTE = 3
HOLE_SLACK = 1 << 20
_U32 = 0xFFFFFFFF

#: TensorFlow ``DataType`` enum value -> (name, numpy dtype or None when not readable as raw bytes).
DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    14: ("bfloat16", np.dtype("<u2")),  # read as raw 16 bits, widened to float32
    17: ("uint16", np.dtype("<u2")),
    19: ("float16", np.dtype("<f2")),
    22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
}


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint is missing, damaged, or in a form this reader does not support."""


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    big_endian: bool
    producer: int


@dataclass(frozen=True)
class TensorEntry:
    """One variable of the bundle, as its ``BundleEntryProto`` describes it."""

    name: str
    dtype_code: int  # TensorFlow DataType enum value
    shape: tuple[int, ...]
    shard_id: int
    offset: int  # bytes into the shard
    size: int  # bytes
    crc32c: int  # masked CRC32C of the tensor's bytes
    num_slices: int  # > 0: a partitioned variable (not readable here)

    @property
    def dtype(self) -> str:
        """``float32``, ``int64``, ... (``dtype_<n>`` for a code this reader does not know)."""
        return DTYPES[self.dtype_code][0] if self.dtype_code in DTYPES else f"dtype_{self.dtype_code}"


# ---------------------------------------------------------------------------------------- checksums


def mask_crc(crc: int) -> int:
    """LevelDB / TensorFlow CRC masking: rotate right by 15 bits, add a constant (mod 2**32)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def masked_crc32c(data) -> int:
    """The masked CRC32C of ``data``: bytes or a C-contiguous numpy array (its raw bytes)."""
    return mask_crc(google_crc32c.value(data))


# ---------------------------------------------------------------------------------------- wire format


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one unsigned varint at ``buf[pos]``; return ``(value, next position)``."""
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or over-long varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` of a protobuf message: an int for varint / fixed
    fields, bytes for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64 field")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ValueError("truncated length-delimited field")
            value, pos = bytes(buf[pos : pos + n]), pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32 field")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_header(value: bytes) -> BundleHeader:
    num_shards, endianness, producer = 1, 0, 0
    for number, _, v in _fields(value):
        if number == 1:
            num_shards = _signed64(v)
        elif number == 2:
            endianness = v
        elif number == 3:
            producer = next((p for n, _, p in _fields(v) if n == 1), 0)
    return BundleHeader(num_shards=num_shards, big_endian=endianness == 1, producer=producer)


def _parse_shape(value: bytes) -> tuple[int, ...]:
    dims = []
    for number, _, v in _fields(value):
        if number == 2:  # Dim { int64 size = 1; string name = 2; }
            dims.append(next((_signed64(s) for n, _, s in _fields(v) if n == 1), 0))
        elif number == 3 and v:
            raise ValueError("shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, value: bytes) -> TensorEntry:
    f = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": 0, "slices": 0}
    for number, _, v in _fields(value):
        if number == 1:
            f["dtype"] = v
        elif number == 2:
            f["shape"] = _parse_shape(v)
        elif number == 3:
            f["shard"] = _signed64(v)
        elif number == 4:
            f["offset"] = _signed64(v)
        elif number == 5:
            f["size"] = _signed64(v)
        elif number == 6:
            f["crc"] = v
        elif number == 7:
            f["slices"] += 1
    return TensorEntry(
        name=name,
        dtype_code=f["dtype"],
        shape=f["shape"],
        shard_id=f["shard"],
        offset=f["offset"],
        size=f["size"],
        crc32c=f["crc"],
        num_slices=f["slices"],
    )


# ---------------------------------------------------------------------------------------- SSTable


def _block(data: bytes, handle: tuple[int, int], path: Path, what: str) -> bytes:
    """The contents of the block at ``handle`` (offset, size), its trailer's checksum verified."""
    offset, size = handle
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data) - FOOTER_SIZE:
        raise TFCheckpointError(f"{path}: {what} block runs past the end of the file (truncated index?)")
    contents = data[offset : offset + size]
    kind = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if masked_crc32c(data[offset : offset + size + 1]) != stored:
        raise TFCheckpointError(
            f"{path}: checksum mismatch in the {what} block at byte {offset} (damaged file)"
        )
    if kind != 0:
        name = {1: "snappy", 2: "zlib"}.get(kind, f"type {kind}")
        raise TFCheckpointError(f"{path}: {what} block at byte {offset} is {name}-compressed; not supported")
    return contents


def _block_entries(block: bytes, path: Path, what: str) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(key, value)`` of a block: entries of (shared, non-shared, value length) varints,
    key suffix, value; then the restart offsets (uint32 each) and their count (uint32)."""
    if len(block) < 4:
        raise TFCheckpointError(f"{path}: {what} block is too short to hold its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise TFCheckpointError(f"{path}: {what} block has a restart count larger than the block")
    pos, key = 0, b""
    try:
        while pos < limit:
            shared, pos = _varint(block, pos, limit)
            non_shared, pos = _varint(block, pos, limit)
            n_value, pos = _varint(block, pos, limit)
            if shared > len(key) or pos + non_shared + n_value > limit:
                raise ValueError("entry overruns the block")
            key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            yield key, block[pos : pos + n_value]
            pos += n_value
    except ValueError as exc:
        raise TFCheckpointError(f"{path}: malformed {what} block entry at byte {pos}: {exc}") from None


def _handle(buf: bytes, pos: int = 0) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos, len(buf))
    size, pos = _varint(buf, pos, len(buf))
    return (offset, size), pos


def _read_index(path: Path) -> bytes:
    """The bytes of the index file: a regular file of at most :data:`MAX_INDEX_BYTES`, all of it data."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TFCheckpointError(f"{path}: missing (the checkpoint's index)") from None
    if not stat.S_ISREG(st.st_mode):
        raise TFCheckpointError(f"{path}: not a regular file")
    if st.st_size > MAX_INDEX_BYTES:
        raise TFCheckpointError(
            f"{path}: {st.st_size:,} bytes, more than the {MAX_INDEX_BYTES >> 20} MiB a checkpoint index "
            "may have"
        )
    held = sum(end - start for start, end in data_segments(path))
    if beyond_data(st.st_size, held):
        raise TFCheckpointError(
            f"{path}: {st.st_size:,} bytes of which only {held:,} hold data (a sparse file); not an index "
            "TensorFlow wrote"
        )
    with open(path, "rb") as fh:
        return fh.read(MAX_INDEX_BYTES + 1)


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of the SSTable file at ``path``, in file order (sorted by key)."""
    data = _read_index(path)
    if len(data) < FOOTER_SIZE:
        raise TFCheckpointError(f"{path}: {len(data)} bytes, too short for an SSTable footer (truncated?)")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise TFCheckpointError(f"{path}: not a TensorFlow checkpoint index (bad magic number; truncated?)")
    try:
        _, pos = _handle(footer)  # the metaindex block (filters): not needed to read a bundle
        index_handle, _ = _handle(footer, pos)
    except ValueError:
        raise TFCheckpointError(f"{path}: malformed SSTable footer") from None
    pairs = []
    for _, handle_bytes in _block_entries(_block(data, index_handle, path, "index"), path, "index"):
        try:
            handle, _ = _handle(handle_bytes)
        except ValueError:
            raise TFCheckpointError(f"{path}: malformed block handle in the index block") from None
        pairs.extend(_block_entries(_block(data, handle, path, "data"), path, "data"))
    return pairs


# ---------------------------------------------------------------------------------------- prefixes


def shard_path(prefix: Path, shard_id: int, num_shards: int) -> Path:
    """``PREFIX.data-0000S-of-0000N``."""
    return Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")


def _prefix_in_folder(folder: Path) -> Path:
    """The prefix the folder's ``checkpoint`` file names, when it lies inside the folder (a name elsewhere,
    such as the training machine's absolute path, is looked for by its file name inside the folder: a folder
    never makes this reader open files outside it); else the folder's one ``*.index``."""
    state = folder / "checkpoint"
    if state.is_file() and state.stat().st_size <= 1 << 20:
        m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
        if m:
            named = Path(m.group(1))
            base = folder.resolve()
            for prefix in (named if named.is_absolute() else folder / named, folder / named.name):
                index = Path(f"{prefix}.index")
                if named.name and base in index.resolve().parents and index.is_file():
                    return prefix
    found = sorted(folder.glob("*.index"))
    if len(found) == 1:
        return found[0].with_suffix("")
    if not found:
        raise TFCheckpointError(f"{folder}: a folder without a checkpoint (no *.index file)")
    names = ", ".join(p.name for p in found)
    raise TFCheckpointError(f"{folder}: holds several checkpoints ({names}); name one by its prefix")


def resolve_prefix(path: str | Path) -> Path:
    """The checkpoint prefix named by ``path``: the prefix itself (``.../bert_model.ckpt``), its
    ``.index`` file, or a folder holding one checkpoint (or a ``checkpoint`` file naming one)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _prefix_in_folder(p)
    if p.name.endswith(".index") and p.is_file():
        return p.with_suffix("")
    if Path(f"{p}.index").is_file():
        return p
    m = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", p.name)
    if m and p.is_file():
        prefix = p.with_name(m.group(1))
        if not Path(f"{prefix}.index").is_file():
            raise TFCheckpointError(f"{prefix}.index: missing (the checkpoint's index, beside {p.name})")
        return prefix
    if any(p.parent.glob(f"{p.name}.data-*")) if p.parent.is_dir() else False:
        raise TFCheckpointError(f"{p}.index: missing (the checkpoint's index; only its data files are there)")
    raise TFCheckpointError(
        f"{p}: names no TensorFlow checkpoint (no {p.name}.index, no such file or folder)"
    )


# ---------------------------------------------------------------------------------------- extents


def beyond_data(declared: int, held: int) -> bool:
    """Whether ``declared`` bytes lie far beyond the ``held`` bytes of data a file really has: more than
    :data:`HOLES_PER_DATA_BYTE` bytes of holes per byte of data, plus :data:`HOLE_SLACK`."""
    return declared - held > HOLES_PER_DATA_BYTE * held + HOLE_SLACK


def _overlap(segments: list[tuple[int, int]], start: int, end: int) -> int:
    """Bytes of ``[start, end)`` inside ``segments``."""
    return sum(max(0, min(end, b) - max(start, a)) for a, b in segments)


# ---------------------------------------------------------------------------------------- reader


class TFCheckpoint:
    """A TensorFlow V2 checkpoint opened for reading.

    ``entries`` maps every variable name to its :class:`TensorEntry` (sorted by name); :meth:`read`
    returns one tensor as a numpy array after checking its checksum.
    """

    def __init__(self, path: str | Path) -> None:
        self.prefix: Path = resolve_prefix(path)
        self.index_path = Path(f"{self.prefix}.index")
        pairs = read_table(self.index_path)
        if not pairs or pairs[0][0] != b"":
            raise TFCheckpointError(
                f"{self.index_path}: no bundle header (the empty key); not a tensor bundle"
            )
        try:
            self.header = _parse_header(pairs[0][1])
        except ValueError as exc:
            raise TFCheckpointError(f"{self.index_path}: malformed bundle header: {exc}") from None
        if self.header.big_endian:
            raise TFCheckpointError(
                f"{self.index_path}: a big-endian bundle; only little-endian is supported"
            )
        if self.header.num_shards < 1:
            raise TFCheckpointError(f"{self.index_path}: bundle header gives {self.header.num_shards} shards")
        self._shards_checked: set[int] = set()
        self.entries: dict[str, TensorEntry] = {}
        for key, value in pairs[1:]:
            name = key.decode("utf-8", errors="replace")
            try:
                self.entries[name] = _parse_entry(name, value)
            except ValueError as exc:
                raise TFCheckpointError(
                    f"{self.index_path}: variable {name}: malformed entry: {exc}"
                ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def shard(self, entry: TensorEntry) -> Path:
        return shard_path(self.prefix, entry.shard_id, self.header.num_shards)

    def check_shards(self) -> None:
        """Every data shard exists and holds as data the bytes its tensors declare (:meth:`_check_shard`)."""
        for shard_id in range(self.header.num_shards):
            self._check_shard(shard_id)

    def _check_shard(self, shard_id: int) -> None:
        """Shard ``shard_id`` is a file, its tensors' byte ranges lie in it without overlapping, and the bytes
        they declare (exact integers) are not far beyond the bytes it holds as data (:func:`beyond_data`);
        checked once per shard, before any of its tensors is read."""
        if shard_id in self._shards_checked:
            return
        path = shard_path(self.prefix, shard_id, self.header.num_shards)
        if not path.is_file():
            raise TFCheckpointError(f"{path}: missing data shard {shard_id + 1} of {self.header.num_shards}")
        entries = sorted((e for e in self.entries.values() if e.shard_id == shard_id), key=lambda e: e.offset)
        self._check_ranges(path, entries)
        declared = sum(e.size for e in entries)
        segments = data_segments(path)
        held = sum(b - a for a, b in segments)
        if beyond_data(declared, held):

            def in_holes(e: TensorEntry) -> int:
                return e.size - _overlap(segments, e.offset, e.offset + e.size)

            worst = max(entries, key=in_holes)
            raise TFCheckpointError(
                f"{path}: holds {held:,} bytes of data but its variables declare {declared:,}, more than "
                f"{1 + HOLES_PER_DATA_BYTE} times as many (+1 MiB); variable "
                f"{worst.name} declares {worst.size:,} bytes of which {in_holes(worst):,} are holes "
                "(a sparse or damaged file: copy the checkpoint whole, without --sparse)"
            )
        self._shards_checked.add(shard_id)

    def _check_ranges(self, path: Path, entries: list[TensorEntry]) -> None:
        """The tensors' byte ranges (``entries`` sorted by offset) lie inside ``path`` and do not overlap."""
        size = path.stat().st_size
        end, last = 0, None
        for e in entries:
            if e.offset < 0 or e.size < 0:
                raise TFCheckpointError(
                    f"{self.index_path}: variable {e.name} has offset {e.offset} and size {e.size} "
                    "(damaged index)"
                )
            readable = e.dtype_code in DTYPES and DTYPES[e.dtype_code][1] is not None and not e.num_slices
            if readable:
                self._checked_entry(e.name)  # its shape's exact bytes are its size
            if e.offset + e.size > size:
                raise TFCheckpointError(
                    f"{path}: truncated data shard: variable {e.name} needs bytes "
                    f"{e.offset:,}..{e.offset + e.size:,}, the file has {size:,}"
                )
            if last is not None and e.size and e.offset < end:
                raise TFCheckpointError(
                    f"{self.index_path}: variables {last.name} and {e.name} share bytes of {path.name} "
                    "(damaged index)"
                )
            if e.size:
                end, last = e.offset + e.size, e

    def _checked_entry(self, name: str) -> tuple[TensorEntry, np.dtype]:
        if name not in self.entries:
            raise TFCheckpointError(f"{self.index_path}: no variable {name!r}")
        e = self.entries[name]
        where = f"{self.index_path}: variable {name}"
        if e.num_slices:
            raise TFCheckpointError(f"{where} is partitioned into {e.num_slices} slices; not supported")
        if e.dtype_code not in DTYPES:
            raise TFCheckpointError(
                f"{where} has TensorFlow dtype {e.dtype_code}, which this reader cannot read"
            )
        np_dtype = DTYPES[e.dtype_code][1]
        if np_dtype is None:
            raise TFCheckpointError(f"{where} holds {e.dtype} data, which this reader does not load")
        if not 0 <= e.shard_id < self.header.num_shards:
            raise TFCheckpointError(f"{where} is in shard {e.shard_id} of {self.header.num_shards}")
        if any(d < 0 for d in e.shape):
            raise TFCheckpointError(f"{where} has shape {e.shape}, with a negative dimension (damaged index)")
        needed = math.prod(e.shape) * np_dtype.itemsize  # exact: numpy's int64 would wrap around
        if needed != e.size:
            raise TFCheckpointError(
                f"{where}: shape {e.shape} of {e.dtype} needs {needed:,} bytes, the index gives {e.size:,}"
            )
        return e, np_dtype

    def read(self, name: str, *, verify: bool = True) -> np.ndarray:
        """Variable ``name`` as a read-only numpy array of its shape (memory-mapped; bfloat16 is widened
        to float32, a copy). ``verify`` checks the tensor's CRC32C against the index."""
        e, np_dtype = self._checked_entry(name)
        path = self.shard(e)
        self._check_shard(e.shard_id)  # exists, long enough, its tensors in its real data
        if e.size == 0:
            arr = np.zeros(e.shape, dtype=np_dtype)
        else:
            count = e.size // np_dtype.itemsize  # memmap takes shape () for "the rest of the file"
            arr = np.memmap(path, dtype=np_dtype, mode="r", offset=e.offset, shape=(count,)).reshape(e.shape)
        if verify and masked_crc32c(np.ascontiguousarray(arr)) != e.crc32c:
            raise TFCheckpointError(f"{path}: checksum mismatch in variable {name} (damaged data shard)")
        if e.dtype_code == 14:  # bfloat16: the high half of a float32
            return (np.asarray(arr, dtype=np.uint32) << 16).view(np.float32)
        return arr
