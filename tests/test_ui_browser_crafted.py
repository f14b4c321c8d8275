"""Hostile data in the real browser: ids, texts, file names and URL parameters that are Markdown render as
text (no link, no image fetched), and the dashboard reaches nothing outside the machine (no icon font from
a CDN, no favicon link, no usage statistics): every request Chromium makes goes to the loopback server."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import pytest

from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _open, _settle, streamlit_server
from tests.ui_crafted import PAYLOAD, add_crafted_rows

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _host(url: str) -> str | None:
    """The host a request goes to; ``None`` for one that stays in the browser (``data:``); a ``blob:`` URL
    names the origin that made it."""
    if url.startswith("data:"):
        return None
    if url.startswith("blob:"):
        url = url[len("blob:") :]
    return urlsplit(url).hostname or url[:40]


@pytest.fixture(scope="module")
def crafted_db(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("crafted")
    model = root / "elsewhere" / "model"
    model.mkdir(parents=True)
    (root / "db").mkdir()
    db = root / "db" / "crafted.duckdb"
    return {**add_crafted_rows(db, model, root / "work"), "db": str(db)}


def test_crafted_data_renders_as_text_and_nothing_is_fetched_from_outside(crafted_db, tmp_path):
    from tests.test_ui_browser import playwright_or_skip

    sync_playwright = playwright_or_skip()
    hosts: list[str] = []
    with streamlit_server(crafted_db["db"]) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        page.on("request", lambda req: hosts.append(_host(req.url)))
        visits = [
            ("", "Training runs"),
            ("predictions", "Predictions"),
            (f"problems?line={quote(PAYLOAD)}", "Ingest problems"),
            ("try_it", "Try it"),
            (f"review?doc={quote(PAYLOAD)}&reviewer={quote(PAYLOAD)}&eval={quote(PAYLOAD)}", "Review"),
        ]
        shown = []
        for path, title in visits:
            _open(page, server, path, title)
            page.wait_for_load_state("networkidle")
            _settle(page)
            # the payload's link and image never became elements: nothing points at example.invalid
            assert page.locator("a[href*='example.invalid'], img[src*='example.invalid']").count() == 0, path
            assert page.locator("a", has_text="Session expired").count() == 0, path
            shown.append(page.inner_text("body"))
            page.screenshot(path=str(tmp_path / f"{path.split('?')[0] or 'runs'}.png"), full_page=True)
        browser.close()
    outside = sorted({h for h in hosts if h is not None and h not in ("127.0.0.1", "localhost")})
    assert not outside, f"the dashboard reached outside the machine: {outside}"
    # the payload shows as its own text (a word joiner, invisible, sits in its URLs)
    body = "\n".join(shown).replace("\u2060", "")
    assert "[Session expired - log in again](http://example.invalid/login)" in body
    assert "![pwn](http://example.invalid/pwn.png)" in body
