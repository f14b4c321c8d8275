"""``ner ui`` and the Streamlit process it starts live and die together: SIGTERM to the command stops the
dashboard (it used to leave Streamlit serving), and so does ``kill -9`` of the command (Linux: the child is
told when its parent dies)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process checks read /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait(cond, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(tmp_path: Path) -> tuple[subprocess.Popen, int, int]:
    port = _free_port()
    env = {**os.environ, "NER_NO_PREFECT": "1"}
    cmd = [sys.executable, "-m", "app.cli", "ui", "--db", str(tmp_path / "x.duckdb"), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait(lambda: _listening(port) or proc.poll() is not None, 120), "the dashboard did not start"
    assert proc.poll() is None, f"ner ui exited with {proc.returncode}"
    children = _children(proc.pid)
    assert len(children) == 1, children
    return proc, children[0], port


@pytest.mark.slow
def test_sigterm_to_ner_ui_stops_the_dashboard(tmp_path):
    proc, child, port = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM or proc.returncode == 0
        assert _wait(lambda: not _alive(child), 15), "Streamlit still runs after SIGTERM to ner ui"
        assert not _listening(port)
    finally:
        for pid in (proc.pid, child):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_kill_9_of_ner_ui_stops_the_dashboard_too(tmp_path):
    proc, child, port = _start(tmp_path)
    try:
        proc.kill()
        proc.wait(timeout=30)
        assert _wait(lambda: not _alive(child), 15), "Streamlit outlived its parent's kill -9"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
