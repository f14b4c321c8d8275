"""Security checks of issue 16: the SQL guard's time limit, `ner ui` on a non-loopback address, and a
pickled training checkpoint that would run code."""

from __future__ import annotations

import time

import pytest

from storage.db import connect
from storage.query import DEFAULT_TIME_LIMIT_S, QueryTimeout, SqlRejected, query, time_limit_from_env

CROSS_JOIN = "SELECT count(*) FROM range(200000000) a, range(200000000) b WHERE a.range + b.range = -1"


def test_a_huge_cross_join_is_interrupted_at_the_time_limit(tmp_path):
    db = tmp_path / "g.duckdb"
    connect(db).close()
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"ran past its time limit of 1 s and was stopped") as info:
        query(db, CROSS_JOIN, time_limit_s=1.0)
    # the query ran (it was not refused up front) and was stopped, not left running for hours
    assert isinstance(info.value, SqlRejected) and info.value.limit_s == 1.0
    assert 0.9 <= time.monotonic() - t0 < 60
    assert "\n" not in str(info.value)
    # the timer does not outlive a fast query: a later query on the same file runs normally
    assert query(db, "SELECT 42 AS x", time_limit_s=1.0)[0]["x"] == 42
    time.sleep(1.1)  # past the earlier timer: nothing fires into a closed or reused connection


def test_the_time_limit_comes_from_the_environment_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("NER_QUERY_TIME_LIMIT_S", raising=False)
    assert time_limit_from_env() == DEFAULT_TIME_LIMIT_S == 10.0
    monkeypatch.setenv("NER_QUERY_TIME_LIMIT_S", "0.5")
    assert time_limit_from_env() == 0.5
    db = tmp_path / "g.duckdb"
    connect(db).close()
    with pytest.raises(QueryTimeout, match="0.5 s"):
        query(db, CROSS_JOIN)
    monkeypatch.setenv("NER_QUERY_TIME_LIMIT_S", "soon")
    with pytest.raises(ValueError, match="NER_QUERY_TIME_LIMIT_S: expected a number of seconds > 0"):
        query(db, "SELECT 1")
    with pytest.raises(ValueError, match="expected time_limit_s as seconds > 0"):
        query(db, "SELECT 1", time_limit_s=0)


# ------------------------------------------------------------------------------ ner ui off loopback
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_flag(host):
    from app.exposure import check_bind, is_loopback

    assert is_loopback(host) and check_bind(host, 8501, allow_remote=False, what="the dashboard") is None


def test_ner_ui_on_another_address_needs_allow_remote_and_says_there_is_no_login(
    tmp_path, capsys, monkeypatch
):
    from app import cli
    from app.commands import ui

    started = []
    monkeypatch.setattr(ui, "run_child", lambda cmd, env: started.append(cmd) or 0)
    db = str(tmp_path / "x.duckdb")
    assert cli.main(["ui", "--host", "0.0.0.0", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ner ui: error: 0.0.0.0 is not a loopback address and the dashboard has no login")
    assert "--allow-remote" in err and err.count("\n") == 1 and not started
    assert cli.main(["ui", "--host", "0.0.0.0", "--allow-remote", "--db", db]) == 0
    out, err = capsys.readouterr()
    assert "warning: the dashboard listens on 0.0.0.0:8501 and has no login" in err
    assert started[-1][started[-1].index("--server.address") + 1] == "0.0.0.0"
    assert cli.main(["ui", "--db", db]) == 0  # the default, loopback: no flag, no warning
    assert "no login" not in capsys.readouterr().err and len(started) == 2


# ------------------------------------------------------------------ pickled checkpoints never run code
class _Runs:
    """Unpickling this calls ``fn(*args)``: a payload that would run code."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(marker):
    import builtins
    import os
    import subprocess

    return {
        "os.system": _Runs(os.system, f"touch {marker}"),
        "eval": _Runs(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "subprocess": _Runs(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("kind", ["os.system", "eval", "subprocess"])
def test_a_checkpoint_pickle_that_would_run_code_is_refused_unread(tmp_path, kind):
    import torch

    from ner_core.training.run_state import CheckpointError, load_checkpoint

    marker = tmp_path / "payload-ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": _payloads(marker)[kind], "state": {"epoch": 1}}, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: refused: .*could run code") as info:
        load_checkpoint(run_dir)
    assert "\n" not in str(info.value)
    assert not marker.exists() and (run_dir / "checkpoint.pt").exists()


def test_no_source_file_unpickles_with_code_allowed():
    """Every torch.load reads weights only; nothing calls pickle.load(s) on a file or weights_only=False."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = re.compile(
        r"weights_only\s*=\s*False|pickle\.loads?\(|torch\.load\((?![^)]*weights_only\s*=\s*True)"
    )
    found = []
    for path in root.rglob("*.py"):
        if {".venv", "node_modules", ".git"} & set(path.parts) or path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if (
                bad.search(line) and "pickle.loads(pickle.dumps(" not in line
            ):  # a round trip of our own object
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not found, found
