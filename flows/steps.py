"""The pipeline's steps as plain functions: ingest, train, evaluate, predict.

Prefect flows (:mod:`flows.pipeline`) wrap each of these in a task; ``ner ... --no-prefect`` calls them
directly. They take paths, ids and the typed inputs of :mod:`flows.contracts` and
:class:`ner_core.config.PredictionConfig`, never torch models or tensors, and return the summaries of
:mod:`flows.contracts`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from flows.contracts import (
    DatasetSource,
    EvaluateSummary,
    FilesSource,
    IngestSummary,
    PipelineSummary,
    PredictSummary,
    SqlSource,
    TrainSummary,
    parse_source,
)
from ner_core.config import NERConfig, PredictionConfig
from ner_core.documents import Document
from storage import evaluations as evaluations_db
from storage import predictions as predictions_db
from storage import query as query_db
from storage import runs as runs_db
from storage.datasets import ingest_dataset, latest_version, load_documents, training_documents


def new_run_id(config: NERConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.data.dataset}-{config.head.type.value}-{uuid.uuid4().hex[:6]}"


def ingest_step(
    db_path: str,
    name: str,
    files: dict[str, str] | list[str],
    *,
    format: str | None = None,
    policy: str = "repair",
    untyped_label: str = "ENT",
    split_ratios: tuple[float, float, float] | None = None,
) -> IngestSummary:
    report = ingest_dataset(
        db_path,
        name,
        files,
        format=format,
        policy=policy,
        untyped_label=untyped_label,
        split_ratios=split_ratios,
        progress=True,
    )
    print(report.to_text(), flush=True)
    return IngestSummary(
        dataset=report.dataset,
        version=report.version,
        created=report.created,
        counts=report.counts,
        labels=list(report.labels),
        problems=len(report.problems),
    )


def _stored_run(db_path: str, run_id: str | None) -> tuple[dict, NERConfig, str | None, int | None]:
    """A run to resume: its row, configuration and plus dataset/version, whatever the command line says."""
    if not run_id:
        raise ValueError("--resume needs the RUN_ID of the run to continue")
    prev = runs_db.get_run(db_path, run_id)
    config = NERConfig.model_validate(json.loads(prev["config"]))
    return prev, config, prev["plus_dataset"], prev["plus_version"]


def _mark_failed(db_path: str, run_id: str, exc: BaseException) -> None:
    """Record the run as failed; when that fails too (a full disk), the training's own error says more."""
    try:
        runs_db.finish_run(db_path, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
    except Exception:
        pass


def train_step(
    db_path: str,
    config: NERConfig,
    runs_root: str,
    *,
    run_id: str | None = None,
    resume: bool = False,
    plus: str | None = None,
    plus_version: int | None = None,
) -> TrainSummary:
    """Train on the dataset's train split (plus dataset ``plus``'s train split, e.g. a review export),
    early-stop on its dev split; rows in runs / epochs (``plus`` and its version in the run's row). With
    an unlabeled source (``training.unlabeled`` / ``unlabeled_dataset``) the run self-trains."""
    from ner_core.training.calibration import choose_training_precision

    prev = None
    if resume:  # the stored configuration, whatever the caller's
        prev, config, plus, plus_version = _stored_run(db_path, run_id)
    config = _absolute_unlabeled(config)  # a stored run's paths are absolute already
    ds = config.data.dataset
    version = prev["dataset_version"] if prev and prev["dataset_version"] else latest_version(db_path, ds)
    data = training_documents(db_path, ds, version, plus, plus_version, nested=config.decoder.type == "span")
    train_docs, dev_docs, labels = data.train, data.dev, data.labels
    print("".join(f"{note}\n" for note in data.notes), end="", flush=True)
    run_id = run_id or new_run_id(config)
    run_dir = Path(prev["run_dir"]) if prev else Path(runs_root) / run_id
    # ``auto`` is decided once, here: the run's stored config holds the precision it trains (and resumes) in
    choice = choose_training_precision(config, labels)  # auto: timed here once per machine and model shape
    config = config.with_overrides({"training.precision": choice.precision.value})
    if not resume:
        runs_db.create_run(
            db_path,
            run_id,
            dataset=ds,
            dataset_version=version,
            config_json=config.to_json(),
            run_dir=run_dir,
            plus_dataset=data.plus["dataset"] if data.plus else None,
            plus_version=data.plus["version"] if data.plus else None,
        )
    print(
        f"run {run_id}: {len(train_docs)} train / {len(dev_docs)} dev documents, labels {labels}, "
        f"encoder {config.encoder.name}, head {config.head.type.value}",
        flush=True,
    )
    try:
        config = _adapt_encoder(config, run_dir, train_docs, dict(db=db_path, dataset=ds, version=version))
        result = _train_or_self_train(
            db_path,
            config,
            data,
            run_dir,
            version,
            resume=resume,
            on_epoch=lambda s: runs_db.record_epoch(db_path, run_id, s.__dict__),
            extra_metadata={"run_id": run_id, "dataset": ds, "dataset_version": version, "plus": data.plus},
            precision=choice,
        )
    except BaseException as exc:
        _mark_failed(db_path, run_id, exc)
        raise
    runs_db.finish_run(
        db_path,
        run_id,
        status="completed",
        model_dir=result.model_dir,
        best_epoch=result.best_epoch,
        best_dev_f1=result.best_dev_f1,
        seconds=result.seconds,
        stopped_reason=result.stopped_reason,
    )
    return TrainSummary(
        run_id=run_id,
        run_dir=str(run_dir),
        model_dir=str(result.model_dir),
        best_epoch=result.best_epoch,
        best_dev_f1=result.best_dev_f1,
        stopped_reason=result.stopped_reason,
        seconds=round(result.seconds, 1),
    )


def _adapt_encoder(config: NERConfig, run_dir: Path, docs: Sequence[Document], source: dict) -> NERConfig:
    """With ``training.adapt_seconds`` (otherwise ``config`` as it is): the encoder adapted to the run's
    training texts by masked-LM (:mod:`ner_core.training.adapt`), once per run, in
    ``run_dir/adapted-encoder``; the configuration given back trains on it. A run killed while adapting
    continues the adaptation on ``--resume`` (its work folder); one killed later finds the adapted encoder
    and goes straight to training. The run's stored configuration keeps the encoder it started from, so a
    resume takes this same path."""
    from ner_core.training.adapt import ADAPT_RECORD, AdaptConfig, adapt

    if not config.training.adapt_seconds:
        return config
    source = {**source, "split": "train", "db": str(Path(source["db"]).resolve())}
    enc, work = run_dir / "adapted-encoder", run_dir / "adapt-work"
    if not (enc / ADAPT_RECORD).is_file():
        tc = config.training
        cfg = AdaptConfig(
            encoder=config.encoder.name,
            max_train_seconds=tc.adapt_seconds,
            max_len=config.data.max_len,
            seed=tc.seed,
            num_threads=tc.num_threads,
            device=tc.device,
        )
        print(f"adapting encoder {config.encoder.name} for {tc.adapt_seconds:g} s to {enc}", flush=True)
        texts = [d.text for d in docs]
        adapt(cfg, texts, work, enc, resume=(work / ADAPT_RECORD).is_file(), source=source)
    return config.with_overrides({"encoder.name": str(enc)})


def _train_or_self_train(db_path: str, config: NERConfig, data, run_dir: Path, version: int, **kwargs):
    """:func:`ner_core.training.loop.train` on ``data`` (a :class:`storage.datasets.TrainingData`), or
    self-training (:func:`_self_train`) when the configuration names an unlabeled source, or distillation
    (:func:`_distill`) when it names a teacher."""
    if config.training.distilling:
        return _distill(db_path, config, data, run_dir, version, **kwargs)
    if config.training.self_training:
        return _self_train(db_path, config, data, run_dir, version, **kwargs)
    from ner_core.training.loop import train

    return train(config, data.train, data.dev, data.labels, run_dir, **kwargs)


def _absolute_unlabeled(config: NERConfig) -> NERConfig:
    """The unlabeled files (and a teacher given as a folder) as absolute paths (the run's stored
    configuration: a resume from another folder reads the same files); a missing one is refused in one line
    before anything is stored."""
    teacher = config.training.teacher
    if teacher and Path(teacher).is_dir():
        config = config.with_overrides({"training.teacher": str(Path(teacher).resolve())})
    files = config.training.unlabeled
    if not files:
        return config
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such file (--unlabeled)")
    return config.with_overrides({"training.unlabeled": [str(Path(f).resolve()) for f in files]})


def _unlabeled_texts(db_path: str, config: NERConfig, recorded: dict | None) -> tuple[list[str], dict]:
    """The unlabeled texts and their source for the record: the files with their sha256, or the dataset
    and its version (the one the run recorded when it started, else the latest)."""
    import hashlib

    from ner_core.training.adapt import read_corpus

    tc = config.training
    if tc.unlabeled:
        files = []
        for f in tc.unlabeled:
            digest = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            files.append({"path": f, "sha256": digest.hexdigest()})
        return read_corpus(tc.unlabeled), {"files": files}
    name = tc.unlabeled_dataset
    version = (recorded or {}).get("version") or latest_version(db_path, name)
    texts = [d.text for d in load_documents(db_path, name, None, version)]
    return texts, {"dataset": name, "version": version}


def _self_train(db_path: str, config: NERConfig, data, run_dir: Path, version: int, **kwargs):
    """Self-training (:mod:`ner_core.training.self_training`): the run's epochs numbered on across rounds,
    silver never from a text of the dataset's dev or test split, nor of any other stored dataset version's
    (matched by text hash, as the review export matches texts; counted apart); the final model's
    metrics.json and ``run_dir/self-train`` hold the lineage."""
    from ner_core.training.self_training import recorded_source, self_train
    from storage.run_sources import dev_test_hashes

    texts, source = _unlabeled_texts(db_path, config, recorded_source(run_dir))
    held_out = dev_test_hashes(db_path, config.data.dataset, version)
    exclude = dev_test_hashes(db_path) - held_out
    out = self_train(config, data.train, data.dev, data.labels, run_dir, texts, held_out=held_out,
                     exclude=exclude, source=source, **kwargs)  # fmt: skip
    for r in out.lineage["rounds"]:
        rejected = ", ".join(
            f"{n} {why}" for why, n in r["counts"].items() if why not in ("with_entities", "without_entities")
        )
        print(
            f"self-training round {r['round']}: {r['selected']} silver of {len(texts)} unlabeled texts "
            f"(teacher {r['teacher']}); left out: {rejected}",
            flush=True,
        )
    return out.result


def _teacher_dir(db_path: str, teacher: str) -> Path:
    """``--teacher``: a model directory, else the model of the run of that id in the database."""
    if Path(teacher).is_dir():
        return Path(teacher).resolve()
    try:
        model_dir = runs_db.get_run(db_path, teacher).get("model_dir")
    except KeyError:
        model_dir = None
    if not model_dir:
        raise ValueError(
            f"--teacher {teacher}: neither a model directory nor a run with a model in {db_path}"
        )
    return Path(model_dir)


def _distill(db_path: str, config: NERConfig, data, run_dir: Path, version: int, **kwargs):
    """Distillation (:mod:`ner_core.training.distillation`): gold plus the teacher's soft targets, also on
    the unlabeled texts, never one of the dev or test split of any stored dataset version (a text some
    evaluation here scores must not be trained on; matched by text hash as self-training's silver is,
    counted in the lineage's left_out as in_dev_test); the lineage in the model's metrics.json."""
    from ner_core.training.distillation import distill, recorded_unlabeled
    from storage.run_sources import dev_test_hashes

    tc = config.training
    texts, source = [], None
    if tc.unlabeled or tc.unlabeled_dataset:
        texts, source = _unlabeled_texts(db_path, config, recorded_unlabeled(run_dir))
    held_out = dev_test_hashes(db_path) if texts else set()
    out = distill(config, data.train, data.dev, data.labels, run_dir, texts, teacher_dir=_teacher_dir(
        db_path, tc.teacher), teacher=tc.teacher, source=source, held_out=held_out, **kwargs)  # fmt: skip
    corpus = out.lineage["unlabeled"] or {"texts": 0}
    print(f"distillation: teacher {out.lineage['teacher']} (sha256 {out.lineage['teacher_sha256'][:12]}), "
          f"{corpus['texts']} unlabeled texts", flush=True)  # fmt: skip
    return out.result


def evaluate_step(
    db_path: str,
    model_dir: str,
    dataset: str | None,
    split: str | None = "test",
    *,
    run_id: str | None = None,
    out_dir: str | None = None,
    file: str | None = None,
) -> EvaluateSummary:
    """Score a model directory on a stored split, or on a labelled ``file`` in any supported format;
    JSON + Markdown reports and DuckDB rows. The report's calibration is that of the model directory's
    fp32 temperature (none: 1.0) on the evaluated split: on test, the calibration error a user meets."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.calibration import stored_temperature
    from ner_core.inference.evaluate import evaluate_model

    loaded = load_model_dir(model_dir)
    temperature, fitted_on = stored_temperature(model_dir, "fp32")  # a refused file: one line, before tagging
    nested = loaded.config.decoder.type == "span"  # a span model is scored on the nested gold as well
    if file:
        from ner_core.data.formats import read_file
        from ner_core.data.formats.overlaps import nested_documents

        parsed = read_file(file, untyped_label=loaded.config.data.untyped_label)
        docs = nested_documents(parsed)[0] if nested else parsed.documents
        dataset, split, version = Path(file).name, None, None
        unknown = sorted({e.label for d in docs for e in d.entities} - set(loaded.labels))
        if unknown:
            raise ValueError(f"{file}: labels {unknown} are not in the model's label set {loaded.labels}")
    else:
        if not dataset:
            raise ValueError("evaluation needs a dataset (and split) or a file")
        version = latest_version(db_path, dataset)
        docs = load_documents(db_path, dataset, split, version, nested=nested)
    if not docs:
        raise ValueError(f"no labelled documents to evaluate in {file or f'{dataset}/{split}'}")
    report = evaluate_model(
        loaded.model,
        loaded.tokenizer,
        docs,
        max_len=loaded.config.data.max_len,
        temperature=temperature,
        fitted_on=fitted_on,
    )
    eval_id = f"{run_id or Path(model_dir).name}-{dataset}-v{version}-{split or 'file'}"
    evaluations_db.save_evaluation(
        db_path,
        eval_id,
        report,
        model_dir=str(Path(model_dir).resolve()),
        dataset=dataset,
        split=split,
        run_id=run_id,
        dataset_version=version,
    )
    out = Path(out_dir) if out_dir else Path(model_dir).parent
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{dataset}-{split}" if split else f"eval-{dataset}"
    (out / f"{stem}.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    md = report.to_markdown()
    (out / f"{stem}.md").write_text(md, encoding="utf-8")
    return EvaluateSummary(
        eval_id=eval_id,
        markdown=md,
        **report.summary(),
        per_type=list(report.per_type),
    )


def predict_step(
    db_path: str,
    model_dir: str,
    docs: Sequence[Document],
    *,
    input_kind: str,
    input_ref: str,
    run_id: str | None = None,
    batch_docs: int = 64,
    replace: bool | None = None,
    options: PredictionConfig | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Tag ``docs`` and store one row per entity; every ``batch_docs`` documents are written in their own
    transaction.

    ``replace``: ``None`` (default) resumes an interrupted run (status ``running``/``failed``, same window
    settings: only the documents not stored yet are tagged) and otherwise replaces the run's rows; ``True``
    always replaces; ``False`` always resumes. Same model + same input = same ``pred_run_id``, so rows are
    never duplicated.

    ``options``: window and speed; the ones left ``None`` come from the model's saved ``prediction``
    configuration (see :meth:`Tagger.from_loaded`).
    """
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    if not isinstance(batch_docs, int) or batch_docs < 1:
        raise ValueError(f"batch_docs must be a positive int, got {batch_docs!r}")
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"prediction input has duplicate doc_id {dup!r}: doc_ids must be unique per run")
    t0 = time.perf_counter()
    loaded = load_model_dir(model_dir)
    tagger = Tagger.from_loaded(loaded, options)
    print(tagger.precision_choice.line("prediction"), file=sys.stderr, flush=True)
    run = predictions_db.PredictionRunWriter(
        db_path,
        predictions_db.prediction_run_id(model_dir, input_ref, tagger.precision.value),
        model_dir=model_dir,
        run_id=run_id,
        input_kind=input_kind,
        input_ref=input_ref,
        # what changes the predictions: a run resumes only under the same settings ("merge": how windows
        # are joined; a stored run without it is never resumed)
        settings={
            "max_len": tagger.max_len,
            "stride": tagger.stride,
            "precision": tagger.precision.value,
            "merge": tagger.settings["merge"],
            **tagger.decoding,  # the decoder; a span model's threshold, overlap and span limit
            "temperature": tagger.temperature,  # the calibrated confidence's (1.0: none)
            **{k: v for k, v in tagger.settings.items() if k == "dictionary"},  # a user dictionary's hash
        },
        extra={
            "batch_size": tagger.batch_size,
            "device": str(tagger.device),
            "batch_docs": batch_docs,
            **({"precision_timing": timing.to_dict()} if (timing := tagger.precision_choice.timing) else {}),
        },
        replace=replace,
        t0=t0,
    )
    with run:
        todo = [d for d in docs if d.doc_id not in run.done]
        _tag_into(run, tagger, todo, batch_docs, progress)
    return PredictSummary.from_run(run, skipped_already_done=len(run.done), resumed=run.resumed)


