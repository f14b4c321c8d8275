"""The quick part of the reliability campaign (``python -m bench.reliability --quick``): a few kills
during ingest, training and prediction, a full disk, two writers, a few hundred fuzzed inputs. Nothing
may be lost and no reader may raise. The figures (times, latencies) are printed, never asserted."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # about a minute on an idle 2-core machine (child processes, training)


@pytest.fixture(scope="module")
def quick_results():
    import torch

    from bench.reliability.stages import run_campaign

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_campaign(quick=True)
    finally:
        torch.set_num_threads(before)


def test_every_stage_ran_and_injected_something(quick_results):
    from bench.reliability.stages import STAGES

    assert [r.name for r in quick_results] == [s.name for s in STAGES if s.quick]
    for r in quick_results:
        assert not r.crashed, r.failures
        assert r.injected or r.cases, f"{r.name} injected nothing"


def test_no_row_is_lost_after_kills_and_a_full_disk(quick_results):
    faults = [r for r in quick_results if r.section == "faults"]
    assert faults and all(r.injected >= 2 or "disk" in r.name for r in faults)
    assert sum(r.rows_lost for r in quick_results) == 0
    assert [(r.name, f.what) for r in faults for f in r.failures] == []
    assert all(r.survived == r.injected for r in faults)


def test_fuzzed_readers_raise_no_traceback(quick_results):
    (fuzz,) = [r for r in quick_results if "fuzz" in r.name]
    assert fuzz.cases >= 300
    assert fuzz.tracebacks == 0, [f.what for f in fuzz.failures][:5]
    assert fuzz.failures == []


def test_a_second_writer_is_refused_naming_the_holder(quick_results):
    (con,) = [r for r in quick_results if "contention" in r.name]
    assert [f.what for f in con.failures] == []
    assert "failed after" in con.figures["second writer (open_db, wait_s=1.5)"]


def test_damaged_model_dirs_and_code_running_pickles_are_refused_in_one_line(quick_results):
    (md,) = [r for r in quick_results if r.name.startswith("model directories")]
    assert md.cases >= 30 and md.tracebacks == 0
    assert [f.what for f in md.failures] == []
    assert md.figures["pickled checkpoints"].startswith("3 of 3 payloads")


def test_security_checks_refuse_and_deletion_leaves_all_or_nothing(quick_results):
    (sec,) = [r for r in quick_results if r.name == "security checks"]
    assert [f.what for f in sec.failures] == []
    assert "INSTALL" in sec.figures["SQL guard refused"] and "stopped after" in sec.figures["SQL time limit"]
    assert sec.injected >= 2 and sec.survived == sec.injected and sec.rows_lost == 0
