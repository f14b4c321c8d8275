"""The Review page in a real browser: the Streamlit server on a free loopback port, headless Chromium.

One document with an emoji before the entity the reviewer adds (an emoji is one Python code point but two
UTF-16 units, so a selection read as browser offsets would land one character late). The reviewer accepts
one entity, rejects one, relabels one, adds one by dragging the mouse over its characters, fixes the
boundaries of one with a mouse selection and then with a typed offset, finishes the document; after each
decision the panel shows the entity as it is now, and the export (:func:`storage.review_export.
export_reviews`) then holds exactly the reviewer's last intent. A long document (its text taller than the
window) checks the decision bar that stays in view and "accept the rest", which asks first while entities
were never on screen. Skips without /usr/bin/chromium or the playwright package, as tests/test_ui_browser.py
does.
"""

from __future__ import annotations

import time

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
            yield {"url": url, "db": db, "page": page, "tmp": tmp_path}
            browser.close()


def _expect(read, want, timeout_s: float = 30.0) -> None:
    """Assert that ``read()`` comes to equal ``want`` within ``timeout_s``: on a loaded machine a rerun can
    start after the settle's first wait, so what the page shows is polled, not read once."""
    from playwright.sync_api import Error as PlaywrightError

    deadline = time.monotonic() + timeout_s

    def attempt():
        try:
            return read()
        except PlaywrightError as e:  # mid-rerun a strict locator can briefly match two widgets
            if time.monotonic() >= deadline:
                raise
            return e

    got = attempt()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = attempt()
    assert got == want


def _char(page, i: int):
    return page.locator(f"[data-i='{i}']")


def _click_char(page, i: int) -> None:
    _char(page, i).click()
    _settle(page)


def _button(page, name: str) -> None:
    page.get_by_role("button", name=name).click()
    _settle(page)


def _choose(page, label: str, option: str) -> None:
    box = page.get_by_label(label, exact=True).first
    # into the middle of the window first: a select box scrolled in by the click itself moves while it is
    # pressed, and its list does not open
    box.evaluate("e => e.scrollIntoView({block: 'center'})")
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


def _picked(page) -> str:
    """What the entity picker shows (the select box's text), e.g. "PER '张伟' [0, 2) · accepted"."""
    box = page.locator("[data-testid=stSelectbox]").filter(has_text="Entity").first
    return box.locator("input").first.input_value()


def _box(page, i: int, timeout_s: float = 30.0) -> dict:
    """Where character ``i`` is drawn. A rerun can redraw the component between a wait and this read, and
    a detached element has no box (``None``): read again until it is drawn."""
    deadline = time.monotonic() + timeout_s
    while True:
        loc = _char(page, i)
        loc.wait_for(state="visible")
        box = loc.bounding_box()
        if box is not None:
            return box
        if time.monotonic() >= deadline:
            raise AssertionError(f"character {i} is not drawn after {timeout_s} s")
        page.wait_for_timeout(200)


