"""Importing this module registers every stage, in the order of the table."""

from bench.reliability import kills  # noqa: F401  # isort: skip
