"""Ingest benchmark: MSRA train parsed, validated and stored into a fresh DuckDB file.

Prints wall and CPU time per phase (parse / store), rows per second and the peak resident set size
(``resource.getrusage``, the whole process), against the goals ``GOAL_S`` and ``GOAL_RSS_MB``. CPU time
is printed because wall time on a shared machine also counts other processes.
Run: ``python -m bench.bench_ingest``.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "msra" / "msra_train_bio"
GOAL_S = 5.0
GOAL_RSS_MB = 1024


def _rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # macOS: bytes; Linux: KiB


def main(path: str | Path | None = None) -> dict | None:
    src = Path(path) if path else DATA
    if not src.is_file():
        print(f"bench_ingest: skipped, {src} not found (needs ../shared/datasets/msra)")
        return None
    from ner_core.data.formats import read_file
    from storage.datasets import ingest_dataset

    with src.open("rb") as fh:
        n_lines = sum(1 for _ in fh)
    t0, c0 = time.perf_counter(), time.process_time()
    res = read_file(src)
    parse_wall, parse_cpu = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t1, c1 = time.perf_counter(), time.process_time()
        rep = ingest_dataset(db, "msra", {"train": src})
        total_wall, total_cpu = time.perf_counter() - t1, time.process_time() - c1
        db_mb = db.stat().st_size / 2**20
    n_docs = rep.counts["train"]["documents"]
    n_ents = rep.counts["train"]["entities"]
    peak = _rss_mb()
    out = {
        "lines": n_lines,
        "documents": n_docs,
        "entities": n_ents,
        "parse_s": parse_wall,
        "parse_cpu_s": parse_cpu,
        "ingest_s": total_wall,
        "ingest_cpu_s": total_cpu,
        "lines_per_s": n_lines / total_wall,
        "docs_per_s": n_docs / total_wall,
        "peak_rss_mb": peak,
    }
    print(f"file            {src} ({n_lines:,} lines, {len(res.documents):,} sentences)")
    print(f"parse+validate  {parse_wall:6.2f} s wall  {parse_cpu:6.2f} s CPU  (read_file alone)")
    print(
        f"ingest (all)    {total_wall:6.2f} s wall  {total_cpu:6.2f} s CPU  (parse + validate + store, "
        f"fresh DuckDB file, {db_mb:.1f} MiB)"
    )
    print(
        f"rows/second     {n_lines / total_wall:,.0f} lines, {n_docs / total_wall:,.0f} documents, "
        f"{n_ents / total_wall:,.0f} entities"
    )
    print(f"peak RSS        {peak:,.0f} MB (process, includes the separate read_file above)")
    print(
        f"goal            <= {GOAL_S} s: {'met' if total_wall <= GOAL_S else 'NOT met'}; "
        f"<= {GOAL_RSS_MB} MB: {'met' if peak <= GOAL_RSS_MB else 'NOT met'}"
    )
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
