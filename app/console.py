"""What a person running a command sees of the library: its log lines, on stderr.

The library logs (``logging.getLogger("ner_core...")``) and prints nothing; a command shows those lines
with :func:`show_library_logs` (message only, at INFO: the precision chosen, one line per epoch, the files
an ingest reads), while stdout stays the command's result (JSON, a report). Inside a Prefect flow run the
same lines also reach the run's log: the commands name ``ner_core`` in ``PREFECT_LOGGING_EXTRA_LOGGERS``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["show_library_logs"]


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a redirect, pytest's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it; the live sys.stderr is used instead
        pass


def show_library_logs(level: int = logging.INFO) -> None:
    """Show the library's log lines of ``level`` and above on stderr, once however often it is called."""
    logger = logging.getLogger("ner_core")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the root logger's handlers (Prefect's console) would print them twice
