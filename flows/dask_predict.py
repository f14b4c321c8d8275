"""Batch prediction sharded across Dask workers: one machine (a ``LocalCluster``) or many (a scheduler).

Documents are split into ``n_shards`` contiguous shards of about equal length in characters. Each Dask
worker loads the model directory (it must be readable at the same path on every worker machine: a shared
folder, or a copy in the same place) and returns entity rows; it never touches DuckDB. The flow process is
the only writer: it stores every shard's rows in DuckDB under the same prediction-run id that the
single-process :func:`flows.steps.predict_step` would use, so both give the same rows.

Two ways to run the same code:

- :func:`dask_predict_flow` (Prefect, ``DaskTaskRunner``): the deployment ``dask-predict``, or
  ``ner predict --dask``. Its task runner comes from :func:`make_task_runner`: a scheduler address
  (``NER_DASK_ADDRESS`` or ``--scheduler tcp://host:8786``) or a ``LocalCluster``.
- :func:`predict_sharded` (plain ``distributed.Client``): ``ner predict --dask --no-prefect``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from prefect import flow, task, unmapped

from flows import steps
from flows.contracts import DatasetSource, PredictionSource, PredictSummary, parse_source
from ner_core.config import PredictionConfig
from ner_core.documents import Document
from ner_core.settings import settings
from storage.runs import resolve_model

ShardRows = list[tuple[str, str, list]]  # [(doc_id, text, [PredictedEntity, ...]), ...]


# ----------------------------------------------------------------------------------------- plain parts
def shard_documents(docs: Sequence[Document], n_shards: int) -> list[list[Document]]:
    """Split ``docs`` into at most ``n_shards`` contiguous, non-empty shards of about equal character count,
    keeping input order (concatenating the shards gives ``docs`` back)."""
    if not isinstance(n_shards, int) or isinstance(n_shards, bool) or n_shards < 1:
        raise ValueError(f"expected n_shards to be a positive int, got {n_shards!r}")
    docs = list(docs)
    if not docs:
        return []
    n_shards = min(n_shards, len(docs))
    total = sum(max(1, len(d.text)) for d in docs)
    shards: list[list[Document]] = [[] for _ in range(n_shards)]
    seen = 0
    for d in docs:
        size = max(1, len(d.text))
        # shard by the character offset of the document's middle: non-decreasing, so order is kept
        shards[min(n_shards - 1, (seen + size // 2) * n_shards // total)].append(d)
        seen += size
    # a shard stays empty when one long document spans its share: drop empty ones
    return [s for s in shards if s]


def tag_shard(
    model_dir: str,
    items: Sequence[tuple[str, str]],
    options: PredictionConfig | None = None,
) -> ShardRows:
    """Tag ``items`` = [(doc_id, text), ...] with the model in ``model_dir``; runs on a Dask worker.
    ``options`` left ``None`` come from the model's saved prediction configuration; with no device given
    or saved, a worker tags on the CPU (one thread per worker, see :func:`make_task_runner`), never on
    whatever GPU it may find.

    Returns [(doc_id, text, [PredictedEntity, ...], uncertainty), ...] in the order of ``items`` (picklable
    rows; the uncertainty is the document's summed CRF token entropy, or a span model's summed binary span
    entropy, as the single-process path stores)."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    if not isinstance(model_dir, str) or not model_dir:
        raise ValueError(f"expected a model directory path, got {model_dir!r}")
    items = list(items)
    if any(not (isinstance(it, tuple | list) and len(it) == 2) for it in items):
        raise ValueError("expected items as (doc_id, text) pairs")
    loaded = load_model_dir(model_dir)
    options = options or PredictionConfig()
    if options.device is None and loaded.config.prediction.device is None:
        options = options.model_copy(update={"device": "cpu"})
    if options.precision is None and loaded.config.prediction.precision is None:
        # unset: fp32, the precision store_shard_rows names the run by; the flows decide auto beforehand
        options = options.model_copy(update={"precision": "fp32"})
    tagger = Tagger.from_loaded(loaded, options)
    preds = tagger.predict_documents([text for _, text in items])
    return [(doc_id, text, p.entities, p.uncertainty) for (doc_id, text), p in zip(items, preds, strict=True)]


