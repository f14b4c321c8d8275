"""The ``self-train`` flow: train, tag the user's unlabeled text with the model, add the documents it is
sure of as weighted silver data, train again (:mod:`ner_core.training.self_training`).

It runs :func:`flows.steps.train_step`, which self-trains whenever the configuration names an unlabeled
source (so ``ner train --unlabeled FILES`` and the ``train`` flow do the same); this flow takes the source
as parameters of its own, refuses a configuration without one, and leaves a Markdown report of the rounds
(key ``self-train-report-<dataset>``: silver counts per round and reason, teachers, files). Killed, it
resumes with ``run_id`` and ``resume: true``.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows import steps
from flows.contracts import TrainSummary
from ner_core.config import NERConfig

__all__ = ["self_train_flow", "self_train_markdown"]


def self_train_markdown(result: TrainSummary) -> str:
    """The rounds of a finished self-training run, from its model's lineage (``metrics.json``)."""
    from ner_core.artifacts.modeldir import read_metrics

    lineage = read_metrics(result.model_dir).get("self_training") or {}
    corpus = lineage.get("unlabeled") or {}
    source = corpus.get("source") or {}
    named = [f["path"] for f in source.get("files", [])] or [
        f"{source.get('dataset')} v{source.get('version')}"
    ]
    dev = "-" if result.best_dev_f1 is None else f"{result.best_dev_f1 * 100:.2f}"
    lines = [
        f"# Self-training run `{result.run_id}`",
        "",
        f"- unlabeled: {corpus.get('texts')} texts from {', '.join(f'`{n}`' for n in named)}",
        f"- settings: {lineage.get('settings')}",
        f"- final model `{result.model_dir}`: dev entity F1 {dev} (epoch {result.best_epoch})",
        "",
        "| round | teacher | silver | with entities | without | left out | silver file |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for r in lineage.get("rounds", []):
        c = dict(r["counts"])
        kept = c.pop("with_entities"), c.pop("without_entities")
        out = ", ".join(f"{n} {why}" for why, n in c.items() if n) or "-"
        lines.append(
            f"| {r['round']} | `{r['teacher']}` | {r['selected']} | {kept[0]} | {kept[1]} | {out} | "
            f"`{r['silver']}` |"
        )
    return "\n".join(lines)


@task(name="self-train")
def self_train_task(
    db_path: str,
    config: NERConfig,
    runs_root: str,
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
) -> TrainSummary:
    result = steps.train_step(db_path, config, runs_root, run_id=run_id, resume=resume, plus=plus)
    key = re.sub(r"[^a-z0-9-]+", "-", f"self-train-report-{config.data.dataset}".lower()).strip("-")[:100]
    create_markdown_artifact(
        markdown=self_train_markdown(result), key=key, description=f"self-training run {result.run_id}"
    )
    return result


def _run_name() -> str:
    from prefect.runtime import flow_run

    cfg = flow_run.parameters.get("config")
    cfg = cfg if isinstance(cfg, NERConfig) else NERConfig.model_validate(cfg or {})
    return f"self-train-{cfg.data.dataset}-{cfg.head.type.value}"


@flow(name="self-train", flow_run_name=_run_name)
def self_train_flow(
    db_path: str,
    config: NERConfig,
    unlabeled: list[str] | None = None,
    unlabeled_dataset: str | None = None,
    runs_root: str = "runs",
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
) -> TrainSummary:
    """Self-train ``config`` on its dataset with the unlabeled texts of ``unlabeled`` (files) or of the
    stored dataset ``unlabeled_dataset`` (either replaces the configuration's own); ``resume`` continues run
    ``run_id`` with the source it started with."""
    if unlabeled or unlabeled_dataset:
        config = config.with_overrides(
            {"training.unlabeled": unlabeled or None, "training.unlabeled_dataset": unlabeled_dataset}
        )
    if not resume and not config.training.self_training:
        raise ValueError("self-train needs unlabeled texts: give unlabeled (files) or unlabeled_dataset")
    return self_train_task(db_path, config, runs_root, run_id, resume, plus)
