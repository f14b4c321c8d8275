"""The prediction API: the real service (uvicorn in a subprocess on a free loopback port) called over HTTP,
its limits, ``ner query`` against it, and model resolution from the runs table."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ner_core.config import PredictionConfig
from tests.conftest import REPO
from tests.test_predict import build_model_dir

TEXTS = ["张伟在北京的ABC资本工作，2023年买了余额宝。", "上海证券交易所今天发布公告。", ""]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("serve-model") / "model", tiny_encoder_dir)


def start_service(model_dir: Path, log: Path, *args: str, env: dict | None = None) -> dict:
    """``python -m app.serve serve --model-dir MODEL_DIR --port FREE ARGS...`` in a subprocess, once its
    /health answers: {"url", "port", "proc", "log"}. Stop it with :func:`stop_service`."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k != "NER_API_KEY"}  # a key only where a test sets one
    env = {**base, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "app.serve", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    with open(log, "w") as fh:
        proc = subprocess.Popen([*cmd, *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return {"url": url, "port": port, "proc": proc, "log": log}
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"service did not come up in 180 s: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_service(service: dict) -> None:
    service["proc"].terminate()
    try:
        service["proc"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        service["proc"].kill()


@pytest.fixture(scope="module")
def service(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    limits = ["--max-texts", "4", "--max-chars", "3000", "--max-total-chars", "5000", "--window", "32"]
    # a queue that holds the 16 concurrent clients below: with the default (2 x --max-texts) a slow moment
    # answers some of them 503 (the bound itself is tested in test_serve_hardening.py)
    limits += ["--max-queue", "32"]
    # fp32: the tests compare confidences to 1e-4 (bf16 moves them by ~1e-3)
    svc = start_service(model_dir, log, *limits, "--precision", "fp32")
    yield svc
    stop_service(svc)


def test_health_and_model_info(service, model_dir):
    h = httpx.get(f"{service['url']}/health").json()
    assert h["status"] == "ok"
    m = httpx.get(f"{service['url']}/model").json()
    assert m["labels"] == ["FIN", "LOC", "ORG", "PER"] and m["scheme"] == "BIOES"
    assert m["config"]["head"]["type"] == "bilstm" and m["metrics"]["note"] == "untrained test model"
    assert m["tagger"]["max_len"] == 32 and m["tagger"]["stride"] == 32  # default: stride = window
    assert m["limits"]["max_texts"] == 4 and m["model_dir"] == str(Path(model_dir).resolve())


def test_predict_many_texts_matches_in_process_tagging(service, model_dir):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    r = httpx.post(f"{service['url']}/predict", json={"texts": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and results[2] == {"n_chars": 0, "entities": []}
    options = PredictionConfig(window=32, precision="fp32")
    expected = Tagger.from_loaded(load_model_dir(model_dir), options).predict(TEXTS)
    for text, res, exp in zip(TEXTS, results, expected, strict=True):
        assert res["n_chars"] == len(text)
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in res["entities"]] == [
            (e.start, e.end, e.label, e.text) for e in exp
        ]
        for e in res["entities"]:
            assert text[e["start"] : e["end"]] == e["text"] and 0.0 <= e["confidence"] <= 1.0
    one = httpx.post(f"{service['url']}/predict", json={"text": TEXTS[0]}, timeout=60).json()
    spans = [(e["start"], e["end"], e["label"]) for e in one["results"][0]["entities"]]
    assert spans == [(e["start"], e["end"], e["label"]) for e in results[0]["entities"]]
    # alone or batched with other texts (padding differs): same spans, confidence equal up to float noise
    assert [e["confidence"] for e in one["results"][0]["entities"]] == pytest.approx(
        [e["confidence"] for e in results[0]["entities"]], abs=1e-4
    )


def test_concurrent_requests_get_their_own_results(service):
    """16 clients at once: each gets exactly what it would get alone, and /health counts every request."""
    from concurrent.futures import ThreadPoolExecutor

    cities = ["北京", "上海", "深圳", "广州", "杭州", "南京", "成都", "武汉"] * 2
    texts = [
        f"{name}在{city}的{org}工作。"
        for name, city, org in zip(
            "张李王赵刘陈杨黄周吴徐孙马朱胡郭", cities, ["ABC资本", "招商银行"] * 8, strict=True
        )
    ]

    def ask(text):
        r = httpx.post(f"{service['url']}/predict", json={"text": text}, timeout=60)
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        return res["n_chars"], [
            (e["start"], e["end"], e["label"], e["text"], e["confidence"]) for e in res["entities"]
        ]

    alone = [ask(t) for t in texts]
    before = httpx.get(f"{service['url']}/health").json()["served"]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, texts))
    for (n1, e1), (n2, e2), text in zip(alone, together, texts, strict=True):
        assert n1 == n2 == len(text)
        assert [e[:4] for e in e1] == [e[:4] for e in e2]  # same spans, labels and mentions
        assert [e[4] for e in e1] == pytest.approx([e[4] for e in e2], abs=1e-4)  # batched float sums
    after = httpx.get(f"{service['url']}/health").json()["served"]
    assert after["requests"] - before["requests"] == 16 and after["texts"] - before["texts"] == 16
    assert 1 <= after["batches"] - before["batches"] <= 16


class _BlockingTagger:
    """A tagger whose first call waits for ``release``: the requests sent meanwhile must queue up."""

    def __init__(self):
        import threading

        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, texts):
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)
        if "boom" in texts:
            raise RuntimeError("tagger failed")
        return [[f"{t}:{len(t)}"] for t in texts]


def test_batcher_tags_waiting_requests_together_within_the_limits():
    import threading

    from app.serve import RequestBatcher

    tagger = _BlockingTagger()
    batcher = RequestBatcher(tagger, max_texts=4, max_chars=10)
    results: dict[str, list] = {}

    def ask(key, texts):
        results[key] = batcher.predict(texts)

    first = threading.Thread(target=ask, args=("first", ["甲"]))
    first.start()
    assert tagger.entered.wait(30)
    waiting = [("a", ["一二"]), ("b", ["三", "四五"]), ("c", ["六"]), ("d", ["七八九十"]), ("e", ["壹"])]
    threads = []
    for key, texts in waiting:  # queued in this order while the first batch runs
        threads.append(threading.Thread(target=ask, args=(key, texts)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while batcher._queue.qsize() < len(threads) and time.monotonic() < deadline:
            time.sleep(0.01)
    tagger.release.set()
    for t in [first, *threads]:
        t.join(30)
    # a, b, c fit one batch (4 texts); d would make 5 texts, so it opens the next batch with e
    assert tagger.calls == [["甲"], ["一二", "三", "四五", "六"], ["七八九十", "壹"]]
    assert results == {
        "first": [["甲:1"]],
        "a": [["一二:2"]],
        "b": [["三:1"], ["四五:2"]],
        "c": [["六:1"]],
        "d": [["七八九十:4"]],
        "e": [["壹:1"]],
    }
    assert batcher.stats == {"requests": 6, "texts": 7, "batches": 3, "rejected_busy": 0}
    # an error reaches the requests of its batch only; the worker goes on serving
    with pytest.raises(RuntimeError, match="tagger failed"):
        batcher.predict(["boom"])
    assert batcher.predict(["好"]) == [["好:1"]]
    batcher.close()
    assert not batcher._worker.is_alive()


def test_long_text_is_tagged_whole(service):
    text = "招商银行在深圳发布年报。" * 200  # 2,400 chars, window 32
    r = httpx.post(f"{service['url']}/predict", json={"text": text}, timeout=120)
    assert r.status_code == 200
    ents = r.json()["results"][0]["entities"]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in ents)
    assert ents and max(e["end"] for e in ents) > 2000


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"texts": ["a"] * 5}, 413, "5 texts in one request; at most 4 allowed"),
        ({"text": "长" * 3001}, 413, "text 0 has 3001 characters; at most 3000 per text"),
        ({"texts": ["长" * 2000] * 3}, 413, "6000 characters in one request; at most 5000"),
        ({"texts": []}, 422, '"texts" is empty'),
        ({}, 422, 'give exactly one of "text"'),
        ({"text": "a", "texts": ["b"]}, 422, 'give exactly one of "text"'),
        ({"texts": "not a list"}, 422, "texts: Input should be a valid list"),
        ({"text": 3}, 422, "text: Input should be a valid string"),
        ({"text": "a", "lang": "zh"}, 422, "lang: Extra inputs are not permitted"),
    ],
)
def test_limits_and_bad_bodies_get_clear_errors(service, body, status, message):
    r = httpx.post(f"{service['url']}/predict", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_oversized_and_non_json_bodies_do_not_crash_the_service(service):
    r = httpx.post(
        f"{service['url']}/predict", content=b"x" * 40_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "at most" in r.json()["detail"]
    r = httpx.post(
        f"{service['url']}/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "invalid request" in r.json()["detail"]
    assert httpx.get(f"{service['url']}/health").status_code == 200
    assert service["proc"].poll() is None


def test_query_command_prints_entities(service):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "app.serve", "query", TEXTS[0], "--url", service["url"], "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    import json

    body = json.loads(r.stdout)
    direct = httpx.post(f"{service['url']}/predict", json={"texts": [TEXTS[0]]}).json()
    assert body["results"] == direct["results"]  # same single-text request: identical answer
    r = subprocess.run(
        [sys.executable, "-m", "app.serve", "query", TEXTS[0], "--url", service["url"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    n = len(direct["results"][0]["entities"])
    assert r.returncode == 0 and f"({n} entities)" in r.stdout
    for e in direct["results"][0]["entities"]:
        assert f"[{e['start']}, {e['end']})  {e['text']}" in r.stdout


def test_query_without_service_is_one_clear_line():
    import argparse

    from app.commands import query

    args = argparse.Namespace(texts=["张三"], url=f"http://127.0.0.1:{_free_port()}", json=False, timeout=5.0)
    assert query.cmd_query(args) == 2


def test_resolve_model_from_runs_table(tmp_path, model_dir):
    from storage import runs as runs_db
    from storage.runs import resolve_model

    db = str(tmp_path / "r.duckdb")
    with pytest.raises(FileNotFoundError, match="no such database"):
        resolve_model(db)
    cfg = (Path(model_dir) / "ner_config.json").read_text(encoding="utf-8")
    runs_db.create_run(db, "run-a", dataset="sample", dataset_version=1, config_json=cfg, run_dir=tmp_path)
    with pytest.raises(ValueError, match="no production run"):
        resolve_model(db)
    with pytest.raises(ValueError, match="run run-a has no model directory \\(status running\\)"):
        resolve_model(db, run_id="run-a")
    runs_db.finish_run(db, "run-a", status="completed", model_dir=model_dir)
    assert resolve_model(db, run_id="run-a") == (str(model_dir), "run-a")
    runs_db.promote_run(db, "run-a")
    assert resolve_model(db) == (str(model_dir), "run-a")
    assert resolve_model(None, model_dir=str(model_dir)) == (str(model_dir), None)
    assert resolve_model(db, model_dir=model_dir, run_id="run-a") == (str(model_dir), "run-a")
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        resolve_model(db, model_dir=str(tmp_path / "nope"))
    with pytest.raises(KeyError, match="no run 'run-zzz'"):
        resolve_model(db, run_id="run-zzz")
    with pytest.raises(ValueError, match="no model given"):
        resolve_model(None)


def test_every_command_and_flow_resolves_the_model_with_storage_resolve_model():
    """One owner: the commands and the flows call storage.runs.resolve_model, none keeps its own copy."""
    import inspect

    from app import cli, options, serve
    from app.commands import predict, test
    from app.commands import serve as serve_command
    from flows import dask_predict, pipeline

    for module in (options, pipeline, dask_predict):
        source = inspect.getsource(module)
        assert "resolve_model(" in source, module.__name__
        assert "production_run(" not in source, module.__name__
    # through app.options.chosen_model, which refuses --model-dir with --run
    for module in (predict, test, serve_command):
        source = inspect.getsource(module)
        assert "chosen_model(" in source and "production_run(" not in source, module.__name__
    for module in (cli, serve):  # the parser and the service resolve no model themselves
        assert "production_run(" not in inspect.getsource(module), module.__name__
    assert not hasattr(cli, "_resolve_model") and not hasattr(pipeline, "_resolve_production")
    assert not hasattr(serve, "resolve_model")


def test_commands_parse_and_alias():
    import argparse

    from app.commands import query, serve
    from app.commands.query import cmd_query
    from app.commands.serve import cmd_serve

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    serve.add_parser(sub)
    query.add_parser(sub)
    a = p.parse_args(["deploy", "--model-dir", "m", "--port", "9001", "--max-texts", "8"])
    assert a.func is cmd_serve and a.host == "127.0.0.1" and a.port == 9001 and a.max_texts == 8
    q = p.parse_args(["query", "张三在北京", "--url", "http://127.0.0.1:9001"])
    assert q.func is cmd_query and q.texts == ["张三在北京"]


def test_app_serve_alone_reports_a_bad_flag_in_one_line():
    """``python -m app.serve`` is the ner parser with two commands: the same one-line usage errors."""
    r = subprocess.run(
        [sys.executable, "-m", "app.serve", "serve", "--port", "nine"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "argument --port: invalid int value: 'nine'" in r.stderr and "(see ner serve --help)" in r.stderr


def test_cli_wiring():
    """`ner serve --help` (the ner command, not app.serve alone) lists the service's flags."""
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "--max-texts" in r.stdout and "--model-dir" in r.stdout
    assert "--window" in r.stdout and "--stride" in r.stdout and "--max-len" not in r.stdout
