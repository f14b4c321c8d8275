"""The Review page in a real browser: the Streamlit server on a free loopback port, headless Chromium.

One document with an emoji before the entity the reviewer adds (an emoji is one Python code point but two
UTF-16 units, so a selection read as browser offsets would land one character late). The reviewer accepts
one entity, rejects one, relabels one, adds one by dragging the mouse over its characters, finishes the
document; the export (:func:`storage.review_export.export_reviews`) then holds exactly those entities.
Skips without /usr/bin/chromium or the playwright package, as tests/test_ui_browser.py does.
"""

from __future__ import annotations

import duckdb
import pytest

from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _settle, playwright_or_skip, streamlit_server
from tests.ui_fixtures import EMOJI_DOC, EMOJI_TEXT, REVIEW_RUN, build_review_db

pytestmark = [pytest.mark.browser]


@pytest.fixture
def review_server(tmp_path):
    sync_playwright = playwright_or_skip()
    db = build_review_db(tmp_path)
    with streamlit_server(db) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            yield {"url": url, "db": db, "page": page}
            browser.close()


def _char(page, i: int):
    return page.locator(f"[data-i='{i}']")


def _click_char(page, i: int) -> None:
    _char(page, i).click()
    _settle(page)


def _button(page, name: str) -> None:
    page.get_by_role("button", name=name).click()
    _settle(page)


def _choose(page, label: str, option: str) -> None:
    page.get_by_label(label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


def _states(db: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            'SELECT "start", "end", label, state FROM v_review_current WHERE pred_run_id = ? AND doc_id = ? '
            'ORDER BY "start"',
            [REVIEW_RUN, EMOJI_DOC],
        ).fetchall()


def test_review_a_document_in_chromium_and_export_exactly_its_entities(review_server):
    page, db = review_server["page"], review_server["db"]
    page.goto(f"{review_server['url']}/review?run={REVIEW_RUN}")
    page.get_by_label("Your name").fill("ann")
    _button(page, "Start reviewing")
    _char(page, 19).wait_for()  # the component drew every code point: 20 of them, the emoji one
    assert page.locator("[data-i]").count() == len(EMOJI_TEXT) == 20

    _click_char(page, 0)  # a click on 张伟 selects it
    _button(page, "Accept [a]")
    _click_char(page, 11)  # 开会, predicted ORG: rejected with the keyboard shortcut
    page.keyboard.press("r")
    _settle(page)
    _click_char(page, 5)  # 阿里巴巴 predicted LOC -> ORG
    _choose(page, "Label", "ORG")
    _button(page, "Change label")
    assert _states(db) == [(0, 2, "PER", "accepted"), (4, 8, "ORG", "corrected")]

    # add 王芳 by dragging over its two characters; they sit at code points 14-15 (UTF-16 units 15-16)
    first, last = _char(page, 14).bounding_box(), _char(page, 15).bounding_box()
    page.mouse.move(first["x"] + 2, first["y"] + first["height"] / 2)
    page.mouse.down()
    page.mouse.move(last["x"] + last["width"] - 2, last["y"] + last["height"] / 2, steps=4)
    page.mouse.up()
    _settle(page)
    page.get_by_text("Selected 王芳 [14, 16)").wait_for()
    _choose(page, "Label of the new entity", "PER")
    _button(page, "Add entity")
    assert _states(db) == [(0, 2, "PER", "accepted"), (4, 8, "ORG", "corrected"), (14, 16, "PER", "added")]

    _button(page, "Accept the rest and next [n]")
    page.get_by_role("heading", name="Document d-beijing-1").wait_for()
    assert "1 reviewed / 4 queued" in page.inner_text("body")

    from storage.datasets import load_documents
    from storage.review_export import export_reviews

    out = export_reviews(db, REVIEW_RUN, "reviewed")
    docs = load_documents(db, "reviewed", version=out["version"])
    assert [d.text for d in docs] == [EMOJI_TEXT]
    got = [(e.start, e.end, e.label, EMOJI_TEXT[e.start : e.end]) for e in docs[0].entities]
    assert got == [(0, 2, "PER", "张伟"), (4, 8, "ORG", "阿里巴巴"), (14, 16, "PER", "王芳")]
