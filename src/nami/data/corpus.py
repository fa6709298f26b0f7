"""Plain-text corpora for tokenizer training (and, later, language-model pretraining).

A corpus is a list of paths: ``.json`` files or directories are read as SQuAD data (their
contexts, each once, and their questions); any other file is UTF-8 text, one document per line
(blank lines skipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from nami.data.squad import load_squad


class CorpusError(ValueError):
    """A corpus file cannot be used (missing, not UTF-8, empty)."""


def read_corpus(paths: Sequence[str | Path]) -> list[str]:
    """All documents of the corpus, in order."""
    texts: list[str] = []
    for path in map(Path, paths):
        if path.is_dir() or path.suffix == ".json":
            texts.extend(squad_texts(path))
        else:
            texts.extend(text_lines(path))
    if not texts:
        raise CorpusError(f"corpus {', '.join(map(str, paths))}: no text found")
    return texts


def squad_texts(path: str | Path) -> Iterator[str]:
    seen: set[str] = set()
    for example in load_squad(path):
        if example.context not in seen:
            seen.add(example.context)
            yield example.context
        yield example.question


def text_lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise CorpusError(f"corpus file {path}: not found")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    yield line
    except UnicodeDecodeError as err:
        raise CorpusError(f"corpus file {path}: not UTF-8 text ({err})") from err
