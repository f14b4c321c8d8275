"""``ner prefect up|down|status``: a local, offline Prefect server + worker with the deployments of
``prefect.yaml`` (:mod:`app.prefect_local`)."""

from __future__ import annotations

import argparse

from app.commands.shared import Parser, add_db


def add_parser(sub) -> None:
    sp = sub.add_parser("prefect", help="a local Prefect server + worker with the deployments (offline)")
    psub = sp.add_subparsers(dest="action", required=True, parser_class=Parser)
    up = psub.add_parser("up", help="start a server on 127.0.0.1 and a worker; register prefect.yaml")
    add_db(up, help="DuckDB file the deployments use (default %(default)s)")
    up.add_argument("--port", type=int, default=4200, help="server port (default %(default)s; 0: a free one)")
    up.add_argument("--pool", default="ner-local", help="process work pool (default %(default)s)")
    up.add_argument("--no-worker", action="store_true", help="register only; start workers yourself")
    psub.add_parser("down", help="stop the server and worker that `ner prefect up` started")
    psub.add_parser("status", help="show what `ner prefect up` started")
    sp.set_defaults(func=cmd_prefect)


def cmd_prefect(args: argparse.Namespace) -> int:
    from app import prefect_local as deploy

    if args.action == "up":
        state = deploy.prefect_up(
            db=args.db, port=args.port or None, pool=args.pool, worker=not args.no_worker
        )
        print(
            f"Prefect server {state['api_url']} (UI http://127.0.0.1:{state['port']}), worker on pool "
            f"{state['pool']}, deployments registered, database {state['db']}"
        )
        print(f"  export PREFECT_API_URL={state['api_url']}")
        print("  prefect deployment run predict-new/nightly-predict      # or wait for the schedule")
        print(f"  logs: {state['server_log']} {state['worker_log']}   stop: ner prefect down")
    elif args.action == "down":
        stopped = deploy.prefect_down()
        print(f"stopped {', '.join(map(str, stopped))}" if stopped else "nothing was running")
    else:
        state = deploy.status()
        if state is None:
            print("not running (start it with `ner prefect up`)")
        else:
            print(
                f"server {state['api_url']} {'up' if state['server_alive'] else 'down'}, "
                f"worker {'up' if state['worker_alive'] else 'down'} (pool {state['pool']}), db {state['db']}"
            )
    return 0
