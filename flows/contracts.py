"""Typed contracts of the pipeline's steps: what each step returns, and where a prediction reads its
documents.

The steps of :mod:`flows.steps` return these models, the Prefect flows return them, and the ``ner``
command prints their JSON. A prediction source is one of :class:`FilesSource`, :class:`DatasetSource` and
:class:`SqlSource`, told apart by ``kind`` (:data:`PredictionSource`); :func:`parse_source` turns a model
or its JSON form into one, with a one-line error otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_serializer,
)

from ner_core.metrics import SUMMARY_FIELDS, EvaluationReport, TypeScores

__all__ = [
    "DatasetSource",
    "EvaluateSummary",
    "ExportSummary",
    "FilesSource",
    "IngestSummary",
    "NothingToPredict",
    "PipelineSummary",
    "PredictSummary",
    "PredictionSource",
    "PromotionComparison",
    "RetrainSummary",
    "SqlSource",
    "TrainSummary",
    "parse_source",
]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------------- step results
class IngestSummary(_Contract):
    """A dataset version stored by :func:`flows.steps.ingest_step`."""

    dataset: str
    version: int | None
    created: bool = Field(description="false when the same files were already stored (idempotent)")
    counts: dict[str, dict[str, int]] = Field(description="split -> documents / entities / characters")
    labels: list[str]
    problems: int = Field(description="number of problems found in the files")


class TrainSummary(_Contract):
    """A training run finished by :func:`flows.steps.train_step`."""

    run_id: str
    run_dir: str
    model_dir: str
    best_epoch: int
    best_dev_f1: float | None
    stopped_reason: str
    seconds: float


class _EvaluateBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    eval_id: str


# The fields of EvaluationReport's figures are not listed again: one per ner_core.metrics.SUMMARY_FIELDS,
# typed as the report has them, in its order.
EvaluateSummary = create_model(
    "EvaluateSummary",
    __base__=_EvaluateBase,
    __module__=__name__,
    __doc__=(
        "An evaluation stored by :func:`flows.steps.evaluate_step`: ``eval_id``, the overall figures (the "
        'fields of :data:`ner_core.metrics.SUMMARY_FIELDS`), then one ``"<label>.<metric>"`` and '
        '``"errors.<kind>"`` field per label and error kind (they depend on the label set, so they are '
        "extra fields). ``markdown`` and ``per_type`` feed the reports and the Prefect artifacts and are "
        "left out of the JSON."
    ),
    **{name: (EvaluationReport.model_fields[name].annotation, ...) for name in SUMMARY_FIELDS},
    markdown=(str, Field("", exclude=True)),
    per_type=(list[TypeScores], Field(default_factory=list, exclude=True)),
)


class PredictSummary(_Contract):
    """A prediction run written by :class:`storage.predictions.PredictionRunWriter`.

    The optional fields are reported by some paths only and left out of the JSON when ``None``:
    ``skipped_already_done`` / ``resumed`` by :func:`flows.steps.predict_step`, ``n_shards`` by the Dask
    paths, ``n_new_documents`` by the only-new (incremental) ones.
    """

    pred_run_id: str
    n_documents: int
    n_entities: int
    n_chars: int
    skipped_already_done: int | None = None
    resumed: bool | None = None
    n_shards: int | None = None
    seconds: float
    n_new_documents: int | None = None

    @classmethod
    def from_run(cls, run, **reported: Any) -> PredictSummary:
        """The summary of a finished :class:`storage.predictions.PredictionRunWriter`."""
        row = run.row
        return cls(
            pred_run_id=run.pred_run_id,
            n_documents=row["n_documents"],
            n_entities=row["n_entities"],
            n_chars=row["n_chars"],
            seconds=round(row["seconds"], 2),
            **reported,
        )

    @model_serializer(mode="wrap")
    def _leave_out_unreported(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class NothingToPredict(_Contract):
    """An incremental prediction that found no new document: nothing was tagged or written."""

    pred_run_id: str
    n_new_documents: Literal[0] = 0


class PipelineSummary(_Contract):
    """ingest -> train -> evaluate -> predict."""

    ingest: IngestSummary
    train: TrainSummary
    evaluate: EvaluateSummary
    predict: PredictSummary


class ExportSummary(_Contract):
    """Reviewed documents stored as a dataset version by :func:`storage.review_export.export_reviews`."""

    dataset: str
    version: int
    created: bool = Field(description="false when no review event was new (no new version)")
    split: str
    documents: int
    entities: int
    labels: list[str]
    added_labels: list[str] = Field(description="labels reviewers added explicitly (add_label)")
    pred_runs: list[str]
    events: int = Field(description="review events behind the version")
    new_events: int
    left_out: int = Field(description="reviewed documents not exported (leak or bad spans)")
    left_out_leak: int = Field(description="... of them because they are in a dev/test split")
    message: str


class PromotionComparison(_Contract):
    """The candidate and the production model scored on the same test split version; ``promoted`` only
    when the candidate's entity F1 is higher (or there was no production model)."""

    dataset: str
    dataset_version: int
    split: str
    candidate_run_id: str
    candidate_f1: float
    production_run_id: str | None
    production_f1: float | None
    promoted: bool
    reason: str


