"""The prediction service under load and under hostile input, as campaign stages: the figures of
:func:`bench.reliability_load.run_load_stage` and :func:`bench.reliability_load.run_api_fuzz_stage` in
the table (full campaign only: the service's start-up alone would take a good part of --quick's minute).

The load stage runs twice when time allows: with the default allocator and with ``MALLOC_ARENA_MAX=2``
(glibc's per-thread arenas are what made resident memory creep in earlier runs), so both are reported.
"""

from __future__ import annotations

from bench.reliability.harness import Context, StageResult, stage


def _load_figures(out: dict) -> str:
    s = out["sigterm"]
    return (
        f"{out['clients']} clients, {out['seconds']} s, {out['requests']} requests ({out['by_status']}), "
        f"500s {out['status_500']}, 503s {out['status_503']} (max queue {out['max_queue']}), "
        f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, {out['requests_per_s']} requests/s "
        f"({out['answered_per_s']} answered/s), memory {out['rss_mib_after_warmup']} -> "
        f"{out['rss_mib_after_run']} MiB ({out['rss_growth_pct']:+.1f}%), "
        f"SIGTERM: {s['in_flight']} in flight, "
        f"{s['in_flight_answered_200']} answered 200, {s['in_flight_connection_errors']} connection errors, "
        f"exit {s['exit_status']}; tracebacks {out['tracebacks']}"
    )


@stage("service load (64 clients, 60 s)", "load", quick=False)
def service_load(ctx: Context, res: StageResult) -> None:
    from bench.reliability_load import run_load_stage

    for label, env in (("default allocator", None), ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"})):
        out = run_load_stage(ctx.quick, env=env)
        res.cases += out["requests"]
        res.tracebacks += out["tracebacks"]
        res.figures[label] = _load_figures(out)
        if out["status_500"]:
            res.fail(f"{label}: {out['status_500']} answers 5xx other than 503: {out['by_status']}")
        if out["sigterm"]["in_flight_connection_errors"]:
            res.fail(
                f"{label}: {out['sigterm']['in_flight_connection_errors']} requests in flight at SIGTERM lost"
            )
        if out["tracebacks"]:
            res.fail(f"{label}: {out['tracebacks']} tracebacks in the service's log")
        if not out["rss_within_10pct"]:
            res.fail(f"{label}: resident memory grew {out['rss_growth_pct']:+.1f}% over the run (goal: 10%)")


@stage("API bad input", "bad input", quick=False)
def api_bad_input(ctx: Context, res: StageResult) -> None:
    from bench.reliability_load import run_api_fuzz_stage

    out = run_api_fuzz_stage()
    res.cases += out["cases"]
    res.tracebacks += out["tracebacks"]
    res.figures["answers"] = (
        f"{out['cases']} cases in {out['seconds']} s: {out['by_status']}; 5xx {out['status_5xx']}; "
        f"tracebacks {out['tracebacks']}; service alive after: {out['service_alive_after']}"
    )
    for missed in out["missed"]:
        res.fail(f"unexpected answer: {missed}")
    if out["status_5xx"]:
        res.fail(f"{out['status_5xx']} answers 5xx")
    if not out["service_alive_after"]:
        res.fail("the service did not answer /health after the bad input")