def _drag(page, first_i: int, last_i: int) -> None:
    _settle(page)
    first, last = _box(page, first_i), _box(page, last_i)
    page.mouse.move(first["x"] + 2, first["y"] + first["height"] / 2)
    page.mouse.down()
    page.mouse.move(last["x"] + last["width"] - 2, last["y"] + last["height"] / 2, steps=4)
    page.mouse.up()
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
    _expect(lambda: _picked(page), "PER '张伟' [0, 2) · accepted")  # the panel shows the decision at once
    _click_char(page, 11)  # 开会, predicted ORG: rejected with the keyboard shortcut
    page.keyboard.press("r")
    _settle(page)
    _click_char(page, 5)  # 阿里巴巴 predicted LOC -> ORG
    _choose(page, "Label", "ORG")
    _button(page, "Change label")
    _expect(lambda: _picked(page), "ORG '阿里巴巴' [4, 8) · corrected")
    _expect(lambda: _states(db), [(0, 2, "PER", "accepted"), (4, 8, "ORG", "corrected")])

    # add 王芳 by dragging over its two characters; they sit at code points 14-15 (UTF-16 units 15-16)
    _drag(page, 14, 15)
    page.get_by_text("Selected 王芳 [14, 16)").wait_for()
    _choose(page, "Label of the new entity", "PER")
    _button(page, "Add entity")
    _expect(
        lambda: _states(db), [(0, 2, "PER", "accepted"), (4, 8, "ORG", "corrected"), (14, 16, "PER", "added")]
    )

    # use a mouse selection as 阿里巴巴's boundaries, then fix them with a typed End
    _click_char(page, 6)
    _drag(page, 4, 5)
    _button(page, "Use the selection [4, 6) '阿里' as its boundaries")
    _expect(lambda: _picked(page), "ORG '阿里' [4, 6) · corrected")
    page.get_by_text("Fix boundaries (code-point offsets)").click()
    start, end = page.get_by_label("Start", exact=True), page.get_by_label("End", exact=True)
    fix = page.get_by_role("button", name="Fix boundaries", exact=True)
    # nothing built from the span before the selection
    _expect(lambda: (start.input_value(), end.input_value(), fix.is_disabled()), ("4", "6", True))
    end.fill("7")  # typed, then a click in the text (another widget): the typed value is not dropped
    _click_char(page, 9)
    _expect(lambda: (end.input_value(), fix.is_enabled()), ("7", True))
    _button(page, "Fix boundaries")
    _expect(lambda: _picked(page), "ORG '阿里巴' [4, 7) · corrected")
    _expect(lambda: (start.input_value(), end.input_value(), fix.is_disabled()), ("4", "7", True))

    _button(page, "Accept the rest and next [n]")  # nothing left unseen: no question
    page.get_by_role("heading", name="Document d-beijing-1").wait_for()
    assert "1 reviewed / 4 queued" in page.inner_text("body")

    from storage.datasets import load_documents
    from storage.review_export import export_reviews

    out = export_reviews(db, REVIEW_RUN, "reviewed")
    docs = load_documents(db, "reviewed", version=out["version"])
    assert [d.text for d in docs] == [EMOJI_TEXT]
    got = [(e.start, e.end, e.label, EMOJI_TEXT[e.start : e.end]) for e in docs[0].entities]
    assert got == [(0, 2, "PER", "张伟"), (4, 7, "ORG", "阿里巴"), (14, 16, "PER", "王芳")]


LONG_DOC, LONG_RUN = "d-long", "pred-review-long"


def _long_run(db: str, model_dir: str) -> list[str]:
    """A prediction run of one 2,646-character document with 98 predicted PER entities; their refs."""
    from ner_core.inference.tagger import PredictedEntity
    from storage.predictions import PredictionRunWriter

    parts, ents, pos = [], [], 0
    for i in range(98):
        part = f"第{i:02d}段：张伟说今天的天气很好，我们一起去公园散步吧。"
        ents.append(PredictedEntity(pos + 5, pos + 7, "PER", "张伟", 0.9))
        parts.append(part)
        pos += len(part)
    with PredictionRunWriter(
        db, LONG_RUN, model_dir=model_dir, run_id=None, input_kind="texts", input_ref="long", replace=True
    ) as w:
        w.write([(LONG_DOC, "".join(parts), ents, 50.0)])
    return [f"{e.start}:{e.end}:PER" for e in ents]


def test_a_long_document_keeps_the_decisions_in_view_and_asks_before_accepting_unseen(review_server):
    page, db = review_server["page"], review_server["db"]
    refs = _long_run(db, str(review_server["tmp"] / "model"))
    page.goto(f"{review_server['url']}/review?run={LONG_RUN}&doc={LONG_DOC}&reviewer=ann")
    _char(page, 10).wait_for()
    _settle(page)
    height = page.viewport_size["height"]
    assert _char(page, 2645).bounding_box()["y"] > height  # the text goes on below the window
    rest = page.get_by_role("button", name="Accept the rest and next [n]")
    box = rest.bounding_box()
    assert 0 < box["y"] and box["y"] + box["height"] <= height  # the bar is in view without scrolling

    rest.click()
    _settle(page)
    asked = page.get_by_text("entities this would accept were never on screen").inner_text()
    unseen = int(asked.split(" of the 98 ")[0])
    assert 0 < unseen < 98, asked
    assert _events(db) == []

    for ref in refs[::4] + refs[-1:]:  # the reviewer reads on to the end
        page.locator(f"[data-ref='{ref}']").evaluate("e => e.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(150)
    page.wait_for_timeout(600)
    _settle(page)
    assert page.get_by_text("were never on screen").count() == 0  # every entity was on screen
    rest.click()
    _settle(page)
    assert _events(db) == [("accept", 98), ("done", 1)]


def _events(db: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            "SELECT action, count(*) FROM review_events WHERE pred_run_id = ? GROUP BY action "
            "ORDER BY action",
            [LONG_RUN],
        ).fetchall()