class RetrainSummary(_Contract):
    """``retrain-from-reviews``: export, train on base + export, compare, maybe promote. ``status`` is
    ``skipped`` (fewer new decisions than asked, or that data was already trained on) or ``compared``."""

    status: Literal["skipped", "compared"]
    message: str
    new_decisions: int
    export: ExportSummary | None = None
    train: TrainSummary | None = None
    comparison: PromotionComparison | None = None


# ----------------------------------------------------------------------------------------- sources
class FilesSource(_Contract):
    """Files in any supported format (labels ignored). A plain-text file is one document, or one per line
    with ``text_per_file=False``."""

    kind: Literal["files"] = "files"
    files: list[str] = Field(min_length=1)
    text_per_file: bool = True


class DatasetSource(_Contract):
    """Documents already in DuckDB: the latest version of ``dataset``, one ``split`` or all (``None``)."""

    kind: Literal["dataset"] = "dataset"
    dataset: str = Field(min_length=1)
    split: str | None = None

    @property
    def input_ref(self) -> str:
        """``dataset/split`` (``*`` for all splits): names the input in the prediction run's id."""
        return f"{self.dataset}/{self.split or '*'}"


class SqlSource(_Contract):
    """A read-only query returning the columns ``doc_id`` and ``text`` (through :func:`storage.query.query`:
    one statement, no file access)."""

    kind: Literal["sql"] = "sql"
    sql: str = Field(min_length=1)


PredictionSource = Annotated[FilesSource | DatasetSource | SqlSource, Field(discriminator="kind")]
_SOURCE = TypeAdapter(PredictionSource)
_KINDS = "'files', 'dataset' or 'sql'"


def parse_source(value: Any) -> FilesSource | DatasetSource | SqlSource:
    """``value`` (a source model, or its JSON form with a ``kind``) as a :data:`PredictionSource`;
    ``ValueError`` with a one-line message otherwise."""
    if isinstance(value, FilesSource | DatasetSource | SqlSource):
        return value
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise ValueError(
            f"expected a prediction source (FilesSource, DatasetSource or SqlSource), got {kind}"
        )
    if "kind" not in value:
        # the shape saved before the sources were typed ({"dataset": ...}, {"files": [...]}, {"sql": ...}),
        # as deployments registered earlier still pass it: exactly one of the keys names the kind
        named = [k for k in ("files", "dataset", "sql") if k in value]
        if len(named) == 1:
            value = {**value, "kind": named[0]}
    if value.get("kind") not in ("files", "dataset", "sql"):
        got = f"kind {value['kind']!r}" if "kind" in value else f"no kind (keys {sorted(value)})"
        raise ValueError(f"prediction input needs {_KINDS} as its kind, got {got}")
    try:
        return _SOURCE.validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'][1:]) or 'source'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid {value['kind']} prediction source: {problems}") from None
