"""``ner ui``: the Streamlit dashboard, on loopback unless ``--allow-remote`` (it has no login:
:func:`app.exposure.check_bind`).

Streamlit runs as a child process that lives exactly as long as the command: SIGTERM or SIGHUP to ``ner ui``
is passed on to it and the command waits for it to stop (on Linux the child is also told to stop when its
parent dies, ``kill -9`` included). The dashboard fetches nothing from the internet: its icons are bundled
(the favicon is an emoji, drawn by the browser), usage statistics are off, and the toolbar's developer
items (Deploy) are hidden.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from app import exposure
from app.commands.shared import ROOT, add_common

#: how long Streamlit may take to stop after the signal before it is killed
STOP_TIMEOUT_S = 10.0


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("ui", help="start the Streamlit dashboard"))
    sp.add_argument("--host", default="127.0.0.1"), sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--allow-remote", action="store_true", help="listen on a non-loopback --host (no login!)")
    sp.set_defaults(func=cmd_ui)


def streamlit_command(host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line of the dashboard on ``host``:``port``."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "ui" / "app.py"),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def cmd_ui(args: argparse.Namespace) -> int:
    warning = exposure.check_bind(args.host, args.port, allow_remote=args.allow_remote, what="the dashboard")
    if warning:  # a non-loopback address with --allow-remote: said on every start
        print(warning, file=sys.stderr, flush=True)
    env = {**os.environ, "NER_DB": str(Path(args.db).resolve())}
    print(f"dashboard on http://{args.host}:{args.port}  (database {args.db})", flush=True)
    return run_child(streamlit_command(args.host, args.port), env)


def run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` until it exits, passing SIGTERM and SIGHUP on to it; its exit status (128 + N when a
    signal N ended it). Ctrl-C reaches the child through the terminal's process group: the command waits
    for it to stop."""
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, _frame: proc.send_signal(signum)) for s in forwarded}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # the child got the SIGINT too: wait for it to stop
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop(proc)
    return 128 - code if code < 0 else code


def _stop(proc: subprocess.Popen) -> None:
    """Make sure ``proc`` is gone: SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass
