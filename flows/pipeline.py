"""Prefect 3 flows: thin wrappers that chain the steps of :mod:`flows.steps`.

Flows: ``ingest``, ``train``, ``evaluate``, ``evaluate-production`` (weekly re-evaluation), ``predict``,
``predict-new`` (incremental nightly batch: only documents the production model has not tagged yet) and
``pipeline`` (ingest -> train -> evaluate -> predict as subflows). The Dask-sharded batch prediction is in
:mod:`flows.dask_predict`; the review loop's ``export-reviews`` and ``retrain-from-reviews`` in
:mod:`flows.review`.

Tasks pass paths and ids; I/O-bound tasks retry. Artifacts carry stable keys so the Prefect UI shows their
history: ``eval-<dataset>-<split>`` (per-type table), ``run-report-<dataset>`` (Markdown evaluation report),
``train-report-<dataset>-<head>`` (Markdown training report), ``model-dir`` (link).
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows import steps
from flows.contracts import (
    DatasetSource,
    EvaluateSummary,
    IngestSummary,
    NothingToPredict,
    PipelineSummary,
    PredictionSource,
    PredictSummary,
    TrainSummary,
)
from ner_core.config import NERConfig, PredictionConfig
from storage.runs import resolve_model


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _describe(cfg) -> str:
    cfg = cfg if isinstance(cfg, NERConfig) else NERConfig.model_validate(cfg or {})
    return f"{cfg.data.dataset}-{cfg.head.type.value}-{Path(cfg.encoder.name).name}"


def _train_run_name() -> str:
    """``train-<dataset>-<head>-<encoder>``: what ran, readable in the Prefect UI."""
    return f"train-{_describe(flow_run.parameters.get('config'))}"


def _pipeline_run_name() -> str:
    return f"pipeline-{_describe(flow_run.parameters.get('config'))}"


def _evaluate_run_name() -> str:
    p = flow_run.parameters
    model = p.get("run_id") or Path(p.get("model_dir") or "production").parent.name or "model"
    if p.get("file"):
        return f"evaluate-{Path(p['file']).stem}-{model}"
    return f"evaluate-{p.get('dataset')}-{p.get('split')}-{model}"


def _train_markdown(db_path: str, result: TrainSummary) -> str:
    from storage import runs as runs_db

    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}"

    run = runs_db.get_run(db_path, result.run_id)
    lines = [
        f"# Training run `{result.run_id}`",
        "",
        f"- dataset **{run['dataset']}** v{run['dataset_version']}, encoder `{run['encoder']}`, "
        f"head **{run['head']}**, scheme {run['scheme']}",
        f"- best epoch {result.best_epoch} (dev entity F1 {(result.best_dev_f1 or 0) * 100:.2f}), "
        f"stopped: {result.stopped_reason}, {result.seconds} s",
        f"- model directory: `{result.model_dir}`",
        "",
        "| epoch | train loss | dev F1 | dev P | dev R | learning rate | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in runs_db.epochs(db_path, result.run_id):
        lines.append(
            f"| {e['epoch']}{' *' if e['is_best'] else ''} | {e['train_loss'] or 0:.4f} | "
            f"{pct(e['dev_f1'])} | {pct(e['dev_precision'])} | {pct(e['dev_recall'])} | "
            f"{e['learning_rate'] or 0:.2e} | {e['seconds'] or 0:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- tasks
@task(name="ingest", retries=2, retry_delay_seconds=[2, 5])
def ingest_task(
    db_path: str,
    name: str,
    files: dict[str, str] | list[str],
    format: str | None = None,
    policy: str = "repair",
    untyped_label: str = "ENT",
    split_ratios: tuple[float, float, float] | None = None,
) -> IngestSummary:
    return steps.ingest_step(
        db_path,
        name,
        files,
        format=format,
        policy=policy,
        untyped_label=untyped_label,
        split_ratios=split_ratios,
    )


@task(name="train")
def train_task(
    db_path: str,
    config: NERConfig,
    runs_root: str,
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
) -> TrainSummary:
    result = steps.train_step(db_path, config, runs_root, run_id=run_id, resume=resume, plus=plus)
    create_markdown_artifact(
        markdown=_train_markdown(db_path, result),
        key=_key("train-report", config.data.dataset, config.head.type.value),
        description=f"training report of run {result.run_id}",
    )
    create_link_artifact(
        link=Path(result.model_dir).resolve().as_uri(),
        link_text=result.model_dir,
        key="model-dir",
        description=f"model directory of run {result.run_id}",
    )
    return result


@task(name="evaluate", retries=1, retry_delay_seconds=[2])
def evaluate_task(
    db_path: str,
    model_dir: str,
    dataset: str | None,
    split: str | None,
    run_id: str | None = None,
    file: str | None = None,
) -> EvaluateSummary:
    """The evaluation's JSON leaves out its Markdown report and per-type rows: they become artifacts."""
    result = steps.evaluate_step(db_path, model_dir, dataset, split, run_id=run_id, file=file)
    dataset, split = (Path(file).stem, "file") if file else (dataset, split)
    create_table_artifact(
        table=[
            t.model_dump(include={"label", "precision", "recall", "f1", "support"}) for t in result.per_type
        ],
        key=_key("eval", dataset, split),
        description=f"entity scores per type, {dataset}/{split}",
    )
    create_markdown_artifact(
        markdown=result.markdown,
        key=_key("run-report", dataset),
        description=f"evaluation report of {run_id or model_dir}",
    )
    return result


