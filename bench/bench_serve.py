"""Prediction API benchmark: requests per second and p50/p99 latency of ``POST /predict`` for single short
texts, from clients on loopback (figures printed, never asserted).

Starts the real service (``python -m app.serve serve``) in a subprocess on a free port, serving
``--model-dir`` or an untrained model built here (``--model m3e-small``, the default when it is installed: the
real encoder's forward pass; ``--model tiny``: a tiny random encoder, so the figure is mostly the service's
own overhead). For each ``--concurrency`` level N (default 1 and 8), N clients, each on its own keep-alive
connection, send ``--requests`` requests in all, one short text each, back to back; latency is per request.
Each level runs twice, against the service with request batching (concurrent requests tagged in one
forward pass, the default) and without (``--no-batch-requests``: one request per forward pass), so the
effect of batching is measured in the same run. The machine may be shared: timings are noisy.
Run: ``python -m bench.bench_serve [--requests 300] [--concurrency 1,8] [--model tiny|m3e-small]
[--model-dir DIR]``.
m3e-small: research / non-commercial use only.
"""

from __future__ import annotations

import argparse
import os
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _untrained_model(out: Path, which: str) -> Path:
    import torch

    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder, make_tiny_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    if which == "tiny":
        texts = SHORT_TEXTS + [
            p.read_text(encoding="utf-8") for p in (ROOT / "sample_corpus" / "raw").glob("*.txt")
        ]
        enc = str(
            make_tiny_encoder(out / "encoder", texts, hidden_size=64, num_heads=2, intermediate_size=128)
        )
        head = {"type": "bilstm", "rnn_units": 64}
    else:
        enc, head = which, {"type": "bilstm"}
    cfg = NERConfig.model_validate({"data": {"max_len": 128}, "encoder": {"name": enc}, "head": head})
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    model = NERModel(cfg, tag_set(["FIN", "LOC", "ORG", "PER"], "BIOES"), encoder)
    return save_model_dir(out / "model", model, tokenizer)


def _default_model() -> str:
    from ner_core.model.encoder import resolve_encoder

    try:
        resolve_encoder("m3e-small")
        return "m3e-small"
    except ValueError:
        return "tiny"


def _start(model_dir: Path, port: int, threads: int, batching: bool, log_path: Path) -> subprocess.Popen:
    import httpx

    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.serve",
            "serve",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--batch-requests" if batching else "--no-batch-requests",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _load(url: str, n_requests: int, concurrency: int, warmup: int) -> tuple[float, list[float]]:
    """``concurrency`` clients send ``n_requests`` requests in all; (wall seconds, latencies in seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def client(k: int, n: int) -> list[float]:
        lat = []
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in range(n):
                t = time.perf_counter()
                c.post("/predict", json={"text": SHORT_TEXTS[(k + i) % len(SHORT_TEXTS)]}).raise_for_status()
                lat.append(time.perf_counter() - t)
        return lat

    client(0, warmup)
    share = [n_requests // concurrency + (k < n_requests % concurrency) for k in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lats = list(pool.map(client, range(concurrency), share))
    return time.perf_counter() - t0, [x for lat in lats for x in lat]


def main(argv: list[str] | None = None) -> dict:
    import httpx

    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests per measurement (default %(default)s)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument(
        "--concurrency", default="1,8", help="client counts, comma-separated (default %(default)s)"
    )
    p.add_argument(
        "--model",
        choices=["m3e-small", "tiny"],
        help="untrained model to serve (default: m3e-small when installed, else tiny)",
    )
    p.add_argument("--model-dir", help="serve this model directory instead")
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads in the service (default %(default)s)"
    )
    args = p.parse_args(argv if argv is not None else [])
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        which = "model dir" if args.model_dir else (args.model or _default_model())
        model_dir = Path(args.model_dir) if args.model_dir else _untrained_model(Path(tmp), which)
        print(
            f"POST /predict, one short text (~15 chars) a request, {args.requests} requests per row, "
            f"loopback; model {which} ({model_dir}), torch threads {args.threads}",
            flush=True,
        )
        for batching in (True, False):
            port = _free_port()
            proc = _start(model_dir, port, args.threads, batching, Path(tmp) / "serve.log")
            try:
                url = f"http://127.0.0.1:{port}"
                for n in levels:
                    before = httpx.get(f"{url}/health").json()["served"]
                    wall, lat = _load(url, args.requests, n, args.warmup)
                    after = httpx.get(f"{url}/health").json()["served"]
                    lat_ms = sorted(x * 1000 for x in lat)
                    p50 = statistics.median(lat_ms)
                    p99 = lat_ms[min(len(lat_ms) - 1, int(round(0.99 * len(lat_ms))) - 1)]
                    batches = after["batches"] - before["batches"]
                    texts = after["texts"] - before["texts"]
                    name = f"{'batching' if batching else 'no batching'}, {n} client{'s' if n > 1 else ''}"
                    out[name] = {
                        "rps": len(lat) / wall,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "texts_per_batch": texts / max(1, batches),
                    }
                    print(
                        f"  {name:<24} {len(lat) / wall:7.1f} requests/s  p50 {p50:6.1f} ms  "
                        f"p99 {p99:6.1f} ms  max {lat_ms[-1]:6.1f} ms  "
                        f"{texts / max(1, batches):4.1f} texts per forward pass",
                        flush=True,
                    )
            finally:
                _stop(proc)
    for n in levels:
        clients = f"{n} client{'s' if n > 1 else ''}"
        a, b = out.get(f"batching, {clients}"), out.get(f"no batching, {clients}")
        if a and b:
            print(
                f"  {n} client(s): batching {a['rps'] / b['rps']:.2f}x the requests/s of one request "
                "per pass",
                flush=True,
            )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
