"""``python -m app.serve serve|query ...``: the prediction service's two commands without the rest of
``ner`` (the same parsers, messages and exit statuses as ``ner serve`` / ``ner query``)."""

from __future__ import annotations

import sys

from app import cli
from app.commands import query, serve


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, commands=(serve, query), description="prediction API: serve a model, query it")


if __name__ == "__main__":
    sys.exit(main())
