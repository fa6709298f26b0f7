"""Tests for nami.evaluation.metric: the official JSQuAD EM / character F1."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nami.data import Answer, QAExample
from nami.evaluation import (
    evaluate_predictions,
    exact_match_score,
    f1_score,
    load_predictions,
    normalize_answer,
)

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("東京", "東京"),
        ("東京。", "東京"),
        ("東京。。", "東京"),  # every trailing 。 is stripped, as JGLUE's rstrip("。") does
        ("。東京", "。東京"),  # a leading 。 stays
        ("東京、大阪。", "東京、大阪"),  # no punctuation removal otherwise
        ("「東京」", "「東京」"),
        ("ＡＢＣ Def", "ａｂｃ def"),  # lower-case, full-width too
        ("  the  Tokyo\tTower \n", "the tokyo tower"),  # whitespace collapse, no article removal
        ("東京\u3000タワー", "東京 タワー"),  # str.split() treats the ideographic space as space
        ("東京。 ", "東京。"),  # 。 is stripped before whitespace is collapsed (JGLUE's order)
        ("東京 。", "東京"),
        ("。", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


# --------------------------------------------------------------------------- EM and F1


def test_exact_match() -> None:
    assert exact_match_score("東京。", "東京") == 1.0
    assert exact_match_score("Tokyo  Tower", "tokyo tower") == 1.0
    assert exact_match_score("東京都", "東京") == 0.0
    assert exact_match_score("東京。。", "東京") == 1.0


def test_f1_partial_overlap_by_hand() -> None:
    # pred 東京都 (3 chars) vs gold 東京 (2): overlap 2 -> P = 2/3, R = 1, F1 = 0.8
    assert f1_score("東京都", "東京") == pytest.approx(0.8)
    # pred 京都 vs gold 東京都: overlap {京, 都} = 2 -> P = 1, R = 2/3, F1 = 0.8
    assert f1_score("京都", "東京都") == pytest.approx(0.8)
    # Characters are counted as a multiset: pred ああい vs gold あい -> overlap 2, P = 2/3, R = 1
    assert f1_score("ああい", "あい") == pytest.approx(0.8)
    # Order does not matter.
    assert f1_score("京東", "東京") == 1.0
    assert f1_score("大阪", "東京") == 0.0


def test_f1_counts_the_spaces_left_by_normalisation() -> None:
    # "a b" -> chars [a, ' ', b]; "ab" -> [a, b]: overlap 2 -> P = 2/3, R = 1, F1 = 0.8
    assert f1_score("a b", "ab") == pytest.approx(0.8)
    # Leading/trailing/repeated whitespace is removed by normalisation, so it does not count.
    assert f1_score("  ab  ", "ab") == 1.0
    assert f1_score("a    b", "a b") == 1.0
    # A space is a character like any other: "x y" vs "a b" share only the space.
    # P = 1/3, R = 1/3 -> F1 = 1/3
    assert f1_score("x y", "a b") == pytest.approx(1 / 3)


def test_f1_uses_normalisation() -> None:
    assert f1_score("東京。", "東京") == 1.0
    assert f1_score("TOKYO", "tokyo") == 1.0
    # 東京。。 -> 東京 (rstrip), a full match
    assert f1_score("東京。。", "東京") == 1.0
    # 東京。x -> unchanged (does not end in 。) vs 東京: P = 2/4, R = 1 -> F1 = 2/3
    assert f1_score("東京。x", "東京") == pytest.approx(2 / 3)


def test_empty_strings() -> None:
    assert f1_score("", "東京") == 0.0
    assert f1_score("東京", "") == 0.0
    assert exact_match_score("", "東京") == 0.0
    # Both normalise to empty: a match (the transformers rule).
    assert f1_score("", "") == 1.0
    assert f1_score(" ", "。") == 1.0
    assert exact_match_score("。", "") == 1.0


def _reference_normalize(s: str, *, strip_all_stops: bool) -> str:
    """The JGLUE patch's normalize_answer, transcribed (optionally stripping one 。 only)."""
    s = s.lower()
    if strip_all_stops:
        s = s.rstrip("。")
    elif s.endswith("。"):
        s = s[:-1]
    return " ".join(s.split())


def _reference_f1(gold: str, pred: str, *, strip_all_stops: bool = True) -> float:
    """The JGLUE patch's compute_f1 (character-based), transcribed."""
    gold_toks = list(_reference_normalize(gold, strip_all_stops=strip_all_stops))
    pred_toks = list(_reference_normalize(pred, strip_all_stops=strip_all_stops))
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


answer_text = st.text(alphabet="東京都aAbB 。\u3000\t", max_size=8)


@settings(max_examples=300, deadline=None)
@given(pred=answer_text, gold=answer_text)
def test_matches_reference_implementation(pred: str, gold: str) -> None:
    assert f1_score(pred, gold) == pytest.approx(_reference_f1(gold, pred, strip_all_stops=True))
    assert 0.0 <= f1_score(pred, gold) <= 1.0
    assert f1_score(pred, gold) == pytest.approx(f1_score(gold, pred))  # symmetric
    em = exact_match_score(pred, gold)
    reference_em = _reference_normalize(pred, strip_all_stops=True) == _reference_normalize(
        gold, strip_all_stops=True
    )
    assert em == float(reference_em)
    if em:
        assert f1_score(pred, gold) == 1.0


def test_follows_jglue_code_not_the_one_stop_reading() -> None:
    assert normalize_answer("東京。。") == _reference_normalize("東京。。", strip_all_stops=True) == "東京"
    assert _reference_normalize("東京。。", strip_all_stops=False) == "東京。"


# --------------------------------------------------------------------------- evaluate_predictions


