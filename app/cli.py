"""The ``ner`` command line: it assembles the commands of :mod:`app.commands` (one module each) into one
parser and runs the one asked for. Subcommands mirror the seed (``train``, ``test``, ``predict``,
``deploy`` = ``serve``) plus ``adapt`` (MLM pretraining on unlabeled text), ``ingest``, ``datasets``,
``pipeline``, ``demo``, ``runs``, ``promote`` (``--rollback``), ``review export``, ``lineage``, ``export``
(Label Studio / doccano), ``ui``, ``bench``, ``query``, ``prefect`` (``up`` / ``down`` / ``status`` of a
local server + worker + deployments) and
``convert-checkpoint`` (a Google TF1 BERT/ALBERT checkpoint to a Hugging Face folder).

Each command runs its Prefect flow; ``--no-prefect`` (or ``NER_NO_PREFECT=1``) runs the same steps without
Prefect. The seed's commands run as its README writes them (:mod:`app.seed_commands`). Bad input (flags,
missing files, unknown heads or encoders) gives one clear line on stderr and exit status 2, not a traceback
(``NER_DEBUG=1`` shows the traceback). The seed's single-dash flags (``-max_epochs 3``) are accepted too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from app.commands import (
    adapt,
    bench,
    convert_checkpoint,
    datasets,
    demo,
    export,
    ingest,
    lineage,
    pipeline,
    predict,
    prefect,
    promote,
    query,
    review,
    runs,
    serve,
    test,
    train,
    ui,
)
from app.commands.config_options import build_config
from app.commands.shared import Parser
from app.console import show_library_logs
from ner_core.settings import settings

__all__ = ["COMMANDS", "build_config", "build_parser", "main"]

#: every ``ner`` command, in the order ``ner --help`` lists them
COMMANDS: tuple[ModuleType, ...] = (
    ingest,
    datasets,
    train,
    adapt,
    test,
    predict,
    pipeline,
    demo,
    runs,
    promote,
    review,
    lineage,
    export,
    ui,
    prefect,
    serve,
    query,
    bench,
    convert_checkpoint,
)
_DESCRIPTION = "Chinese NER: ingest, train, test, predict, review."


def build_parser(
    commands: Sequence[ModuleType] = COMMANDS, description: str = _DESCRIPTION
) -> argparse.ArgumentParser:
    """``ner`` and its subcommands: each command module adds its own (``add_parser``)."""
    p = Parser(prog="ner", description=description)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in commands:
        command.add_parser(sub)
    return p


def _prefect_env() -> None:
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the library's log lines also reach a flow run's log; outside a run they are only shown on stderr
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ner_core")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def main(
    argv: list[str] | None = None,
    *,
    commands: Sequence[ModuleType] = COMMANDS,
    description: str = _DESCRIPTION,
) -> int:
    """Run ``ner`` (``commands``: the command modules offered; ``python -m app.serve`` offers two)."""
    _prefect_env()
    show_library_logs()
    try:
        parser = build_parser(commands, description)
    except ValueError as exc:  # the defaults read an environment variable that cannot be read
        print(f"ner: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback (NER_DEBUG=1 shows it)
        if settings().debug:
            raise
        msg = " ".join(m.strip() for m in str(exc).strip().splitlines()[:6])
        if isinstance(exc, KeyError):
            msg = str(exc.args[0]) if exc.args else msg
        expected = (ValueError, KeyError, FileNotFoundError, ValidationError, RuntimeError)
        prefix = "" if isinstance(exc, expected) else f"{type(exc).__name__}: "
        print(f"ner {args.command}: error: {prefix}{msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
