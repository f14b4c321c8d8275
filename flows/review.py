"""The review loop's flows: ``export-reviews`` and ``retrain-from-reviews``.

``export-reviews`` stores the documents reviewed so far as the next version of a dataset
(:func:`storage.review_export.export_reviews`). ``retrain-from-reviews`` chains: export -> train on the
base dataset plus the export (:func:`flows.steps.train_step` with ``plus``) -> evaluate the new model and
the production model on the same version of the base's test split -> promote the new model only when its
entity F1 is higher; the comparison is returned (:class:`flows.contracts.RetrainSummary`), kept as an
artifact (``retrain-comparison-<dataset>``) and, on promotion, stored in ``model_promotions``.

With ``min_new_decisions`` (the scheduled deployment) a run acts only when at least that many review
events on reviewed documents are not in any export yet; it also skips training when a completed run
already trained on exactly this base version + export version.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows import steps
from flows.contracts import ExportSummary, PromotionComparison, RetrainSummary, TrainSummary
from ner_core.config import NERConfig
from storage import evaluations as evaluations_db
from storage import review_export
from storage import runs as runs_db
from storage.datasets import latest_version


# ----------------------------------------------------------------------------------------- plain steps
def export_step(db_path: str, pred_run_id: str, name: str, split: str = "train") -> ExportSummary:
    """:func:`storage.review_export.export_reviews` as a contract; prints its message."""
    out = review_export.export_reviews(db_path, pred_run_id, name, split)
    print(out["message"], flush=True)
    return ExportSummary(**{k: v for k, v in out.items() if k in ExportSummary.model_fields})


def _score(db_path: str, model_dir: str, run_id: str, dataset: str, split: str) -> tuple[float, int]:
    ev = steps.evaluate_step(db_path, model_dir, dataset, split, run_id=run_id)
    row = next(e for e in evaluations_db.evaluations(db_path, run_id) if e["eval_id"] == ev.eval_id)
    return ev.f1, int(row["dataset_version"])


def compare_step(
    db_path: str, candidate: TrainSummary, dataset: str, split: str = "test"
) -> PromotionComparison:
    """Score ``candidate`` and the production model on the same version of ``dataset``/``split``; promote
    the candidate when its entity F1 is higher (or no model is in production), recording the comparison."""
    cand_f1, version = _score(db_path, candidate.model_dir, candidate.run_id, dataset, split)
    prod = runs_db.production_run(db_path)
    prod_f1 = None
    if prod is not None:
        prod_f1, prod_version = _score(db_path, prod["model_dir"], prod["run_id"], dataset, split)
        if prod_version != version:
            raise RuntimeError(
                f"{dataset} changed during the comparison (test split v{version} vs v{prod_version}): "
                "run again"
            )
    promoted = prod_f1 is None or cand_f1 > prod_f1
    if prod_f1 is None:
        reason = "no production model yet"
    else:
        verb = "higher than" if promoted else "not higher than"
        reason = f"entity F1 {cand_f1:.4f} {verb} production's {prod_f1:.4f}"
    comparison = PromotionComparison(
        dataset=dataset,
        dataset_version=version,
        split=split,
        candidate_run_id=candidate.run_id,
        candidate_f1=cand_f1,
        production_run_id=prod["run_id"] if prod else None,
        production_f1=prod_f1,
        promoted=promoted,
        reason=reason,
    )
    if promoted:
        runs_db.promote_run(
            db_path, candidate.run_id, reason="retrain-from-reviews", comparison=comparison.model_dump()
        )
    print(f"{'promoted' if promoted else 'not promoted'}: run {candidate.run_id}: {reason}", flush=True)
    return comparison


def _comparison_markdown(c: PromotionComparison) -> str:
    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}"

    return "\n".join(
        [
            f"# Retrain from reviews: {'promoted' if c.promoted else 'not promoted'}",
            "",
            f"{c.dataset} v{c.dataset_version} {c.split} split; {c.reason}",
            "",
            "| model | run | entity F1 |",
            "|---|---|---:|",
            f"| candidate | `{c.candidate_run_id}` | {pct(c.candidate_f1)} |",
            f"| production | `{c.production_run_id or '-'}` | {pct(c.production_f1)} |",
        ]
    )


# ----------------------------------------------------------------------------------------- tasks
@task(name="export-reviews", retries=2, retry_delay_seconds=[2, 5])
def export_task(db_path: str, pred_run_id: str, name: str, split: str = "train") -> ExportSummary:
    return export_step(db_path, pred_run_id, name, split)


@task(name="train-plus")
def train_plus_task(
    db_path: str, config: NERConfig, runs_root: str, plus: str, plus_version: int
) -> TrainSummary:
    return steps.train_step(db_path, config, runs_root, plus=plus, plus_version=plus_version)


@task(name="compare-and-promote", retries=1, retry_delay_seconds=[5])
def compare_task(db_path: str, candidate: TrainSummary, dataset: str, split: str) -> PromotionComparison:
    out = compare_step(db_path, candidate, dataset, split)
    create_markdown_artifact(
        markdown=_comparison_markdown(out),
        key=f"retrain-comparison-{dataset}".lower().replace("_", "-").replace(".", "-")[:100],
        description=f"candidate {candidate.run_id} vs the production model",
    )
    return out


# ----------------------------------------------------------------------------------------- flows
@flow(name="export-reviews", flow_run_name="export-reviews-{name}")
def export_reviews_flow(db_path: str, pred_run_id: str, name: str, split: str = "train") -> ExportSummary:
    """The documents reviewed so far in ``pred_run_id`` (and runs exported into ``name`` before) as the
    next version of dataset ``name``; nothing new, no new version."""
    return export_task(db_path, pred_run_id, name, split)


@flow(name="retrain-from-reviews", flow_run_name="retrain-from-reviews-{name}")
def retrain_from_reviews_flow(
    db_path: str,
    config: NERConfig,
    name: str = "reviews",
    pred_run_id: str | None = None,
    runs_root: str = "runs",
    min_new_decisions: int = 0,
    test_split: str = "test",
) -> RetrainSummary:
    """Export the reviews of ``pred_run_id`` (default: the run reviewed last) into ``name``, train
    ``config`` on its dataset (the base) plus the export, compare with the production model on the base's
    ``test_split`` and promote only a higher entity F1. Acts only with at least ``min_new_decisions`` new
    review events."""
    pred_run_id = pred_run_id or review_export.latest_reviewed_run(db_path)
    if pred_run_id is None:
        return RetrainSummary(status="skipped", message="no reviewed document yet", new_decisions=0)
    n_new = review_export.new_decisions(db_path, pred_run_id, name)
    if n_new < min_new_decisions:
        msg = f"{n_new} new review decisions in {pred_run_id}, fewer than {min_new_decisions}: nothing done"
        print(msg, flush=True)
        return RetrainSummary(status="skipped", message=msg, new_decisions=n_new)
    export = export_task(db_path, pred_run_id, name)
    base = config.data.dataset
    done = runs_db.trained_on(db_path, base, latest_version(db_path, base), name, export.version)
    if done:
        msg = f"run {done} already trained on {base} + {name} v{export.version}: nothing to retrain"
        print(msg, flush=True)
        return RetrainSummary(status="skipped", message=msg, new_decisions=n_new, export=export)
    trained = train_plus_task(db_path, config, runs_root, name, export.version)
    comparison = compare_task(db_path, trained, base, test_split)
    return RetrainSummary(
        status="compared",
        message=comparison.reason,
        new_decisions=n_new,
        export=export,
        train=trained,
        comparison=comparison,
    )
