"""The compiled CPU CRF kernels (``csrc/crf.c``): built on first use, cached, called with ctypes.

Why C: Viterbi and forward-backward are ``T`` sequential steps over tiny ``(B, K, K)`` problems; in torch
each step costs a few operator dispatches whose overhead, not the arithmetic, dominates on CPU (and
pytorch-crf adds a Python loop per row), which matters most for whole texts of thousands of characters.
:func:`viterbi` keeps a block of 8 rows in one SIMD register per tag and runs the whole recursion and the
back-tracking without leaving C; :func:`marginals` runs forward-backward per row in float64, and
:func:`logz_grad` the same for the training loss, with its gradient.

Build: the first call compiles the source with the system C compiler (``$CC``, else ``cc``/``gcc``;
``-O3``, plus ``-mavx2 -mfma`` when the CPU has them) into the settings' cache root (``$NER_CACHE_DIR``,
default ``~/.cache/zh-ner``), under a name that hashes the source, flags and compiler, written atomically, so
later processes just load it. Without a compiler, or with
``NER_CRF_KERNEL=0``, :func:`load` returns None and :class:`ner_core.model.crf.ConstrainedCRF` uses its
torch implementations (same paths and the same marginals, slower). Threads: rows are split across up to
``torch.get_num_threads()`` threads (ctypes releases the GIL during the call).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ner_core.runtime.hardware import all_cpu_flags
from ner_core.settings import settings

__all__ = ["load", "viterbi", "marginals", "logz_grad", "cache_dir", "KernelUnavailable"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "crf.c"
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}
#: Rows, or row steps, per thread below which splitting the batch is not worth a thread hand-off.
_MIN_ROWS_PER_THREAD = 16
_MIN_STEPS_PER_THREAD = 4096


class KernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded (the reason is in the message)."""


