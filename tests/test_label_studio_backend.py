"""``ner serve --label-studio``: Label Studio's ML backend protocol (/health, /setup, /predict, /webhook)
served in-process with a tiny real model dir, answers and annotations in a real DuckDB file."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from tests.test_predict import build_model_dir

KEY = "k" * 24
CONFIG = """<View>
  <Labels name="ner" toName="doc">
    <Label value="PER"/><Label value="org"/><Label value="LOC"/><Label value="MISC"/>
  </Labels>
  <Text name="doc" value="$content"/>
</View>"""
TEXTS = ["😀😀张三在北京的腾讯公司工作，李四也在上海。", "王五和赵六去了深圳👍的华为。"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("ls-model") / "model", tiny_encoder_dir)


class Recorder:
    def __init__(self):
        self.calls, self.done = [], threading.Event()

    def __call__(self, pred_run_id):
        self.calls.append((pred_run_id, threading.current_thread().name))
        self.done.set()
        return "recorded"


@pytest.fixture
def served(model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from app.serve import create_app
    from app.serve.ls_backend import LabelStudioOptions

    db = str(tmp_path / "ls.duckdb")
    app = create_app(
        model_dir, api_key=KEY, label_studio=LabelStudioOptions(db, retrain_every=2), options=None
    )
    recorder = Recorder()
    app.state.label_studio.trigger.fire = recorder  # the real trigger starts a Prefect deployment run
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        client.headers["Authorization"] = "Bearer " + KEY
        yield {"client": client, "db": db, "app": app, "recorder": recorder}


def _predict(client, tasks, **extra):
    body = {"tasks": tasks, "project": "7.1700000000", "label_config": CONFIG, **extra}
    return client.post("/predict", json=body)


def test_health_setup_and_label_mapping(served):
    c = served["client"]
    health = c.get("/health", headers={"Authorization": ""})
    assert health.status_code == 200 and health.json()["status"] == "UP"
    r = c.post("/setup", json={"project": "7.1700000000", "schema": CONFIG})
    assert r.status_code == 200 and r.json()["model_version"].startswith("ner-"), r.text
    control = served["app"].state.label_studio.controls["7"]
    assert (control.from_name, control.to_name, control.value_key) == ("ner", "doc", "content")
    assert control.to_ls == {"PER": "PER", "ORG": "org", "LOC": "LOC"}  # FIN: not in the config
    fewer = CONFIG.replace('"PER"', '"X"').replace("org", "Y")
    bad = c.post("/setup", json={"project": "8", "schema": fewer})
    assert bad.status_code == 200  # LOC still matches
    none = '<View><Labels name="a" toName="t"><Label value="Q"/></Labels><Text name="t" value="$t"/></View>'
    r = c.post("/setup", json={"project": "9", "schema": none})
    assert r.status_code == 422 and "none of the model's labels" in r.json()["detail"]
    dtd = '<!DOCTYPE x [<!ENTITY a "b">]><View/>'
    r = c.post("/setup", json={"project": "9", "schema": dtd})
    assert r.status_code == 422 and "DTD" in r.json()["detail"]


def test_predict_shape_offsets_scores_and_stored_run(served):
    from storage.label_studio import task_documents
    from storage.reviews import document_for_review, text_hash

    c, app = served["client"], served["app"]
    tasks = [{"id": 11 + i, "data": {"content": t}} for i, t in enumerate(TEXTS)]
    r = _predict(c, tasks)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    tagger = app.state.label_studio.tagger
    expected = tagger.predict_documents(TEXTS)
    n_entities = 0
    for text, res, exp in zip(TEXTS, results, expected, strict=True):
        assert res["score"] == pytest.approx(exp.uncertainty) and res["score"] > 0
        want = [(e.start, e.end, e.label, e.confidence) for e in exp.entities if e.label != "FIN"]
        got = []
        for item in res["result"]:
            assert (item["from_name"], item["to_name"], item["type"]) == ("ner", "doc", "labels")
            v = item["value"]
            assert v["text"] == text[v["start"] : v["end"]]  # code points: after the emoji too
            label = {"org": "ORG"}.get(v["labels"][0], v["labels"][0])
            got.append((v["start"], v["end"], label, item["score"]))
        assert [g[:3] for g in got] == [w[:3] for w in want]
        assert [g[3] for g in got] == pytest.approx([w[3] for w in want])
        n_entities += len(got)
    assert n_entities > 0 and any(item["value"]["start"] >= 2 for item in results[0]["result"])
    base = app.state.label_studio.base_run_id("7")
    stored = task_documents(served["db"], base, "label-studio project 7", ["task-11", "task-12"])
    assert {k: v["text"] for k, v in stored.items()} == {"task-11": TEXTS[0], "task-12": TEXTS[1]}
    doc = document_for_review(served["db"], base, "task-11")
    assert doc["doc_hash"] == text_hash(TEXTS[0]) and doc["uncertainty"] == pytest.approx(results[0]["score"])


def _annotation(text, spans, ann_id=501, user=3):
    result = [
        {
            "from_name": "ner",
            "to_name": "doc",
            "type": "labels",
            "value": {"start": s, "end": e, "text": text[s:e], "labels": [lab]},
        }
        for s, e, lab in spans
    ]
    return {"id": ann_id, "result": result, "completed_by": user, "task": 11, "was_cancelled": False}


def test_webhook_annotation_becomes_review_events_and_triggers_retrain(served):
    from storage.reviews import current_entities

    c, app, db = served["client"], served["app"], served["db"]
    assert _predict(c, [{"id": 11, "data": {"content": TEXTS[0]}}]).status_code == 200
    run = app.state.label_studio.base_run_id("7")
    text = TEXTS[0]
    # the annotator keeps 张三 as PER, adds 腾讯 as org (the model's ORG) and a new label MISC on 上海
    spans = [(2, 4, "PER"), (8, 10, "org"), (19, 21, "MISC")]
    payload = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 7, "label_config": CONFIG},
        "task": {"id": 11, "data": {"content": text}},
        "annotation": _annotation(text, spans),
    }
    r = c.post("/webhook", json=payload)
    assert r.status_code == 200, r.text
    assert r.json()["pred_run_id"] == run and r.json()["events"] >= 4
    now = {(e["start"], e["end"], e["label"]) for e in current_entities(db, run, "task-11")}
    assert now == {(2, 4, "PER"), (8, 10, "ORG"), (19, 21, "MISC")}
    assert served["recorder"].calls == []  # 1 annotation of 2
    # updated: 李四 added as PER; the second annotation reaches N=2 -> the trigger fires, off the request
    payload["action"] = "ANNOTATION_UPDATED"
    payload["annotation"] = _annotation(text, [*spans, (15, 17, "PER")])
    r = c.post("/webhook", json=payload)
    assert r.status_code == 200, r.text
    now = {(e["start"], e["end"], e["label"]) for e in current_entities(db, run, "task-11")}
    assert (15, 17, "PER") in now and len(now) == 4
    assert served["recorder"].done.wait(30)
    assert served["recorder"].calls[0][0] == run and served["recorder"].calls[0][1] == "ner-retrain"
    state = c.get("/health").json()["retrain"]
    assert state["triggered"] == 1 and state["annotations_since_trigger"] == 0


def test_webhook_refusals(served):
    c = served["client"]
    assert c.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}}).json()["status"] == (
        "ignored"
    )
    text = TEXTS[0]
    never = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 7, "label_config": CONFIG},
        "task": {"id": 99},
        "annotation": _annotation(text, [(2, 4, "PER")], ann_id=9),
    }
    r = c.post("/webhook", json=never)
    assert r.status_code == 422 and "never answered" in r.json()["detail"]
    assert _predict(c, [{"id": 11, "data": {"content": text}}]).status_code == 200
    utf16 = dict(never, task={"id": 11})
    ann = _annotation(text, [(2, 4, "PER")])
    ann["result"][0]["value"].update(start=4, end=6)  # UTF-16 units: the emoji count twice
    utf16["annotation"] = ann
    r = c.post("/webhook", json=utf16)
    assert r.status_code == 422 and "code points" in r.json()["detail"]
    no_result = dict(never, task={"id": 11}, annotation={"id": 5})
    r = c.post("/webhook", json=no_result)
    assert r.status_code == 422 and "LABEL_STUDIO_URL" in r.json()["detail"]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Basic " + base64.b64encode(f"ls:{KEY}".encode()).decode()}, 200),
        ({"Authorization": "Basic " + base64.b64encode(f":{KEY}".encode()).decode()}, 200),
        ({"Authorization": "Basic " + base64.b64encode(b"ls:wrong-key-wrong-key").decode()}, 401),
        ({"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}, 401),  # no colon
        ({"Authorization": "Basic !!!not-base64"}, 401),
        ({"Authorization": f"Bearer {KEY}"}, 200),
        ({"X-API-Key": KEY}, 200),
    ],
)
def test_basic_auth_with_the_api_key(served, headers, status):
    c = served["client"]
    c.headers.pop("Authorization", None)
    r = c.post("/setup", json={"project": "7", "schema": CONFIG}, headers=headers)
    assert r.status_code == status, r.text
    assert c.get("/health").status_code == 200  # open, as in plain mode
    r = c.post("/setup", json={"project": "7", "schema": CONFIG}, headers={**headers, "Host": "evil.example"})
    assert r.status_code == 421  # the Host rule holds in this mode too


def test_cli_process_label_studio_mode(model_dir, tmp_path):
    """``python -m app.serve serve --label-studio``: the flags reach the app, /health is Label Studio's,
    Basic auth with the API key answers /setup, and the Label Studio token is never printed."""
    import httpx

    from tests.test_serve import start_service, stop_service

    token_file = tmp_path / "ls-token"
    token_file.write_text("ls-secret-token-do-not-print\n")
    svc = start_service(
        model_dir,
        tmp_path / "serve.log",
        "--label-studio",
        "--db",
        str(tmp_path / "cli.duckdb"),
        "--label-studio-url",
        "http://127.0.0.1:9",
        "--label-studio-token-file",
        str(token_file),
        "--retrain-every",
        "3",
        "--precision",
        "fp32",
        env={"NER_API_KEY": KEY},
    )
    try:
        health = httpx.get(f"{svc['url']}/health", timeout=10).json()
        assert health["status"] == "UP" and health["retrain"]["every"] == 3
        basic = "Basic " + base64.b64encode(f"label-studio:{KEY}".encode()).decode()
        body = {"project": "1.1", "schema": CONFIG}
        r = httpx.post(f"{svc['url']}/setup", json=body, headers={"Authorization": basic}, timeout=30)
        assert r.status_code == 200, r.text
        assert httpx.post(f"{svc['url']}/setup", json=body, timeout=30).status_code == 401
        r = httpx.post(f"{svc['url']}/decode", json={"text": "张三"}, headers={"X-API-Key": KEY}, timeout=30)
        assert r.status_code == 404  # the plain routes give way to Label Studio's in this mode
    finally:
        stop_service(svc)
    assert "ls-secret-token-do-not-print" not in svc["log"].read_text()


def test_webhook_without_result_fetches_the_annotation_from_label_studio(served):
    """A webhook that carries only the annotation's id: the annotation is read from Label Studio's API
    (a real HTTP server on loopback here) with ``Authorization: Token <token>``."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from app.serve.label_studio import LabelStudioClient
    from storage.reviews import current_entities

    text, seen = TEXTS[1], []
    annotation = _annotation(text, [(0, 2, "PER")], ann_id=77)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps(annotation).encode()
            self.send_response(200 if self.path == "/api/annotations/77/" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c, app = served["client"], served["app"]
    try:
        backend = app.state.label_studio
        backend.client = LabelStudioClient(f"http://127.0.0.1:{server.server_address[1]}", "ls-token-1")
        assert _predict(c, [{"id": 12, "data": {"content": text}}]).status_code == 200
        payload = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": 7},
            "task": {"id": 12},
            "annotation": {"id": 77},
        }
        r = c.post("/webhook", json=payload)
        assert r.status_code == 200, r.text
    finally:
        server.shutdown()
    assert seen == [("/api/annotations/77/", "Token ls-token-1")]
    run = backend.base_run_id("7")
    assert {(e["start"], e["end"], e["label"]) for e in current_entities(served["db"], run, "task-12")} == {
        (0, 2, "PER")
    }
