"""prefect.yaml is consistent with the flows; ``ner prefect up`` starts a real server on loopback, a worker
and the deployments, a deployment run completes and leaves its rows in DuckDB, ``down`` stops it all."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import time

import duckdb
import pytest
import yaml

from tests.conftest import REPO, SAMPLE


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def test_one_deployment_per_flow_on_one_shared_pool(spec):
    from prefect import Flow

    deployments = spec["deployments"]
    names = [d["name"] for d in deployments]
    assert len(names) == len(set(names))
    flows = {d["entrypoint"] for d in deployments}
    assert len(flows) == len(deployments), "one deployment per flow"
    assert {
        "flows/pipeline.py:ingest_flow",
        "flows/pipeline.py:train_flow",
        "flows/pipeline.py:evaluate_flow",
        "flows/pipeline.py:predict_flow",
        "flows/pipeline.py:pipeline_flow",
        "flows/pipeline.py:predict_new_flow",
        "flows/pipeline.py:evaluate_production_flow",
        "flows/dask_predict.py:dask_predict_flow",
        "flows/review.py:export_reviews_flow",
        "flows/review.py:retrain_from_reviews_flow",
        "flows/adapt.py:adapt_flow",
        "flows/self_train.py:self_train_flow",
        "flows/distill.py:distill_flow",
    } == flows
    pool = spec["definitions"]["work_pools"]["local_pool"]
    assert all(d["work_pool"] == pool for d in deployments) and pool["name"] == "ner-local"
    for d in deployments:
        assert isinstance(_flow(d["entrypoint"]), Flow), d["entrypoint"]


# parameters a deployment leaves to the caller of each run
RUN_TIME = {"evaluate": {"model_dir": "runs/some-run/model"}, "export-reviews": {"pred_run_id": "some-run"}}


def test_parameters_match_flow_signatures_and_validate(spec):
    for d in spec["deployments"]:
        fl = _flow(d["entrypoint"])
        sig = inspect.signature(fl.fn)
        params = {**d.get("parameters", {}), **RUN_TIME.get(d["name"], {})}
        assert set(params) <= set(sig.parameters), (d["name"], set(params) - set(sig.parameters))
        required = {n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty}
        assert required <= set(params), (d["name"], required - set(params))
        fl.validate_parameters(params)  # pydantic: a typo in the YAML fails here, not at 2 a.m.


def test_schedules_nightly_incremental_predict_and_weekly_reevaluation(spec):
    by_name = {d["name"]: d for d in spec["deployments"]}
    nightly, weekly = by_name["nightly-predict"], by_name["weekly-evaluate-production"]
    assert nightly["entrypoint"].endswith(":predict_new_flow")
    assert nightly["schedules"][0]["cron"].split()[2:] == ["*", "*", "*"]  # every day
    assert (
        weekly["entrypoint"].endswith(":evaluate_production_flow") and weekly["parameters"]["split"] == "test"
    )
    assert (
        weekly["schedules"][0]["cron"].split()[2:4] == ["*", "*"]
        and weekly["schedules"][0]["cron"].split()[4] != "*"
    )
    scheduled = {d["name"] for d in spec["deployments"] if d.get("schedules")}
    assert scheduled == {"nightly-predict", "weekly-evaluate-production", "retrain-from-reviews"}


def test_retrain_from_reviews_acts_on_demand_and_on_schedule_only_with_enough_new_decisions(spec):
    """On demand any new review counts; the schedule's own parameters ask for at least N new decisions
    (and validate against the flow, as the scheduler will merge them)."""
    d = next(d for d in spec["deployments"] if d["name"] == "retrain-from-reviews")
    (schedule,) = d["schedules"]
    assert d["parameters"]["min_new_decisions"] == 0 and schedule["parameters"]["min_new_decisions"] >= 10
    assert schedule["cron"].split()[2:] == ["*", "*", "*"]
    validated = _flow(d["entrypoint"]).validate_parameters({**d["parameters"], **schedule["parameters"]})
    assert validated["config"].data.dataset == "sample" and validated["pred_run_id"] is None


def test_pull_step_sets_the_working_directory_without_git(spec):
    (step,) = spec["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $NER_HOME }}"}}


def test_down_without_up_does_nothing_and_api_wait_times_out(tmp_path, monkeypatch):
    from app import prefect_local as deploy

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert deploy.prefect_down() == [] and deploy.status() is None
    port = deploy.free_port()
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        deploy.wait_for_api(f"http://127.0.0.1:{port}/api", timeout_s=1)
    with pytest.raises(ValueError, match="expected a loopback host"):
        deploy.prefect_up(host="0.0.0.0")


def _in_prefect(code: str, env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow  # a real server, a worker and a flow-run subprocess: about a minute on 2 cores
def test_up_deploy_run_and_down_on_loopback(tmp_path, monkeypatch):
    from app import prefect_local as deploy

    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    db = tmp_path / "deployed.duckdb"
    state = deploy.prefect_up(
        db=db,
        port=deploy.free_port(),
        extra_env={"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO"},
    )
    try:
        assert state["api_url"].startswith("http://127.0.0.1:") and deploy.status()["server_alive"]
        env = {**os.environ, "PREFECT_API_URL": state["api_url"], "PREFECT_HOME": str(home)}
        code = (
            "import json\nfrom prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    print('NAMES', json.dumps(sorted(d.name for d in c.read_deployments())))\n"
        )
        listed = _in_prefect(code, env, timeout=120)
        assert listed.returncode == 0, listed.stderr[-2000:]
        names = json.loads(listed.stdout.split("NAMES", 1)[1])
        yaml_names = {d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
        assert set(names) == yaml_names
        params = {
            "db_path": str(db),
            "name": "deployed",
            "files": {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")},
        }
        code = (
            "import json, sys\nfrom prefect.deployments import run_deployment\n"
            f"fr = run_deployment('ingest/ingest', parameters=json.loads({json.dumps(json.dumps(params))}), "
            "timeout=300)\nprint('STATE', fr.state.type.value, fr.name)\n"
        )
        t0 = time.monotonic()
        r = _in_prefect(code, env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "STATE COMPLETED ingest-deployed" in r.stdout, (
            r.stdout,
            open(state["worker_log"]).read()[-3000:],
        )
        print(f"deployment run took {time.monotonic() - t0:.1f} s")
        con = duckdb.connect(str(db), read_only=True)
        n_docs = con.execute("SELECT count(*) FROM documents WHERE dataset = 'deployed'").fetchone()[0]
        con.close()
        assert n_docs == sum(
            1
            for s in ("train", "dev", "test")
            for line in open(SAMPLE / f"{s}.jsonl", encoding="utf-8")
            if line.strip()
        )
    finally:
        stopped = deploy.prefect_down()
    assert state["server_pid"] in stopped and state["worker_pid"] in stopped
    assert not deploy._alive(state["server_pid"]) and not deploy._alive(state["worker_pid"])
    assert deploy.status() is None


def test_prediction_sources_in_the_yaml_are_typed_sources(spec):
    """The predict deployments' ``source`` validates into the discriminated union; a source without a
    ``kind`` (the untyped shape) fails at validation, not in the middle of a run."""
    from prefect.exceptions import ParameterTypeError

    from flows.contracts import DatasetSource

    by_name = {d["name"]: d for d in spec["deployments"]}
    for name in ("predict", "dask-predict"):
        fl = _flow(by_name[name]["entrypoint"])
        validated = fl.validate_parameters(dict(by_name[name]["parameters"]))
        assert isinstance(validated["source"], DatasetSource) and validated["source"].dataset == "sample"
        with pytest.raises(ParameterTypeError):
            fl.validate_parameters({**by_name[name]["parameters"], "source": {"dataset": "sample"}})
