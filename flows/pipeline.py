"""Prefect 3 flows: thin wrappers that chain the steps of :mod:`flows.steps`.

Tasks pass paths and ids; I/O-bound tasks retry. Artifacts carry stable keys so the Prefect UI shows their
history: ``eval-<dataset>-<split>`` (per-type table), ``run-report-<dataset>`` (Markdown), ``model-dir``.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows import steps
from ner_core.config import NERConfig


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _train_run_name() -> str:
    cfg = flow_run.parameters.get("config")
    cfg = cfg if isinstance(cfg, NERConfig) else NERConfig.model_validate(cfg or {})
    return f"train-{cfg.data.dataset}-{cfg.head.type.value}-{Path(cfg.encoder.name).name}"


# ----------------------------------------------------------------------------------------- tasks
@task(name="ingest", retries=2, retry_delay_seconds=[2, 5])
def ingest_task(db_path: str, name: str, files: dict[str, str] | list[str], format: str | None = None,
                policy: str = "repair", untyped_label: str = "ENT",
                split_ratios: tuple[float, float, float] | None = None) -> dict:
    return steps.ingest_step(db_path, name, files, format=format, policy=policy, untyped_label=untyped_label,
                             split_ratios=split_ratios)


@task(name="train")
def train_task(db_path: str, config: NERConfig, runs_root: str, run_id: str | None = None,
               resume: bool = False) -> dict:
    result = steps.train_step(db_path, config, runs_root, run_id=run_id, resume=resume)
    create_link_artifact(link=Path(result["model_dir"]).resolve().as_uri(), link_text=result["model_dir"],
                         key="model-dir", description=f"model directory of run {result['run_id']}")
    return result


@task(name="evaluate", retries=1, retry_delay_seconds=[2])
def evaluate_task(db_path: str, model_dir: str, dataset: str, split: str, run_id: str | None = None) -> dict:
    result = steps.evaluate_step(db_path, model_dir, dataset, split, run_id=run_id)
    create_table_artifact(
        table=[{k: t[k] for k in ("label", "precision", "recall", "f1", "support")} for t in result["per_type"]],
        key=_key("eval", dataset, split), description=f"entity scores per type, {dataset}/{split}")
    create_markdown_artifact(markdown=result["markdown"], key=_key("run-report", dataset),
                             description=f"evaluation report of {run_id or model_dir}")
    return {k: v for k, v in result.items() if k not in ("markdown", "per_type")}


@task(name="predict")
def predict_task(db_path: str, model_dir: str, source: dict, run_id: str | None = None) -> dict:
    docs, kind, ref = steps.load_prediction_input(db_path, source)
    return steps.predict_step(db_path, model_dir, docs, input_kind=kind, input_ref=ref, run_id=run_id)


# ----------------------------------------------------------------------------------------- flows
@flow(name="ingest", flow_run_name="ingest-{name}")
def ingest_flow(db_path: str, name: str, files: dict[str, str] | list[str], format: str | None = None,
                policy: str = "repair", untyped_label: str = "ENT") -> dict:
    return ingest_task(db_path, name, files, format, policy, untyped_label)


@flow(name="train", flow_run_name=_train_run_name)
def train_flow(db_path: str, config: NERConfig, runs_root: str = "runs", run_id: str | None = None,
               resume: bool = False) -> dict:
    return train_task(db_path, config, runs_root, run_id, resume)


@flow(name="evaluate", flow_run_name="evaluate-{dataset}-{split}")
def evaluate_flow(db_path: str, model_dir: str, dataset: str, split: str = "test",
                  run_id: str | None = None) -> dict:
    return evaluate_task(db_path, model_dir, dataset, split, run_id)


@flow(name="predict", flow_run_name="predict")
def predict_flow(db_path: str, source: dict, model_dir: str | None = None, run_id: str | None = None) -> dict:
    """Tag ``source`` with ``model_dir``, or with the production run's model when none is given."""
    if model_dir is None:
        from storage.runs import production_run

        prod = production_run(db_path)
        if prod is None:
            raise ValueError(f"no model_dir given and no production run in {db_path}: run `ner promote RUN_ID`")
        model_dir, run_id = prod["model_dir"], prod["run_id"]
    return predict_task(db_path, model_dir, source, run_id)


@flow(name="pipeline", flow_run_name=_train_run_name)
def pipeline_flow(db_path: str, config: NERConfig, train: str, dev: str, test: str,
                  predict_files: list[str], runs_root: str = "runs") -> dict:
    """ingest -> train -> evaluate (test split) -> batch prediction, each a subflow."""
    ds = config.data.dataset
    ingest = ingest_flow(db_path, ds, {"train": train, "dev": dev, "test": test})
    trained = train_flow(db_path, config, runs_root)
    evaluation = evaluate_flow(db_path, trained["model_dir"], ds, "test", trained["run_id"])
    predicted = predict_flow(db_path, {"files": predict_files}, trained["model_dir"], trained["run_id"])
    return {"ingest": ingest, "train": trained, "evaluate": evaluation, "predict": predicted}
