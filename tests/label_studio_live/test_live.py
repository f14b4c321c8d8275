"""``ner serve --label-studio`` against a real Label Studio server on loopback (``make test-label-studio``).

The ``label-studio`` package (:data:`LS_VERSION`, override with ``$NER_LABEL_STUDIO_VERSION``) is
installed into its own venv (``$NER_LABEL_STUDIO_VENV``, default ``~/.cache/ner/label-studio-venv``,
outside the checkout; reused when present); the test skips when pip cannot install it. It starts Label
Studio (SQLite in a temporary folder, a legacy API token) and the backend (a tiny model, a DuckDB file,
an API key), creates a project with an NER label config, imports tasks, connects the backend with HTTP
Basic auth (the API key as the password), has Label Studio fetch the model's pre-annotations, submits
an annotation, and checks that the webhook stored it as review events and that the retrain trigger
fired (no Prefect server runs here, so the deployment run it starts fails; ``/health`` shows the
attempt). Both servers are stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.test_predict import build_model_dir
from tests.test_serve import _free_port

LS_VERSION = os.environ.get("NER_LABEL_STUDIO_VERSION", "1.23.2")
TOKEN = "ner-live-test-token-0123456789abcdef"
KEY = "ner-live-test-api-key-0123456789"
CONFIG = """<View>
  <Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/><Label value="ORG"/></Labels>
  <Text name="text" value="$text"/>
</View>"""
TEXTS = ["😀张三在北京的腾讯公司工作。", "李四去了上海。"]


def _venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = Path(os.environ.get("NER_LABEL_STUDIO_VENV") or cache / "ner" / "label-studio-venv")
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return venv
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        # label-studio 1.23.2 asks for sentry-sdk>=2.16 without an upper bound; 3.x refuses its options
        subprocess.run([*pip, f"label-studio=={LS_VERSION}", "sentry-sdk<3"], check=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"could not install label-studio=={LS_VERSION} into {venv}: {exc}")
    return venv


def _wait(url: str, proc: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer in {seconds} s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = _venv()
    data, port = tmp_path_factory.mktemp("ls-data"), _free_port()
    log = data / "label-studio.log"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite"}
    # Label Studio refuses backend and webhook URLs on loopback unless its SSRF guards are off (a test server)
    env |= {"SSRF_PROTECTION_ENABLED": "false", "ML_BLOCK_LOCAL_IP": "false"}
    cmd = [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--data-dir", str(data)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--username", "live@example.com"]
    cmd += ["--password", "live-test-password-1", "--user-token", TOKEN, "--enable-legacy-api-token"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health", proc, log)
        yield {"url": url, "log": log}
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory, tiny_encoder_dir):
    root = tmp_path_factory.mktemp("ls-backend")
    model_dir = build_model_dir(root / "model", tiny_encoder_dir)
    db, port, log = root / "ls.duckdb", _free_port(), root / "serve.log"
    env = {**os.environ, "NER_API_KEY": KEY, "LABEL_STUDIO_URL": label_studio["url"]}
    env |= {"LABEL_STUDIO_API_KEY": TOKEN}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NER_PRECISION_AUTO": "fp32"}
    cmd = [sys.executable, "-m", "app.serve", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    cmd += ["--label-studio", "--db", str(db), "--retrain-every", "1"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health", proc, log)
        yield {"url": url, "db": str(db), "log": log}
    finally:
        _stop(proc)


def _api(label_studio, method: str, path: str, **kw) -> httpx.Response:
    r = httpx.request(
        method, label_studio["url"] + path, headers={"Authorization": f"Token {TOKEN}"}, timeout=120, **kw
    )
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r


def _predictions(label_studio, task_id: int) -> list:
    body = _api(label_studio, "GET", "/api/predictions/", params={"task": task_id}).json()
    return body["results"] if isinstance(body, dict) else body


def test_live_label_studio_round_trip(label_studio, backend):
    from storage.reviews import current_entities

    project = _api(label_studio, "POST", "/api/projects/", json={"title": "ner live", "label_config": CONFIG})
    pid = project.json()["id"]
    _api(label_studio, "POST", f"/api/projects/{pid}/import", json=[{"text": t} for t in TEXTS])
    tasks = _api(label_studio, "GET", "/api/tasks/", params={"project": pid}).json()
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    task_ids = sorted(t["id"] for t in tasks)
    assert len(task_ids) == 2
    # connect the backend with Basic auth: the API key is the password
    ml = {"url": backend["url"], "project": pid, "title": "ner", "auth_method": "BASIC_AUTH"}
    ml |= {"basic_auth_user": "label-studio", "basic_auth_pass": KEY, "is_interactive": False}
    _api(label_studio, "POST", "/api/ml/", json=ml)
    hook = {"project": pid, "url": backend["url"] + "/webhook", "send_payload": True}
    hook |= {"send_for_all_actions": False, "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]}
    hook |= {"headers": {"Authorization": f"Bearer {KEY}"}}
    _api(label_studio, "POST", "/api/webhooks/", json=hook)
    # pre-annotations: Label Studio asks the backend for every task of the project
    _api(
        label_studio,
        "POST",
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": pid},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    preds = _predictions(label_studio, task_ids[0])
    assert preds, "Label Studio stored no prediction from the backend"
    for item in preds[0]["result"]:
        v = item["value"]
        assert TEXTS[0][v["start"] : v["end"]] == v["text"]
    assert "score" in preds[0]
    # an annotation: 张三 PER, 北京 LOC (code points: after the emoji)
    result = [
        {"from_name": "label", "to_name": "text", "type": "labels", "value": v}
        for v in (
            {"start": 1, "end": 3, "text": "张三", "labels": ["PER"]},
            {"start": 4, "end": 6, "text": "北京", "labels": ["LOC"]},
        )
    ]
    _api(label_studio, "POST", f"/api/tasks/{task_ids[0]}/annotations/", json={"result": result})
    deadline, health = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        health = httpx.get(backend["url"] + "/health", timeout=5).json()
        if health["retrain"]["triggered"] >= 1:
            break
        time.sleep(1)
    assert health["retrain"]["triggered"] >= 1, backend["log"].read_text()[-3000:]
    run = health["retrain"]["last"]["pred_run_id"]
    stored = current_entities(backend["db"], run, f"task-{task_ids[0]}")
    now = {(e["start"], e["end"], e["label"]) for e in stored}
    assert now == {(1, 3, "PER"), (4, 6, "LOC")}
