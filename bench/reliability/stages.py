"""Every stage of the campaign, in the order of the table, and the campaign that runs them.

Importing this module imports each stage module, whose :func:`bench.reliability.harness.stage`
decorators register its stages in :data:`bench.reliability.harness.STAGES`; the harness itself imports
no stage. :func:`run_campaign` is what ``python -m bench.reliability`` and the tests call.
"""

from __future__ import annotations

from bench.reliability import kills  # noqa: F401  # isort: skip
from bench.reliability import recipe_kills  # noqa: F401  # isort: skip
from bench.reliability import fuzz  # noqa: F401  # isort: skip
from bench.reliability import disk  # noqa: F401  # isort: skip
from bench.reliability import contention  # noqa: F401  # isort: skip
from bench.reliability import export_kills  # noqa: F401  # isort: skip
from bench.reliability import service  # noqa: F401  # isort: skip
from bench.reliability import checks  # noqa: F401  # isort: skip
from bench.reliability import sql_limits  # noqa: F401  # isort: skip
from bench.reliability import erasure  # noqa: F401  # isort: skip
from bench.reliability.harness import STAGES, StageResult, run_stages  # isort: skip

__all__ = ["STAGES", "run_campaign"]


def run_campaign(
    quick: bool, seed: int = 16, only: list[str] | None = None, keep: bool = False
) -> list[StageResult]:
    """Run every registered stage (``only``: those whose name contains one of the words) in a scratch
    folder; print the table and the failures; return the results."""
    return run_stages(STAGES, quick, seed, only, keep)