@task(name="predict")
def predict_task(
    db_path: str,
    model_dir: str,
    source: PredictionSource,
    run_id: str | None = None,
    options: PredictionConfig | None = None,
) -> PredictSummary:
    """``options``: window and speed (unset ones: the model's saved prediction settings)."""
    return steps.predict_source(db_path, source, model_dir, run_id, options)


@task(name="predict-new", retries=1, retry_delay_seconds=[5])
def predict_new_task(
    db_path: str,
    model_dir: str,
    run_id: str,
    dataset: str,
    split: str | None = None,
    options: PredictionConfig | None = None,
) -> PredictSummary | NothingToPredict:
    from storage.predictions import prediction_run_id, unpredicted_documents

    docs = unpredicted_documents(db_path, dataset, run_id, split)
    ref = DatasetSource(dataset=dataset, split=split).input_ref
    if not docs:
        print(f"nothing new to predict in {ref} for run {run_id}", flush=True)
        return NothingToPredict(pred_run_id=prediction_run_id(model_dir, ref))
    out = steps.predict_step(
        db_path,
        model_dir,
        docs,
        input_kind="dataset",
        input_ref=ref,
        run_id=run_id,
        replace=False,
        options=options,
    )
    return out.model_copy(update={"n_new_documents": len(docs)})


# ----------------------------------------------------------------------------------------- flows
@flow(name="ingest", flow_run_name="ingest-{name}")
def ingest_flow(
    db_path: str,
    name: str,
    files: dict[str, str] | list[str],
    format: str | None = None,
    policy: str = "repair",
    untyped_label: str = "ENT",
) -> IngestSummary:
    return ingest_task(db_path, name, files, format, policy, untyped_label)


@flow(name="train", flow_run_name=_train_run_name)
def train_flow(
    db_path: str,
    config: NERConfig,
    runs_root: str = "runs",
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
) -> TrainSummary:
    """Train ``config`` on its dataset's train split (plus dataset ``plus``'s, e.g. a review export)."""
    return train_task(db_path, config, runs_root, run_id, resume, plus)


@flow(name="evaluate", flow_run_name=_evaluate_run_name)
def evaluate_flow(
    db_path: str,
    model_dir: str,
    dataset: str | None,
    split: str | None = "test",
    run_id: str | None = None,
    file: str | None = None,
) -> EvaluateSummary:
    """Score ``model_dir`` on a stored ``dataset``/``split``, or on a labelled ``file``."""
    return evaluate_task(db_path, model_dir, dataset, split, run_id, file)


@flow(name="evaluate-production", flow_run_name="evaluate-production-{dataset}-{split}")
def evaluate_production_flow(db_path: str, dataset: str = "sample", split: str = "test") -> EvaluateSummary:
    """Re-evaluate the production model (``ner promote RUN_ID``) on a split: the weekly deployment."""
    model_dir, run_id = resolve_model(db_path)
    return evaluate_task(db_path, model_dir, dataset, split, run_id)


@flow(name="predict", flow_run_name="predict")
def predict_flow(
    db_path: str,
    source: PredictionSource,
    model_dir: str | None = None,
    run_id: str | None = None,
    options: PredictionConfig | None = None,
) -> PredictSummary:
    """Tag ``source`` with ``model_dir``, or with run ``run_id``'s model, or with the production run's;
    ``options`` as in :func:`predict_task`."""
    model_dir, run_id = resolve_model(db_path, model_dir=model_dir, run_id=run_id)
    return predict_task(db_path, model_dir, source, run_id, options)


@flow(name="predict-new", flow_run_name="predict-new-{dataset}")
def predict_new_flow(
    db_path: str, dataset: str = "sample", split: str | None = None, options: PredictionConfig | None = None
) -> PredictSummary | NothingToPredict:
    """Incremental batch prediction: tag only the documents of ``dataset`` (latest version, one split or
    all) that the production model has not tagged yet; rows accumulate in one prediction run."""
    model_dir, run_id = resolve_model(db_path)
    return predict_new_task(db_path, model_dir, run_id, dataset, split, options)


@flow(name="pipeline", flow_run_name=_pipeline_run_name)
def pipeline_flow(
    db_path: str,
    config: NERConfig,
    train: str,
    dev: str,
    test: str,
    predict_files: list[str],
    runs_root: str = "runs",
) -> PipelineSummary:
    """ingest -> train -> evaluate (test split) -> batch prediction (:func:`flows.steps.run_pipeline`), each
    stage a subflow."""
    return steps.run_pipeline(
        db_path,
        config,
        train,
        dev,
        test,
        predict_files,
        runs_root,
        ingest=ingest_flow,
        train_model=train_flow,
        evaluate=evaluate_flow,
        predict=predict_flow,
    )