def store_shard_rows(
    db_path: str,
    model_dir: str,
    shard_rows: Sequence[ShardRows],
    *,
    input_kind: str,
    input_ref: str,
    run_id: str | None,
    config: dict | None = None,
    replace: bool = True,
    t0: float | None = None,
) -> PredictSummary:
    """The single writer: one prediction run (replaced, or with ``replace=False`` added to), one
    transaction per shard, through :class:`storage.predictions.PredictionRunWriter` as
    :func:`flows.steps.predict_step` writes. ``t0``: when the work began (``time.perf_counter()``)."""
    from storage import predictions as predictions_db

    precision = (config or {}).get("precision")  # the one given; "auto" is decided on each worker
    run = predictions_db.PredictionRunWriter(
        db_path,
        predictions_db.prediction_run_id(model_dir, input_ref, None if precision == "auto" else precision),
        model_dir=model_dir,
        run_id=run_id,
        input_kind=input_kind,
        input_ref=input_ref,
        extra=config,
        replace=replace,
        t0=t0,
    )
    with run:
        for rows in shard_rows:
            if rows:
                run.write(rows)
    return PredictSummary.from_run(run, n_shards=len(shard_rows))


def _decided(model_dir: str, options: PredictionConfig | None, scheduler: str | None) -> PredictionConfig:
    """``options`` with the precision decided once for all workers (CPU: they tag on the CPU), printed.

    ``auto`` is timed on this machine (:func:`ner_core.inference.tagger.choose_for_model_dir`), whose CPU a
    local cluster's workers share. A ``scheduler``'s workers may run on other CPUs, where another precision
    may be the fastest, and the run's id names one precision for all of them: there ``auto`` is refused
    unless ``NER_PRECISION_AUTO`` pins it."""
    from ner_core.artifacts.modeldir import read_saved_config
    from ner_core.inference.tagger import choose_for_model_dir
    from ner_core.runtime.calibrate import PIN_VARIABLE, pinned
    from ner_core.runtime.precision import is_auto

    options = options or PredictionConfig()
    asked = options.precision or read_saved_config(model_dir).prediction.precision
    if scheduler and is_auto(asked) and pinned() is None:
        raise ValueError(
            f"precision auto is chosen by timing this machine, but the workers of the Dask scheduler "
            f"{scheduler} may run on other CPUs, where another precision may be the fastest: name one "
            f"(--precision fp32, bf16 or int8), or pin auto with {PIN_VARIABLE}=<precision>"
        )
    device = options.device or "cpu"
    choice = choose_for_model_dir(model_dir, options.precision, device=device, options=options)
    print(choice.line("prediction on the Dask workers"), file=sys.stderr, flush=True)
    return options.model_copy(update={"precision": choice.precision})


def _stored(model_dir: str, options: PredictionConfig | None) -> dict:
    """The options given (not the model's saved ones), as stored in the prediction run's config: under the
    names :func:`flows.steps.predict_step` stores (the tagger's ``settings``: the window is ``max_len``),
    and the decoder with the settings it decodes by (a span model's threshold, overlap and span limit)."""
    from ner_core.artifacts.modeldir import read_saved_config
    from ner_core.inference.tagger import planned_decoding

    given = options.model_dump(exclude_none=True) if options is not None else {}
    if "window" in given:
        given["max_len"] = given.pop("window")
    return given | planned_decoding(read_saved_config(model_dir), options)


def _payload(shards: list[list[Document]]) -> list[list[tuple[str, str]]]:
    return [[(d.doc_id, d.text) for d in s] for s in shards]


def predict_sharded(
    db_path: str,
    model_dir: str,
    docs: Sequence[Document],
    *,
    input_kind: str,
    input_ref: str,
    run_id: str | None = None,
    n_shards: int = 2,
    address: str | None = None,
    n_workers: int = 2,
    processes: bool = False,
    options: PredictionConfig | None = None,
) -> PredictSummary:
    """Shard ``docs`` over a Dask cluster without Prefect (``address`` or a ``LocalCluster``) and store
    the rows in DuckDB from this process; ``options`` as in :func:`tag_shard`."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    options = _decided(model_dir, options, address)
    stored = _stored(model_dir, options)  # before the workers: refuses what their taggers would
    shards = _payload(shard_documents(docs, n_shards))
    cluster = (
        None
        if address
        else LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=None
        )
    )
    try:
        with Client(address or cluster) as client:
            futures = [client.submit(tag_shard, model_dir, s, options, pure=False) for s in shards]
            rows = client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
    return store_shard_rows(
        db_path,
        model_dir,
        rows,
        input_kind=input_kind,
        input_ref=input_ref,
        run_id=run_id,
        config={"n_shards": len(shards), "dask": address or "local", **stored},
        t0=t0,
    )


# ----------------------------------------------------------------------------------------- Prefect
def make_task_runner(address: str | None = None, n_workers: int = 2, processes: bool = False):
    """A ``DaskTaskRunner``: connect to ``address`` (``tcp://host:8786``, production) or start a temporary
    ``LocalCluster`` of ``n_workers`` single-threaded workers (threads when ``processes`` is false)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"expected n_workers to be a positive int, got {n_workers!r}")
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": processes,
            "dashboard_address": None,
        }
    )


