"""Plain text for calibration and perplexity: gensim's bundled corpora or the user's own file.

Sources:
- "news": 300 ABC news articles (gensim's lee_background.cor), one article per line, ~60k words.
- "wiki": the English Wikipedia excerpt bundled with gensim (~200 articles), converted once from
  wiki markup to plain prose with gensim's own wiki tools and cached; ~400k words.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import re
import uuid
from pathlib import Path

from ..errors import DataError

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Trailing sections that are lists of links and citations, not prose.
_END_SECTIONS = {"see also", "references", "external links", "further reading", "notes",
                 "bibliography", "sources", "citations", "footnotes", "notes and references",
                 "works cited", "primary sources", "secondary sources"}
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
# Lines that survive filter_wiki but are not prose: list items, indents, table rows, gallery
# captions ("File:x.jpg|caption"), bare URLs.
_NON_PROSE = re.compile(r"^\s*([*#:;|!{}]|File:|Image:)|\||https?://")


def _gensim_file(name: str) -> Path:
    # gensim.test.utils.datapath names the same file, but importing gensim takes ~1 s (scipy and
    # all), which every calibrated sparsify/quantize call would pay; finding the package does not.
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the gensim package (which ships the default texts) is not installed; "
                        "pip install gensim, or pass a text file")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name
    if not path.is_file():
        raise DataError(f"gensim's test data file {name} is missing from {path.parent}; reinstall gensim")
    return path


def _news() -> str:
    # 300 ABC news articles, one per line.
    return _gensim_file("lee_background.cor").read_text(encoding="utf-8", errors="replace")


def wiki_article_text(title: str, markup: str) -> str:
    """One article as prose: title line, then paragraphs separated by blank lines.

    gensim's filter_wiki removes templates, references, links (keeping their text), tables and
    tags; we then drop what is left of lists and captions, bold/italic quotes and the trailing
    reference sections, and keep section headings as plain lines.
    """
    from gensim.corpora.wikicorpus import filter_wiki

    blocks: list[str] = [title]
    paragraph: list[str] = []

    def flush() -> None:
        text = " ".join(paragraph).strip()
        paragraph.clear()
        # A paragraph must read like a sentence, not a leftover fragment.
        if len(text.split()) >= 4 and re.search(r"[.!?][\"')]?$", text):
            blocks.append(text)

    for line in filter_wiki(markup).splitlines():
        line = line.replace("'''", "").replace("''", "").strip()
        heading = _HEADING.match(line)
        if heading:
            flush()
            name = heading.group(2).strip()
            if name.lower() in _END_SECTIONS:
                break
            if name:
                blocks.append(name)
            continue
        if not line or _NON_PROSE.search(line):
            flush()
            continue
        paragraph.append(re.sub(r"\s+", " ", line))
    flush()
    # Headings followed by no prose (e.g. a section that was all list) are noise.
    kept = [b for i, b in enumerate(blocks) if b.endswith((".", "!", "?", '."', ".)", '?"'))
            or (i + 1 < len(blocks) and blocks[i + 1].endswith((".", "!", "?", '."', ".)", '?"')))]
    return "\n\n".join(kept) if len(kept) > 1 else ""


def convert_wiki_dump(path: str | os.PathLike) -> str:
    """Plain text of every article (namespace 0, no redirects) in a .xml.bz2 Wikipedia dump."""
    from gensim.corpora.wikicorpus import extract_pages

    articles = []
    with bz2.open(path) as f:
        for title, markup, _pageid in extract_pages(f, filter_namespaces=("0",)):
            if markup.lstrip()[:9].upper() == "#REDIRECT":
                continue
            text = wiki_article_text(title, markup)
            if text:
                articles.append(text)
    return "\n\n\n".join(articles) + "\n"


def _wiki() -> str:
    from ..assets import cache_dir

    cached = cache_dir() / "text" / "wiki.txt"
    if cached.exists():
        return cached.read_text(encoding="utf-8")
    text = convert_wiki_dump(_gensim_file(WIKI_DUMP))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, cached)  # atomic: concurrent readers see the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    return text


def prefix_token_id(tokenizer) -> int | None:
    """The token a text is scored after, as lm-eval's HFLM.prefix_token_id: BOS, else EOS (None
    for a tokenizer with neither). Models trained with a BOS first (Gemma) are off their input
    distribution without it."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


TEXT_SOURCES = {
    "news": _news,
    "wiki": _wiki,
}


def load_text(source: str | os.PathLike = "news") -> str:
    """Text from a named source (see TEXT_SOURCES) or a UTF-8 text file path."""
    key = str(source)
    if key in TEXT_SOURCES:
        return TEXT_SOURCES[key]()
    path = Path(key).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"text file {path} is not UTF-8 ({e}); convert it first") from e
    raise DataError(f"text source {key!r} is neither a known source ({', '.join(TEXT_SOURCES)}) nor an existing file")
