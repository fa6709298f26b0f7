"""The lexical-overlap reference heuristic."""

from __future__ import annotations

from nami.data.squad import Answer, QAExample
from nami.evaluation.lexical import analyse, answer, noun_chunks


def qa(context: str, question: str) -> QAExample:
    return QAExample(id="q", question=question, context=context, answers=(Answer(context[0], 0),), title="",
                     source="t")


def test_noun_chunks_join_compound_nouns():
    words = analyse("小笠原諸島を除く日本")
    spans = ["".join(w.surface for w in words[a : b + 1]) for a, b in noun_chunks(words)]
    assert spans == ["小笠原諸島", "日本"]


def test_answer_is_the_noun_chunk_next_to_question_words():
    context = "梅雨 [SEP] 梅雨は、北海道と小笠原諸島を除く日本で見られる。台風は夏に多い。"
    assert answer(qa(context, "梅雨がないのは北海道とどこか。")) == "小笠原諸島"


def test_title_and_question_only_chunks_are_never_answers():
    context = "東京 [SEP] 東京は日本の首都である。"
    got = answer(qa(context, "東京はどこの首都か。"))
    assert got == "日本"
    assert context.index(got) > context.index("[SEP]")
