"""``ner serve`` (the seed's ``deploy``): load one model once and serve it over HTTP (:mod:`app.serve`).

The model is ``--model-dir``, ``--run RUN_ID`` or the production run of ``--db`` (or the seed's
``-model_configs``); the request limits are the fields of :class:`app.serve.ServeLimits`
(:data:`LIMIT_FLAGS`), the window and speed options those of ``ner predict`` (:mod:`app.options`). On an
address other than loopback an API key is required (:func:`app.exposure.check_keyed_bind`), and on every
address only the names it is bound to (plus ``--allowed-hosts`` / ``$NER_ALLOWED_HOSTS``) are answered in
``Host`` (:class:`app.serve_guard.HostPolicy`).
"""

from __future__ import annotations

import argparse
import os

from app.commands.shared import add_db
from app.flags import FlagTable, positive_int
from app.options import add_prediction_options, add_seed_model_options, chosen_model, prediction_options
from app.serve import DEFAULT_HOST, DEFAULT_PORT, ServeLimits

#: ServeLimits' fields as flags (--max-texts ... --body-timeout), with their defaults
LIMIT_FLAGS = FlagTable(
    ServeLimits,
    dashed=True,
    renames={"body_timeout_s": "body-timeout"},
    metavars={"body-timeout": "SECONDS"},
    types=dict.fromkeys(("max-queue", "max-queue-chars"), positive_int),
    default_help=" (default {})",
    show_none=False,
    keep_defaults=True,
)
_PER_REQUEST = ("max_texts", "max_chars", "max_total_chars")


def add_parser(sub) -> None:
    sp = sub.add_parser("serve", aliases=["deploy"], help="serve a model over HTTP (FastAPI + uvicorn)")
    sp.add_argument("--model-dir", help="model directory (default: --run's or the production run's in --db)")
    sp.add_argument("--run", help="serve this training run's model (needs --db)")
    add_db(sp, help="DuckDB file to find --run / the production run in (default %(default)s)")
    sp.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default %(default)s: loopback only)"
    )
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    LIMIT_FLAGS.add_to(sp, only=_PER_REQUEST)
    _add_guard_options(sp)
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
    _add_label_studio_options(sp)
    sp.set_defaults(func=cmd_serve)


def _add_label_studio_options(sp) -> None:
    """``--label-studio`` and its settings (:mod:`app.serve.label_studio`)."""
    g = sp.add_argument_group("Label Studio ML backend")
    g.add_argument(
        "--label-studio",
        action="store_true",
        help="speak Label Studio's ML backend protocol (/health, /setup, /predict, /webhook) instead of the "
        "plain routes; answers and annotations are stored in --db",
    )
    g.add_argument(
        "--label-studio-url", metavar="URL", help="Label Studio's address (default $LABEL_STUDIO_URL)"
    )
    g.add_argument(
        "--label-studio-token-file",
        metavar="FILE",
        help="file holding Label Studio's API token, to read annotations a webhook does not carry "
        "(default $LABEL_STUDIO_API_KEY)",
    )
    g.add_argument(
        "--retrain-every",
        type=int,
        default=10,
        metavar="N",
        help="start the retrain deployment after every N annotations stored (0: never; default %(default)s)",
    )
    g.add_argument(
        "--retrain-deployment",
        default="retrain-from-reviews/retrain-from-reviews",
        help="the Prefect deployment started (default %(default)s)",
    )


def _add_guard_options(sp) -> None:
    """The API key, the queue bound, body and connection timeouts of ``ner serve``."""
    g = sp.add_argument_group("access, queue and connections")
    g.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require the API key in FILE on every path but /health (default: $NER_API_KEY when set; "
        "required when --host is not a loopback address)",
    )
    g.add_argument(
        "--allowed-hosts",
        metavar="NAME[,NAME...]",
        type=lambda v: tuple(n.strip() for n in v.split(",") if n.strip()),
        help="more names to answer for in the Host header, e.g. the name a proxy forwards (default "
        "$NER_ALLOWED_HOSTS; * for any); other names than the bound address's get 421 (DNS rebinding)",
    )
    LIMIT_FLAGS.add_to(g, only=[f.key for f in LIMIT_FLAGS.flags if f.key not in _PER_REQUEST])
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


def cmd_serve(args: argparse.Namespace) -> int:
    from app.exposure import check_keyed_bind
    from app.serve import create_app
    from app.serve_guard import HostPolicy, bound_kernel_cache, load_api_key, run_server
    from ner_core.settings import settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    bound_kernel_cache()  # before the model's first operation: a long-running service meets many shapes

    api_key = load_api_key(args.api_key_file)
    check_keyed_bind(args.host, api_key)  # before the model loads: a refusal is one line, at once
    allowed = args.allowed_hosts if args.allowed_hosts is not None else settings().allowed_hosts
    HostPolicy.for_bind(args.host, allowed)  # so is a name that cannot be a host's
    model_dir, run_id = chosen_model(args)
    ls = None
    if args.label_studio:
        from app.serve.label_studio import env_settings
        from app.serve.ls_backend import LabelStudioOptions

        url, token = env_settings(args.label_studio_url, args.label_studio_token_file)
        ls = LabelStudioOptions(args.db, url, token, max(args.retrain_every, 0), args.retrain_deployment)
    app = create_app(
        model_dir,
        run_id=run_id,
        limits=ServeLimits(**LIMIT_FLAGS.values(args)),
        options=prediction_options(args),
        batch_requests=args.batch_requests,
        log_path=args.log_path,
        api_key=api_key,
        host=args.host,
        allowed_hosts=allowed,
        label_studio=ls,
    )
    routes = "POST /setup /predict /webhook, GET /health" if ls else "POST /predict, GET /health, GET /model"
    print(
        f"serving {model_dir} on http://{args.host}:{args.port}  ({routes})"
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