def predict_source(
    db_path: str,
    source: FilesSource | DatasetSource | SqlSource | dict,
    model_dir: str,
    run_id: str | None = None,
    options: PredictionConfig | None = None,
) -> PredictSummary:
    """Tag the documents of ``source`` (:func:`load_prediction_input`) with ``model_dir``."""
    docs, kind, ref = load_prediction_input(db_path, source)
    return predict_step(
        db_path, model_dir, docs, input_kind=kind, input_ref=ref, run_id=run_id, options=options
    )


def run_pipeline(
    db_path: str,
    config: NERConfig,
    train: str,
    dev: str,
    test: str,
    predict_files: list[str],
    runs_root: str = "runs",
    *,
    ingest=ingest_step,
    train_model=train_step,
    evaluate=evaluate_step,
    predict=predict_source,
) -> PipelineSummary:
    """ingest -> train -> evaluate (test split) -> predict ``predict_files``: the one chain.

    The stages default to the plain steps (``ner pipeline --no-prefect``); the ``pipeline`` flow passes
    its subflows, which take the same arguments.
    """
    ds = config.data.dataset
    ingested = ingest(db_path, ds, {"train": train, "dev": dev, "test": test})
    trained = train_model(db_path, config, runs_root)
    evaluation = evaluate(db_path, trained.model_dir, ds, "test", run_id=trained.run_id)
    predicted = predict(db_path, FilesSource(files=predict_files), trained.model_dir, run_id=trained.run_id)
    return PipelineSummary(ingest=ingested, train=trained, evaluate=evaluation, predict=predicted)


