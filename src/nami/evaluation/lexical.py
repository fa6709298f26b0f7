"""A non-neural reference: the lexical-overlap heuristic for extractive QA.

For each question, every maximal run of MeCab nouns (名詞, with 接頭辞 / 接尾辞 inside the run)
in the paragraph is a candidate answer; runs made only of question words are skipped (the answer
is rarely what the question already says), and so is the ``title [SEP]`` prefix of JSQuAD
contexts. A candidate scores the number of distinct question content words (nouns, verbs,
adjectives; by lemma) among the ``window`` words on each side of it. The best candidate wins;
ties go to the earliest.

Character-level F1 is generous, so a model that does not beat this has learned little beyond
word matching (../shared/notes/calibration.md measured EM 27.1 / F1 37.7 for a prototype of it on
JSQuAD dev).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import fugashi
from tqdm.auto import tqdm

from nami.data.squad import TITLE_SEPARATOR, QAExample

CONTENT_POS = ("名詞", "動詞", "形容詞")
CHUNK_POS = ("名詞", "接頭辞", "接尾辞")


@dataclass(frozen=True)
class Word:
    surface: str
    lemma: str
    pos: str
    start: int
    end: int


@lru_cache(maxsize=1)
def _tagger() -> fugashi.Tagger:
    return fugashi.Tagger()


def analyse(text: str) -> list[Word]:
    """MeCab words of ``text`` with their character spans."""
    words, pos = [], 0
    for node in _tagger()(text):
        start = text.find(node.surface, pos)
        if start < 0:  # MeCab normalised something; skip the word rather than guess its span
            continue
        end = start + len(node.surface)
        lemma = node.feature.lemma or node.surface
        words.append(Word(node.surface, lemma, node.feature.pos1, start, end))
        pos = end
    return words


def noun_chunks(words: list[Word]) -> list[tuple[int, int]]:
    """(first, last) word indices of maximal runs of nouns (a run may not start with a suffix)."""
    chunks, i = [], 0
    while i < len(words):
        if words[i].pos in CHUNK_POS and words[i].pos != "接尾辞":
            j = i
            while j + 1 < len(words) and words[j + 1].pos in CHUNK_POS:
                j += 1
            if any(w.pos == "名詞" for w in words[i : j + 1]):
                chunks.append((i, j))
            i = j + 1
        else:
            i += 1
    return chunks


def answer(example: QAExample, window: int = 8) -> str:
    """The heuristic's answer: a substring of the context."""
    question = {w.lemma for w in analyse(example.question) if w.pos in CONTENT_POS}
    words = analyse(example.context)
    separator = example.context.rfind(TITLE_SEPARATOR)
    paragraph_start = separator + len(TITLE_SEPARATOR) if separator >= 0 else 0
    best, best_score = None, float("-inf")
    for first, last in noun_chunks(words):
        chunk = {w.lemma for w in words[first : last + 1]}
        if words[first].start < paragraph_start or chunk <= question:
            continue
        around = words[max(0, first - window) : first] + words[last + 1 : last + 1 + window]
        score = len({w.lemma for w in around if w.pos in CONTENT_POS} & question)
        if score > best_score:
            best, best_score = (first, last), score
    if best is None:
        return ""
    return example.context[words[best[0]].start : words[best[1]].end]


def predict(examples: list[QAExample], *, window: int = 8, show_progress: bool = True) -> dict[str, str]:
    return {ex.id: answer(ex, window) for ex in tqdm(examples, desc="lexical", disable=not show_progress)}
