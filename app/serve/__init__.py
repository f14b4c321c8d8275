"""The prediction API (the seed's ``deploy``): ``ner serve`` and ``ner query``.

``ner serve`` loads one model once at start-up (``--model-dir``, ``--run RUN_ID`` or the production run of
``--db``) and serves it over HTTP with FastAPI + uvicorn, on 127.0.0.1 by default:

- ``POST /predict``  body ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` -> ``{"results": [{"entities":
  [{"start", "end", "label", "text", "confidence"}, ...], "n_chars"}], "model", "seconds"}``; spans are
  half-open ``[start, end)`` character offsets of the text sent. Long texts are tagged whole (windows).
  A model whose directory holds a fitted temperature adds ``"confidence_calibrated"`` to each entity, and
  a user dictionary ``"from_dictionary": true`` to the entities it forced.
- ``GET /health``    ``{"status": "ok", "served": {"requests", "texts", "batches"}, ...}``
- ``GET /model``     the model's configuration, labels, metrics, window settings and the request limits.
  Of the model directory's metrics only the keys the trainer writes are served, each a plain value
  (:func:`public_metrics`): a model folder may come from anyone, and its metrics are not a channel.
- ``POST /decode``   the seed's endpoint, for its clients: body ``{"text": "..."}`` -> ``{"text", "tags"}``
  with one space-separated tag per character in the model's scheme (the whole text, not cut at max_len).

Limits: more than ``--max-texts`` texts, a text longer than ``--max-chars``, more than ``--max-total-chars``
in one request, or a body larger than allowed (by ``Content-Length`` or as it streams in) -> 413 with a
message saying what the limit is; a malformed body (no text, wrong types, unknown fields, JSON nested too
deep, a lone surrogate or NUL in a text) -> 422 with a readable ``detail``; a body not received within
``--body-timeout`` -> 408. Nothing a client sends crashes the service. On an address other than loopback
an API key is required (``NER_API_KEY`` or ``--api-key-file``) on every path but ``/health``. A ``Host``
header naming another server than the one bound to (DNS rebinding) -> 421 on every path, unless the name
is in ``--allowed-hosts`` / ``$NER_ALLOWED_HOSTS``. The guards live in :mod:`app.serve_guard`.

Concurrent requests are tagged together (:class:`RequestBatcher`): whenever the model is free, the texts
of every request waiting go through it in one batch, so throughput grows with the number of clients while
a lone request is never delayed. The queue is bounded (``--max-queue`` requests, ``--max-queue-chars``
characters): beyond it, 503 with ``Retry-After``, counted in ``/health`` (``served.rejected_busy``).
SIGTERM or SIGINT stops the service gracefully: the requests in flight get their answers first.

``ner query "text" ...`` calls the service and prints the entities (the seed's query.py).

The seed's deploy flags work as written (``ner deploy -model_configs MODELS/model_configs.json -log_path
MODELS/deploy_log/ -device_map "cpu"``): ``-log_path DIR`` appends one line per request to
``DIR/requests.log`` (:class:`RequestLog`: time, method and path, status, milliseconds, characters sent;
never the texts themselves, which may be private).

This package is the service; the commands are :mod:`app.commands.serve` (``ner serve``, alias ``deploy``,
whose limit flags are :class:`ServeLimits`' fields) and :mod:`app.commands.query`. ``python -m app.serve
serve|query ...`` runs those two without the rest of ``ner`` (:mod:`app.serve.__main__`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ner_core.config import PredictionConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
CHARS_HEADER = "X-NER-Chars"  # characters a /predict or /decode request carried (read by the request log)


class ServeLimits(BaseModel):
    """What one request may carry (anything beyond is answered with 413), what may wait for the model
    (beyond it, 503 + Retry-After) and how long a body may take (408). Each field is a flag of
    ``ner serve`` (:data:`app.commands.serve.LIMIT_FLAGS`), its description the flag's help."""

    model_config = ConfigDict(extra="forbid")

    max_texts: int = Field(64, ge=1, description="texts per request")
    max_chars: int = Field(20_000, ge=1, description="characters per text")
    max_total_chars: int = Field(200_000, ge=1, description="characters per request")
    # the queue in front of the model: beyond it, 503 + Retry-After (default: two full batches)
    max_queue: int | None = Field(
        None,
        ge=1,
        description="requests waiting for the model before the service answers 503 with Retry-After "
        "(default 2 x --max-texts: two full batches)",
    )
    max_queue_chars: int | None = Field(
        None, ge=1, description="characters waiting for the model before 503 (default 2 x --max-total-chars)"
    )
    body_timeout_s: float = Field(20.0, gt=0, description="seconds to receive a request body before 408")

    @model_validator(mode="after")
    def _queue_defaults(self) -> ServeLimits:
        if self.max_queue is None:
            self.max_queue = 2 * self.max_texts
        if self.max_queue_chars is None:
            self.max_queue_chars = 2 * self.max_total_chars
        return self

    @property
    def max_body_bytes(self) -> int:
        # UTF-8 Chinese is 3 bytes a character, JSON escapes (\\uXXXX) up to 6: allow 6 + framing
        return self.max_total_chars * 6 + 64 * self.max_texts + 4096