def ex(qid: str, *golds: str) -> QAExample:
    context = "".join(golds) or "文脈"
    answers, offset = [], 0
    for g in golds:
        answers.append(Answer(g, offset))
        offset += len(g)
    return QAExample(qid, "質問", context, tuple(answers), "題", "test.json")


def test_evaluate_predictions_percentages() -> None:
    examples = [ex("q1", "東京"), ex("q2", "東京"), ex("q3", "大阪"), ex("q4", "京都")]
    predictions = {"q1": "東京", "q2": "東京都", "q3": "名古屋", "q4": "京都。"}
    result = evaluate_predictions(examples, predictions)
    # EM: 1, 0, 0, 1 -> 50 %. F1: 1, 0.8, 0, 1 -> 2.8 / 4 = 70 %.
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(70.0)
    assert result["count"] == 4
    assert result["missing"] == [] and result["unexpected"] == []


def test_evaluate_takes_max_over_golds() -> None:
    examples = [ex("q1", "東京都", "東京", "首都東京")]
    assert evaluate_predictions(examples, {"q1": "東京"})["exact_match"] == 100.0
    # pred 東京都 vs gold 東京: P = 2/3, R = 1 -> 0.8.
    # pred 東京都 vs gold 首都東京: overlap {東, 京, 都} = 3, P = 3/3, R = 3/4 -> 6/7 (the max).
    result = evaluate_predictions([ex("q1", "東京", "首都東京")], {"q1": "東京都"})
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(100 * 6 / 7)


def test_missing_predictions_count_as_wrong_and_extras_are_ignored() -> None:
    examples = [ex("q1", "東京"), ex("q2", "大阪"), ex("q3", "京都")]
    result = evaluate_predictions(examples, {"q2": "大阪", "zz": "x", "q9": "y"})
    assert result["missing"] == ["q1", "q3"]
    assert result["unexpected"] == ["zz", "q9"]
    assert result["count"] == 3
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 / 3)


def test_golds_that_normalise_to_empty_are_dropped() -> None:
    # Gold "。" normalises to "" and is dropped in favour of the real gold.
    result = evaluate_predictions([ex("q1", "。", "東京")], {"q1": ""})
    assert result["f1"] == 0.0
    # With no usable gold at all, the gold is "", so only an empty prediction scores.
    assert evaluate_predictions([ex("q1", "。")], {"q1": ""})["exact_match"] == 100.0
    assert evaluate_predictions([ex("q1", "。")], {"q1": "東京"})["f1"] == 0.0
    assert evaluate_predictions([ex("q1")], {"q1": ""})["f1"] == 100.0


def test_evaluate_rejects_empty_examples_and_non_string_predictions() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        evaluate_predictions([], {"q1": "x"})
    with pytest.raises(TypeError, match="'q1' must be a string, got int"):
        evaluate_predictions([ex("q1", "東京")], {"q1": 3})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- load_predictions


def test_load_predictions(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    content = json.dumps({"q1": "東京", "q2": ""}, ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert load_predictions(path) == {"q1": "東京", "q2": ""}
    assert load_predictions(str(path)) == {"q1": "東京", "q2": ""}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"q1": "東京",', r"not valid JSON \(line 1 column \d+"),
        ("[" * 100_000, r"nested too deeply"),
        ('["東京"]', r"must be a JSON object .* got list"),
        (
            '{"q1": "東京", "q2": 3}',
            r"prediction for question 'q2' must be a string, got integer \(3\)",
        ),
        ('{"q1": {"text": "東京"}}', r"'q1' must be a string, got object$"),
        ('{"q1": null}', r"'q1' must be a string, got null$"),
    ],
)
def test_load_predictions_errors_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "preds.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_predictions(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_predictions_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absent.json: file not found"):
        load_predictions(tmp_path / "absent.json")


def test_load_predictions_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    import os

    with pytest.raises(ValueError, match="is a directory"):
        load_predictions(tmp_path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(ValueError, match="not a regular file"):
        load_predictions(fifo)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match="symlink loop"):
        load_predictions(loop)


def test_load_predictions_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sjis.json"
    path.write_bytes('{"q1": "東京"}'.encode("shift_jis"))
    with pytest.raises(ValueError, match="sjis.json: not valid UTF-8"):
        load_predictions(path)


def test_real_jsquad_dev_gold_scores_100() -> None:
    from nami.data import load_squad
    from nami.paths import JSQUAD_DEV, DataNotFoundError, default_data

    from conftest import on_fixture_data

    if on_fixture_data():
        pytest.skip("checks the real JSQuAD dev (the tests run on the committed fixture data)")
    try:
        path = default_data(JSQUAD_DEV)
    except DataNotFoundError:
        pytest.skip("JSQuAD dev not available")
    examples = load_squad(path)
    first_gold = {e.id: e.answers[0].text for e in examples}
    result = evaluate_predictions(examples, first_gold)
    assert (result["exact_match"], result["f1"], result["count"]) == (100.0, 100.0, 4442)
    # A weak baseline (the context's first 5 characters, i.e. mostly the title), scored
    # against the transcribed JGLUE reference: max over golds, mean over questions.
    weak = {e.id: e.context[:5] for e in examples}
    result = evaluate_predictions(examples, weak)
    ref_f1 = [max(_reference_f1(a.text, weak[e.id], strip_all_stops=True) for a in e.answers) for e in examples]
    ref_em = [
        max(
            _reference_normalize(a.text, strip_all_stops=True)
            == _reference_normalize(weak[e.id], strip_all_stops=True)
            for a in e.answers
        )
        for e in examples
    ]
    assert result["f1"] == pytest.approx(100 * sum(ref_f1) / len(examples))
    assert result["exact_match"] == pytest.approx(100 * sum(ref_em) / len(examples))
    assert 0.0 < result["exact_match"] < result["f1"] < 50.0
