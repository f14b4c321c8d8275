"""The ``distill`` flow: train a student on gold plus a teacher's soft targets (CRF marginals or span
probabilities), also on the user's unlabeled text (:mod:`ner_core.training.distillation`).

It runs :func:`flows.steps.train_step`, which distils whenever the configuration names a teacher (so ``ner
train --teacher`` and the ``train`` flow do the same); this flow takes the teacher (a run id or a model
directory) and the unlabeled source as parameters of its own, refuses a configuration without a teacher,
and leaves a Markdown report (key ``distill-report-<dataset>``: teacher, its sha256, settings, corpus).
Killed, it resumes with ``run_id`` and ``resume: true``, with the teacher the run started with.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows import steps
from flows.contracts import TrainSummary
from ner_core.config import NERConfig

__all__ = ["distill_flow", "distill_markdown"]


def distill_markdown(result: TrainSummary) -> str:
    """A finished distillation run, from its model's lineage (``metrics.json``'s ``distillation``)."""
    from ner_core.artifacts.modeldir import read_metrics

    lineage = read_metrics(result.model_dir).get("distillation") or {}
    corpus = lineage.get("unlabeled") or {}
    source = corpus.get("source") or {}
    named = [f["path"] for f in source.get("files", [])] or (
        [f"{source.get('dataset')} v{source.get('version')}"] if source else []
    )
    dev = "-" if result.best_dev_f1 is None else f"{result.best_dev_f1 * 100:.2f}"
    unlabeled = (
        f"{corpus.get('texts')} texts from {', '.join(f'`{n}`' for n in named)} (left out: "
        f"{corpus.get('left_out')})"
        if corpus
        else "none (gold documents only)"
    )
    return "\n".join(
        [
            f"# Distillation run `{result.run_id}`",
            "",
            f"- teacher: `{lineage.get('teacher')}` (`{lineage.get('teacher_dir')}`, weights sha256 "
            f"`{str(lineage.get('teacher_sha256'))[:16]}...`)",
            f"- alpha {lineage.get('alpha')}, temperature {lineage.get('temperature')}",
            f"- unlabeled: {unlabeled}",
            f"- student `{result.model_dir}`: dev entity F1 {dev} (epoch {result.best_epoch})",
        ]
    )


@task(name="distill")
def distill_task(
    db_path: str,
    config: NERConfig,
    runs_root: str,
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
) -> TrainSummary:
    result = steps.train_step(db_path, config, runs_root, run_id=run_id, resume=resume, plus=plus)
    key = re.sub(r"[^a-z0-9-]+", "-", f"distill-report-{config.data.dataset}".lower()).strip("-")[:100]
    create_markdown_artifact(
        markdown=distill_markdown(result), key=key, description=f"distillation run {result.run_id}"
    )
    return result


def _run_name() -> str:
    from prefect.runtime import flow_run

    cfg = flow_run.parameters.get("config")
    cfg = cfg if isinstance(cfg, NERConfig) else NERConfig.model_validate(cfg or {})
    return f"distill-{cfg.data.dataset}-{cfg.head.type.value}"


@flow(name="distill", flow_run_name=_run_name)
def distill_flow(
    db_path: str,
    config: NERConfig,
    teacher: str | None = None,
    unlabeled: list[str] | None = None,
    unlabeled_dataset: str | None = None,
    runs_root: str = "runs",
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
) -> TrainSummary:
    """Distil ``teacher`` (a run id or a model directory; replaces the configuration's own) into the student
    of ``config`` on its dataset, also on the unlabeled texts of ``unlabeled`` (files) or of the stored
    dataset ``unlabeled_dataset``; ``resume`` continues run ``run_id`` with what it started with."""
    overrides = {"training.teacher": teacher} if teacher else {}
    if unlabeled or unlabeled_dataset:
        overrides.update(
            {"training.unlabeled": unlabeled or None, "training.unlabeled_dataset": unlabeled_dataset}
        )
    if overrides:
        config = config.with_overrides(overrides)
    if not resume and not config.training.distilling:
        raise ValueError("distill needs a teacher: give teacher (a run id or a model directory)")
    return distill_task(db_path, config, runs_root, run_id, resume, plus)