@task(name="tag-shard", retries=1, retry_delay_seconds=[5])
def tag_shard_task(
    model_dir: str, items: list[tuple[str, str]], options: PredictionConfig | None = None
) -> ShardRows:
    return tag_shard(model_dir, items, options)


def _flow_scheduler() -> str | None:
    """The scheduler address this flow run's Dask task runner connects to (``None``: a local cluster)."""
    from prefect.context import FlowRunContext

    return getattr(getattr(FlowRunContext.get(), "task_runner", None), "address", None)


def _dask_run_name() -> str:
    from prefect.runtime import flow_run

    src = parse_source(flow_run.parameters.get("source"))
    what = src.dataset if isinstance(src, DatasetSource) else src.kind
    return f"dask-predict-{what}-{flow_run.parameters.get('n_shards')}-shards"


@flow(
    name="dask-predict",
    flow_run_name=_dask_run_name,
    task_runner=make_task_runner(settings().dask_address, settings().dask_workers),
)
def dask_predict_flow(
    db_path: str,
    source: PredictionSource,
    model_dir: str | None = None,
    run_id: str | None = None,
    n_shards: int = 4,
    only_new: bool = False,
    options: PredictionConfig | None = None,
) -> PredictSummary:
    """Tag ``source`` (as :func:`flows.pipeline.predict_flow`) sharded over Dask workers; the flow process
    writes all rows. ``only_new`` with a dataset source tags only documents this run has not tagged yet."""
    t0 = time.perf_counter()
    source = parse_source(source)
    model_dir, run_id = resolve_model(db_path, model_dir=model_dir, run_id=run_id)
    if only_new:
        from storage.predictions import unpredicted_documents

        if not isinstance(source, DatasetSource) or not run_id:
            raise ValueError("only_new needs a dataset source and a run (the production run or run_id)")
        docs = unpredicted_documents(db_path, source.dataset, run_id, source.split)
        kind, ref = "dataset", source.input_ref
    else:
        docs, kind, ref = steps.load_prediction_input(db_path, source)
    options = _decided(model_dir, options, _flow_scheduler())
    stored = _stored(model_dir, options)  # before the workers: refuses what their taggers would
    shards = _payload(shard_documents(docs, n_shards))
    futures = tag_shard_task.map(unmapped(model_dir), shards, unmapped(options))
    rows = [f.result() for f in futures]
    out = store_shard_rows(
        db_path,
        model_dir,
        rows,
        input_kind=kind,
        input_ref=ref,
        run_id=run_id,
        config={"n_shards": len(shards), **stored},
        replace=not only_new,  # only_new: add to the existing prediction run instead of replacing it
        t0=t0,
    )
    return out.model_copy(update={"n_new_documents": len(docs)}) if only_new else out


def run_dask_predict(
    db_path: str,
    source: PredictionSource,
    model_dir: str | None = None,
    run_id: str | None = None,
    *,
    n_shards: int = 4,
    address: str | None = None,
    n_workers: int = 2,
    processes: bool = False,
    only_new: bool = False,
    options: PredictionConfig | None = None,
    return_state: bool = False,
):
    """Run :func:`dask_predict_flow` with a task runner chosen now (address or LocalCluster)."""
    runner = make_task_runner(address, n_workers, processes)
    f: Callable = dask_predict_flow.with_options(task_runner=runner)
    return f(
        db_path,
        source,
        model_dir,
        run_id,
        n_shards,
        only_new,
        options,
        return_state=return_state,
    )
