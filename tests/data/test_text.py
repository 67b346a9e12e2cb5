"""Calibration / perplexity text sources."""

import re

import pytest

from slimtune.data import load_text
from slimtune.data.text import wiki_article_text
from slimtune.errors import DataError


def test_wiki_is_prose_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path))
    text = load_text("wiki")
    cached = tmp_path / "text" / "wiki.txt"
    assert cached.read_text(encoding="utf-8") == text
    assert not list(cached.parent.glob(".*tmp"))  # the atomic write left no temp file
    assert len(text.split()) > 300_000
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "==", "|", "http"):
        assert markup not in text, markup
    assert "Anarchism is a political philosophy that advocates self-governed societies" in text
    paragraphs = [p for p in text.split("\n\n") if len(p.split()) > 30]
    assert len(paragraphs) > 2000
    # Paragraphs are sentences: they end with punctuation and contain several full stops.
    assert sum(p.rstrip().endswith((".", "!", "?", '"', ")")) for p in paragraphs) / len(paragraphs) > 0.95
    assert len(re.findall(r"[a-z]\. [A-Z]", text)) > 10_000
    assert load_text("wiki") == text  # second call reads the cache


def test_wiki_article_conversion_keeps_prose_and_drops_markup():
    markup = (
        "{{Infobox person|name=X}}\n'''Ada''' was a [[mathematician|maths person]] from London.<ref>A book</ref> "
        "She wrote notes.\n\n==Life==\nShe lived in ''England''.\n* a list item\n\n"
        "==References==\nSome reference sentence here that is long.\n"
    )
    out = wiki_article_text("Ada", markup)
    assert out == "Ada\n\nAda was a maths person from London. She wrote notes.\n\nLife\n\nShe lived in England."


def test_news_and_errors(tmp_path):
    news = load_text("news")
    assert len(news.splitlines()) == 300 and len(news.split()) > 50_000
    f = tmp_path / "my.txt"
    f.write_text("hello world")
    assert load_text(f) == "hello world"
    with pytest.raises(DataError, match="neither a known source"):
        load_text("nope")