class PredictRequest(BaseModel):
    """One text (``text``) or several (``texts``), not both."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        if self.texts is not None and not self.texts:
            raise ValueError('"texts" is empty: give at least one text')
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


# ----------------------------------------------------------------------------------------- batching
class QueueFull(Exception):
    """The batcher's queue is full (or it is stopping): answer 503 with ``Retry-After: retry_after``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestBatcher:
    """Tags the texts of concurrent ``/predict`` requests together, in one tagger call.

    One worker thread owns the tagger. A request puts its texts on a queue and waits for its own results.
    Whenever the worker is free it takes every request waiting (up to ``max_texts`` texts and
    ``max_chars`` characters per batch: no batch is larger than one request may be), tags all their texts
    in one :meth:`Tagger.predict` call and hands each request its share. There is no artificial delay: a
    lone request is tagged at once; requests that arrive while a batch runs go together into the next one,
    so under load each forward pass carries many short texts instead of one. Results do not depend on
    which requests share a batch (windows are tagged independently of their batch-mates).

    ``coalesce=False`` tags one request per call instead (``ner serve --no-batch-requests``).

    The queue is bounded: when ``max_queue`` requests, or ``max_queue_chars`` characters, already wait
    (the batch being tagged not counted), :meth:`submit` raises :class:`QueueFull` with a ``Retry-After``
    estimate (the waiting batches times the recent seconds per batch) instead of letting latency and
    memory grow without bound; a request is always accepted when none waits. ``stats``: requests, texts
    and batches served so far and the requests refused as busy (``GET /health`` shows them).
    """

    def __init__(
        self,
        tagger,
        *,
        max_texts: int,
        max_chars: int,
        coalesce: bool = True,
        max_queue: int | None = None,
        max_queue_chars: int | None = None,
    ) -> None:
        import queue

        self.tagger = tagger
        self.max_texts = max_texts
        self.max_chars = max_chars
        self.coalesce = coalesce
        self.max_queue = max_queue if max_queue is not None else 2 * max_texts
        self.max_queue_chars = max_queue_chars if max_queue_chars is not None else 2 * max_chars
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "rejected_busy": 0}
        self._lock = threading.Lock()  # guards the waiting counts and the closing flag
        self._waiting = [0, 0]  # requests, characters on the queue (the carried request included)
        self._closing = False
        self._batch_seconds = 0.0  # moving average of one tagger call
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: tuple | None = None  # the request that did not fit into the last batch
        self._worker = threading.Thread(target=self._run, name="ner-batcher", daemon=True)
        self._worker.start()

    def submit(self, texts: list[str]):
        """Queue one request's texts; a :class:`concurrent.futures.Future` of its entities per text (as
        :meth:`Tagger.predict`). Raises :class:`QueueFull` when the queue is full or the batcher stops."""
        from concurrent.futures import Future

        texts = list(texts)
        n_chars = sum(map(len, texts))
        done: Future = Future()
        with self._lock:  # queued under the lock: nothing lands behind close()'s end marker
            n_waiting, chars_waiting = self._waiting
            if self._closing:
                raise QueueFull("the service is stopping; retry on a new connection", 1)
            if n_waiting and (n_waiting >= self.max_queue or chars_waiting + n_chars > self.max_queue_chars):
                self.stats["rejected_busy"] += 1
                retry = self._retry_after(n_waiting, chars_waiting)
                raise QueueFull(
                    f"busy: {n_waiting} requests ({chars_waiting} characters) wait for the model and this "
                    f"service queues at most {self.max_queue} requests / {self.max_queue_chars} "
                    f"characters; retry after {retry} s",
                    retry,
                )
            self._waiting = [n_waiting + 1, chars_waiting + n_chars]
            self._queue.put((texts, done))
        return done

    def predict(self, texts: list[str]) -> list:
        """Entities per text (as :meth:`Tagger.predict`); blocks until this request's batch is tagged."""
        return self.submit(texts).result()

    def queue_state(self) -> dict:
        """What waits now and the bounds (``GET /health``)."""
        with self._lock:
            n_waiting, chars_waiting = self._waiting
        return {
            "waiting": n_waiting,
            "waiting_chars": chars_waiting,
            "max_queue": self.max_queue,
            "max_queue_chars": self.max_queue_chars,
        }

    def close(self) -> None:
        """Refuse new requests, tag every request queued already, then stop the worker."""
        with self._lock:
            self._closing = True
            self._queue.put(None)
        self._worker.join(timeout=60)

    def _retry_after(self, n_waiting: int, chars_waiting: int) -> int:
        import math

        batches = 1 + max(math.ceil(n_waiting / self.max_texts), math.ceil(chars_waiting / self.max_chars))
        return min(60, max(1, math.ceil(batches * self._batch_seconds)))

    def _next_batch(self) -> list | None:
        import queue

        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return None
        batch = [first]
        n_texts, n_chars = len(first[0]), sum(map(len, first[0]))
        while self.coalesce:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if item is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                return batch
            size = sum(map(len, item[0]))
            if n_texts + len(item[0]) > self.max_texts or n_chars + size > self.max_chars:
                self._carry = item
                return batch
            batch.append(item)
            n_texts, n_chars = n_texts + len(item[0]), n_chars + size
        return batch

    def _run(self) -> None:
        from app.serve_guard import release_freed_memory

        while (batch := self._next_batch()) is not None:
            with self._lock:
                n_chars = sum(len(t) for ts, _ in batch for t in ts)
                self._waiting = [self._waiting[0] - len(batch), self._waiting[1] - n_chars]
            # a request given up on (its future cancelled: a client gone, a shutdown timeout) is skipped;
            # the others are marked running, so they can no longer be cancelled under the worker
            batch = [(ts, done) for ts, done in batch if done.set_running_or_notify_cancel()]
            if not batch:
                continue
            texts = [t for ts, _ in batch for t in ts]
            t0 = time.perf_counter()
            try:
                preds = self.tagger.predict(texts)
            except BaseException as exc:  # every waiting request gets the error; the worker goes on
                for _, done in batch:
                    done.set_exception(exc)
                continue
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.perf_counter() - t0)
            self.stats["requests"] += len(batch)
            self.stats["texts"] += len(texts)
            self.stats["batches"] += 1
            i = 0
            for ts, done in batch:
                done.set_result(preds[i : i + len(ts)])
                i += len(ts)
            del preds, texts, batch
            release_freed_memory()  # the batch's buffers go back to the system, not to a growing heap


