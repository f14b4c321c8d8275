"""The SQL page's three attacks of issue 23, each through ``storage.query.query`` in a process of its own.

``python -m bench.reliability.sql_limits [--root DIR]`` prints, per attack, how the query ended, the peak
resident memory of the calling process and of every process it waited for (the query's runner included:
``wait4``'s ``ru_maxrss``), and the time until the call returned. ``--root`` measures another checkout's
code (e.g. ``git archive HEAD~1 storage ner_core | tar -x -C /tmp/old``), the figures before a fix.
The ``SQL page limits`` stage of the campaign runs the same attacks on this checkout and fails when one
takes more memory than the page's profile allows or runs far past its time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.reliability.harness import REPO, Context, StageResult, stage

#: name -> (SQL, time limit in seconds); called as the SQL page calls it (a 200-row limit)
ATTACKS: dict[str, tuple[str, float]] = {
    "list of 4000 x 1 MB strings": ("SELECT list(repeat('x', 1000000)) FROM range(4000)", 10.0),
    "one 1.5 GB string, 1 s limit": ("SELECT length(repeat('x', 1500000000))", 1.0),
    "200 rows of 10 MB": ("SELECT repeat('x', 10000000) AS s FROM range(200)", 10.0),
}
_BACKSTOP_S = 120.0  # the measuring parent kills a call that has not returned by then

_CALL = """
import json, resource, sys, time
if sys.argv[5] != "none":  # a guard for measuring code that has no cap of its own
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[5]) << 20, int(sys.argv[5]) << 20))
sys.path.insert(0, sys.argv[1])
from storage.db import connect
from storage.query import query
db, sql, limit_s = sys.argv[2], sys.argv[3], float(sys.argv[4])
connect(db).close()
kw = {}
if sys.argv[6] != "page":  # the page's profile with more headroom: only the deadline stops the query
    import dataclasses, storage.query as q
    kw["profile"] = dataclasses.replace(q.INTERACTIVE, headroom_mb=int(sys.argv[6]))
t0 = time.monotonic()
try:
    rows = query(db, sql, limit=200, time_limit_s=limit_s, **kw)
    out = {"ended": f"returned {len(rows)} rows"}
except Exception as exc:
    out = {"ended": f"{type(exc).__name__}: {exc}"}
    rows = exc
out["call_s"] = time.monotonic() - t0
def hwm():  # this interpreter's own peak (ru_maxrss would include what it inherited at exec)
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
out["self_mb"] = hwm()
out["query_mb"] = getattr(rows, "peak_rss_mb", None)  # the query's own process, where it had one
print(json.dumps(out))
"""


def measure(
    root: Path,
    sql: str,
    limit_s: float,
    workdir: Path,
    guard_mb: int | None = None,
    headroom_mb: int | None = None,
) -> dict:
    """Run one call in a fresh interpreter on ``root``'s code: how it ended, the call's time, the wall time
    and the peak RSS of that interpreter and of the query's own process (their ``VmHWM``). ``guard_mb``
    caps the interpreter's address space (its children inherit it), for code without a cap of its own;
    ``headroom_mb`` widens the page's profile (the deadline alone then stops a slow allocation)."""
    db = workdir / f"a{time.monotonic_ns()}.duckdb"
    out = workdir / "out.json"
    with open(out, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CALL,
                str(root),
                str(db),
                sql,
                str(limit_s),
                str(guard_mb or "none"),
                str(headroom_mb or "page"),
            ],
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
    t0 = time.monotonic()
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if not killed and time.monotonic() - t0 > _BACKSTOP_S:
            proc.kill()
            killed = True
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    text = out.read_text(encoding="utf-8").strip()
    try:
        result = json.loads(text[text.rindex('{"ended"') :])  # DuckDB may print a progress bar before it
    except (IndexError, ValueError):
        result = {"ended": f"no report (exit status {proc.returncode}): {text[-300:]!r}"}
    if killed:
        result["ended"] = f"still running after {_BACKSTOP_S:g} s: killed by the bench"
    result["wall_s"] = time.monotonic() - t0
    # the larger of the interpreter's own peak and the query process's (each their VmHWM); wait4's
    # ru_maxrss stands in only when the interpreter reported nothing (killed): it counts what a process
    # inherits at exec from a large parent (a test runner), so it overstates
    peaks = [result.get(k) for k in ("self_mb", "query_mb") if result.get(k) is not None]
    result["peak_rss_mb"] = max(peaks) if peaks else usage.ru_maxrss / 1024
    return result


