"""The state and routes of ``ner serve --label-studio`` (the protocol: :mod:`app.serve.label_studio`)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request  # at module level: the routes' annotations are resolved by name

from app.serve.label_studio import (
    ANNOTATION_EVENTS,
    DEFAULT_DEPLOYMENT,
    LabelControl,
    LabelStudioClient,
    LabelStudioError,
    RetrainTrigger,
    annotated_spans,
    annotation_events,
    deployment_trigger,
    label_control,
    project_id,
    reviewer_name,
    task_result,
    task_text,
)


@dataclass
class LabelStudioOptions:
    """``ner serve --label-studio``'s settings: the DuckDB file the answers and reviews go to, Label
    Studio's URL and token (for annotations a webhook does not carry), the retrain trigger."""

    db_path: str
    url: str | None = None
    token: str | None = None
    retrain_every: int = 10
    retrain_deployment: str = DEFAULT_DEPLOYMENT

    def __repr__(self) -> str:  # the token never shows
        shown = f"db_path={self.db_path!r}, url={self.url!r}, retrain_every={self.retrain_every}"
        return f"LabelStudioOptions({shown})"


class DocumentTagger:
    """What the batcher calls in this mode: per text, entities and document uncertainty."""

    def __init__(self, tagger) -> None:
        self.tagger = tagger

    def predict(self, texts):
        return self.tagger.predict_documents(texts)


class LabelStudioBackend:
    """One served model answering Label Studio: label controls per project (from ``/setup`` or the
    request's ``label_config``), the prediction runs its answers are stored in, the review events its
    webhooks become, the retrain trigger."""

    def __init__(self, options: LabelStudioOptions, *, model_dir, run_id, tagger, labels, model_version):
        self.options = options
        self.model_dir = str(model_dir)
        self.run_id = run_id
        self.tagger = tagger
        self.labels = list(labels)
        self.model_version = model_version
        self.controls: dict[str, LabelControl] = {}
        self.client = LabelStudioClient(options.url, options.token)
        self.trigger = RetrainTrigger(
            options.retrain_every, deployment_trigger(options.retrain_deployment, options.db_path)
        )
        self._write = threading.Lock()  # one writer of this process at a time
        self._base_ids: dict[str, str] = {}

    # -- label configs
    def control(self, project: str, label_config: Any) -> LabelControl:
        if isinstance(label_config, str) and label_config.strip():
            control = label_control(label_config, self.labels)
            self.controls[project] = control
            return control
        if project in self.controls:
            return self.controls[project]
        raise LabelStudioError(f"no label config for project {project}: send it in /setup or label_config")

    def setup(self, body: Mapping) -> dict:
        self.control(project_id(body.get("project")), body.get("schema") or body.get("label_config"))
        return {"model_version": self.model_version}

    # -- storage
    @staticmethod
    def input_ref(project: str) -> str:
        return f"label-studio project {project}"

    def base_run_id(self, project: str) -> str:
        from storage.predictions import prediction_run_id

        if project not in self._base_ids:
            self._base_ids[project] = prediction_run_id(
                self.model_dir, self.input_ref(project), self.tagger.precision.value
            )
        return self._base_ids[project]

    def record(self, project: str, docs: list[tuple[str, str]], preds: list) -> None:
        """Store the answered tasks not stored already with the same text, as one batch of the project's
        prediction run (``-rN`` once the run holds review events)."""
        from storage.label_studio import task_documents
        from storage.predictions import PredictionRunWriter

        base, ref = self.base_run_id(project), self.input_ref(project)
        with self._write:
            stored = task_documents(self.options.db_path, base, ref, [d for d, _ in docs])
            rows, seen = [], set()
            for (doc_id, text), p in zip(docs, preds, strict=True):
                if doc_id in seen or (doc_id in stored and stored[doc_id]["text"] == text):
                    continue
                seen.add(doc_id)
                rows.append((doc_id, text, p.entities, p.uncertainty))
            if not rows:
                return
            settings = {
                "max_len": self.tagger.max_len,
                "stride": self.tagger.stride,
                "precision": self.tagger.precision.value,
                "merge": self.tagger.settings["merge"],
                **self.tagger.decoding,
                "temperature": self.tagger.temperature,
            }
            writer = PredictionRunWriter(
                self.options.db_path,
                base,
                model_dir=self.model_dir,
                run_id=self.run_id,
                input_kind="texts",
                input_ref=ref,
                settings=settings,
                extra={"label_studio_project": project},
                replace=False,
            )
            with writer:
                writer.write(rows)

    # -- webhook
    def webhook(self, body: Mapping) -> dict:
        action = body.get("action")
        if action not in ANNOTATION_EVENTS:
            return {"status": "ignored", "action": action if isinstance(action, str) else None}
        project = project_id(body.get("project"))
        config = body["project"].get("label_config") if isinstance(body.get("project"), Mapping) else None
        control = self.control(project, config)
        annotation = body.get("annotation")
        if not isinstance(annotation, Mapping):
            raise LabelStudioError("the webhook carries no annotation object")
        if not isinstance(annotation.get("result"), list):
            annotation = self.client.annotation(annotation.get("id"))
        if annotation.get("was_cancelled"):
            return {"status": "ignored", "reason": "the annotation was cancelled (skipped)"}
        task = body.get("task") if isinstance(body.get("task"), Mapping) else {}
        task_id = task.get("id", annotation.get("task"))
        return self._store_annotation(project, control, annotation, f"task-{task_id}")

    def _store_annotation(
        self, project: str, control: LabelControl, annotation: Mapping, doc_id: str
    ) -> dict:
        from storage.label_studio import task_documents
        from storage.reviews import current_entities, record_events, review_labels, text_hash

        base, db = self.base_run_id(project), self.options.db_path
        with self._write:
            found = task_documents(db, base, self.input_ref(project), [doc_id]).get(doc_id)
            if found is None:
                raise LabelStudioError(
                    f"{doc_id} of project {project} was never answered by this backend's /predict: no "
                    "prediction run to review"
                )
            run, text = found["pred_run_id"], found["text"]
            spans = annotated_spans(annotation, control, text)
            labels = review_labels(db, run)
            known = [*labels["model"], *labels["added"]]
            fields = annotation_events(current_entities(db, run, doc_id), spans, known)
            common = {"pred_run_id": run, "doc_id": doc_id, "doc_hash": text_hash(text)}
            events = [{**common, "reviewer": reviewer_name(annotation), **f} for f in fields]
            n = record_events(db, events)
        self.trigger.add(run)
        return {"status": "ok", "pred_run_id": run, "doc_id": doc_id, "events": n}


