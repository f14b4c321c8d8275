"""One query in a process of its own: capped in memory and in result bytes, killed at its deadline.

Why a process. DuckDB checks its interrupt flag between vectors, so one long C call (``repeat`` building a
string of a gigabyte) runs on past an interrupt; and its ``memory_limit`` does not count every allocation
(the strings a function builds, the rows handed to Python). A child process can be killed at its deadline
whatever it is doing, and the kernel caps its address space (``RLIMIT_AS``): an allocation past the cap
fails in the child (DuckDB: out of memory) instead of taking the machine.

How. :func:`run_isolated` starts a fresh interpreter (``python -I -c``, not a fork: the caller may be a
dashboard whose threads hold locks) running :func:`child_main`, sends it the request on stdin and reads
frames from its stdout: an 8-byte length, then a pickle, read back by :func:`safe_loads`, which builds
plain values only. The child opens the database read-only, applies the profile (:func:`configure`), caps
its address space and says ``ready``; the deadline starts then, so waiting for a writer's lock is not
query time. It sends the rows in chunks of about a megabyte and stops at the result cap. The caller kills
it at the deadline, or when it sends more than the cap, and removes its spill folder. Peak memory is the
child's own high-water mark (``VmHWM``: the child reports it last, or the caller reads it just before a
kill), not ``wait4``'s ``ru_maxrss``: on Linux a process started from a large one inherits that one's
resident size in ``ru_maxrss`` at ``exec``, so a dashboard or test runner of 2 GB would make every query
look like 2 GB.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import closing, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["Outcome", "Profile", "child_main", "configure", "run_isolated", "safe_loads", "vm_hwm_mb"]

_MIB = 1 << 20
_ROOT = str(Path(__file__).resolve().parents[1])
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from storage.sql_sandbox import child_main; child_main()"
)
_START_S = 15.0  # what a child may take to start (interpreter, imports) on a busy machine, beyond wait_s
_CHUNK_BYTES = _MIB  # rows are fetched and pickled about this many bytes at a time
_MAX_CHUNK_ROWS = 2048
_SLACK = _MIB  # bytes the caller reads beyond the result cap (the frames around the rows) before it kills
_EXIT_GRACE_S = 5.0  # how long a child that sent its last frame may take to exit before it is killed


@dataclass(frozen=True)
class Profile:
    """What one query may take of the machine (:data:`storage.query.INTERACTIVE` and ``BATCH``)."""

    name: str
    memory_limit_mb: int  # DuckDB's memory_limit: what it may hold before it spills or fails
    threads: int  # DuckDB's threads
    max_temp_mb: int  # DuckDB's max_temp_directory_size: what it may spill to disk
    max_result_mb: float | None = None  # pickled bytes of rows that may come back (None: no cap)
    isolated: bool = False  # a child process, killed at the deadline, its address space capped
    headroom_mb: int = 256  # the child's address space beyond memory_limit: Python rows, pickles

    def __post_init__(self) -> None:
        for name in ("memory_limit_mb", "threads", "max_temp_mb", "headroom_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} as an int >= 1, got {value!r}")
        if self.max_result_mb is not None and not self.max_result_mb > 0:
            raise ValueError(f"expected max_result_mb > 0 or None, got {self.max_result_mb!r}")
        if self.max_result_mb is not None and not self.isolated:
            raise ValueError("max_result_mb needs isolated=True (the child process counts the bytes)")

    @property
    def cap_mb(self) -> int:
        """The address space an isolated child may map beyond what it maps when ready."""
        return self.memory_limit_mb + self.headroom_mb


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def configure(con: duckdb.DuckDBPyConnection, profile: Profile, temp_dir: Path) -> None:
    """Set ``profile``'s limits on ``con``, spill into ``temp_dir``, switch off file access, extension
    loading and Python variables as tables, then lock the configuration so that no query can SET it back."""
    for statement in (
        f"SET temp_directory = {_quote(str(temp_dir))}",
        f"SET memory_limit = '{profile.memory_limit_mb}MiB'",
        f"SET max_temp_directory_size = '{profile.max_temp_mb}MiB'",
        f"SET threads = {profile.threads}",
        "SET enable_progress_bar = false",
        "SET python_enable_replacements = false",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(statement)


# ------------------------------------------------------------------------------------------- frames
_PLAIN = {
    ("datetime", "date"),
    ("datetime", "datetime"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"),
    ("zoneinfo", "ZoneInfo"),
}


def _zoneinfo_getattr(obj: Any, name: str) -> Any:
    """The one ``getattr`` a pickled ``ZoneInfo`` needs (``ZoneInfo._unpickle``), and nothing else."""
    from zoneinfo import ZoneInfo

    if obj is ZoneInfo and name == "_unpickle":
        return ZoneInfo._unpickle
    raise pickle.UnpicklingError(f"refused getattr({obj!r}, {name!r}): frames carry plain values only")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if (module, name) == ("builtins", "getattr"):
            return _zoneinfo_getattr
        raise pickle.UnpicklingError(f"refused {module}.{name}: frames carry plain values only")


def safe_loads(data: bytes) -> Any:
    """A frame back as values: builtins, dates and times, Decimal, UUID, ZoneInfo; any other class is
    refused (``pickle.UnpicklingError``), so a frame cannot make this process run code."""
    return _PlainUnpickler(io.BytesIO(data)).load()


def _write(fd: int, blob: bytes) -> None:
    data = memoryview(len(blob).to_bytes(8, "big") + blob)
    while data:
        data = data[os.write(fd, data) :]


def _send(fd: int, frame: tuple) -> None:
    _write(fd, pickle.dumps(frame, protocol=5))


# -------------------------------------------------------------------------------------------- child
def _cap_address_space(cap_mb: int) -> None:
    """Cap this process's address space at what it maps now plus ``cap_mb``: past it an allocation fails
    (DuckDB: out of memory; Python: MemoryError) instead of taking the machine. No cap without /proc."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return
    want = mapped + cap_mb * _MIB
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _send_rows(fd: int, cur: duckdb.DuckDBPyConnection, limit: int | None, cap_mb: float | None) -> None:
    """Send at most ``limit`` + 1 rows (one past the limit says more exist) in chunks of about a MiB; a
    ``too_large`` frame ends it when the pickled rows would pass ``cap_mb``."""
    cap = None if cap_mb is None else int(cap_mb * _MIB)
    sent = sent_bytes = 0
    size = 1  # the first fetch is one row; the next ones as many as make about _CHUNK_BYTES
    while limit is None or sent <= limit:
        rows = cur.fetchmany(size if limit is None else min(size, limit + 1 - sent))
        if not rows:
            break
        blob = pickle.dumps(("rows", rows), protocol=5)
        sent_bytes += len(blob)
        if cap is not None and sent_bytes > cap:
            _send(fd, ("too_large", sent))
            return
        _write(fd, blob)
        sent += len(rows)
        size = max(1, min(_MAX_CHUNK_ROWS, _CHUNK_BYTES * len(rows) // len(blob)))
    _send(fd, ("end",))


def _run(fd: int, req: dict) -> None:
    from storage.db import DatabaseLockedError, connect

    profile = Profile(**req["profile"])
    try:
        con = connect(req["db"], read_only=True, wait_s=req["wait_s"])
    except FileNotFoundError as exc:
        _send(fd, ("missing", str(exc)))
        return
    except DatabaseLockedError as exc:
        _send(fd, ("locked", exc.pid, exc.command, str(exc)))
        return
    with closing(con):
        configure(con, profile, Path(req["spill"]))
        con.execute("SELECT 1").fetchall()  # DuckDB's threads exist before the address space is read
        _cap_address_space(profile.cap_mb)
        _send(fd, ("ready",))
        try:
            cur = con.execute(req["sql"], req["params"])
            _send(fd, ("columns", [d[0] for d in cur.description] if cur.description else []))
            _send_rows(fd, cur, req["limit"], profile.max_result_mb)
        except (duckdb.OutOfMemoryException, MemoryError):
            _send(fd, ("memory",))
        except duckdb.Error as exc:  # a bad_alloc may also come wrapped in another kind of error
            _send(fd, ("memory",) if "out of memory" in str(exc).lower() else ("failed", str(exc)))


def child_main() -> None:
    """The child: the request from stdin, frames to the original stdout (fd 1 then points to /dev/null,
    so nothing else printed there can break a frame)."""
    fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    req = safe_loads(sys.stdin.buffer.read())  # the request: plain values, like every frame
    try:
        _run(fd, req)
    except MemoryError:
        with suppress(OSError):
            _send(fd, ("memory",))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        with suppress(OSError):
            _send(fd, ("failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
    finally:
        with suppress(OSError):
            _send(fd, ("peak", vm_hwm_mb("self")))


def vm_hwm_mb(pid: int | str) -> float | None:
    """Peak resident memory (``VmHWM``) of process ``pid`` (or ``"self"``) in MiB; ``None`` where it cannot
    be read (a process already gone, no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


# ------------------------------------------------------------------------------------------- parent
@dataclass
class Outcome:
    """What came back. ``ended``: ``exited`` (the child ended by itself), ``timeout`` (killed at the
    deadline), ``too_large`` (killed for sending past the cap) or ``no_start`` (killed before it was
    ready). ``last``: the child's last frame other than rows (``("end",)``, or an error such as
    ``("memory",)``, ``("too_large", rows_sent)``, ``("failed", message)``), None when it sent none."""

    ended: str
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    last: tuple | None = None
    exit_code: int | None = None  # negative: the signal that ended it
    peak_rss_mb: float | None = None


def run_isolated(
    db: str, sql: str, params: list, *, limit: int | None, limit_s: float, wait_s: float, profile: Profile
) -> Outcome:
    """Run one query in a child process (see the module's doc); every path kills and reaps the child."""
    spill = Path(tempfile.mkdtemp(prefix="ner-sql-"))
    request = {
        "db": db, "sql": sql, "params": list(params), "limit": limit, "wait_s": wait_s,
        "profile": asdict(profile), "spill": str(spill),
    }  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _BOOT, _ROOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},  # fewer malloc arenas: less address space reserved
    )
    out = Outcome("no_start")
    try:
        with suppress(BrokenPipeError):  # a child that died at once: its exit status tells
            proc.stdin.write(pickle.dumps(request, protocol=5))
        with suppress(BrokenPipeError):
            proc.stdin.close()
        cap = None if profile.max_result_mb is None else int(profile.max_result_mb * _MIB) + _SLACK
        _collect(proc.stdout.fileno(), out, wait_s + _START_S, limit_s, cap)
    finally:
        status, before_kill = _reap(proc.pid, _EXIT_GRACE_S if out.ended == "exited" else 0.0)
        proc.returncode = out.exit_code = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        proc.stdout.close()
        known = [m for m in (out.peak_rss_mb, before_kill) if m is not None]
        out.peak_rss_mb = max(known) if known else None
        shutil.rmtree(spill, ignore_errors=True)
    return out


def _reap(pid: int, grace_s: float) -> tuple[int, float | None]:
    """Wait up to ``grace_s`` for the child to exit, then kill it; its wait status and, when it had to be
    killed, its peak memory read just before (:func:`vm_hwm_mb`). Until it is reaped here its pid cannot be
    reused, so the kill reaches this child and no other process."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, None
        time.sleep(0.01)
    peak = vm_hwm_mb(pid)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status, peak


def _collect(fd: int, out: Outcome, start_s: float, limit_s: float, cap: int | None) -> None:
    """Read frames into ``out`` until the child closes its end (``exited``), the deadline passes or more
    than ``cap`` bytes came; ``out.ended`` says which. The deadline is ``start_s`` until the child is
    ready, then ``limit_s`` from that moment."""
    deadline = time.monotonic() + start_s
    buf = bytearray()
    received = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return  # out.ended is no_start, or timeout once the child said ready
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            out.ended = "exited"
            return
        received += len(chunk)
        if cap is not None and received > cap:
            out.ended, out.last = "too_large", ("too_large", len(out.rows))
            return
        buf += chunk
        while len(buf) >= 8 and len(buf) >= 8 + (n := int.from_bytes(buf[:8], "big")):
            frame = safe_loads(bytes(buf[8 : 8 + n]))
            del buf[: 8 + n]
            if frame[0] == "ready":  # the query starts: from now on a deadline that passes is a timeout
                out.ended, deadline = "timeout", time.monotonic() + limit_s
            elif frame[0] == "columns":
                out.columns = frame[1]
            elif frame[0] == "rows":
                out.rows.extend(frame[1])
            elif frame[0] == "peak":  # the child's own high-water mark, sent last
                out.peak_rss_mb = frame[1]
            else:
                out.last = frame
