"""The prediction API (the seed's ``deploy``): ``ner serve`` and ``ner query``.

``ner serve`` loads one model once at start-up (``--model-dir``, ``--run RUN_ID`` or the production run of
``--db``) and serves it over HTTP with FastAPI + uvicorn, on 127.0.0.1 by default:

- ``POST /predict``  body ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` -> ``{"results": [{"entities":
  [{"start", "end", "label", "text", "confidence"}, ...], "n_chars"}], "model", "seconds"}``; spans are
  half-open ``[start, end)`` character offsets of the text sent. Long texts are tagged whole (windows).
- ``GET /health``    ``{"status": "ok", "served": {"requests", "texts", "batches"}, ...}``
- ``GET /model``     the model's configuration, labels, metrics, window settings and the request limits.
- ``POST /decode``   the seed's endpoint, for its clients: body ``{"text": "..."}`` -> ``{"text", "tags"}``
  with one space-separated tag per character in the model's scheme (the whole text, not cut at max_len).

Limits: more than ``--max-texts`` texts, a text longer than ``--max-chars``, more than ``--max-total-chars``
in one request, or a body larger than allowed (by ``Content-Length`` or as it streams in) -> 413 with a
message saying what the limit is; a malformed body (no text, wrong types, unknown fields, JSON nested too
deep, a lone surrogate or NUL in a text) -> 422 with a readable ``detail``; a body not received within
``--body-timeout`` -> 408. Nothing a client sends crashes the service. On an address other than loopback
an API key is required (``NER_API_KEY`` or ``--api-key-file``) on every path but ``/health``; the guards
live in :mod:`app.serve_guard`.

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

The ``ner`` CLI wires these in with ``add_commands(subparsers)``; ``python -m app.serve serve ...`` works
on its own as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.options import (
    add_prediction_options,
    add_seed_model_options,
    chosen_model,
    prediction_options,
)
from ner_core.config import PredictionConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
CHARS_HEADER = "X-NER-Chars"  # characters a /predict or /decode request carried (read by the request log)


class ServeLimits(BaseModel):
    """What one request may carry; anything beyond is answered with 413."""

    model_config = ConfigDict(extra="forbid")

    max_texts: int = Field(64, ge=1, description="texts per request")
    max_chars: int = Field(20_000, ge=1, description="characters per text")
    max_total_chars: int = Field(200_000, ge=1, description="characters per request, all texts together")
    # the queue in front of the model: beyond it, 503 + Retry-After (default: two full batches)
    max_queue: int | None = Field(None, ge=1, description="requests waiting for the model (2 x max_texts)")
    max_queue_chars: int | None = Field(
        None, ge=1, description="characters waiting for the model (2 x max_total_chars)"
    )
    body_timeout_s: float = Field(20.0, gt=0, description="seconds to receive a request body")

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
):
    """A FastAPI app serving the model in ``model_dir``; the model is loaded here, once, and tags with
    ``options`` (unset ones: the model's saved prediction settings). ``batch_requests``: tag the texts of
    concurrent requests together (:class:`RequestBatcher`). ``log_path``: a folder for the request log
    (:class:`RequestLog`). ``api_key``: required on every path but ``/health``
    (:class:`app.serve_guard.RequestGuard`). The app's shutdown tags what is queued, then stops."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    limits = limits or ServeLimits()
    if not isinstance(limits, ServeLimits):
        raise ValueError(f"expected limits to be a ServeLimits, got {type(limits).__name__}")
    loaded = load_model_dir(model_dir)
    tagger = Tagger.from_loaded(loaded, options)
    print(tagger.precision_choice.line("serving"), flush=True)
    # one tagger call at a time (torch already uses every thread it has); concurrent requests share it
    batcher = RequestBatcher(
        tagger,
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
    _add_request_guards(app, limits, api_key)
    if log_path is not None:
        app.state.request_log = RequestLog(log_path)
        _add_request_log(app, app.state.request_log)
    _add_routes(app, batcher, limits, info)
    _add_seed_route(app, batcher, limits, loaded.scheme)
    return app


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
        "metrics": loaded.metrics,
        "tagger": tagger_settings,
        "limits": limits.model_dump() | {"max_body_bytes": limits.max_body_bytes},
    }


def _add_request_guards(app, limits: ServeLimits, api_key: str | None = None) -> None:
    """The API key, 413 for a body larger than the limits allow (however it is sent), 408 for one that
    does not arrive in time (:class:`app.serve_guard.RequestGuard`); 422 with a readable ``detail`` for a
    malformed one."""
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
    """``POST /decode``: the seed's request and answer (``{"text"}`` -> ``{"text", "tags"}``)."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    from ner_core.documents import Entity
    from ner_core.schemes import spans_to_tags

    @app.post("/decode")
    async def decode(req: DecodeRequest):
        if len(req.text) > limits.max_chars:
            raise HTTPException(413, f"text has {len(req.text)} characters; at most {limits.max_chars}")
        (ents,) = await _tag(batcher, [req.text])
        spans = [Entity(start=e.start, end=e.end, label=e.label) for e in ents]
        body = {"text": req.text, "tags": " ".join(spans_to_tags(len(req.text), spans, scheme))}
        return JSONResponse(body, headers={CHARS_HEADER: str(len(req.text))})


# ----------------------------------------------------------------------------------------- commands
def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve_guard import bound_kernel_cache, check_bind, load_api_key, run_server

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    bound_kernel_cache()  # before the model's first operation: a long-running service meets many shapes

    api_key = load_api_key(args.api_key_file)
    check_bind(args.host, api_key)  # before the model loads: a refusal is one line, at once
    model_dir, run_id = chosen_model(args)
    limits = ServeLimits(
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_total_chars=args.max_total_chars,
        max_queue=args.max_queue,
        max_queue_chars=args.max_queue_chars,
        body_timeout_s=args.body_timeout,
    )
    app = create_app(
        model_dir,
        run_id=run_id,
        limits=limits,
        options=prediction_options(args),
        batch_requests=args.batch_requests,
        log_path=args.log_path,
        api_key=api_key,
    )
    print(
        f"serving {model_dir} on http://{args.host}:{args.port}  (POST /predict, GET /health, GET /model)"
        + (", API key required (not on /health)" if api_key else "")
        + (f", request log {app.state.request_log.path}" if args.log_path else ""),
        flush=True,
    )
    run_server(
        app,
        host=args.host,
        port=args.port,
        idle_timeout_s=args.idle_timeout,
        max_connections=args.max_connections,
        graceful_timeout_s=args.graceful_timeout,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import httpx

    from app.serve_guard import load_api_key

    texts = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError('no text given: ner query "TEXT" [TEXT ...] (or lines on stdin with -)')
    url = args.url.rstrip("/") + "/predict"
    key = load_api_key(getattr(args, "api_key_file", None))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.post(url, json={"texts": texts}, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(
            f"ner query: error: cannot reach the service at {args.url} ({type(exc).__name__}: {exc}); "
            f"start it with `ner serve`",
            file=sys.stderr,
        )
        return 2
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        print(f"ner query: error: the service answered {r.status_code}: {detail}", file=sys.stderr)
        return 2
    body = r.json()
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0
    for text, res in zip(texts, body["results"], strict=True):
        shown = text if len(text) <= 60 else text[:60] + "…"
        print(f"{shown}  ({len(res['entities'])} entities)")
        for e in res["entities"]:
            print(
                f"  {e['label']:<6} [{e['start']}, {e['end']})  {e['text']}  confidence {e['confidence']:.3f}"
            )
    return 0


def add_commands(subparsers) -> None:
    """Add ``serve`` (alias ``deploy``) and ``query`` to an argparse ``subparsers`` object."""
    _add_serve(subparsers)
    _add_query(subparsers)


def _add_serve(subparsers) -> None:
    d = ServeLimits()
    sp = subparsers.add_parser(
        "serve", aliases=["deploy"], help="serve a model over HTTP (FastAPI + uvicorn)"
    )
    sp.add_argument("--model-dir", help="model directory (default: --run's or the production run's in --db)")
    sp.add_argument("--run", help="serve this training run's model (needs --db)")
    sp.add_argument(
        "--db",
        default=os.environ.get("NER_DB", "ner.duckdb"),
        help="DuckDB file to find --run / the production run in (default %(default)s)",
    )
    sp.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default %(default)s: loopback only)"
    )
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    sp.add_argument(
        "--max-texts", type=int, default=d.max_texts, help="texts per request (default %(default)s)"
    )
    sp.add_argument(
        "--max-chars", type=int, default=d.max_chars, help="characters per text (default %(default)s)"
    )
    sp.add_argument(
        "--max-total-chars",
        type=int,
        default=d.max_total_chars,
        help="characters per request (default %(default)s)",
    )
    _add_guard_options(sp, d)
    add_prediction_options(sp)
    g = add_seed_model_options(sp)
    g.add_argument(
        "--log_path",
        "-log_path",
        metavar="DIR",
        help="append one line per request to DIR/requests.log: time, path, status, milliseconds and "
        "characters sent (never the texts)",
    )
    sp.add_argument(
        "--batch-requests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tag the texts of concurrent requests together in one forward pass (default on)",
    )
    sp.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    sp.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log every request (default off)",
    )
    sp.set_defaults(func=cmd_serve)


def _add_guard_options(sp, d: ServeLimits) -> None:
    """The API key, the queue bound, body and connection timeouts of ``ner serve``."""
    from app.options import positive_int

    g = sp.add_argument_group("access, queue and connections")
    g.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require the API key in FILE on every path but /health (default: $NER_API_KEY when set; "
        "required when --host is not a loopback address)",
    )
    g.add_argument(
        "--max-queue",
        type=positive_int,
        help="requests waiting for the model before the service answers 503 with Retry-After "
        "(default 2 x --max-texts: two full batches)",
    )
    g.add_argument(
        "--max-queue-chars",
        type=positive_int,
        help="characters waiting for the model before 503 (default 2 x --max-total-chars)",
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        default=d.body_timeout_s,
        metavar="SECONDS",
        help="seconds to receive a request body before 408 (default %(default)s)",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="close a connection that sends no request for this long (default %(default)s)",
    )
    g.add_argument(
        "--max-connections",
        type=positive_int,
        default=1000,
        help="connections and requests at once before uvicorn answers 503 (default %(default)s)",
    )
    g.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, wait this long for the requests in flight (default %(default)s)",
    )


def _add_query(subparsers) -> None:
    sp = subparsers.add_parser("query", help="send texts to a running `ner serve` and print the entities")
    sp.add_argument("texts", nargs="*", help="texts to tag (none or '-': one per line on stdin)")
    sp.add_argument(
        "--url",
        default=os.environ.get("NER_SERVE_URL", DEFAULT_URL),
        help="service address (default %(default)s)",
    )
    sp.add_argument("--json", action="store_true", help="print the service's JSON answer")
    sp.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="send the API key in FILE (default: $NER_API_KEY when set)",
    )
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default %(default)s)")
    sp.set_defaults(func=cmd_query)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ner", description="prediction API: serve a model, query it")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, FileNotFoundError) as exc:
        if os.environ.get("NER_DEBUG"):
            raise
        print(f"ner {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