def cache_dir() -> Path:
    """Where built kernels are kept: the settings' one cache root (``NER_CACHE_DIR``, see
    :mod:`ner_core.settings`)."""
    return settings().cache_dir


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build() -> Path:
    cc = _compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler found ($CC, cc, gcc or clang)")
    flags = ["-O3", "-std=c99", "-shared", "-fPIC"]
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= all_cpu_flags():
        flags += ["-mavx2", "-mfma"]
    source = _SOURCE.read_bytes()
    key = hashlib.sha1(source + " ".join([cc, *flags, platform.machine()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"crf-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".crf-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise KernelUnavailable(f"{cc} failed on {_SOURCE}: {proc.stderr.strip()[:500]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when disabled or unavailable (logged once, with the reason)."""
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        lib = None
        if not settings().crf_kernel:
            log.info("CRF C kernel disabled by NER_CRF_KERNEL; using the torch Viterbi and marginals")
        else:
            try:
                lib = ctypes.CDLL(str(_build()))
                i64, ptr = ctypes.c_int64, ctypes.c_void_p
                for fn in (lib.ner_viterbi, lib.ner_marginals, lib.ner_crf_logz_grad):
                    n_out = 3 if fn is lib.ner_crf_logz_grad else 1
                    fn.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr] + [ptr] * n_out + [i64, i64]
                    fn.restype = ctypes.c_int
            except (KernelUnavailable, OSError, subprocess.SubprocessError) as exc:
                log.warning("CRF C kernel unavailable (%s); using the torch Viterbi and marginals", exc)
                lib = None
        _STATE["lib"] = lib
        return lib


def _pool(n: int) -> ThreadPoolExecutor:
    """The shared worker threads; a forked child makes its own (the parent's threads do not exist there)."""
    pool = _STATE.get("pool")
    if pool is None or _STATE.get("pool_pid") != os.getpid() or pool._max_workers < n:  # type: ignore[attr-defined]
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ner-crf")
        _STATE["pool"], _STATE["pool_pid"] = pool, os.getpid()
    return pool  # type: ignore[return-value]


def _call(
    fn_name: str,
    em: np.ndarray,
    start: np.ndarray,
    trans: np.ndarray,
    end: np.ndarray,
    lengths: np.ndarray,
    out: np.ndarray | tuple[np.ndarray, ...],
    threads: int,
    block: int,
) -> None:
    """Checks the inputs and runs ``fn_name`` over the rows, split across ``threads`` threads on multiples
    of ``block`` rows (the kernel's row block, so none is split)."""
    lib = load()
    if lib is None:
        raise KernelUnavailable("the CRF C kernel is not available")
    B, T, K = em.shape
    if lengths.shape != (B,) or (B and (lengths.min() < 1 or lengths.max() > T)):
        raise ValueError(f"expected {B} lengths in [1, {T}], got {lengths.tolist()[:8]}...")
    fn = getattr(lib, fn_name)
    outs = out if isinstance(out, tuple) else (out,)
    args = [em.ctypes.data, B, T, K] + [a.ctypes.data for a in (start, trans, end, lengths, *outs)]

    def run(b0: int, b1: int) -> int:
        return fn(*args, b0, b1)

    worth = max(B // _MIN_ROWS_PER_THREAD, B * T // _MIN_STEPS_PER_THREAD, 1)
    n = max(1, min(int(threads), -(-B // block), worth))
    if n == 1:
        codes = [run(0, B)]
    else:
        step = -(-B // n)
        step = -(-step // block) * block
        bounds = [(b, min(B, b + step)) for b in range(0, B, step)]
        codes = list(_pool(len(bounds)).map(lambda ab: run(*ab), bounds))
    if any(c != 0 for c in codes):
        raise MemoryError(f"CRF C kernel could not allocate its buffers for {B}x{T}x{K}")


def _inputs(em, start, trans, end, lengths):
    f32 = [np.ascontiguousarray(a, dtype=np.float32) for a in (em, start, trans, end)]
    return (*f32, np.ascontiguousarray(lengths, dtype=np.int64))


def viterbi(
    em: np.ndarray,
    start: np.ndarray,
    trans: np.ndarray,
    end: np.ndarray,
    lengths: np.ndarray,
    threads: int = 1,
) -> np.ndarray:
    """Best paths ``(B, T)`` int64 (steps past a row's length repeat its last tag).

    Args:
        em: ``(B, T, K)`` float32 emissions; start ``(K,)``, trans ``(K, K)`` [from, to], end ``(K,)``
            float32 with the constraints applied (forbidden entries ``-inf``, or a finite penalty added);
            lengths ``(B,)`` int64 in ``[1, T]``. A row with no allowed path (its best score is
            ``-inf``) comes back as all -1.
        threads: split the rows over this many threads.

    Raises:
        KernelUnavailable: when :func:`load` found no kernel; MemoryError when C allocation failed.
    """
    em, start, trans, end, lengths = _inputs(em, start, trans, end, lengths)
    paths = np.empty(em.shape[:2], dtype=np.int64)  # (B, T)
    _call("ner_viterbi", em, start, trans, end, lengths, paths, threads, block=8)
    return paths


def marginals(
    em: np.ndarray,
    start: np.ndarray,
    trans: np.ndarray,
    end: np.ndarray,
    lengths: np.ndarray,
    threads: int = 1,
) -> np.ndarray:
    """Posterior tag probabilities ``(B, T, K)`` float32 by forward-backward (computed in float64);
    steps past a row's length are 0, every step of a row with no allowed path is NaN. Inputs and errors
    as in :func:`viterbi`."""
    em, start, trans, end, lengths = _inputs(em, start, trans, end, lengths)
    out = np.empty(em.shape, dtype=np.float32)  # (B, T, K)
    _call("ner_marginals", em, start, trans, end, lengths, out, threads, block=1)
    return out


def logz_grad(
    em: np.ndarray,
    start: np.ndarray,
    trans: np.ndarray,
    end: np.ndarray,
    lengths: np.ndarray,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unconstrained CRF's log-partition per row and its gradient, for the training loss.

    Returns ``(logz (B,) float64, marginals (B, T, K) float32, pairs (B, K, K) float64)``: ``marginals`` is
    d logz / d em (its step 0 is also d logz / d start and its step ``length - 1`` d logz / d end; 0 past a
    row's length), ``pairs[b, i, j]`` the expected number of ``i -> j`` transitions, d logz / d trans.
    Inputs (scores without constraints) and errors as in :func:`viterbi`.
    """
    em, start, trans, end, lengths = _inputs(em, start, trans, end, lengths)
    B, T, K = em.shape
    logz = np.empty(B, dtype=np.float64)
    marg = np.empty((B, T, K), dtype=np.float32)
    pairs = np.empty((B, K, K), dtype=np.float64)
    _call("ner_crf_logz_grad", em, start, trans, end, lengths, (logz, marg, pairs), threads, block=1)
    return logz, marg, pairs