# ----------------------------------------------------------------------------------------- request log
class RequestLog:
    """One line per request, appended to ``folder/requests.log`` (created with its folder):
    ``<ISO time>\t<METHOD> <path>\t<status>\t<ms> ms\t<n> chars``; ``chars`` is the characters of the
    texts a ``/predict`` or ``/decode`` request carried (``-`` for other requests; the handlers send it in
    the ``X-NER-Chars`` response header). No text is logged."""

    FILE = "requests.log"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open: one line per request)

    def write(self, method: str, path: str, status: int, seconds: float, n_chars: int | None) -> None:
        from datetime import datetime

        stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
        chars = "-" if n_chars is None else str(n_chars)
        line = f"{stamp}\t{method} {path}\t{status}\t{seconds * 1000:.1f} ms\t{chars} chars\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _add_request_log(app, log: RequestLog) -> None:
    """Log every request (:class:`RequestLog`); a handler that raises is logged as 500, then re-raised."""
    from fastapi import Request

    @app.middleware("http")
    async def _log(request: Request, call_next):
        t0 = time.perf_counter()
        response = None
        try:
            response = await call_next(request)
            return response
        finally:
            chars = response.headers.get(CHARS_HEADER, "") if response is not None else ""
            log.write(
                request.method,
                request.url.path,
                response.status_code if response is not None else 500,
                time.perf_counter() - t0,
                int(chars) if chars.isdigit() else None,
            )


