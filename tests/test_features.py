"""QA windows and span decoding, with a character-level tokenizer double."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CharTokenizer

from nami.data.batching import BucketBatchSampler, QACollator
from nami.data.features import FeatureConfig, answer_token_span, build_features, word_edges
from nami.data.squad import Answer, QAExample
from nami.evaluation.decoding import best_token_spans


def example(context: str, answer: str, question: str = "なに?", qid: str = "q1") -> QAExample:
    start = context.index(answer)
    return QAExample(id=qid, question=question, context=context, answers=(Answer(answer, start),), title="", source="t")


def test_window_layout_and_labels_point_at_the_answer():
    ex = example("東京は日本の首都です。", "日本")
    feats = build_features([ex], CharTokenizer(), FeatureConfig(max_length=32, doc_stride=8), show_progress=False)
    assert len(feats) == 1
    ids = feats.input_ids[0]
    assert ids[0] == CharTokenizer.cls_id and ids[-1] == CharTokenizer.sep_id
    assert ids[1 + 3] == CharTokenizer.sep_id  # [CLS] な に ? [SEP]
    s, e = feats.start_positions[0], feats.end_positions[0]
    offsets = feats.context_offsets[0]
    assert ex.context[offsets[s, 0] : offsets[e, 1]] == "日本"
    assert (offsets[:5] == -1).all() and (offsets[-1] == -1).all()


def test_long_context_windows_overlap_and_answerless_windows_point_to_cls():
    context = "あ" * 40 + "答え" + "い" * 40
    ex = example(context, "答え")
    config = FeatureConfig(max_length=24, doc_stride=10, max_question_tokens=4)
    feats = build_features([ex], CharTokenizer(), config, show_progress=False)
    assert len(feats) > 3
    covered = set()
    for i in range(len(feats)):
        assert len(feats.input_ids[i]) <= 24
        offs = feats.context_offsets[i]
        covered |= {int(o) for o in offs[offs[:, 0] >= 0, 0]}
        s, e = feats.start_positions[i], feats.end_positions[i]
        if s == 0:
            assert e == 0
        else:
            assert context[offs[s, 0] : offs[e, 1]] == "答え"
    assert covered == set(range(len(context)))  # every context char is in some window
    assert sum(feats.has_answer) >= 1


def test_answer_cut_by_a_window_edge_is_not_labelled_in_that_window():
    context = "x" * 10 + "ABCDEF" + "y" * 10
    ex = example(context, "ABCDEF")
    config = FeatureConfig(max_length=16, doc_stride=4, max_question_tokens=2)
    feats = build_features([ex], CharTokenizer(), config, show_progress=False)
    for i in range(len(feats)):
        offs = feats.context_offsets[i]
        window_chars = set(offs[offs[:, 0] >= 0, 0].tolist())
        whole = set(range(10, 16)) <= window_chars
        assert (feats.start_positions[i] > 0) == whole


def test_literal_sep_in_context_is_not_selectable():
    ex = example("梅雨 [SEP] 梅雨は雨季である。", "雨季")
    feats = build_features([ex], CharTokenizer(), FeatureConfig(max_length=64), show_progress=False)
    ids, offs = feats.input_ids[0], feats.context_offsets[0]
    sep_positions = np.flatnonzero(ids == CharTokenizer.sep_id)
    assert len(sep_positions) == 3  # after the question, the literal, the end
    assert (offs[sep_positions] == -1).all()


def test_answer_token_span_handles_answer_starting_inside_a_token():
    offsets = np.array([[0, 2], [2, 5], [6, 8]])
    assert answer_token_span(offsets, 3, 7) == (1, 2)
    assert answer_token_span(offsets, 0, 2) == (0, 0)
    assert answer_token_span(offsets, 8, 9) is None


def test_feature_config_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="max_length"):
        FeatureConfig(max_length=7)
    with pytest.raises(ValueError, match="doc_stride"):
        FeatureConfig(doc_stride=0)


def test_best_token_spans_is_exact_and_respects_constraints():
    start = torch.tensor([[0.0, 5.0, 1.0, 0.0, 9.5]])
    end = torch.tensor([[0.0, 0.0, 4.0, 8.0, 0.0]])
    selectable = torch.tensor([[False, True, True, True, True]])
    scores, starts, ends = best_token_spans(start, end, selectable, max_answer_tokens=3, n_best=3)
    # best: start 1 (5) + end 3 (8) = 13; start 4 (9.5) cannot pair with an earlier end
    assert (starts[0, 0].item(), ends[0, 0].item()) == (1, 3)
    assert scores[0, 0].item() == 13.0
    assert all(s <= e < s + 3 for s, e in zip(starts[0].tolist(), ends[0].tolist()))
    _, s2, e2 = best_token_spans(start, end, selectable, max_answer_tokens=2, n_best=1)
    assert (s2.item(), e2.item()) == (4, 4)  # with at most 2 tokens: 9.5 + 0 beats 5 + 4 and 1 + 8
    brute = max(
        (start[0, i] + end[0, j]).item() for i in range(1, 5) for j in range(i, min(5, i + 2))
    )
    assert best_token_spans(start, end, selectable, max_answer_tokens=2)[0].item() == brute


def test_best_token_spans_never_crosses_a_barrier_token():
    # Tokens 0..5; token 3 is the context's literal [SEP] (not selectable, but its neighbours are).
    start = torch.tensor([[0.0, 1.0, 9.0, 0.0, 0.0, 2.0]])
    end = torch.tensor([[0.0, 0.0, 0.0, 0.0, 8.0, 3.0]])
    selectable = torch.tensor([[False, True, True, False, True, True]])
    barrier = torch.tensor([[False, False, False, True, False, False]])
    # Without the barrier the best span is 2..4 (9 + 8), across the separator.
    _, s0, e0 = best_token_spans(start, end, selectable, max_answer_tokens=5)
    assert (s0.item(), e0.item()) == (2, 4)
    scores, starts, ends = best_token_spans(start, end, selectable, max_answer_tokens=5, barrier=barrier, n_best=36)
    finite = torch.isfinite(scores[0])
    pairs = list(zip(starts[0][finite].tolist(), ends[0][finite].tolist()))
    assert pairs[0] == (2, 2)  # 9 + 0: the best span that stays on one side
    assert set(pairs) == {(1, 1), (1, 2), (2, 2), (4, 4), (4, 5), (5, 5)}


def test_collator_pads_to_multiple_of_16_and_masks_padding():
    ex = example("東京は日本の首都です。", "日本")
    feats = build_features([ex, example("大阪は都市。", "大阪", qid="q2")], CharTokenizer(), show_progress=False)
    batch = QACollator(feats, pad_id=0)([0, 1])
    assert batch["input_ids"].shape[1] % 16 == 0
    assert batch["attention_mask"].sum().item() == sum(len(x) for x in feats.input_ids)
    assert (batch["input_ids"][~batch["attention_mask"]] == 0).all()


def test_bucket_sampler_is_deterministic_and_covers_every_window_once():
    lengths = np.random.default_rng(0).integers(10, 300, size=1000)
    sampler = BucketBatchSampler(lengths, 32, seed=7, pool_batches=5)
    first = sampler.batches(0)
    assert first == sampler.batches(0)
    assert first != sampler.batches(1)
    flat = sorted(i for batch in first for i in batch)
    assert flat == list(range(1000))
    assert len(first) == len(sampler)
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < np.ptp(lengths) / 3  # bucketing groups similar lengths


def test_collator_marks_context_tokens_with_segment_1():
    ex = example("東京は日本の首都です。", "日本")
    feats = build_features([ex], CharTokenizer(), show_progress=False)
    batch = QACollator(feats, pad_id=0, sep_id=CharTokenizer.sep_id)([0])
    types = batch["token_type_ids"][0]
    n = len(feats.input_ids[0])
    assert types[:5].tolist() == [0, 0, 0, 0, 0]  # [CLS] な に ? [SEP]
    assert types[5:n].tolist() == [1] * (n - 5)  # context and the final [SEP]
    assert types[n:].sum() == 0  # padding
    # a question holding a literal [SEP] is still all question (its first [SEP] id is not the boundary)
    ex = example("東京は日本の首都です。", "日本", question="[SEP]はなに?")
    feats = build_features([ex], CharTokenizer(), show_progress=False)
    ids = feats.input_ids[0].tolist()
    types = QACollator(feats, pad_id=0, sep_id=CharTokenizer.sep_id)([0])["token_type_ids"][0]
    assert ids[1] == CharTokenizer.sep_id and feats.context_starts[0] == 7  # [CLS] [SEP] は な に ? [SEP]
    assert types[:7].tolist() == [0] * 7 and types[7:len(ids)].tolist() == [1] * (len(ids) - 7)


def test_title_prefix_puts_training_contexts_in_jsquad_format():
    from nami.training.tasks import with_title_prefix

    ex = QAExample(id="q", question="?", context="梅雨は雨季の一種。", answers=(Answer("雨季", 3),), title="梅雨",
                   source="t")
    out = with_title_prefix(ex)
    assert out.context == "梅雨 [SEP] 梅雨は雨季の一種。"
    assert out.context[out.answers[0].start : out.answers[0].end] == "雨季"
    assert with_title_prefix(out) == out  # already in that format
    assert with_title_prefix(QAExample("q", "?", "abc", (Answer("b", 1),), "", "t")).context == "abc"


def test_predicted_answers_never_contain_the_title_separator():
    """End to end through predict_answers: logits that favour a span across ``title [SEP] paragraph``."""
    from nami.evaluation.predict import predict_answers
    from nami.models.qa import SpanLogits

    ex = example("梅雨 [SEP] 雨季である。", "雨季")
    feats = build_features([ex], CharTokenizer(), show_progress=False)

    class Rigged(torch.nn.Module):  # start on the title's last character, end on the paragraph's first
        def forward(self, ids, mask, token_types=None):
            sep_positions = (ids == CharTokenizer.sep_id).nonzero()[:, 1]
            title_sep = int(sep_positions[1])  # [CLS] question [SEP] title [SEP] paragraph [SEP]
            start, end = torch.zeros(ids.shape), torch.zeros(ids.shape)
            start[:, title_sep - 1], end[:, title_sep + 1] = 10.0, 10.0
            return SpanLogits(start=start, end=end)

    answer = predict_answers(Rigged(), [ex], feats, pad_id=0, sep_id=CharTokenizer.sep_id,
                             max_answer_tokens=8, show_progress=False).answers["q1"]
    assert "[SEP]" not in answer and answer in ("雨", "梅雨", "雨季", "雨季で")


class SpacedWordTokenizer(CharTokenizer):
    """One token per character, as CharTokenizer, but a *word* is a run of non-space characters."""

    def encode(self, text: str):
        enc = super().encode(text)
        word_ids, word, previous_end = [], -1, None
        for start, end in enc.offsets:
            if previous_end is None or start != previous_end or text[start : start + 5] == "[SEP]" \
                    or text[previous_end - 5 : previous_end] == "[SEP]":
                word += 1
            word_ids.append(word)
            previous_end = end
        return type(enc)(enc.ids, enc.offsets, word_ids)


def test_word_edges_mark_the_first_and_last_selectable_token_of_each_word():
    word_ids = [0, 0, 1, 2, 2, 2, 3]
    selectable = np.array([True, True, False, True, True, False, True])  # 2: [SEP]; 5: a continuation
    starts, ends = word_edges(word_ids, selectable)
    assert starts.tolist() == [True, False, False, True, False, False, True]
    # Word 2 ends on token 4: its last piece (5) is an empty-span continuation of token 4's character.
    assert ends.tolist() == [False, True, False, False, True, False, True]
    assert word_edges([], np.zeros(0, dtype=bool))[0].shape == (0,)


def test_windows_carry_word_edges_and_a_cut_word_has_no_edge_at_the_cut():
    ex = example("梅雨前線 が 北上 する", "北上")
    feats = build_features([ex], SpacedWordTokenizer(), FeatureConfig(max_length=12, doc_stride=3,
                                                                      max_question_tokens=3), show_progress=False)
    assert len(feats) > 1
    for w in range(len(feats)):
        offsets, starts, ends = feats.context_offsets[w], feats.word_starts[w], feats.word_ends[w]
        chars = {int(offsets[i, 0]): i for i in range(len(offsets)) if offsets[i, 0] >= 0}
        for i in np.flatnonzero(starts):  # a word start is preceded by a space or the context's start
            assert offsets[i, 0] == 0 or ex.context[offsets[i, 0] - 1] == " "
        for i in np.flatnonzero(ends):
            assert offsets[i, 1] == len(ex.context) or ex.context[offsets[i, 1]] == " "
        # The window's first context character, when mid-word, starts nothing.
        first = min(chars)
        if first > 0 and ex.context[first - 1] != " ":
            assert not starts[chars[first]]
        assert not (starts | ends)[offsets[:, 0] < 0].any()  # question and specials: never
    subset = feats.subset([1])
    assert (subset.word_starts[0] == feats.word_starts[1]).all() and (subset.word_ends[0] == feats.word_ends[1]).all()


def test_best_token_spans_takes_separate_start_and_end_masks():
    start = torch.tensor([[0.0, 9.0, 1.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 9.0, 1.0]])
    can_start = torch.tensor([[False, False, True, True]])
    can_end = torch.tensor([[False, True, False, True]])
    scores, starts, ends = best_token_spans(start, end, can_start, can_end, max_answer_tokens=4, n_best=16)
    finite = torch.isfinite(scores[0])
    assert set(zip(starts[0][finite].tolist(), ends[0][finite].tolist())) == {(2, 3), (3, 3)}
    assert (starts[0, 0].item(), ends[0, 0].item()) == (2, 3)


@pytest.mark.parametrize("boundaries, expected", [("word", "北上"), ("token", "上")])
def test_word_boundaries_turn_a_mid_word_start_into_a_whole_word_answer(boundaries, expected):
    from nami.evaluation.predict import predict_answers
    from nami.models.qa import SpanLogits

    ex = example("梅雨前線 が 北上 する", "北上")
    feats = build_features([ex], SpacedWordTokenizer(), show_progress=False)
    offsets = feats.context_offsets[0]
    token_of = {int(offsets[i, 0]): i for i in range(len(offsets)) if offsets[i, 0] >= 0}
    kita, jou = token_of[ex.context.index("北")], token_of[ex.context.index("上")]

    class Rigged(torch.nn.Module):  # the start logit prefers 上 (mid-word) slightly over 北
        def forward(self, ids, mask, token_types=None):
            start, end = torch.zeros(ids.shape), torch.zeros(ids.shape)
            start[:, jou], start[:, kita], end[:, jou] = 10.0, 9.0, 10.0
            return SpanLogits(start=start, end=end)

    out = predict_answers(Rigged(), [ex], feats, pad_id=0, sep_id=CharTokenizer.sep_id, max_answer_tokens=8,
                          answer_boundaries=boundaries, show_progress=False)
    assert out.answers["q1"] == expected
    with pytest.raises(ValueError, match="answer_boundaries"):
        predict_answers(Rigged(), [ex], feats, pad_id=0, answer_boundaries="char", show_progress=False)


def test_question_match_flags_context_words_found_in_the_question():
    ex = example("東京は日本の首都です。", "日本", question="日本の首都は?")
    feats = build_features([ex], CharTokenizer(), FeatureConfig(max_length=32, doc_stride=8), show_progress=False)
    ids, offsets, match = feats.input_ids[0], feats.context_offsets[0], feats.question_match[0]
    assert match.dtype == bool and match.shape == ids.shape
    flagged = {ex.context[s:e] for (s, e), m in zip(offsets, match) if m}
    assert flagged == {"日", "本", "の", "首", "都", "は"}  # CharTokenizer: every character is a word
    assert not match[offsets[:, 0] < 0].any()  # question, [CLS], [SEP] are never flagged


def test_word_keys_name_equal_words_equally_and_skip_special_tokens():
    from nami.data.features import word_keys

    vocabulary: dict = {}
    specials = frozenset({1, 3})
    # words: (10, 11) | (12,) | (10, 11) | (3,) | (1, 12) | (10,)
    keys = word_keys([10, 11, 12, 10, 11, 3, 1, 12, 10], [0, 0, 1, 2, 2, 3, 4, 4, 5], specials, vocabulary)
    assert keys[0] == keys[1] == keys[3] == keys[4]  # the same piece sequence
    assert len({keys[0], keys[2], keys[8]}) == 3  # (10,) is not (10, 11)
    assert (keys[5:8] == -1).all()  # [SEP] and a word holding [UNK] never match
    again = word_keys([12], [7], specials, vocabulary)
    assert again[0] == keys[2]  # keys are shared across calls through the vocabulary


def test_question_match_uses_mecab_words(tmp_path):
    from helpers import jaquad_context_lines

    from nami.text import train_tokenizer

    context = "東京都の人口は約1400万人で、東京は日本の首都である。"
    question = "東京の人口はどれくらいか"
    # pieces for every word of the question (a word holding [UNK] never matches): trained with these lines
    tokenizer = train_tokenizer(jaquad_context_lines(200) + [context, question] * 3, tmp_path, vocab_size=2000,
                                show_progress=False)
    ex = example(context, "約1400万人", question=question)
    feats = build_features([ex], tokenizer, FeatureConfig(max_length=64, doc_stride=16), show_progress=False)
    encoding = tokenizer.encode(context)
    words: dict[int, list[int]] = {}
    for token, word in enumerate(encoding.word_ids):
        words.setdefault(word, []).append(token)
    question_words = {context[encoding.offsets[t[0]][0]: encoding.offsets[t[-1]][1]] for t in words.values()} & {
        "東京", "の", "人口", "は"}
    assert question_words == {"東京", "の", "人口", "は"}  # MeCab splits as expected here
    offsets, match = feats.context_offsets[0], feats.question_match[0]
    start = int(np.flatnonzero(offsets[:, 0] >= 0)[0])
    for ids in words.values():
        text = context[encoding.offsets[ids[0]][0]: encoding.offsets[ids[-1]][1]]
        assert bool(match[start + ids[0]]) == (text in {"東京", "の", "人口", "は"}), text
        assert len({bool(match[start + i]) for i in ids}) == 1  # a word is flagged as a whole


def test_collator_turns_question_match_into_a_third_token_type():
    ex = example("東京は日本の首都です。", "日本", question="日本の首都は?")
    feats = build_features([ex], CharTokenizer(), FeatureConfig(max_length=32, doc_stride=8), show_progress=False)
    plain = QACollator(feats, CharTokenizer.pad_id, sep_id=CharTokenizer.sep_id)([0])["token_type_ids"][0]
    typed = QACollator(feats, CharTokenizer.pad_id, sep_id=CharTokenizer.sep_id, question_match=True)([0])
    types = typed["token_type_ids"][0]
    n = len(feats.input_ids[0])
    assert set(plain[:n].tolist()) == {0, 1}
    assert torch.equal(types[:n] == 2, torch.from_numpy(feats.question_match[0]))
    assert torch.equal(types.clamp(max=1), plain)  # otherwise the same question / context types
    with pytest.raises(ValueError, match="question_match"):
        QACollator(feats, CharTokenizer.pad_id, question_match=True)
