"""Prediction API benchmark: requests per second and p50/p99 latency of ``POST /predict`` for single short
texts, from one client on loopback (figures printed, never asserted).

Starts the real service (``python -m flows.serve serve``) in a subprocess on a free port with ``--model-dir``
or, by default, an untrained model built here from a tiny random encoder (so the figure is the service's
overhead plus a small model's forward pass), sends ``--warmup`` then ``--requests`` (default 300) requests
sequentially over one keep-alive connection, and stops the service. The machine may be shared: timings are
noisy. Run: ``python -m bench.bench_serve [--requests 300] [--model-dir DIR]``.
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
SHORT_TEXTS = ["张伟在北京的ABC资本工作。", "上海证券交易所今天发布公告。", "李娜2019年加入招商银行深圳分行。",
               "余额宝的收益率下降了。", "王芳毕业于复旦大学经济学院。"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model(out: Path) -> Path:
    import torch

    from ner_core.config import NERConfig
    from ner_core.encoder import load_encoder, make_tiny_encoder
    from ner_core.model import NERModel
    from ner_core.modeldir import save_model_dir
    from ner_core.schemes import tag_set

    texts = SHORT_TEXTS + [p.read_text(encoding="utf-8") for p in (ROOT / "sample_corpus" / "raw").glob("*.txt")]
    enc = make_tiny_encoder(out / "encoder", texts, hidden_size=64, num_heads=2, intermediate_size=128)
    cfg = NERConfig.model_validate({"data": {"max_len": 128}, "encoder": {"name": str(enc)},
                                    "head": {"type": "bilstm", "rnn_units": 64}})
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    model = NERModel(cfg, tag_set(["FIN", "LOC", "ORG", "PER"], "BIOES"), encoder)
    return save_model_dir(out / "model", model, tokenizer)


def main(argv: list[str] | None = None) -> dict:
    import httpx

    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--model-dir", help="model to serve (default: an untrained tiny model built here)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the service (default %(default)s)")
    args = p.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else _tiny_model(Path(tmp))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "flows.serve", "serve", "--model-dir", str(model_dir),
                                 "--port", str(port), "--threads", str(args.threads)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.perf_counter()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"service exited: {(Path(tmp) / 'serve.log').read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            print(f"service up in {time.perf_counter() - t0:.1f} s (model {model_dir}, torch threads "
                  f"{args.threads})", flush=True)
            lat: list[float] = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for i in range(args.warmup):
                    client.post("/predict", json={"text": SHORT_TEXTS[i % len(SHORT_TEXTS)]}).raise_for_status()
                t_all = time.perf_counter()
                for i in range(args.requests):
                    t = time.perf_counter()
                    r = client.post("/predict", json={"text": SHORT_TEXTS[i % len(SHORT_TEXTS)]})
                    lat.append(time.perf_counter() - t)
                    r.raise_for_status()
                wall = time.perf_counter() - t_all
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[min(len(lat_ms) - 1, int(round(0.99 * len(lat_ms))) - 1)]
    rps = len(lat) / wall
    print(f"POST /predict, single short texts (~15 chars), {len(lat)} sequential requests on loopback: "
          f"{rps:.1f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat_ms[-1]:.1f} ms", flush=True)
    return {"requests": len(lat), "rps": rps, "p50_ms": p50, "p99_ms": p99}


if __name__ == "__main__":
    main(sys.argv[1:])