# ----------------------------------------------------------------------------------------- the app
def create_app(
    model_dir: str | os.PathLike,
    *,
    run_id: str | None = None,
    limits: ServeLimits | None = None,
    options: PredictionConfig | None = None,
    batch_requests: bool = True,
    log_path: str | os.PathLike | None = None,
    api_key: str | None = None,
    host: str = DEFAULT_HOST,
    allowed_hosts: Iterable[str] = (),
    label_studio=None,
):
    """A FastAPI app serving the model in ``model_dir``; the model is loaded here, once, and tags with
    ``options`` (unset ones: the model's saved prediction settings). ``batch_requests``: tag the texts of
    concurrent requests together (:class:`RequestBatcher`). ``log_path``: a folder for the request log
    (:class:`RequestLog`). ``api_key``: required on every path but ``/health``
    (:class:`app.serve_guard.RequestGuard`). ``host``: the address it is bound to, whose names (and
    ``allowed_hosts``) it answers for in ``Host`` (:class:`app.serve_guard.HostPolicy`).
    ``label_studio``: a :class:`app.serve.ls_backend.LabelStudioOptions` to speak Label Studio's ML
    backend protocol instead of the plain routes (:mod:`app.serve.label_studio`). The app's shutdown tags
    what is queued, then stops."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from app.serve_guard import HostPolicy
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    limits = limits or ServeLimits()
    if not isinstance(limits, ServeLimits):
        raise ValueError(f"expected limits to be a ServeLimits, got {type(limits).__name__}")
    hosts = HostPolicy.for_bind(host, allowed_hosts)  # a bad name is refused before the model loads
    loaded = load_model_dir(model_dir)
    tagger = Tagger.from_loaded(loaded, options)
    print(tagger.precision_choice.line("serving"), flush=True)
    # one tagger call at a time (torch already uses every thread it has); concurrent requests share it
    served = tagger
    if label_studio is not None:  # Label Studio's answers need each document's uncertainty too
        from app.serve.ls_backend import DocumentTagger

        served = DocumentTagger(tagger)
    batcher = RequestBatcher(
        served,
        max_texts=limits.max_texts,
        max_chars=limits.max_total_chars,
        coalesce=batch_requests,
        max_queue=limits.max_queue,
        max_queue_chars=limits.max_queue_chars,
    )
    info = _model_info(
        model_dir, run_id, loaded, tagger.settings | {"batch_requests": batch_requests}, limits
    )

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(batcher.close)  # uvicorn let the requests in flight finish already
        if getattr(app.state, "request_log", None) is not None:
            app.state.request_log.close()

    app = FastAPI(
        title="Chinese NER",
        version="1",
        description="Named entities with character offsets.",
        lifespan=lifespan,
    )
    app.state.info = info
    app.state.batcher = batcher
    _add_request_guards(app, limits, api_key, hosts)
    if log_path is not None:
        app.state.request_log = RequestLog(log_path)
        _add_request_log(app, app.state.request_log)
    if label_studio is not None:
        _add_label_studio(app, label_studio, batcher, limits, info, tagger, loaded)
        return app
    _add_routes(app, batcher, limits, info)
    _add_seed_route(app, batcher, limits, loaded.scheme)
    return app


def _add_label_studio(app, options, batcher, limits, info: dict, tagger, loaded) -> None:
    """Label Studio's routes (:func:`app.serve.ls_backend.add_label_studio_routes`) and HTTP Basic auth
    with the API key as the password, in front of the guard
    (:class:`app.serve.label_studio.BasicAuthAsBearer`)."""
    from app.serve.label_studio import BasicAuthAsBearer
    from app.serve.ls_backend import LabelStudioBackend, add_label_studio_routes

    backend = LabelStudioBackend(
        options,
        model_dir=info["model_dir"],
        run_id=info["run_id"],
        tagger=tagger,
        labels=loaded.labels,
        model_version=f"ner-{info['model']}",
    )
    app.state.label_studio = backend
    app.add_middleware(BasicAuthAsBearer)  # added last: runs first, before the API key is checked
    add_label_studio_routes(app, batcher, limits, info, backend, _tag)


#: the keys of a model directory's metrics.json that ``GET /model`` serves: what the trainer writes
#: (:func:`ner_core.training.loop.train`, the flows' run metadata) and a test model's note and seed
SCALAR_METRICS = ("best_epoch", "run_id", "dataset", "dataset_version", "note", "seed")
MAX_METRIC_CHARS = 200  # a served string metric, at most
MAX_DEV_FIGURES = 2_000  # "dev": the overall figures, 6 per entity type, one per error kind


def _plain(value):
    """``value`` when it is a JSON scalar fit to serve (a string cut to :data:`MAX_METRIC_CHARS`; a
    non-finite float, which JSON cannot carry, as None); else None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:MAX_METRIC_CHARS]
    return value if value is None or isinstance(value, (bool, int)) else None