def _tag_into(run, tagger, docs: Sequence[Document], batch_docs: int, progress: bool) -> None:
    """Tag ``docs`` in input order, ``batch_docs`` at a time, each batch stored by ``run.write`` with each
    document's uncertainty (the review queue's order): a resumed run skips whole stored batches (the tagger
    sorts windows by length within a batch)."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(len(d.text) for d in docs), unit="char", desc="predict", leave=False, disable=not progress
    )
    try:
        for b in range(0, len(docs), batch_docs):
            part = docs[b : b + batch_docs]
            preds = tagger.predict_documents([d.text for d in part], progress=bar.update)
            run.write(
                [(d.doc_id, d.text, p.entities, p.uncertainty) for d, p in zip(part, preds, strict=True)]
            )
    finally:
        bar.close()


def load_prediction_input(
    db_path: str, source: FilesSource | DatasetSource | SqlSource | dict
) -> tuple[list[Document], str, str]:
    """Documents to tag, the input kind and a reference naming the input (part of the prediction run id).

    ``source`` is a :data:`flows.contracts.PredictionSource` (or its JSON form, with a ``kind``):

    - :class:`FilesSource`: any supported format (labels ignored). A plain-text file is one document
      unless ``text_per_file`` is false (then one per line).
    - :class:`DatasetSource`: documents already in DuckDB (latest version; ``split`` None = all).
    - :class:`SqlSource`: a query returning the columns ``doc_id`` and ``text``, run through
      :func:`storage.query.query` (one read-only statement, no file access).
    """
    source = parse_source(source)
    if isinstance(source, FilesSource):
        return _file_documents(source), "file", ",".join(str(Path(f).resolve()) for f in source.files)
    if isinstance(source, DatasetSource):
        docs = load_documents(db_path, source.dataset, source.split)
        return docs, "dataset", source.input_ref
    return _sql_documents(db_path, source.sql), "sql", " ".join(source.sql.split())


def _file_documents(source: FilesSource) -> list[Document]:
    from ner_core.data.doc_ids import unique_doc_ids
    from ner_core.data.formats import detect_format, read_file

    per_file: list[list[Document]] = []
    for f in source.files:
        if source.text_per_file and detect_format(f) == "text":
            # a plain-text file is one document (an article), tagged whole however long it is
            text = Path(f).read_text(encoding="utf-8").strip()
            per_file.append([Document(doc_id=Path(f).stem, text=text, source=str(f), line=1)] if text else [])
            continue
        per_file.append(read_file(f).documents)
    # files sharing a stem (corpus.train / corpus.test) get longer ids where theirs collide, as on ingest
    ids = unique_doc_ids([str(f) for f in source.files], [[d.doc_id for d in docs] for docs in per_file])
    return [
        d if d.doc_id == i else d.model_copy(update={"doc_id": i})
        for docs, new_ids in zip(per_file, ids, strict=True)
        for d, i in zip(docs, new_ids, strict=True)
    ]


def _sql_documents(db_path: str, sql: str) -> list[Document]:
    try:
        rows = query_db.query(db_path, sql, profile=query_db.BATCH)  # an operator's query: large results
    except FileNotFoundError:
        raise
    except Exception as exc:  # refused by the guard, or a duckdb error: parser, catalog, read-only
        raise ValueError(f"prediction input query failed (it runs read-only): {exc}") from None
    if rows and not {"doc_id", "text"} <= set(rows[0]):
        raise ValueError(f"prediction input query must return columns doc_id and text, got {sorted(rows[0])}")
    docs = []
    for i, r in enumerate(rows):
        if r["doc_id"] is None or not isinstance(r["text"], str):
            raise ValueError(
                f"prediction input query row {i}: expected a doc_id and a text, got "
                f"doc_id={r['doc_id']!r}, text of type {type(r['text']).__name__}"
            )
        if r["text"]:
            docs.append(Document(doc_id=str(r["doc_id"]), text=r["text"], source="sql", line=i + 1))
    return docs
