"""The prediction service under hostile or heavy use: the API key, the bounded queue (503 + Retry-After),
bad bodies (lone surrogates, NUL, deep nesting, chunked bodies past the limit, bodies that never end),
idle connections, and a graceful stop on SIGTERM. Raw-socket cases run against a real uvicorn
subprocess (:func:`tests.test_serve.start_service`)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.test_predict import build_model_dir
from tests.test_serve import _BlockingTagger, start_service, stop_service

KEY = "k" * 8 + "-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("guard-model") / "model", tiny_encoder_dir)


@pytest.fixture(scope="module")
def guarded(model_dir, tmp_path_factory):
    """A loopback service with an API key (from the environment), small limits and 1-second timeouts."""
    log = tmp_path_factory.mktemp("guard-log") / "serve.log"
    args = ["--max-total-chars", "5000", "--window", "32", "--body-timeout", "1", "--idle-timeout", "1"]
    svc = start_service(model_dir, log, *args, env={"NER_API_KEY": KEY})
    yield svc
    stop_service(svc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _raw(port: int, data: bytes, *, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the server closes it: (all bytes, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(data)
        except OSError:  # the server answered and closed before taking it all
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out, time.monotonic() - t0


# ----------------------------------------------------------------------------------------- units
def test_loopback_and_the_api_key_sources(tmp_path):
    from app.exposure import check_keyed_bind, is_loopback
    from app.serve_guard import load_api_key

    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.org"]))
    assert load_api_key(None, environ={}) is None
    assert load_api_key(None, environ={"NER_API_KEY": f" {KEY}\n"}) == KEY
    f = tmp_path / "key"
    f.write_text(f"{KEY}\n", encoding="utf-8")
    assert load_api_key(f, environ={"NER_API_KEY": "x" * 20}) == KEY  # the file wins
    f.write_text("short\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"--api-key-file .* has 5 characters; use at least 16"):
        load_api_key(f, environ={})
    with pytest.raises(ValueError, match="no such file"):
        load_api_key(tmp_path / "nope", environ={})
    with pytest.raises(ValueError, match="--host 0.0.0.0 is reachable from other machines"):
        check_keyed_bind("0.0.0.0", None)
    check_keyed_bind("0.0.0.0", KEY)
    check_keyed_bind("127.0.0.1", None)


def test_one_loopback_rule_for_the_dashboard_and_the_service(monkeypatch):
    """Both bind checks ask app.exposure.is_loopback, which resolves names: a name that reaches only this
    machine needs neither a key nor --allow-remote, one that reaches another machine needs them."""
    from app import exposure, serve_guard

    assert not hasattr(serve_guard, "is_loopback") and not hasattr(serve_guard, "check_bind")
    real = socket.getaddrinfo
    names = {"api.internal": "127.0.0.1", "api.public": "10.0.0.5"}

    def resolve(host, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    exposure.check_keyed_bind("api.internal", None)
    assert exposure.check_bind("api.internal", 8501, allow_remote=False, what="the dashboard") is None
    with pytest.raises(ValueError, match="--host api.public is reachable from other machines"):
        exposure.check_keyed_bind("api.public", None)
    with pytest.raises(ValueError, match="api.public is not a loopback address"):
        exposure.check_bind("api.public", 8501, allow_remote=False, what="the dashboard")


def test_json_depth_and_text_checks():
    from app.serve_guard import json_depth_exceeds, text_problem

    assert not json_depth_exceeds(b'{"texts": ["a", "b"]}')
    assert not json_depth_exceeds(json.dumps({"text": "[" * 5000 + "{" * 5000}).encode())  # in a string
    assert json_depth_exceeds(b'{"text": ' + b"[" * 33 + b"]" * 33 + b"}")
    assert not json_depth_exceeds(b"[" * 32 + b"]" * 32)
    assert json_depth_exceeds(b'{"a": "\\"[", "b": ' + b"{" * 40)  # an escaped quote does not end a string
    assert text_problem(["张三", "ok"]) is None
    assert text_problem(["ok", "ab\ud800c"]).startswith("text 1: character 2 is a lone surrogate (U+D800)")
    assert text_problem(["a\x00"]).startswith("text 0: character 1 is a NUL")


def test_batcher_queue_is_bounded_and_close_drains_it():
    from app.serve import QueueFull, RequestBatcher

    tagger = _BlockingTagger()
    batcher = RequestBatcher(tagger, max_texts=4, max_chars=100, max_queue=2, max_queue_chars=10)
    running = batcher.submit(["甲"])
    assert tagger.entered.wait(30)  # the first batch runs; what comes now waits
    waiting = [batcher.submit(["一二三"]), batcher.submit(["四"])]
    with pytest.raises(QueueFull, match="2 requests .* wait for the model") as exc:
        batcher.submit(["五"])  # two requests wait: full
    assert exc.value.retry_after >= 1
    assert batcher.queue_state() == {"waiting": 2, "waiting_chars": 4, "max_queue": 2, "max_queue_chars": 10}
    assert batcher.stats["rejected_busy"] == 1
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.2)
    with pytest.raises(QueueFull, match="stopping"):
        batcher.submit(["六"])
    tagger.release.set()
    closer.join(30)
    assert running.result(5) == [["甲:1"]]
    assert [w.result(5) for w in waiting] == [[["一二三:3"]], [["四:1"]]]  # drained before stopping
    assert not batcher._worker.is_alive()

    # a request given up on while it waits is skipped; the worker goes on serving
    tagger = _BlockingTagger()
    batcher = RequestBatcher(tagger, max_texts=1, max_chars=100)
    batcher.submit(["甲"])
    assert tagger.entered.wait(30)
    gone, kept = batcher.submit(["乙"]), batcher.submit(["丙"])
    assert gone.cancel()
    tagger.release.set()
    assert kept.result(5) == [["丙:1"]] and batcher.predict(["丁"]) == [["丁:1"]]
    assert ["乙"] not in tagger.calls and batcher.queue_state()["waiting"] == 0
    batcher.close()

    # characters bound too; a request larger than the bound is still accepted when nothing waits
    tagger = _BlockingTagger()
    batcher = RequestBatcher(tagger, max_texts=4, max_chars=100, max_queue=10, max_queue_chars=10)
    batcher.submit(["甲"])
    assert tagger.entered.wait(30)
    big = batcher.submit(["长" * 50])
    with pytest.raises(QueueFull, match="50 characters"):
        batcher.submit(["乙"])
    tagger.release.set()
    assert big.result(5) == [["长" * 50 + ":50"]]
    batcher.close()


def test_serve_refuses_a_public_address_without_a_key(tmp_path):
    """One line, exit 2, before any model is loaded (the model directory does not even exist)."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "app.serve", "serve", "--model-dir", str(tmp_path / "none")]
    r = subprocess.run([*cmd, "--host", "0.0.0.0"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--host 0.0.0.0 is reachable from other machines" in r.stderr
    assert "NER_API_KEY" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [*cmd, "--host", "0.0.0.0"],
        cwd=REPO,
        env={**env, "NER_API_KEY": "abc"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "$NER_API_KEY has 3 characters; use at least 16" in r.stderr
    # with a key it goes on, and fails on the missing model instead
    r = subprocess.run(
        [*cmd, "--host", "0.0.0.0"], cwd=REPO, env={**env, "NER_API_KEY": KEY}, capture_output=True, text=True
    )
    assert r.returncode == 2 and "no such model directory" in r.stderr


def _host_ok(policy, value: str) -> bool:
    return policy.problem([(b"host", value.encode("latin-1"))]) is None


def test_host_policy_answers_for_the_bound_names_only():
    """DNS rebinding: a page's own name resolved to 127.0.0.1 reaches a loopback service, and the browser
    sends that name in Host. Only the bound address's names (and --allowed-hosts) are answered."""
    from app.serve_guard import HostPolicy

    loop = HostPolicy.for_bind("127.0.0.1")
    for value in ("127.0.0.1:8000", "127.0.0.1", "localhost:8000", "LOCALHOST.", "[::1]:8000", "[::1]"):
        assert _host_ok(loop, value), value
    for value in ("rebind.example:8000", "127.0.0.1.nip.io", "10.0.0.5:8000", "a:b:c", "[::1", ":8000", ""):
        assert not _host_ok(loop, value), value
    assert loop.problem([]) is None  # no Host at all: not a browser (HTTP/1.0 tools)
    detail = loop.problem([(b"host", b"rebind.example:8000")])
    assert detail.startswith("this service does not answer for host 'rebind.example:8000', only for ")
    assert "--allowed-hosts rebind.example (or $NER_ALLOWED_HOSTS)" in detail and "\n" not in detail
    extra = HostPolicy.for_bind("127.0.0.1", ["ner.example.com", " "])
    assert _host_ok(extra, "NER.example.com:443") and not _host_ok(extra, "x.ner.example.com")
    assert _host_ok(HostPolicy.for_bind("127.0.0.1", ["*"]), "anything.example")
    every = HostPolicy.for_bind("0.0.0.0")  # every interface: any address, never a foreign name
    assert all(_host_ok(every, v) for v in ("10.0.0.5:8000", "[fe80::1]:8000", "localhost"))
    assert not _host_ok(every, "rebind.example:8000")
    bound = HostPolicy.for_bind("10.0.0.5")
    assert _host_ok(bound, "10.0.0.5:8000") and not any(_host_ok(bound, v) for v in ("localhost", "10.0.0.6"))
    with pytest.raises(ValueError, match="--allowed-hosts: 'http://x' is not a host name or address"):
        HostPolicy.for_bind("127.0.0.1", ["http://x"])


def test_allowed_hosts_come_from_the_flag_or_the_environment(model_dir, monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    from app import cli

    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.setenv("NER_ALLOWED_HOSTS", "env.example, other.example")
    for flag, answered, refused in (
        (["--allowed-hosts", "ner.example.com"], "ner.example.com", "env.example"),  # the flag wins
        ([], "env.example", "rebind.example"),
    ):
        assert cli.main(["serve", "--model-dir", str(model_dir), *flag]) == 0
        with TestClient(served["app"], base_url=f"http://{answered}:8000") as client:
            assert client.get("/health").status_code == 200
            r = client.get("/health", headers={"Host": f"{refused}:8000"})
            assert r.status_code == 421 and f"does not answer for host '{refused}:8000'" in r.json()["detail"]
    capsys.readouterr()
    assert cli.main(["serve", "--model-dir", str(model_dir / "none"), "--allowed-hosts", "a b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--allowed-hosts: 'a b' is not a host name" in err and "\n" not in err  # before the model loads


def _model_copy(model_dir: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(model_dir, dst)
    return dst


def test_model_serves_only_the_metrics_the_trainer_writes(model_dir, tmp_path):
    """metrics.json comes with the model folder: GET /model serves its known keys as plain values (a NaN,
    which JSON cannot carry, as null), nothing else."""
    from fastapi.testclient import TestClient

    from app.serve import create_app
    from ner_core.artifacts.layout import METRICS

    md = _model_copy(model_dir, tmp_path / "model")
    metrics = {
        "best_epoch": 3,
        "run_id": "r" * 1000,
        "dev": {"f1": 0.5, "PER.f1": float("nan"), "note": "text", "errors.boundary": 2, "x": [1]},
        "plus": {"dataset": "review", "version": 2, "path": "/home/me/secret"},
        "note": "ok",
        "token": "s3cret",
        "history": [{"a": 1}] * 1000,
    }
    (md / METRICS).write_text(json.dumps(metrics), encoding="utf-8")
    with TestClient(create_app(md), base_url="http://127.0.0.1:8000") as client:
        r = client.get("/model")
    assert r.status_code == 200, r.text
    assert r.json()["metrics"] == {
        "best_epoch": 3,
        "run_id": "r" * 200,
        "note": "ok",
        "plus": {"dataset": "review", "version": 2},
        "dev": {"f1": 0.5, "PER.f1": None, "errors.boundary": 2},
    }


def test_a_metrics_json_linked_out_of_the_model_dir_is_refused(model_dir, tmp_path):
    """A metrics.json that is a symlink to a file outside the folder (any file the service can read) is
    refused when the model loads, in one line that shows nothing of the file."""
    from app.serve import create_app
    from ner_core.artifacts.layout import METRICS, ModelDirError

    md = _model_copy(model_dir, tmp_path / "model")
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"note": "s3cret", "best_epoch": 7}), encoding="utf-8")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    for target in (secrets, passwd):
        (md / METRICS).unlink()
        (md / METRICS).symlink_to(target)
        with pytest.raises(ModelDirError, match=f"{METRICS} is a symlink to .*, outside the folder") as info:
            create_app(md)
        assert "s3cret" not in str(info.value) and "root:x" not in str(info.value)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- real server
def test_a_rebound_host_name_gets_421_on_every_path(guarded):
    url, port = guarded["url"], guarded["port"]
    for method, path in [("GET", "/health"), ("GET", "/model"), ("POST", "/predict"), ("GET", "/docs")]:
        headers = AUTH | {"Host": f"rebind.example:{port}"}
        r = httpx.request(method, f"{url}{path}", json={"text": "张三"}, headers=headers)
        assert r.status_code == 421, (path, r.text)
        assert r.json()["detail"].startswith("this service does not answer for host 'rebind.example:")
    assert httpx.get(f"{url}/model", headers=AUTH | {"Host": f"localhost:{port}"}).status_code == 200
    out, _ = _raw(port, b"GET /health HTTP/1.0\r\n\r\n")  # no Host: not a browser
    assert out.startswith(b"HTTP/1.1 200 ")


def test_api_key_on_every_path_but_health(guarded):
    url = guarded["url"]
    assert httpx.get(f"{url}/health").status_code == 200
    for method, path in [("POST", "/predict"), ("GET", "/model"), ("POST", "/decode"), ("GET", "/docs")]:
        r = httpx.request(method, f"{url}{path}", json={"text": "张三"})
        assert r.status_code == 401 and "needs an API key" in r.json()["detail"], (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{url}/predict", json={"text": "张三"}, headers={"Authorization": f"Bearer {KEY}x"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong API key"
    assert httpx.post(f"{url}/predict", json={"text": "张三"}, headers=AUTH).status_code == 200
    assert httpx.post(f"{url}/predict", json={"text": "张三"}, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{url}/model", headers=AUTH).json()["limits"]["max_queue"] == 128  # 2 x max_texts


def test_query_sends_the_key(guarded, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "app.serve", "query", "张三在北京", "--url", guarded["url"], "--json"]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "answered 401: this service needs an API key" in r.stderr
    r = subprocess.run(
        [*cmd, "--api-key-file", str(key_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["n_chars"] == 5


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"text": "ab\\ud800cd"}', "text 0: character 2 is a lone surrogate (U+D800)"),
        (b'{"texts": ["ok", "\\udfff"]}', "text 1: character 0 is a lone surrogate (U+DFFF)"),
        (b'{"text": "ab\\u0000cd"}', "text 0: character 2 is a NUL (U+0000)"),
        (b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "JSON nested more than 32 levels deep"),
        (b'{"text": "a\x00b"}', "JSON decode error"),  # a raw NUL inside a JSON string is not JSON
        (b'{"text": "\xe5\xbc"}', "the body is not UTF-8 (byte 10: "),  # a cut-off character
    ],
)
def test_bad_text_is_a_clear_422(guarded, body, message):
    for path in ("/predict", "/decode") if b"texts" not in body else ("/predict",):
        r = httpx.post(
            f"{guarded['url']}{path}", content=body, headers=AUTH | {"content-type": "application/json"}
        )
        assert r.status_code == 422 and message in r.json()["detail"], (path, r.text)


def test_chunked_body_past_the_limit_is_413_without_reading_it_all(guarded):
    sent = 0

    def chunks():  # no Content-Length: the body streams until the server stops it
        nonlocal sent
        for _ in range(10_000):
            sent += 10_000
            yield b'{"text": "' if sent == 10_000 else b"x" * 10_000

    limit = httpx.get(f"{guarded['url']}/model", headers=AUTH).json()["limits"]["max_body_bytes"]
    try:
        r = httpx.post(f"{guarded['url']}/predict", content=chunks(), headers=AUTH, timeout=30)
        assert r.status_code == 413 and f"at most {limit} bytes" in r.json()["detail"]
    except httpx.HTTPError:  # the server answered and closed while the client was still writing
        pass
    assert sent < 100_000_000  # stopped long before the generator ran dry
    status, _ = _raw(
        guarded["port"],
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + (b"2710\r\n" + b"x" * 10_000 + b"\r\n")
        * (limit // 10_000 + 2),
    )
    assert status.startswith(b"HTTP/1.1 413 ")


def test_body_that_never_ends_is_408_and_closed(guarded):
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n"
        b"Authorization: Bearer " + KEY.encode() + b'\r\n\r\n{"text": "ab'
    )
    out, seconds = _raw(guarded["port"], head)
    assert out.startswith(b"HTTP/1.1 408 ") and b"not received within 1 s (12 bytes arrived)" in out
    assert 0.9 <= seconds < 8  # the 1-second body deadline, then the connection is closed


def test_idle_connections_are_closed_and_do_not_block_requests(guarded):
    conns = [socket.create_connection(("127.0.0.1", guarded["port"])) for _ in range(50)]
    slow = socket.create_connection(("127.0.0.1", guarded["port"]))
    slow.sendall(b"GET /hea")  # a request head that never completes
    try:
        r = httpx.post(f"{guarded['url']}/predict", json={"text": "张三在北京"}, headers=AUTH, timeout=30)
        assert r.status_code == 200  # served while 51 connections idle
        t0 = time.monotonic()
        for s in [*conns, slow]:
            s.settimeout(10)
            assert s.recv(100) == b""  # closed by the server (the idle timeout is 1 s)
        assert time.monotonic() - t0 < 8
    finally:
        for s in [*conns, slow]:
            s.close()
    assert httpx.get(f"{guarded['url']}/health").json()["status"] == "ok"
    assert guarded["proc"].poll() is None


def test_burst_gets_503_past_the_queue_and_sigterm_lets_requests_in_flight_finish(model_dir, tmp_path):
    """12 requests at once against a queue of 3, one request per forward pass: the excess is refused with
    503 + Retry-After (counted in /health); SIGTERM while the rest wait: every admitted one gets its 200."""
    svc = start_service(
        model_dir, tmp_path / "serve.log", "--no-batch-requests", "--max-queue", "3", "--window", "32"
    )
    text = "招商银行在深圳发布年报。" * 400  # 4,800 characters: a noticeable forward pass each
    answers: list[tuple[int, str | None, float]] = []

    def ask():
        try:
            r = httpx.post(f"{svc['url']}/predict", json={"text": text}, timeout=120)
            answers.append((r.status_code, r.headers.get("retry-after"), time.monotonic()))
        except httpx.HTTPError as exc:
            answers.append((0, type(exc).__name__, time.monotonic()))

    try:
        threads = [threading.Thread(target=ask) for _ in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(f"{svc['url']}/health").json()
            refused = [a for a in answers if a[0] == 503]
            waiting, served = health["queue"]["waiting"], health["served"]
            # every request arrived (all but the one being tagged are counted) and at least 2 wait
            arrived = served["rejected_busy"] + waiting + served["requests"] >= 11
            if arrived and waiting >= 2 and len(refused) == served["rejected_busy"] >= 1:
                break
            time.sleep(0.02)
        signalled = time.monotonic()
        svc["proc"].send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        rc = svc["proc"].wait(timeout=60)
    finally:
        if svc["proc"].poll() is None:
            svc["proc"].kill()
    assert health["queue"]["waiting"] >= 2, health
    statuses = sorted(a[0] for a in answers)
    assert set(statuses) == {200, 503} and statuses.count(503) == health["served"]["rejected_busy"], answers
    assert all(a[1] is not None and int(a[1]) >= 1 for a in answers if a[0] == 503)
    assert sum(1 for a in answers if a[0] == 200 and a[2] > signalled) >= 2  # answered after the signal
    assert rc in (0, -signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{svc['url']}/health", timeout=2)
    assert "Traceback" not in svc["log"].read_text()


def test_serve_flags_parse():
    import argparse

    from app.commands import serve

    p = argparse.ArgumentParser()
    serve.add_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["serve", "--model-dir", "m"])
    assert (a.max_queue, a.max_queue_chars, a.api_key_file) == (None, None, None)
    assert (a.body_timeout, a.idle_timeout, a.graceful_timeout) == (20.0, 5.0, 30.0)
    a = p.parse_args(["serve", "--max-queue", "8", "--api-key-file", "k", "--max-connections", "50"])
    assert (a.max_queue, a.api_key_file, a.max_connections) == (8, "k", 50)


def test_the_service_caps_onednn_kernels_unless_told_otherwise():
    from app.serve_guard import KERNEL_CACHE_CAPACITY, bound_kernel_cache

    env: dict = {}
    assert bound_kernel_cache(env) == str(KERNEL_CACHE_CAPACITY) == env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    mine = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "2048"}
    assert bound_kernel_cache(mine) == "2048"


_FRAGMENT = """
import sys
import numpy as np
from app.serve_guard import release_freed_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # 300 MB of heap blocks under the mmap threshold
pin = np.ones(100_000 // 8)  # above them: the heap's top stays in use, so free() cannot shrink it
del blocks
before = rss()
trimmed = release_freed_memory() if sys.argv[1] == "trim" else None
print(before - rss(), trimmed)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_pages_go_back_to_the_system_after_a_batch():
    """Blocks freed below a live one stay resident under glibc until malloc_trim(0), which the service's
    model worker calls after each batch."""
    got = {}
    for mode in ("trim", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", _FRAGMENT, mode], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        freed, trimmed = out.stdout.split()
        got[mode] = (float(freed), trimmed)
    assert got["trim"][1] == "True" and got["trim"][0] > 200  # MiB handed back
    assert got["keep"][0] < 50  # without it they stay resident