def public_metrics(metrics: dict) -> dict:
    """What ``GET /model`` serves of a model directory's metrics: the keys of :data:`SCALAR_METRICS` as
    plain values, ``plus`` as ``{"dataset", "version"}``, and ``dev`` as its numeric figures (at most
    :data:`MAX_DEV_FIGURES`); any other key, or a value of another shape, is left out."""
    out = {k: _plain(metrics[k]) for k in SCALAR_METRICS if k in metrics}
    if "plus" in metrics:
        plus = metrics["plus"]
        shown = {k: _plain(plus.get(k)) for k in ("dataset", "version")} if isinstance(plus, dict) else None
        out["plus"] = shown
    if "dev" in metrics:
        dev = metrics["dev"] if isinstance(metrics["dev"], dict) else None
        figures = [
            (str(k)[:MAX_METRIC_CHARS], _plain(v))
            for k, v in (dev or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        out["dev"] = dict(figures[:MAX_DEV_FIGURES]) if dev is not None else None
    return out


def _model_info(model_dir, run_id: str | None, loaded, tagger_settings: dict, limits: ServeLimits) -> dict:
    """What ``GET /model`` answers."""
    model_name = Path(model_dir).resolve().name
    if model_name == "model":  # runs/<run_id>/model: the run id names it better
        model_name = Path(model_dir).resolve().parent.name
    return {
        "model": model_name,
        "model_dir": str(Path(model_dir).resolve()),
        "run_id": run_id,
        "scheme": loaded.scheme,
        "labels": loaded.labels,
        "tags": loaded.tags,
        "config": json.loads(loaded.config.to_json()),
        "metrics": public_metrics(loaded.metrics),
        "tagger": tagger_settings,
        "limits": limits.model_dump() | {"max_body_bytes": limits.max_body_bytes},
    }


def _add_request_guards(app, limits: ServeLimits, api_key: str | None = None, hosts=None) -> None:
    """421 for a ``Host`` the service does not answer for (``hosts``), the API key, 413 for a body larger
    than the limits allow (however it is sent), 408 for one that does not arrive in time
    (:class:`app.serve_guard.RequestGuard`); 422 with a readable ``detail`` for a malformed one."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from app.serve_guard import RequestGuard

    app.add_middleware(
        RequestGuard,
        max_body_bytes=limits.max_body_bytes,
        body_timeout_s=limits.body_timeout_s,
        api_key=api_key,
        limits_hint=f"max_total_chars={limits.max_total_chars}",
        hosts=hosts,
    )

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse(
            status_code=422,
            content={
                "detail": "invalid request: "
                + "; ".join(parts)
                + ' (expected JSON {"text": "..."} or {"texts": ["...", ...]})'
            },
        )


async def _tag(batcher: RequestBatcher, texts: list[str]) -> list:
    """The batcher's entities for ``texts``, awaited without holding a thread; 422 for text that is not
    valid Unicode or holds NUL (:func:`app.serve_guard.text_problem`), 503 + ``Retry-After`` when the
    queue is full."""
    from fastapi import HTTPException

    from app.serve_guard import text_problem

    problem = text_problem(texts)
    if problem is not None:
        raise HTTPException(422, f"invalid request: {problem}")
    try:
        done = batcher.submit(texts)
    except QueueFull as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    return await asyncio.wrap_future(done)


def _add_routes(app, batcher: RequestBatcher, limits: ServeLimits, info: dict) -> None:
    """``GET /health``, ``GET /model`` and ``POST /predict``."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    started = time.time()
    model_name = info["model"]

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "uptime_s": round(time.time() - started, 1),
            "served": dict(batcher.stats),
            "queue": batcher.queue_state(),
        }

    @app.get("/model")
    def model_info() -> dict:
        return info

    @app.post("/predict")
    async def predict(req: PredictRequest):
        texts = req.all_texts()
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; at most {limits.max_texts} allowed")
        for i, t in enumerate(texts):
            if len(t) > limits.max_chars:
                raise HTTPException(
                    413, f"text {i} has {len(t)} characters; at most {limits.max_chars} per text"
                )
        total = sum(len(t) for t in texts)
        if total > limits.max_total_chars:
            raise HTTPException(413, f"{total} characters in one request; at most {limits.max_total_chars}")
        t0 = time.perf_counter()
        preds = await _tag(batcher, texts)
        body = {
            "model": model_name,
            "seconds": round(time.perf_counter() - t0, 4),
            "results": [
                {"n_chars": len(t), "entities": [e.to_dict() for e in ents]}
                for t, ents in zip(texts, preds, strict=True)
            ],
        }
        return JSONResponse(body, headers={CHARS_HEADER: str(total)})


class DecodeRequest(BaseModel):
    """The seed's ``/decode`` body."""

    model_config = ConfigDict(extra="forbid")

    text: str


def _add_seed_route(app, batcher: RequestBatcher, limits: ServeLimits, scheme: str) -> None:
    """``POST /decode``: the seed's request and answer (``{"text"}`` -> ``{"text", "tags"}``); tags cannot
    nest, so a span model's answer holds the tags of its outermost entities."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    from ner_core.documents import Entity
    from ner_core.schemes import outermost, spans_to_tags

    @app.post("/decode")
    async def decode(req: DecodeRequest):
        if len(req.text) > limits.max_chars:
            raise HTTPException(413, f"text has {len(req.text)} characters; at most {limits.max_chars}")
        (ents,) = await _tag(batcher, [req.text])
        spans = outermost(Entity(start=e.start, end=e.end, label=e.label) for e in ents)
        body = {"text": req.text, "tags": " ".join(spans_to_tags(len(req.text), spans, scheme))}
        return JSONResponse(body, headers={CHARS_HEADER: str(len(req.text))})
