"""Local, offline Prefect: start a server on loopback and a process worker, register the deployments of
``prefect.yaml``; stop what was started.

``ner prefect up`` / ``make prefect-up`` call :func:`prefect_up`; ``ner prefect down`` / ``make prefect-down``
call :func:`prefect_down`. What was started (PIDs, port, API URL, log files) is written to
``$PREFECT_HOME/ner-prefect-up.json``, so ``down`` stops exactly those processes and nothing else.
The server's database lives under ``PREFECT_HOME``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = "ner-local"
STATE_NAME = "ner-prefect-up.json"


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_file(home: str | Path | None = None) -> Path:
    return Path(home or prefect_home()) / STATE_NAME


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _prefect_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def wait_for_api(api_url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``{api_url}/health`` until it answers 200; RuntimeError after ``timeout_s`` or if ``proc``
    died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect API at {api_url} did not answer within {timeout_s:.0f} s ({last})")


def _env(api_url: str, db: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "NER_HOME": str(ROOT),
        "NER_DB": db,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PREFECT_CLI_PROMPT": "false",
        **(extra or {}),
    }
    env.setdefault("PREFECT_HOME", str(prefect_home()))
    return env


def _check(cmd: list[str], env: dict[str, str], what: str, timeout_s: float = 300) -> str:
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {tail}")
    return r.stdout


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115  (the child keeps it)
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def prefect_up(
    *,
    db: str | Path = "ner.duckdb",
    host: str = "127.0.0.1",
    port: int | None = None,
    pool: str = POOL,
    prefect_file: str | Path = ROOT / "prefect.yaml",
    worker: bool = True,
    timeout_s: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Start a Prefect server on ``host:port`` (a free port when None) and a process worker on ``pool``,
    create the pool and register every deployment of ``prefect_file``. Returns the state that
    :func:`prefect_down` needs (also written to ``$PREFECT_HOME/ner-prefect-up.json``)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"expected a loopback host (127.0.0.1) for the local server, got {host!r}")
    if port is not None and not (0 < int(port) < 65536):
        raise ValueError(f"expected a TCP port 1-65535, got {port!r}")
    if not Path(prefect_file).is_file():
        raise FileNotFoundError(f"{prefect_file}: no such deployment file")
    existing = state_file()
    if existing.exists():
        old = json.loads(existing.read_text(encoding="utf-8"))
        if any(_alive(p) for p in (old.get("server_pid"), old.get("worker_pid"))):
            raise RuntimeError(
                f"a local Prefect is already up ({old['api_url']}); stop it with `ner prefect down`"
            )
    port = int(port or free_port(host))
    api_url = f"http://{host}:{port}/api"
    env = _env(api_url, str(Path(db).resolve()), extra_env)
    logs = prefect_home() / "logs"
    state: dict = {
        "api_url": api_url,
        "port": port,
        "pool": pool,
        "db": env["NER_DB"],
        "server_log": str(logs / "server.log"),
        "worker_log": str(logs / "worker.log"),
        "server_pid": None,
        "worker_pid": None,
    }
    server = _spawn(
        _prefect_cmd("server", "start", "--host", host, "--port", str(port)), env, logs / "server.log"
    )
    state["server_pid"] = server.pid
    _write_state(state)
    try:
        wait_for_api(api_url, timeout_s, server)
        _check(
            _prefect_cmd("work-pool", "create", pool, "--type", "process", "--overwrite"),
            env,
            f"creating work pool {pool}",
        )
        out = _check(
            _prefect_cmd("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)),
            env,
            "prefect deploy --all",
        )
        state["deploy_output_tail"] = out.strip().splitlines()[-3:]
        if worker:
            w = _spawn(
                _prefect_cmd("worker", "start", "--pool", pool, "--type", "process"), env, logs / "worker.log"
            )
            state["worker_pid"] = w.pid
        _write_state(state)
    except BaseException:
        prefect_down()
        raise
    return state


def _write_state(state: dict) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2), encoding="utf-8")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _stop_group(pid: int, timeout_s: float) -> None:
    """SIGTERM the process group we started (start_new_session made pid its leader), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.2)


def prefect_down(timeout_s: float = 20.0) -> list[int]:
    """Stop the worker and the server that :func:`prefect_up` started (by their recorded PIDs);
    returns the PIDs stopped. Nothing recorded -> nothing to do."""
    path = state_file()
    if not path.exists():
        return []
    state = json.loads(path.read_text(encoding="utf-8"))
    stopped = []
    for key in ("worker_pid", "server_pid"):  # worker first: it should not lose its server mid-run
        pid = state.get(key)
        if pid and _alive(pid):
            _stop_group(int(pid), timeout_s)
            stopped.append(int(pid))
    path.unlink(missing_ok=True)
    return stopped


def status() -> dict | None:
    """The recorded state with ``server_alive`` / ``worker_alive``, or None when nothing is up."""
    path = state_file()
    if not path.exists():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    state["server_alive"] = _alive(state.get("server_pid"))
    state["worker_alive"] = _alive(state.get("worker_pid"))
    return state
