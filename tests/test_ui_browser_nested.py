"""Nested entities on the Review page in a real browser (the Streamlit server on a free loopback port,
headless Chromium), on the span prediction run of tests/test_nested_review.py (北京 LOC inside 北京大学 ORG,
北京市 inside 北京市海淀区).

A first-time reviewer sees the inner entity drawn inside the outer one, both labels, the outer outline
below the inner one; a click picks the inner entity, a click again the outer one; accepts the inner one
from the list of levels, rejects the outer one after a click on its label, and adds 海淀区 inside
北京市海淀区 by dragging over it. Skips without /usr/bin/chromium or the playwright package, as
tests/test_ui_browser.py does.
"""

from __future__ import annotations

import os

import duckdb
import pytest

from tests.test_nested_review import SPAN_RUN, build_nested_db
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _settle, playwright_or_skip, streamlit_server
from tests.test_ui_review_browser import _button, _char, _choose, _click_char, _drag, _expect, _picked

pytestmark = [pytest.mark.browser]


@pytest.fixture
def nested_server(tmp_path):
    sync_playwright = playwright_or_skip()
    db = build_nested_db(tmp_path)
    with streamlit_server(db) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            yield {"url": url, "db": db, "page": page, "tmp": tmp_path}
            browser.close()


def _states(db: str, doc_id: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            'SELECT "start", "end", label, state FROM v_review_current WHERE pred_run_id = ? AND doc_id = ? '
            'ORDER BY "start", "end", label',
            [SPAN_RUN, doc_id],
        ).fetchall()


def _ent(page, ref: str):
    return page.locator(f".ss-ent[data-ref='{ref}']")


def _bottom(locator) -> float:
    """Where the element's box ends, in page pixels (-1 while a rerun redraws it)."""
    box = locator.bounding_box()
    return -1.0 if box is None else box["y"] + box["height"]


def _shot(page, tmp, name: str) -> None:
    shots = os.environ.get("NER_UI_SCREENSHOTS") or str(tmp / "screenshots")
    os.makedirs(shots, exist_ok=True)
    page.screenshot(path=os.path.join(shots, name), full_page=True)


def test_a_reviewer_sees_and_decides_the_inner_span_under_the_outer_one(nested_server):
    page, db, tmp = nested_server["page"], nested_server["db"], nested_server["tmp"]
    page.goto(f"{nested_server['url']}/review?run={SPAN_RUN}&doc=n-1&reviewer=ann")
    _char(page, 8).wait_for()
    # 北京 LOC is drawn inside 北京大学 ORG, both labelled, the outer outline a level below the inner one
    inner = page.locator(".ss-ent[data-ref='2:6:ORG'] .ss-ent[data-ref='2:4:LOC']")
    assert inner.count() == 1 and inner.is_visible()
    _expect(lambda: _bottom(_ent(page, "2:6:ORG")) > _bottom(inner), True)
    assert _ent(page, "2:4:LOC").locator("sup").inner_text() == "LOC"
    assert _ent(page, "2:6:ORG").locator(":scope > sup").inner_text() == "ORG"
    assert "Level 2 (inside 1 other entity)" in page.inner_text("body")
    _shot(page, tmp, "review_nested.png")

    _click_char(page, 2)  # 北: the innermost entity first
    _expect(lambda: _picked(page), "↳ LOC '北京' [2, 4) · predicted")
    _click_char(page, 2)  # again: the one around it
    _expect(lambda: _picked(page), "ORG '北京大学' [2, 6) · predicted")
    _click_char(page, 2)  # and round again
    _expect(lambda: _picked(page), "↳ LOC '北京' [2, 4) · predicted")

    # accept the inner one from the list of levels (entity 0 in start, end, label order)
    page.locator("[class*='st-key-review_lvl_acc_0_'] button").click()
    _settle(page)
    _expect(lambda: _states(db, "n-1"), [(2, 4, "LOC", "accepted"), (2, 6, "ORG", "predicted")])
    # reject the outer one: a click on its label picks it, the shortcut rejects it
    _ent(page, "2:6:ORG").locator(":scope > sup").click()
    _settle(page)
    _expect(lambda: _picked(page), "ORG '北京大学' [2, 6) · predicted")
    page.keyboard.press("r")
    _settle(page)
    _expect(lambda: _states(db, "n-1"), [(2, 4, "LOC", "accepted")])
    # the rejected outer one is still drawn (struck through) around the accepted inner one
    _expect(lambda: _ent(page, "2:6:ORG").get_attribute("data-state"), "rejected")
    assert page.locator(".ss-ent[data-ref='2:6:ORG'] .ss-ent.ss-accepted[data-ref='2:4:LOC']").count() == 1


def test_a_reviewer_adds_an_inner_span_by_dragging_inside_the_outer_one(nested_server):
    page, db, tmp = nested_server["page"], nested_server["db"], nested_server["tmp"]
    page.goto(f"{nested_server['url']}/review?run={SPAN_RUN}&doc=n-2&reviewer=ann")
    _char(page, 11).wait_for()
    _drag(page, 3, 5)  # 海淀区, inside 北京市海淀区 LOC
    page.get_by_text("Selected 海淀区 [3, 6)").wait_for()
    _choose(page, "Label of the new entity", "LOC")
    _button(page, "Add entity")
    _expect(
        lambda: _states(db, "n-2"),
        [(0, 3, "LOC", "predicted"), (0, 6, "LOC", "predicted"), (3, 6, "LOC", "added")],
    )
    added = page.locator(".ss-ent[data-ref='0:6:LOC'] .ss-ent.ss-added[data-ref='3:6:LOC']")
    added.wait_for()
    assert page.locator(".ss-ent[data-ref='0:6:LOC'] .ss-ent[data-ref='0:3:LOC']").count() == 1
    _shot(page, tmp, "review_nested_added.png")
