"""Importing this module registers every stage, in the order of the table."""

from bench.reliability import kills  # noqa: F401  # isort: skip
from bench.reliability import fuzz  # noqa: F401  # isort: skip
from bench.reliability import disk  # noqa: F401  # isort: skip
from bench.reliability import contention  # noqa: F401  # isort: skip
from bench.reliability import export_kills  # noqa: F401  # isort: skip
from bench.reliability import service  # noqa: F401  # isort: skip
from bench.reliability import checks  # noqa: F401  # isort: skip