def _json_error(status: int, detail: str):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"detail": detail})


async def _body(request) -> Mapping | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def add_label_studio_routes(app, batcher, limits, info: dict, backend: LabelStudioBackend, tag) -> None:
    """``GET /health``, ``GET /model``, ``POST /setup``, ``POST /predict``, ``POST /webhook``; ``tag``:
    awaits the batcher's answer for texts (:func:`app.serve._tag`: its 422 and 503 rules)."""
    from storage.db import DatabaseLockedError

    started = time.time()

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "UP",
            "model_class": "ner",
            "model": info["model"],
            "model_version": backend.model_version,
            "uptime_s": round(time.time() - started, 1),
            "served": dict(batcher.stats),
            "retrain": backend.trigger.state(),
        }

    @app.get("/model")
    def model_info() -> dict:
        return info

    @app.post("/setup")
    async def setup(request: Request):
        body = await _body(request)
        if body is None:
            return _json_error(422, "invalid request: expected a JSON object with project and schema")
        try:
            return backend.setup(body)
        except LabelStudioError as exc:
            return _json_error(422, str(exc))

    @app.post("/predict")
    async def predict(request: Request):
        body = await _body(request)
        if body is None or not isinstance(body.get("tasks"), list):
            return _json_error(422, "invalid request: expected a JSON object with a tasks list")
        try:
            project = project_id(body.get("project"))
            control = backend.control(project, body.get("label_config"))
            docs = [task_text(t, control, i) for i, t in enumerate(body["tasks"])]
        except LabelStudioError as exc:
            return _json_error(422, str(exc))
        problem = _too_large([t for _, t in docs], limits)
        if problem:
            return _json_error(413, problem)
        preds = await tag(batcher, [t for _, t in docs]) if docs else []
        try:
            await asyncio.to_thread(backend.record, project, docs, preds)
        except DatabaseLockedError as exc:  # unrecorded answers could not be reviewed: Label Studio retries
            return _json_error(503, f"the answers could not be stored: {exc}")
        return {"results": [task_result(control, p, backend.model_version) for p in preds]}

    @app.post("/webhook")
    async def webhook(request: Request):
        body = await _body(request)
        if body is None:
            return _json_error(422, "invalid request: expected a JSON object with action")
        try:
            return await asyncio.to_thread(backend.webhook, body)
        except ValueError as exc:  # LabelStudioError, ReviewRefused: one line
            return _json_error(422, str(exc))
        except DatabaseLockedError as exc:
            return _json_error(503, f"the annotation could not be stored: {exc}")


def _too_large(texts: list[str], limits) -> str | None:
    if len(texts) > limits.max_texts:
        return f"{len(texts)} tasks in one request; at most {limits.max_texts} allowed"
    for i, t in enumerate(texts):
        if len(t) > limits.max_chars:
            return f"task {i} has {len(t)} characters; at most {limits.max_chars} per text"
    if sum(map(len, texts)) > limits.max_total_chars:
        return f"{sum(map(len, texts))} characters in one request; at most {limits.max_total_chars}"
    return None
