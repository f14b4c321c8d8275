"""The ``adapt`` flow: continued MLM pretraining of an encoder on the user's unlabeled text
(:mod:`ner_core.training.adapt`), from files or from a stored dataset's texts.

:func:`adapt_step` is the plain step (``ner adapt --no-prefect`` runs it); :func:`adapt_flow` runs it as a
Prefect task and leaves a Markdown report (key ``adapt-report-<output folder>``). A resumed run reads its
corpus where the run first read it: the same files, or the same dataset version.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from ner_core.training.adapt import AdaptConfig, AdaptResult, adapt, load_record, read_corpus

__all__ = ["adapt_flow", "adapt_step", "default_work_dir", "resumed_source"]


def default_work_dir(out: str) -> str:
    """Where a run keeps its settings and checkpoints while it runs: beside the output, ``<out>.adapt``."""
    return f"{str(out).rstrip('/')}.adapt"


def resumed_source(work_dir: str) -> tuple[AdaptConfig, dict]:
    """The settings and the corpus source (``{"files": [...]}`` or ``{"dataset", "split", "version",
    "db"}``) an interrupted run in ``work_dir`` started with."""
    record = load_record(work_dir)
    source = record.get("source") or {}
    if not isinstance(source, dict) or not ({"files"} <= set(source) or {"dataset"} <= set(source)):
        raise ValueError(f"{work_dir}: the run's record names no corpus (files or dataset) to resume with")
    return AdaptConfig.model_validate(record["config"]), source


def _texts(corpus, dataset, split, db_path, version) -> tuple[list[str], dict]:
    """The corpus's texts and how to find them again (recorded for a resume and for lineage)."""
    if bool(corpus) == bool(dataset):
        raise ValueError("give the corpus as files or as a stored dataset, exactly one of the two")
    if corpus:
        files = [str(Path(f).resolve()) for f in corpus]
        return read_corpus(files), {"files": files}
    from storage.datasets import latest_version, load_documents

    if not db_path:
        raise ValueError(f"dataset {dataset!r}: no database given")
    version = version or latest_version(db_path, dataset)
    docs = load_documents(db_path, dataset, split, version)
    source = {"dataset": dataset, "split": split, "version": version, "db": str(Path(db_path).resolve())}
    return [d.text for d in docs], source


def adapt_step(
    config: AdaptConfig,
    out: str,
    corpus: list[str] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    db_path: str | None = None,
    work_dir: str | None = None,
    resume: bool = False,
    dataset_version: int | None = None,
    progress: bool = True,
) -> AdaptResult:
    """Adapt ``config.encoder`` on ``corpus`` (files) or ``dataset`` (its ``split``, or every split, of its
    latest version or ``dataset_version``); the encoder folder goes to ``out``."""
    work = work_dir or default_work_dir(out)
    if resume and dataset and dataset_version is None:  # the version the run started on, not a newer one
        dataset_version = resumed_source(work)[1].get("version")
    texts, source = _texts(corpus, dataset, split, db_path, dataset_version)
    return adapt(config, texts, work, out, resume=resume, progress=progress, source=source)


def _markdown(result: AdaptResult) -> str:
    def loss(v):
        return "-" if v is None else f"{v:.4f}"

    return "\n".join(
        [
            f"# Adapted encoder `{result.out_dir}`",
            "",
            f"- from `{result.source_encoder}`, {result.corpus_texts} texts ({result.windows} windows), "
            f"masking: {result.masking} ({result.segmenter or 'no segmenter'}), MLM head {result.mlm_head}",
            f"- {result.steps} steps in {result.seconds:.0f} s ({result.steps_per_second:.2f} steps/s), "
            f"stopped: {result.stopped_reason}",
            f"- held-out MLM loss {loss(result.eval_loss_before)} -> {loss(result.eval_loss_after)}; "
            f"training loss {loss(result.train_loss_first)} -> {loss(result.train_loss_last)}",
        ]
    )


@task(name="adapt")
def adapt_task(
    config: AdaptConfig,
    out: str,
    corpus: list[str] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    db_path: str | None = None,
    work_dir: str | None = None,
    resume: bool = False,
) -> AdaptResult:
    result = adapt_step(config, out, corpus, dataset, split, db_path, work_dir, resume)
    key = re.sub(r"[^a-z0-9-]+", "-", f"adapt-report-{Path(out).name}".lower()).strip("-")[:100]
    create_markdown_artifact(markdown=_markdown(result), key=key, description=f"adapt run into {out}")
    return result


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    cfg = p.get("config")
    encoder = cfg.encoder if isinstance(cfg, AdaptConfig) else (cfg or {}).get("encoder", "m3e-small")
    return f"adapt-{Path(str(encoder)).name}-{Path(str(p.get('out'))).name}"


@flow(name="adapt", flow_run_name=_run_name)
def adapt_flow(
    config: AdaptConfig,
    out: str,
    corpus: list[str] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    db_path: str | None = None,
    work_dir: str | None = None,
    resume: bool = False,
) -> AdaptResult:
    """Continued MLM pretraining of ``config.encoder`` on files (``corpus``) or a stored ``dataset``'s texts;
    the adapted encoder (a Hugging Face folder, usable as ``--encoder``) goes to ``out``."""
    return adapt_task(config, out, corpus, dataset, split, db_path, work_dir, resume)
