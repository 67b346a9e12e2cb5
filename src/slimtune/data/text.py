"""Plain text for calibration and perplexity: gensim's bundled corpora or the user's own file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError


def _gensim_file(name: str) -> Path:
    from gensim.test.utils import datapath

    return Path(datapath(name))


def _news() -> str:
    # 300 ABC news articles, one per line.
    return _gensim_file("lee_background.cor").read_text(encoding="utf-8", errors="replace")


TEXT_SOURCES = {
    "news": _news,
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