def measure_all(root: Path) -> dict[str, dict]:
    """Every attack of :data:`ATTACKS` on ``root``'s code, in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="ner-sql-limits-") as tmp:
        return {name: measure(root, sql, limit_s, Path(tmp)) for name, (sql, limit_s) in ATTACKS.items()}


_OVERHEAD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import storage.query as q
from storage.db import connect
connect(sys.argv[2]).close()
out = {}
for name in ("INTERACTIVE", "BATCH", None):
    if name and not hasattr(q, name):
        continue
    kw = {"profile": getattr(q, name)} if name else {}
    q.query(sys.argv[2], "SELECT 1", **kw)  # warm: imports, first connection
    t0 = time.perf_counter()
    for _ in range(int(sys.argv[3])):
        q.query(sys.argv[2], "SELECT i FROM range(100) t(i)", **kw)
    out[name or "default"] = (time.perf_counter() - t0) / int(sys.argv[3]) * 1000
print(json.dumps(out))
"""


def overhead_ms(root: Path, n: int = 20) -> dict[str, float]:
    """Milliseconds per small query (100 rows) through ``root``'s :func:`storage.query.query`, per profile
    it has (``default``: no profile named)."""
    with tempfile.TemporaryDirectory(prefix="ner-sql-limits-") as tmp:
        done = subprocess.run(
            [sys.executable, "-c", _OVERHEAD, str(root), str(Path(tmp) / "o.duckdb"), str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(done.stdout[done.stdout.rindex("{") :])


@stage("SQL page limits", "security", quick=False)
def sql_page_limits(ctx: Context, res: StageResult) -> None:
    """Each attack of issue 23 through the SQL page's call: stopped, its peak memory under the page's cap
    (plus an interpreter's worth), and well before the attack's own run time."""
    from storage.query import INTERACTIVE

    bound_mb = INTERACTIVE.cap_mb + 256
    for name, (sql, limit_s) in ATTACKS.items():
        res.cases += 1
        got = measure(REPO, sql, limit_s, ctx.scratch("sql-limits"))
        res.figures[name] = f"{got['ended'][:60]}; peak {got['peak_rss_mb']:.0f} MB; {got['wall_s']:.1f} s"
        if got["ended"].startswith("returned") or got["peak_rss_mb"] > bound_mb:
            res.fail(f"{name}: {got['ended'][:80]}, peak {got['peak_rss_mb']:.0f} MB (bound {bound_mb} MB)")
        if got["wall_s"] > 5 * limit_s + 5:
            res.fail(f"{name}: the call took {got['wall_s']:.1f} s (limit {limit_s:g} s)")
    per = overhead_ms(REPO)
    res.figures["ms per small query"] = ", ".join(f"{k} {v:.0f}" for k, v in per.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability.sql_limits", description=__doc__)
    p.add_argument("--root", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    args = p.parse_args(argv)
    print(f"code: {args.root.resolve()}, {os.cpu_count()} CPUs")
    print("| attack | time limit | ended | call s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, r in measure_all(args.root.resolve()).items():
        ended = " ".join(r["ended"].split())[:110]
        call_s = r.get("call_s", r["wall_s"])
        print(f"| {name} | {ATTACKS[name][1]:g} s | {ended} | {call_s:.1f} | {r['peak_rss_mb']:.0f} |")
    if (args.root / "storage" / "sql_sandbox.py").exists():
        sql, limit_s = ATTACKS["one 1.5 GB string, 1 s limit"]
        with tempfile.TemporaryDirectory(prefix="ner-sql-limits-") as tmp:
            r = measure(args.root.resolve(), sql, limit_s, Path(tmp), headroom_mb=4096)
        ended = " ".join(r["ended"].split())[:110]
        print(f"| the same, 4 GB headroom | 1 s | {ended} | {r['call_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    per = overhead_ms(args.root.resolve())
    print("ms per small query (100 rows): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
