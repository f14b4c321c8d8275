"""``ner ui``: the Streamlit dashboard, on loopback unless ``--allow-remote`` (it has no login:
:func:`app.exposure.check_bind`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from app import exposure
from app.commands.shared import ROOT, add_common


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("ui", help="start the Streamlit dashboard"))
    sp.add_argument("--host", default="127.0.0.1"), sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--allow-remote", action="store_true", help="listen on a non-loopback --host (no login!)")
    sp.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    warning = exposure.check_bind(args.host, args.port, allow_remote=args.allow_remote, what="the dashboard")
    if warning:  # a non-loopback address with --allow-remote: said on every start
        print(warning, file=sys.stderr, flush=True)
    env = {**os.environ, "NER_DB": str(Path(args.db).resolve())}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "ui" / "app.py"),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    print(f"dashboard on http://{args.host}:{args.port}  (database {args.db})", flush=True)
    return subprocess.call(cmd, env=env)
