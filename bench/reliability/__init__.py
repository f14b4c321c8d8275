"""The reliability campaign: faults injected, bad input fuzzed, contention measured, nothing lost.

``python -m bench.reliability [--quick]`` (or ``python -m bench reliability``) runs every registered stage
and prints a table: faults injected / survived / rows lost, fuzz cases / tracebacks, and the failures with
a command that reproduces each. A stage is one function registered with
:func:`bench.reliability.harness.stage`; :mod:`bench.reliability.stages` imports them all, in the table's
order, and runs them (:func:`bench.reliability.stages.run_campaign`). What the stages share lives in
:mod:`bench.reliability.workbench` and :mod:`bench.reliability.snapshots`.

This file imports nothing, so that importing any module of the package does not import the others.
"""
