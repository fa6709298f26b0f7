"""The article-level view of SQuAD-format data: every question asked about its whole article.

JSQuAD and JaQuAD ask each question about one paragraph. Joining an article's paragraphs turns the
same questions into a long-context benchmark (JSQuAD dev: 59 articles, median ~1,600 characters,
the longest ~39k): a reader must find the answer in the whole document. The official metric is
unchanged — only the context grows — and every answer offset is shifted so that
``context[start:start + len(text)] == text`` still holds (checked for every answer).

An article is the paragraphs sharing a (file, title), in their order of appearance, each once. A
paragraph in JSQuAD's ``"<title> [SEP] <paragraph>"`` format gives up its title prefix, which the
article carries once at its start; an answer that lies inside that prefix keeps its place there.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from nami.data.squad import TITLE_SEPARATOR, Answer, QAExample

DEFAULT_SEPARATOR = "\n"


def article_view(examples: Sequence[QAExample], separator: str = DEFAULT_SEPARATOR) -> list[QAExample]:
    """The examples with each context replaced by its whole article (answers shifted; order kept)."""
    articles: dict[tuple[str, str], list[str]] = {}
    for ex in examples:
        paragraphs = articles.setdefault((ex.source, ex.title), [])
        if ex.context not in paragraphs:
            paragraphs.append(ex.context)
    joined = {key: _join(key[1], paragraphs, separator) for key, paragraphs in articles.items()}
    out = []
    for ex in examples:
        context, starts, prefix = joined[ex.source, ex.title]
        at, own_prefix = starts[ex.context]
        answers = []
        for a in ex.answers:
            start = a.start if own_prefix and a.start < own_prefix else at + a.start - own_prefix
            if context[start : start + len(a.text)] != a.text:  # a bug here would silently score wrong
                raise ValueError(f"article view of {ex.id!r}: answer {a.text!r} not at its shifted offset {start}")
            answers.append(Answer(a.text, start))
        out.append(replace(ex, context=context, answers=tuple(answers)))
    return out


def _join(title: str, paragraphs: list[str], separator: str) -> tuple[str, dict[str, tuple[int, int]], str]:
    """The article's context, and per paragraph: where its body starts in it and the length of the
    title prefix the paragraph had (0: none)."""
    prefix = f"{title} {TITLE_SEPARATOR} " if title else ""
    prefixed = bool(prefix) and all(p.startswith(prefix) for p in paragraphs)
    head = prefix if prefixed else ""
    parts, starts, position = [], {}, len(head)
    for paragraph in paragraphs:
        own = len(prefix) if prefixed else 0
        starts[paragraph] = (position, own)
        body = paragraph[own:]
        parts.append(body)
        position += len(body) + len(separator)
    return head + separator.join(parts), starts, head


def to_squad(examples: Sequence[QAExample], version: str = "nami-article-view") -> dict[str, Any]:
    """SQuAD v1.1 JSON of the examples, one paragraph per distinct (title, context)."""
    articles: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ex in examples:
        qas = articles.setdefault(ex.title, {}).setdefault(ex.context, [])
        qas.append({"id": ex.id, "question": ex.question,
                    "answers": [{"text": a.text, "answer_start": a.start} for a in ex.answers]})
    return {"version": version,
            "data": [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in contexts.items()]}
                     for title, contexts in articles.items()]}
