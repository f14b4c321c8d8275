"""Data shown through Markdown stays data: :func:`ui.app_pages.common.escape_markdown`."""

from __future__ import annotations

import re
import string

from ui.app_pages.common import WORD_JOINER, escape_markdown


def test_every_ascii_punctuation_character_is_escaped_and_nothing_else():
    text = "张三 " + string.punctuation + " abc 123"
    out = escape_markdown(text)
    escaped = "".join("\\" + c + (WORD_JOINER if c == "@" else "") for c in string.punctuation)
    assert out == "张三 " + escaped + " abc 123"  # and a word joiner after @: no e-mail autolink


def test_links_images_directives_and_line_breaks_do_not_survive():
    crafted = "![](http://attacker/x.png)\n[Session expired - log in again](http://evil) :red[x] :material/x:"
    out = escape_markdown(crafted)
    assert "\n" not in out
    # no punctuation character is left unescaped: no link, image or directive can start
    assert not re.search(r"(?<!\\)[\[\]()!:]", out.replace("\\\\", ""))
    # the text itself, every character kept; a word joiner in each http:// stops GFM's autolinks
    assert out.replace("\\", "") == crafted.replace("\n", " ").replace("http:", "http:" + WORD_JOINER)
