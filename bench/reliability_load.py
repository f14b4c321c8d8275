"""The prediction service under load and under hostile input: two stages of the reliability campaign
(figures returned and printed, never asserted).

- :func:`run_load_stage`: ``ner serve`` (a tiny random encoder, built here) in a subprocess; 64 clients
  (quick: 8) send requests back to back for 60 s (quick: 5 s), short texts mixed with 10,000-character
  ones, after a warm-up. The queue bound is set below the number of clients (``--max-queue`` = 3/4 of
  them), so the 503 + ``Retry-After`` path is exercised; clients wait as told and retry. Reported:
  requests and their statuses (goal: no 500), p50/p99 latency of the answered ones, requests/s, the
  server's resident memory after warm-up and after the run, and a SIGTERM sent while the clients still
  send: how many requests in flight at the signal got their answer, how many lost their connection.
- :func:`run_api_fuzz_stage`: a service with an API key and short timeouts gets bad input: lone
  surrogates, NUL, deep nesting, invalid JSON and wrong types, oversized and chunked bodies past the
  limit, a body that never ends, idle connections and half-sent request heads, missing and wrong keys,
  and a few hundred seeded random mutations of valid bodies. Each case has its expected answer; reported:
  cases, statuses, 5xx answers, tracebacks in the server's log, and the cases that missed.

Run: ``python -m bench.reliability_load [--quick] [--stage load|fuzz|all]``. The machine may be shared
with other work: timings and requests/s are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHORT_TEXTS = [
    "张伟在北京的ABC资本工作。",
    "上海证券交易所今天发布公告。",
    "李娜2019年加入招商银行深圳分行。",
    "余额宝的收益率下降了。",
    "王芳毕业于复旦大学经济学院。",
]
LONG_CHARS = 10_000
LONG_EVERY = 8  # one request in 8 carries a 10,000-character text
FUZZ_KEY = "reliability-fuzz-key-0123456789"


# ----------------------------------------------------------------------------------------- the service
@functools.cache
def _corpus_texts() -> list[str]:
    raw = sorted((ROOT / "sample_corpus" / "raw").glob("*.txt"))
    return SHORT_TEXTS + [p.read_text(encoding="utf-8") for p in raw]


@functools.cache
def long_text(k: int = 0) -> str:
    """A 10,000-character text from the sample corpus's raw files (rotated by ``k``)."""
    base = "".join(_corpus_texts()[len(SHORT_TEXTS) :]) or "".join(SHORT_TEXTS)
    k %= len(base)
    base = base[k:] + base[:k]
    return (base * (LONG_CHARS // len(base) + 1))[:LONG_CHARS]


def build_tiny_model(out: Path) -> Path:
    """An untrained model directory on a tiny random encoder (hidden 64) whose vocabulary covers the
    texts sent here: the figures are the service's own overhead more than the network's."""
    import torch

    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder, make_tiny_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    enc = make_tiny_encoder(out / "encoder", _corpus_texts(), hidden_size=64, intermediate_size=128)
    cfg = NERConfig.model_validate(
        {"data": {"max_len": 128}, "encoder": {"name": str(enc)}, "head": {"type": "bilstm", "rnn_units": 64}}
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder, tokenizer = load_encoder(cfg.encoder)
        model = NERModel(cfg, tag_set(["FIN", "LOC", "ORG", "PER"], "BIOES"), encoder)
    return save_model_dir(out / "model", model, tokenizer)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(model_dir: Path, log: Path, *args: str, env: dict | None = None) -> dict:
    """``python -m app.serve serve`` on a free loopback port, once /health answers: {"url", "port", "proc",
    "log"}."""
    import httpx

    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k != "NER_API_KEY"}
    cmd = [sys.executable, "-m", "app.serve", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [*cmd, *args], cwd=ROOT, env=base | (env or {}), stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return {"url": url, "port": port, "proc": proc, "log": log}
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the service did not answer /health within 300 s: {log.read_text()[-2000:]}")


def stop_service(service: dict) -> int:
    proc = service["proc"]
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _tracebacks(log: Path) -> int:
    return log.read_text(encoding="utf-8", errors="replace").count("Traceback (most recent call last)")


# ----------------------------------------------------------------------------------------- load
async def _client(k: int, url: str, stop_at: float, records: list, stop_event: asyncio.Event) -> None:
    """One client: requests back to back until ``stop_at`` or ``stop_event``; a 503 waits its Retry-After.
    Each record: (started, ended, status or 0 for a connection error, error name)."""
    import httpx

    loop = asyncio.get_running_loop()
    i = k
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while loop.time() < stop_at and not stop_event.is_set():
            i += 1
            text = long_text(i % 7) if i % LONG_EVERY == 0 else SHORT_TEXTS[i % len(SHORT_TEXTS)]
            t0 = loop.time()
            try:
                r = await client.post("/predict", json={"text": text})
                records.append((t0, loop.time(), r.status_code, ""))
            except httpx.HTTPError as exc:
                records.append((t0, loop.time(), 0, type(exc).__name__))
                await asyncio.sleep(0.05)
                continue
            if r.status_code == 503:
                wait = float(r.headers.get("retry-after", "1"))
                await asyncio.sleep(min(wait, max(stop_at - loop.time(), 0)))


async def _load(url: str, clients: int, seconds: float, *, signal_proc=None) -> tuple[list, float | None]:
    """``clients`` clients for ``seconds``; with ``signal_proc``, SIGTERM it at the end while the clients
    go on until it has exited (then one more second). Returns (records, signal time or None)."""
    loop = asyncio.get_running_loop()
    records: list = []
    stop_event = asyncio.Event()
    horizon = loop.time() + seconds + (120 if signal_proc is not None else 0)
    tasks = [asyncio.create_task(_client(k, url, horizon, records, stop_event)) for k in range(clients)]
    signalled = None
    if signal_proc is None:
        await asyncio.gather(*tasks)
        return records, None
    await asyncio.sleep(seconds)
    signalled = loop.time()
    signal_proc.send_signal(signal.SIGTERM)
    while signal_proc.poll() is None and loop.time() < signalled + 90:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    stop_event.set()
    await asyncio.gather(*tasks)
    return records, signalled


def _summarise(records: list, seconds: float) -> dict:
    statuses: dict[str, int] = {}
    for _, _, status, err in records:
        key = str(status) if status else f"connection error ({err})"
        statuses[key] = statuses.get(key, 0) + 1
    lat = sorted(end - start for start, end, status, _ in records if status == 200)
    pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)) if lat else (lambda q: None)
    return {
        "requests": len(records),
        "by_status": dict(sorted(statuses.items())),
        "status_500": sum(v for k, v in statuses.items() if k.isdigit() and int(k) >= 500 and k != "503"),
        "status_503": statuses.get("503", 0),
        "answered_200": len(lat),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        "requests_per_s": round(len(records) / seconds, 1),
        "answered_per_s": round(len(lat) / seconds, 1),
    }


def _after_signal(records: list, signalled: float) -> dict:
    """Requests in flight when SIGTERM arrived (started before, ended after) and those started later."""
    in_flight = [r for r in records if r[0] < signalled <= r[1]]
    later = [r for r in records if r[0] >= signalled]
    return {
        "in_flight": len(in_flight),
        "in_flight_answered": sum(1 for r in in_flight if r[2]),
        "in_flight_answered_200": sum(1 for r in in_flight if r[2] == 200),
        "in_flight_connection_errors": sum(1 for r in in_flight if not r[2]),
        "started_after_signal": len(later),
        "started_after_signal_answered": sum(1 for r in later if r[2]),  # before the listener closed
        "started_after_signal_refused": sum(1 for r in later if not r[2]),
    }


def _rejected_busy(url: str) -> int:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()["served"]["rejected_busy"]


def run_load_stage(quick: bool = False, env: dict | None = None) -> dict:
    """The load stage (see the module docstring); ``quick``: 8 clients for 5 s after a 2-second warm-up
    instead of 64 clients for 60 s after 10 s. ``env``: added to the service's environment (e.g.
    ``MALLOC_ARENA_MAX``)."""
    clients, seconds, warmup = (8, 5.0, 2.0) if quick else (64, 60.0, 10.0)
    max_queue = max(1, clients * 3 // 4)
    with tempfile.TemporaryDirectory(prefix="ner-load-") as tmp:
        model_dir = build_tiny_model(Path(tmp))
        svc = start_service(model_dir, Path(tmp) / "serve.log", "--max-queue", str(max_queue), env=env)
        try:
            pid = svc["proc"].pid
            asyncio.run(_load(svc["url"], clients, warmup))
            rss_warm = rss_mib(pid)
            refused_before = _rejected_busy(svc["url"])
            t0 = time.perf_counter()
            records, _ = asyncio.run(_load(svc["url"], clients, seconds))
            elapsed = time.perf_counter() - t0
            rss_after = rss_mib(pid)
            refused = _rejected_busy(svc["url"]) - refused_before
            tail, signalled = asyncio.run(_load(svc["url"], clients, 2.0, signal_proc=svc["proc"]))
            rc = svc["proc"].wait(timeout=60)
        finally:
            stop_service(svc)
        tracebacks = _tracebacks(svc["log"])
    return {
        "stage": "load",
        "env": env or {},
        "clients": clients,
        "seconds": round(elapsed, 1),
        "max_queue": max_queue,
        "long_text_chars": LONG_CHARS,
        "long_text_share": f"1 in {LONG_EVERY}",
        **_summarise(records, elapsed),
        "rejected_busy_counted_by_service": refused,
        "rss_mib_after_warmup": round(rss_warm, 1),
        "rss_mib_after_run": round(rss_after, 1),
        "rss_growth_pct": round((rss_after / rss_warm - 1) * 100, 1),
        "rss_within_10pct": rss_after <= rss_warm * 1.10,
        "sigterm": _after_signal(tail, signalled) | {"exit_status": rc},
        "tracebacks": tracebacks,
    }


# ----------------------------------------------------------------------------------------- API fuzz
def _http(port: int, data: bytes, *, timeout: float = 15.0) -> tuple[int | None, bytes, float]:
    """Send raw ``data`` on a new connection, read until the server closes it (or ``timeout``): (status or
    None when nothing came back, whole answer, seconds)."""
    t0 = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else None
    return status, out, time.monotonic() - t0


def _request(
    body: bytes, *, key: str | None = FUZZ_KEY, path: str = "/predict", length: int | None = None
) -> bytes:
    """A raw POST of ``body`` with ``Content-Length: length`` (default: the body's length)."""
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a name the service answers for (421 otherwise)
    head += "Content-Type: application/json\r\nConnection: close\r\n"
    size = len(body) if length is None else length
    return head.encode() + auth + f"Content-Length: {size}\r\n\r\n".encode() + body


def _fixed_cases(limit: int) -> list[tuple[str, bytes, set[int], bytes]]:
    """(name, raw request, statuses expected, a snippet the answer must hold)."""
    big = b'{"text": "' + b"x" * limit + b'"}'
    chunked = b"2710\r\n" + b"x" * 10_000 + b"\r\n"
    cases = [
        ("lone high surrogate", _request(b'{"text": "ab\\ud800cd"}'), {422}, b"lone surrogate"),
        ("lone low surrogate in texts", _request(b'{"texts": ["ok", "\\udfff"]}'), {422}, b"lone surrogate"),
        ("surrogate pair is fine", _request(b'{"text": "\\ud83d\\ude00"}'), {200}, b"results"),
        ("escaped NUL", _request(b'{"text": "a\\u0000b"}'), {422}, b"NUL"),
        ("raw NUL byte", _request(b'{"text": "a\x00b"}'), {422}, b"JSON decode error"),
        ("NUL outside JSON", _request(b"\x00" * 64), {422}, b"invalid request"),
        ("invalid UTF-8", _request(b'{"text": "\xff\xfe"}'), {422}, b"not UTF-8"),
        ("not JSON", _request(b"{not json"), {422}, b"invalid request"),
        ("wrong type", _request(b'{"text": 3}'), {422}, b"valid string"),
        ("unknown field", _request(b'{"text": "a", "x": 1}'), {422}, b"Extra inputs"),
        ("decode: surrogate", _request(b'{"text": "\\udc00"}', path="/decode"), {422}, b"lone surrogate"),
        ("oversized by Content-Length", _request(big), {413}, b"at most"),
        ("no API key", _request(b'{"text": "a"}', key=None), {401}, b"needs an API key"),
        ("wrong API key", _request(b'{"text": "a"}', key=FUZZ_KEY + "x"), {401}, b"wrong API key"),
        (
            "health needs no key",
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            {200},
            b"ok",
        ),
        (
            "chunked body past the limit",
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {FUZZ_KEY}\r\n\r\n".encode()
            + chunked * (limit // 10_000 + 2),
            {413},
            b"at most",
        ),
        ("malformed request line", b"GARBAGE\r\n\r\n", {400}, b"Invalid HTTP request"),
    ]
    for depth in (33, 1_000, 100_000):
        body = b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
        want = {422} if len(body) <= limit else {413}
        cases.append((f"nested {depth} deep", _request(body), want, b""))
    return cases


def _mutations(n: int, seed: int = 0) -> list[bytes]:
    """``n`` seeded random mutations of valid bodies: byte flips, cuts, inserted escapes and brackets."""
    rng = random.Random(seed)
    valid = [json.dumps({"text": t}, ensure_ascii=rng.random() < 0.5).encode() for t in SHORT_TEXTS]
    valid += [json.dumps({"texts": SHORT_TEXTS[:3]}).encode()]
    pieces = [b"\\ud800", b"\\u0000", b"\x00", b"[", b"{", b'"', b"\\", b"\xff", b"\xe4\xb8", b"]]]", b"null"]
    out = []
    for _ in range(n):
        body = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            op, at = rng.random(), rng.randrange(len(body) + 1)
            if op < 0.4:
                body[at:at] = rng.choice(pieces)
            elif op < 0.7 and body:
                body[min(at, len(body) - 1)] = rng.randrange(256)
            else:
                del body[at : at + rng.randint(1, 4)]
        out.append(bytes(body))
    return out


def _run_case(port: int, name: str, raw: bytes, want: set[int], snippet: bytes, tally: dict) -> None:
    status, out, _ = _http(port, raw)
    tally["cases"] += 1
    tally["by_status"][str(status)] = tally["by_status"].get(str(status), 0) + 1
    if status is not None and status >= 500:
        tally["status_5xx"] += 1
    if status not in want or snippet not in out:
        tally["missed"].append(f"{name}: got {status} {out[-160:]!r}")


def _slow_cases(port: int, tally: dict, idle_timeout: float, body_timeout: float) -> None:
    """A body that never ends (408 then closed) and idle / half-sent connections (closed in time), with a
    real request served while they are open."""
    import httpx

    tally["cases"] += 1
    status, out, secs = _http(port, _request(b'{"text": "ab', length=1000))
    if status != 408 or secs > body_timeout + 5:
        tally["missed"].append(f"never-ending body: got {status} after {secs:.1f} s: {out[-120:]!r}")
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    for s in idle[:50]:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head that never completes
    tally["cases"] += len(idle)
    t0 = time.monotonic()
    r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "张三"}, headers={"X-API-Key": FUZZ_KEY})
    if r.status_code != 200:
        tally["missed"].append(f"request beside 200 idle connections: got {r.status_code}")
    still_open = 0
    for s in idle:
        s.settimeout(max(idle_timeout + 5 - (time.monotonic() - t0), 0.1))
        try:
            still_open += s.recv(100) != b""
        except TimeoutError:
            still_open += 1
        except OSError:  # reset: closed too
            pass
        s.close()
    if still_open:
        tally["missed"].append(f"idle connections: {still_open} of {len(idle)} still open after the timeout")


def run_api_fuzz_stage(mutations: int = 300) -> dict:
    """The API's bad-input stage (see the module docstring): every case's status against its expectation,
    5xx answers and tracebacks in the server's log."""
    idle_timeout, body_timeout = 2.0, 2.0
    tally: dict = {"cases": 0, "by_status": {}, "status_5xx": 0, "missed": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ner-fuzz-") as tmp:
        model_dir = build_tiny_model(Path(tmp))
        args = ["--max-total-chars", "20000", "--body-timeout", str(body_timeout)]
        args += ["--idle-timeout", str(idle_timeout)]
        svc = start_service(model_dir, Path(tmp) / "serve.log", *args, env={"NER_API_KEY": FUZZ_KEY})
        try:
            import httpx

            limits = httpx.get(f"{svc['url']}/model", headers={"X-API-Key": FUZZ_KEY}).json()["limits"]
            for name, raw, want, snippet in _fixed_cases(limits["max_body_bytes"]):
                _run_case(svc["port"], name, raw, want, snippet, tally)
            for i, body in enumerate(_mutations(mutations)):
                _run_case(svc["port"], f"mutation {i}", _request(body), {200, 422}, b"", tally)
            _slow_cases(svc["port"], tally, idle_timeout, body_timeout)
            alive = svc["proc"].poll() is None and httpx.get(f"{svc['url']}/health").status_code == 200
        finally:
            stop_service(svc)
        tracebacks = _tracebacks(svc["log"])
    return {
        "stage": "api_fuzz",
        "cases": tally["cases"],
        "by_status": dict(sorted(tally["by_status"].items())),
        "status_5xx": tally["status_5xx"],
        "tracebacks": tracebacks,
        "missed": tally["missed"],
        "service_alive_after": alive,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.reliability_load", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 clients for 5 s instead of 64 for 60 s")
    p.add_argument("--stage", choices=["load", "fuzz", "all"], default="all")
    args = p.parse_args(argv)
    results = {}
    if args.stage in ("load", "all"):
        results["load"] = run_load_stage(quick=args.quick)
        print(json.dumps(results["load"], indent=2, ensure_ascii=False), flush=True)
    if args.stage in ("fuzz", "all"):
        results["api_fuzz"] = run_api_fuzz_stage()
        print(json.dumps(results["api_fuzz"], indent=2, ensure_ascii=False), flush=True)
    return results


if __name__ == "__main__":
    main()
