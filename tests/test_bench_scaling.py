"""The cost curves bench (bench/bench_scaling.py) in its quick mode, and the GPU check's paths that run
without a GPU (bench/gpu_check.py, bench/gpu_check.sh). The figures themselves are never asserted."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.conftest import REPO


def test_the_quick_scaling_bench_prints_four_tables_and_writes_a_png(tmp_path, capsys):
    from bench.__main__ import main
    from bench.bench_scaling import README_QUERIES

    assert main(["scaling", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "scaling.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] >= 1000 and img.size[1] >= 700  # four panels, readable
    for heading in (
        "**Prediction against text length**",
        "**Prediction against document count**",
        "**Storage against stored entities**",
        "**Ingest against file size**",
    ):
        assert heading in out
    assert "machine: " in out and "load average (uptime): " in out
    assert "encoder: tiny random BERT" in out  # --quick: the tiny encoder, said so
    assert all(f"{q} (ms)" in out for q in README_QUERIES)
    assert (tmp_path / "scaling.md").read_text(encoding="utf-8").strip() in out
    res = json.loads((tmp_path / "scaling.json").read_text(encoding="utf-8"))
    for part in ("predict", "docs", "storage", "ingest"):
        rows = res[part]["rows"]
        measured = [r for r in rows if not r.get("extrapolated")]
        extended = [r for r in rows if r.get("extrapolated")]
        assert len(measured) >= 2 and len(extended) >= 1, part
        # the extended points lie beyond the measured ones, and every table row says which it is
        x = {"predict": "chars", "docs": "documents", "storage": "entities", "ingest": "file_mib"}[part]
        assert min(r[x] for r in extended) > max(r[x] for r in measured)
    assert out.count("| extrapolated |") == sum(
        r.get("extrapolated", False) for p in ("predict", "docs", "storage", "ingest") for r in res[p]["rows"]
    )
    stored = res["storage"]["rows"]
    assert stored[0]["entities"] >= 1_000 and stored[1]["entities"] >= 4_000
    assert all(set(r["queries"]) == set(README_QUERIES) for r in stored)


def test_times_extend_along_a_line_and_memory_never_faster_than_linearly():
    from bench.bench_scaling import extend, extend_memory

    assert extend([1, 2, 4], [3, 5, 9], 100) == pytest.approx(201)  # fixed cost 1, 2 per unit
    assert extend([1, 2], [5, 4], 10) == 5  # never below the largest measured value
    assert extend_memory([10, 20], [100, 100], 1e6) == pytest.approx(100)  # stopped growing: flat
    assert extend_memory([10, 20], [100, 90], 1e6) == pytest.approx(100)
    assert extend_memory([10, 20], [100, 400], 40) == pytest.approx(800)  # faster than linear: linear
    assert extend_memory([10, 40], [100, 200], 160) == pytest.approx(400)  # square root: kept


def test_the_timed_queries_are_the_readmes():
    from bench.bench_scaling import README_QUERIES

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for sql in README_QUERIES.values():
        assert sql in readme


def test_the_storage_series_stores_the_entities_it_reports(tmp_path):
    import duckdb

    from bench.bench_scaling import storage_series

    res = storage_series(tmp_path, (500, 1500), ())
    con = duckdb.connect(str(tmp_path / "entities.duckdb"), read_only=True)
    try:
        n_ents = con.execute("SELECT count(*) FROM predicted_entities").fetchone()[0]
        n_docs = con.execute("SELECT count(DISTINCT doc_id) FROM predicted_documents").fetchone()[0]
        bad = con.execute(
            "SELECT count(*) FROM predicted_entities e "
            "JOIN predicted_documents d USING (pred_run_id, doc_id) "
            'WHERE substr(d.text, e.start + 1, e."end" - e.start) <> e.text'
        ).fetchone()[0]
    finally:
        con.close()
    assert (n_ents, n_docs) == (res["rows"][-1]["entities"], res["rows"][-1]["documents"])
    assert n_ents >= 1500 and bad == 0  # every entity's text is its document's span


def test_the_bert_base_vocabulary_has_bert_base_chineses_size(tmp_path):
    from bench.gpu_check import BERT_BASE_VOCAB, bert_base_chars
    from ner_core.model.encoder import SPECIAL_TOKENS, make_tiny_encoder

    chars = bert_base_chars(["张三在北京的中国银行工作，Li Si 去了上海。📈"])
    assert len(set(chars)) == len(chars) == BERT_BASE_VOCAB - len(SPECIAL_TOKENS)
    assert set("张三北京li📈").issubset(chars) and not any(c.isspace() for c in chars)
    # the encoder make_tiny_encoder builds from them (narrow here) has bert-base-chinese's 21128 tokens
    folder = make_tiny_encoder(tmp_path, [chars], hidden_size=8, num_heads=1, intermediate_size=8)
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["vocab_size"] == 21128


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the whole check")
def test_gpu_check_sh_skips_in_one_line_without_cuda():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: skipped, no CUDA here")


def test_the_gpu_checks_dry_run_prints_one_table_with_every_part(tmp_path, capsys):
    from bench.gpu_check import main

    assert main(["--dry-run", "--skip-tests", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| part | precision | ours | HF | ours / HF |")
    rows = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in table[1:]}
    training = next(v for k, v in rows.items() if k.startswith("training, batch 32"))
    short = next(v for k, v in rows.items() if k.startswith("prediction, 40 texts"))
    for row in (training, short):  # both sides measured, and compared
        assert row[1] == "fp32" and row[2] != "-" and row[3] != "-" and row[4].endswith("x")
    assert any(k.startswith("prediction, one text of 2,000 chars") for k in rows)
    assert "device cpu" in out and "tiny random BERT" in out
    saved = json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8"))
    assert len(saved["rows"]) == len(table) - 1 and not any(r["note"] for r in saved["rows"])


def test_the_gpu_marked_tests_run_in_a_child_and_report_their_summary():
    from bench.gpu_check import run_gpu_tests

    res = run_gpu_tests(240)
    assert res["ok"] and res["exit"] == 0, res
    kind = "passed" if torch.cuda.is_available() else "skipped"
    assert kind in res["summary"] and " in " in res["summary"]
