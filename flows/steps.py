"""The pipeline's steps as plain functions: ingest, train, evaluate, predict.

Prefect flows (:mod:`flows.pipeline`) wrap each of these in a task; ``ner ... --no-prefect`` calls them
directly. They pass paths and ids, never models or tensors.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from ner_core.config import NERConfig
from ner_core.documents import Document
from storage import runs as runs_db
from storage.datasets import dataset_labels, ingest_dataset, latest_version, load_documents


def new_run_id(config: NERConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.data.dataset}-{config.head.type.value}-{uuid.uuid4().hex[:6]}"


def ingest_step(db_path: str, name: str, files: dict[str, str] | list[str], *, format: str | None = None,
                policy: str = "repair", untyped_label: str = "ENT",
                split_ratios: tuple[float, float, float] | None = None) -> dict:
    report = ingest_dataset(db_path, name, files, format=format, policy=policy, untyped_label=untyped_label,
                            split_ratios=split_ratios, progress=True)
    print(report.to_text(), flush=True)
    return {"dataset": report.dataset, "version": report.version, "created": report.created,
            "counts": report.counts, "labels": list(report.labels),
            "problems": len(report.problems)}


def train_step(db_path: str, config: NERConfig, runs_root: str, *, run_id: str | None = None,
               resume: bool = False) -> dict:
    """Train on the dataset's train split, early-stop on its dev split; rows in runs / epochs."""
    from ner_core.training import train

    ds = config.data.dataset
    version = latest_version(db_path, ds)
    train_docs = load_documents(db_path, ds, "train", version)
    dev_docs = load_documents(db_path, ds, "dev", version)
    labels = dataset_labels(db_path, ds, version)
    if resume:
        if not run_id:
            raise ValueError("--resume needs the RUN_ID of the run to continue")
        prev = runs_db.get_run(db_path, run_id)
        config = NERConfig.model_validate_json(prev["config"])
    run_id = run_id or new_run_id(config)
    run_dir = Path(runs_root) / run_id
    if not resume:
        runs_db.create_run(db_path, run_id, dataset=ds, dataset_version=version, config_json=config.to_json(),
                           run_dir=run_dir)
    print(f"run {run_id}: {len(train_docs)} train / {len(dev_docs)} dev documents, labels {labels}, "
          f"encoder {config.encoder.name}, head {config.head.type.value}", flush=True)
    try:
        result = train(config, train_docs, dev_docs, labels, run_dir, resume=resume,
                       on_epoch=lambda s: runs_db.record_epoch(db_path, run_id, s.__dict__),
                       extra_metadata={"run_id": run_id, "dataset": ds, "dataset_version": version})
    except BaseException as exc:
        runs_db.finish_run(db_path, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    runs_db.finish_run(db_path, run_id, status="completed", model_dir=result.model_dir,
                       best_epoch=result.best_epoch, best_dev_f1=result.best_dev_f1, seconds=result.seconds,
                       stopped_reason=result.stopped_reason)
    return {"run_id": run_id, "run_dir": str(run_dir), "model_dir": str(result.model_dir),
            "best_epoch": result.best_epoch, "best_dev_f1": result.best_dev_f1,
            "stopped_reason": result.stopped_reason, "seconds": round(result.seconds, 1)}


def evaluate_step(db_path: str, model_dir: str, dataset: str, split: str = "test", *,
                  run_id: str | None = None, out_dir: str | None = None) -> dict:
    """Score a model directory on a stored split; JSON + Markdown reports and DuckDB rows."""
    from ner_core.modeldir import load_model_dir
    from ner_core.training import evaluate_model

    loaded = load_model_dir(model_dir)
    version = latest_version(db_path, dataset)
    docs = load_documents(db_path, dataset, split, version)
    if not docs:
        raise ValueError(f"dataset {dataset!r} has no documents in split {split!r}")
    report = evaluate_model(loaded.model, loaded.tokenizer, docs, max_len=loaded.config.data.max_len)
    eval_id = f"{run_id or Path(model_dir).name}-{dataset}-v{version}-{split}"
    runs_db.save_evaluation(db_path, eval_id, report, model_dir=model_dir, dataset=dataset, split=split,
                            run_id=run_id, dataset_version=version)
    out = Path(out_dir) if out_dir else Path(model_dir).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eval-{dataset}-{split}.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    md = report.to_markdown()
    (out / f"eval-{dataset}-{split}.md").write_text(md, encoding="utf-8")
    return {"eval_id": eval_id, "markdown": md, **report.summary(),
            "per_type": [t.model_dump() for t in report.per_type]}


def prediction_run_id(model_dir: str, input_ref: str) -> str:
    """Same model + same input -> same id, so a re-run replaces its rows instead of duplicating them."""
    meta = Path(model_dir) / "meta.json"
    ident = meta.read_text(encoding="utf-8") if meta.exists() else str(Path(model_dir).resolve())
    return "pred-" + hashlib.sha1(f"{ident}\n{input_ref}".encode()).hexdigest()[:12]


def predict_step(db_path: str, model_dir: str, docs: Sequence[Document], *, input_kind: str, input_ref: str,
                 run_id: str | None = None, batch_docs: int = 64, replace: bool = True,
                 max_len: int | None = None, stride: int | None = None, batch_size: int = 32) -> dict:
    """Tag ``docs`` and store one row per entity; batches are written in their own transactions, and a
    re-run with ``replace=False`` skips documents already stored (resume)."""
    from tqdm.auto import tqdm

    from ner_core.modeldir import load_model_dir
    from ner_core.predict import Tagger

    t0 = time.perf_counter()
    loaded = load_model_dir(model_dir)
    tagger = Tagger.from_loaded(loaded, max_len=max_len, stride=stride, batch_size=batch_size)
    pred_run_id = prediction_run_id(model_dir, input_ref)
    cfg = json.dumps({"max_len": tagger.max_len, "stride": tagger.stride, "batch_size": batch_size})
    done = runs_db.start_prediction_run(db_path, pred_run_id, model_dir=model_dir, run_id=run_id,
                                        input_kind=input_kind, input_ref=input_ref, config_json=cfg,
                                        replace=replace)
    todo = [d for d in docs if d.doc_id not in done]
    bar = tqdm(total=sum(len(d.text) for d in todo), unit="char", desc="predict", leave=False)
    try:
        for b in range(0, len(todo), batch_docs):
            part = todo[b : b + batch_docs]
            preds = tagger.predict([d.text for d in part], progress=bar.update)
            runs_db.write_predictions(db_path, pred_run_id, [(d.doc_id, d.text, p) for d, p in zip(part, preds)])
    except BaseException:
        runs_db.finish_prediction_run(db_path, pred_run_id, status="failed", seconds=time.perf_counter() - t0)
        raise
    finally:
        bar.close()
    row = runs_db.finish_prediction_run(db_path, pred_run_id, status="completed", seconds=time.perf_counter() - t0)
    return {"pred_run_id": pred_run_id, "n_documents": row["n_documents"], "n_entities": row["n_entities"],
            "n_chars": row["n_chars"], "skipped_already_done": len(done), "seconds": round(row["seconds"], 2)}


def load_prediction_input(db_path: str, source: dict) -> tuple[list[Document], str, str]:
    """``source`` is {"files": [...]} (any supported format; labels ignored) or {"dataset": d, "split": s}.

    A plain-text file is one document unless ``source["text_per_file"]`` is false (then one per line).
    """
    from ner_core.formats import detect_format, read_file
    from storage.datasets import load_documents

    if source.get("files"):
        docs: list[Document] = []
        for f in source["files"]:
            if source.get("text_per_file", True) and detect_format(f) == "text":
                # a plain-text file is one document (an article), tagged whole however long it is
                text = Path(f).read_text(encoding="utf-8").strip()
                if text:
                    docs.append(Document(doc_id=Path(f).stem, text=text, source=str(f), line=1))
                continue
            docs.extend(read_file(f).documents)
        return docs, "file", ",".join(str(Path(f).resolve()) for f in source["files"])
    if source.get("dataset"):
        docs = load_documents(db_path, source["dataset"], source.get("split"))
        return docs, "dataset", f"{source['dataset']}/{source.get('split') or '*'}"
    raise ValueError(f"prediction input needs 'files' or 'dataset', got {sorted(source)}")
