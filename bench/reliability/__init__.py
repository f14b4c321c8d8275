"""The reliability campaign: faults injected, bad input fuzzed, contention measured, nothing lost.

``python -m bench.reliability [--quick]`` (or ``python -m bench reliability``) runs every registered stage
and prints a table: faults injected / survived / rows lost, fuzz cases / tracebacks, and the failures with
a command that reproduces each. A stage is one function registered with
:func:`bench.reliability.harness.stage` (see :mod:`bench.reliability.stages` for the list).
"""

from bench.reliability.harness import STAGES, StageResult, run_campaign, stage

__all__ = ["STAGES", "StageResult", "run_campaign", "stage"]
