"""End to end: the real Streamlit server on a free loopback port, driven by headless Chromium.

Needs the Debian packages ``chromium`` and ``fonts-wqy-microhei`` (/usr/bin/chromium) and the PyPI package
``playwright`` (its own browser download is NOT used). Skips cleanly when either is missing.
Screenshots of every page go to the test's tmp dir (path printed), or to $NER_UI_SCREENSHOTS when set.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.ui_fixtures import APP, REPO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAN = re.compile(r"[\u4e00-\u9fff]")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def playwright_or_skip():
    """playwright's ``sync_playwright``, or a clean skip without Chromium or the package."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium fonts-wqy-microhei")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the PyPI package playwright is missing: pip install playwright")
    return sync_playwright


@contextlib.contextmanager
def streamlit_server(db: str) -> Iterator[str]:
    """The dashboard on ``db``, served by a real Streamlit process on a free loopback port: its URL once
    /_stcore/health answers (the process is stopped on exit)."""
    port = _free_port()
    env = {**os.environ, "NER_DB": db, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port)]
    cmd += [
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.poll() is not None else ""
                pytest.fail(f"streamlit did not come up on {url} (exit {proc.poll()}): {out[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sync_playwright():
    return playwright_or_skip()


@pytest.fixture(scope="module")
def server(ui_db, sync_playwright):
    with streamlit_server(ui_db["db"]) as url:
        yield url


@pytest.fixture(scope="module")
def page(server, sync_playwright):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(90_000)
        yield pg
        browser.close()


def _open(page, server: str, path: str, title: str) -> None:
    page.goto(f"{server}/{path}")
    page.get_by_role("heading", name=title).first.wait_for()
    _settle(page)


def _settle(page) -> None:
    """Wait until the script has finished its rerun (the status widget says 'Running' meanwhile)."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')"
    )
    page.wait_for_timeout(500)


def test_every_page_renders_in_chromium(page, server, ui_db, tmp_path):
    shots = Path(os.environ.get("NER_UI_SCREENSHOTS") or tmp_path / "screenshots")  # env: keep them elsewhere
    shots.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {shots}")
    with duckdb.connect(ui_db["db"], read_only=True) as con:
        run_ids = [r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()]
        best_pred = con.execute(
            "SELECT pred_run_id FROM prediction_runs ORDER BY n_entities DESC LIMIT 1"
        ).fetchone()[0]
        calibrated = con.execute(  # the evaluation whose model predicted entities: calibration to draw
            "SELECT eval_id FROM evaluation_reliability GROUP BY eval_id HAVING sum(n) > 0 LIMIT 1"
        ).fetchone()[0]

    _open(page, server, "", "Training runs")
    body = page.inner_text("body")
    assert any(r in body for r in run_ids), body[:2000]
    assert "Compare two runs" in body
    page.screenshot(path=str(shots / "runs.png"), full_page=True)

    _open(page, server, "curves", "Training curves")
    page.locator("[data-testid='stVegaLiteChart'], [data-testid='stArrowVegaLiteChart']").first.wait_for()
    page.screenshot(path=str(shots / "curves.png"), full_page=True)

    _open(page, server, "evaluation", "Evaluation")
    page.locator("span.ent").first.wait_for()
    ents = page.locator("span.ent")
    assert ents.count() > 0
    assert HAN.search(ents.first.inner_text()), ents.first.inner_text()
    assert page.locator(".ner-legend").count() >= 1
    page.screenshot(path=str(shots / "evaluation.png"), full_page=True)
    ents.first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "evaluation_errors.png"))
    if calibrated not in page.inner_text("body"):  # Vega-Lite draws the four calibration pictures
        choose = page.locator("input[aria-label='Evaluation']")  # the select box, not the page's title
        choose.click()
        choose.fill(calibrated)  # the box filters its options: the one left is picked
        page.get_by_role("option").first.wait_for()
        page.keyboard.press("Enter")
        _settle(page)
    page.get_by_text("Reliability diagram").first.wait_for()
    drawn = page.locator("[data-testid='stVegaLiteChart'] svg.marks")  # the per-type bars, then those four
    drawn.nth(4).wait_for()
    for i in range(1, 5):
        box, marks = drawn.nth(i).bounding_box(), drawn.nth(i).locator("g[class*='mark-'] path").count()
        assert box["width"] > 100 and box["height"] > 100 and marks > 0, (i, box, marks)
    page.get_by_text("Reliability diagram").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "evaluation_calibration.png"), full_page=True)

    _open(page, server, "predictions", "Predictions")
    if best_pred not in page.inner_text("body"):  # pick the prediction run that has entities
        page.get_by_label("Prediction run").first.click()
        page.get_by_role("option", name=re.compile(best_pred)).click()
        _settle(page)
    page.locator(".ner-text span.ent").first.wait_for()
    first = page.locator(".ner-text span.ent").first
    assert HAN.search(first.inner_text()), first.inner_text()
    bg = first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg
    page.screenshot(path=str(shots / "predictions.png"), full_page=True)
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "predictions_document.png"))

    _open(page, server, "try_it", "Try it")
    page.get_by_role("button", name="Tag").click()
    page.get_by_text(re.compile(r"\d+ entities found")).wait_for()
    assert page.locator(".ner-text").count() == 1
    assert HAN.search(page.locator(".ner-text").inner_text())
    page.screenshot(path=str(shots / "try_it.png"), full_page=True)

    _open(page, server, "sql", "SQL")
    box = page.get_by_label("Query")
    box.fill("DROP TABLE runs")
    box.press("Control+Enter")
    _settle(page)
    page.get_by_role("button", name="Run query").click()
    page.get_by_text("DROP statements are not allowed").wait_for()
    page.screenshot(path=str(shots / "sql.png"), full_page=True)

    for name in ("runs", "curves", "evaluation", "predictions", "try_it", "sql"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
