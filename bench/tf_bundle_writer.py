"""Write TensorFlow V2 checkpoints (tensor bundles) without TensorFlow: for benchmarks and tests.

:func:`write_bundle` writes ``PREFIX.data-00000-of-00001`` (the tensors' raw little-endian bytes, one
after another in the order given, as TensorFlow's ``BundleWriter`` does with its default alignment of 1)
and ``PREFIX.index``: an SSTable in LevelDB's table format as TensorFlow writes it (data blocks of up to
``block_size`` bytes with a restart point every 16 entries, no compression, an empty metaindex block, an
index block whose keys are the shortest separators between blocks, the 48-byte footer with the magic
number). The empty key holds the ``BundleHeaderProto``; every other key a ``BundleEntryProto`` with the
tensor's masked CRC32C. The protobufs are encoded by hand in field order, default values left out.

tests/test_tf_checkpoint.py proves it against files TensorFlow wrote: the fixtures' tensors written
back in the fixtures' order give the same ``.data`` bytes and the same ``.index`` bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ner_core.artifacts.tf.reader import DTYPES, TABLE_MAGIC, mask_crc, masked_crc32c, shard_path

__all__ = ["BLOCK_SIZE", "write_bundle", "encode_entry", "encode_header"]

BLOCK_SIZE = 262144  # TensorFlow's table::Options default
RESTART_INTERVAL = 16
_CODES = {np_dtype: code for code, (_, np_dtype) in DTYPES.items() if np_dtype is not None and code != 14}


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # protobuf encodes negative int64 as ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def encode_header(num_shards: int = 1, producer: int = 1) -> bytes:
    """``BundleHeaderProto``: num_shards, little-endian (the default, left out), version{producer}."""
    return _field_varint(1, num_shards) + _field_bytes(3, _field_varint(1, producer))


def encode_entry(
    dtype_code: int, shape: tuple[int, ...], shard_id: int, offset: int, size: int, crc: int
) -> bytes:
    """``BundleEntryProto`` (no slices)."""
    dims = b"".join(_field_bytes(2, _field_varint(1, d)) for d in shape)
    out = _field_varint(1, dtype_code) + _field_bytes(2, dims)
    out += _field_varint(3, shard_id) + _field_varint(4, offset) + _field_varint(5, size)
    if crc:
        out += _varint(6 << 3 | 5) + struct.pack("<I", crc)
    return out


class _BlockBuilder:
    """One SSTable block: prefix-compressed keys, a restart point every ``interval`` entries."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""
        self.entries = 0

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(key), len(self.last_key))
            while shared < n and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        self.buf += key[shared:] + value
        self.last_key = key
        self.counter += 1
        self.entries += 1

    def estimated_size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return (
            bytes(self.buf)
            + b"".join(struct.pack("<I", r) for r in self.restarts)
            + struct.pack("<I", len(self.restarts))
        )


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key >= ``start`` and < ``limit`` (LevelDB's bytewise comparator)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes([start[i] + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def _write_table(path: Path, pairs: list[tuple[bytes, bytes]], block_size: int) -> None:
    out = bytearray()

    def write_block(contents: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(contents))
        out.extend(contents + b"\0" + struct.pack("<I", masked_crc32c(contents + b"\0")))
        return handle

    index = _BlockBuilder(1)
    block = _BlockBuilder(RESTART_INTERVAL)
    pending: bytes | None = None  # handle of the last flushed block, waiting for its index key
    block_last = b""
    for key, value in pairs:
        if pending is not None:
            index.add(_shortest_separator(block_last, key), pending)
            pending = None
        block.add(key, value)
        if block.estimated_size() >= block_size:
            block_last, pending = block.last_key, write_block(block.finish())
            block = _BlockBuilder(RESTART_INTERVAL)
    if block.entries:
        block_last, pending = block.last_key, write_block(block.finish())
    if pending is not None:
        index.add(_short_successor(block_last), pending)
    meta_handle = write_block(_BlockBuilder(RESTART_INTERVAL).finish())
    index_handle = write_block(index.finish())
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    path.write_bytes(bytes(out) + footer)


def write_bundle(
    prefix: str | Path, tensors: Iterable[tuple[str, np.ndarray]], *, block_size: int = BLOCK_SIZE
) -> Path:
    """Write ``tensors`` (name, array) as a one-shard V2 checkpoint at ``prefix``; return the prefix.

    The data file holds the tensors in the order given (an iterable, so a large bundle can be produced
    tensor by tensor); the index lists them sorted by name. Names must be unique and non-empty.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[bytes, bytes] = {}
    offset = 0
    with open(shard_path(prefix, 0, 1), "wb") as f:
        for name, arr in tensors:
            arr = np.asarray(arr, order="C")  # (ascontiguousarray would make a scalar 1-d)
            code = _CODES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
            key = name.encode("utf-8")
            if code is None or not key or key in entries:
                raise ValueError(f"cannot write {name!r} of dtype {arr.dtype} (or a duplicate/empty name)")
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            crc = masked_crc32c(arr) if arr.nbytes else mask_crc(0)
            entries[key] = encode_entry(code, arr.shape, 0, offset, arr.nbytes, crc)
            f.write(memoryview(arr.reshape(-1)).cast("B") if arr.nbytes else b"")
            offset += arr.nbytes
    pairs = [(b"", encode_header())] + sorted(entries.items())
    _write_table(Path(f"{prefix}.index"), pairs, block_size)
    return prefix
