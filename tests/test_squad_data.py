"""Tests for nami.data.squad: SQuAD loading and validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from nami.data import (
    Answer,
    BadRecord,
    DataValidationError,
    QAExample,
    SquadFileNotFoundError,
    SquadReport,
    check_squad,
    format_report,
    load_squad,
    resolve_squad_files,
)

CONTEXT = "東京は日本の首都である。"  # 東京 at 0, 日本 at 3, 首都 at 6


def qa(qid: str, text: str = "東京", start: int = 0, question: str = "日本の首都は?") -> dict:
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}


def doc(*qas: dict, context: str = CONTEXT, title: str = "東京") -> dict:
    paragraph = {"context": context, "qas": list(qas)}
    return {"version": "v1.1", "data": [{"title": title, "paragraphs": [paragraph]}]}


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def good_doc() -> dict:
    return doc(qa("q1"), qa("q2", "日本", 3, "どこの首都?"))


def only_bad(path: Path, **kwargs: Any) -> BadRecord:
    """Check a file that should yield exactly one bad record, and return it."""
    _, report = check_squad(path, **kwargs)
    assert len(report.bad) == 1, report.bad
    return report.bad[0]


# --------------------------------------------------------------------------- good data


def test_clean_file_loads_with_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", good_doc())
    examples, report = check_squad(path)
    assert report == SquadReport(files=[str(path)], articles=1, contexts=1, questions=2, bad=[])
    assert examples[0] == QAExample(
        id="q1",
        question="日本の首都は?",
        context=CONTEXT,
        answers=(Answer("東京", 0),),
        title="東京",
        source=str(path),
    )
    assert [e.id for e in examples] == ["q1", "q2"]
    assert load_squad(path) == examples


def test_multiple_answers_and_extra_fields_are_kept_or_ignored(tmp_path: Path) -> None:
    data = doc(
        {
            "id": "q1",
            "question": "首都は?",
            "is_impossible": False,
            "question_type": "x",
            "answers": [
                {"text": "東京", "answer_start": 0, "answer_type": "Location"},
                {"text": "東京は", "answer_start": 0},
            ],
        }
    )
    (example,) = load_squad(write(tmp_path / "a.json", data))
    assert example.answers == (Answer("東京", 0), Answer("東京は", 0))


def test_title_missing_or_not_a_string_becomes_empty(tmp_path: Path) -> None:
    data = good_doc()
    del data["data"][0]["title"]
    data["data"].append({"title": 7, "paragraphs": [{"context": CONTEXT, "qas": [qa("q3")]}]})
    examples = load_squad(write(tmp_path / "a.json", data))
    assert [e.title for e in examples] == ["", "", ""]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good_doc(), ensure_ascii=False).encode("utf-8"))
    examples, report = check_squad(path)
    assert report.bad == [] and report.questions == 2 and len(examples) == 2


def test_directory_of_shards_is_read_in_sorted_order(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write(shards / "s_0001.json", doc(qa("b")))
    write(shards / "s_0000.json", doc(qa("a")))
    (shards / "notes.txt").write_text("not a shard")
    assert resolve_squad_files(shards) == [shards / "s_0000.json", shards / "s_0001.json"]
    examples, report = check_squad(shards)
    assert [e.id for e in examples] == ["a", "b"]
    assert report.files == [str(shards / "s_0000.json"), str(shards / "s_0001.json")]
    assert (report.articles, report.contexts, report.questions) == (2, 2, 2)


def test_list_of_paths_keeps_order_and_reads_a_file_once(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", doc(qa("a")))
    b = write(tmp_path / "b.json", doc(qa("b")))
    assert resolve_squad_files([str(b), a, b]) == [b, a]
    assert [e.id for e in load_squad([b, a, tmp_path])] == ["b", "a"]


def test_require_answers_false_allows_missing_or_empty_answers(tmp_path: Path) -> None:
    no_answers = {"id": "q1", "question": "首都は?"}
    empty_answers = {"id": "q2", "question": "首都は?", "answers": []}
    path = write(tmp_path / "a.json", doc(no_answers, empty_answers, qa("q3")))
    examples = load_squad(path, require_answers=False)
    assert [e.answers for e in examples] == [(), (), (Answer("東京", 0),)]
    # With the default, both are bad.
    _, report = check_squad(path)
    assert [(r.id, r.reason) for r in report.bad] == [
        ("q1", "question has no 'answers'"),
        ("q2", "'answers' is empty"),
    ]


def test_require_answers_false_still_validates_present_answers(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", doc(qa("q1", "東京", 5)))
    record = only_bad(path, require_answers=False)
    assert record.id == "q1" and "does not point at the answer text" in record.reason


# --------------------------------------------------------------------------- paths


def test_resolve_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(SquadFileNotFoundError, match="nope.json"):
        resolve_squad_files(missing)
    assert issubclass(SquadFileNotFoundError, FileNotFoundError)


def test_resolve_directory_without_json(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(SquadFileNotFoundError, match=r"no \*\.json files in directory .*"):
        resolve_squad_files(tmp_path)


def test_resolve_empty_list() -> None:
    with pytest.raises(ValueError, match="no SQuAD paths"):
        resolve_squad_files([])


def test_missing_file_is_a_bad_record(tmp_path: Path) -> None:
    good = write(tmp_path / "good.json", good_doc())
    missing = tmp_path / "missing.json"
    examples, report = check_squad([good, missing])
    assert report.bad == [BadRecord(str(missing), "<file>", "file not found")]
    assert report.files == [str(good)] and len(examples) == 2


def test_empty_directory_is_a_bad_record(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _, report = check_squad(empty)
    assert report.bad == [BadRecord(str(empty), "<file>", "directory has no *.json files")]


# --------------------------------------------------------------------------- file level


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "sjis.json"
    path.write_bytes(json.dumps(good_doc(), ensure_ascii=False).encode("shift_jis"))
    record = only_bad(path)
    assert (record.file, record.id) == (str(path), "<file>")
    assert record.reason.startswith("not valid UTF-8: byte 0x")


def test_truncated_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    text = json.dumps(good_doc(), ensure_ascii=False, indent=1)
    path.write_text(text[:-40], encoding="utf-8")
    record = only_bad(path)
    assert (record.file, record.id) == (str(path), "<file>")
    assert record.reason.startswith("malformed JSON at line ")
    line = text[:-40].count("\n") + 1
    assert f"at line {line} column" in record.reason


def test_malformed_json_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"title": "x",, }\n]}', encoding="utf-8")
    assert only_bad(path).reason.startswith("malformed JSON at line 2 column 17: ")


@pytest.mark.parametrize(
    ("content", "got"),
    [
        ([], "list"),
        ({"version": "1"}, "an object whose 'data' is null"),
        ({"data": {"title": "x"}}, "an object whose 'data' is object"),
        ("text", "string"),
    ],
)
def test_not_squad_shaped(tmp_path: Path, content: Any, got: str) -> None:
    path = write(tmp_path / "x.json", content)
    record = only_bad(path)
    assert record == BadRecord(
        str(path),
        "<file>",
        f"not SQuAD-shaped: top level must be an object with a 'data' list, got {got}",
    )


# --------------------------------------------------------------------------- article / paragraph


def corrupt(tmp_path: Path, edit: Any) -> tuple[Path, list[QAExample], SquadReport]:
    """Write good_doc() plus a second article (q9) edited by ``edit``; check the file."""
    data = good_doc()
    article = {"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [qa("q9")]}]}
    data["data"].append(article)
    edit(data["data"])
    path = write(tmp_path / "c.json", data)
    examples, report = check_squad(path)
    return path, examples, report


@pytest.mark.parametrize(
    ("edit", "where", "reason"),
    [
        (lambda d: d.__setitem__(1, "article"), "data[1]", "article must be an object, got string"),
        (lambda d: d[1].pop("paragraphs"), "data[1]", "article has no 'paragraphs'"),
        (
            lambda d: d[1].__setitem__("paragraphs", {"context": CONTEXT}),
            "data[1]",
            "'paragraphs' must be a list, got object",
        ),
        (
            lambda d: d[1]["paragraphs"].__setitem__(0, None),
            "data[1].paragraphs[0]",
            "paragraph must be an object, got null",
        ),
        (
            lambda d: d[1]["paragraphs"][0].pop("context"),
            "data[1].paragraphs[0]",
            "paragraph has no 'context'",
        ),
        (
            lambda d: d[1]["paragraphs"][0].__setitem__("context", ["x"]),
            "data[1].paragraphs[0]",
            "'context' must be a string, got list",
        ),
        (
            lambda d: d[1]["paragraphs"][0].__setitem__("context", ""),
            "data[1].paragraphs[0]",
            "'context' is empty",
        ),
        (
            lambda d: d[1]["paragraphs"][0].__setitem__("context", " \n\t"),
            "data[1].paragraphs[0]",
            "'context' is only whitespace",
        ),
        (
            lambda d: d[1]["paragraphs"][0].pop("qas"),
            "data[1].paragraphs[0]",
            "paragraph has no 'qas'",
        ),
        (
            lambda d: d[1]["paragraphs"][0].__setitem__("qas", qa("q9")),
            "data[1].paragraphs[0]",
            "'qas' must be a list, got object",
        ),
    ],
)
def test_bad_article_or_paragraph(tmp_path: Path, edit: Any, where: str, reason: str) -> None:
    path, examples, report = corrupt(tmp_path, edit)
    assert report.bad == [BadRecord(str(path), where, reason)]
    assert [e.id for e in examples] == ["q1", "q2"]  # the first article is unaffected
    good_articles = 1 if where == "data[1]" else 2
    assert (report.articles, report.contexts, report.questions) == (good_articles, 1, 2)


# --------------------------------------------------------------------------- question / answer


def check_one_question(tmp_path: Path, question: Any, **kwargs: Any) -> BadRecord:
    """A file with a good question q1 and ``question``; return the one bad record."""
    path = write(tmp_path / "q.json", doc(qa("q1"), question))
    examples, report = check_squad(path, **kwargs)
    assert [e.id for e in examples] == ["q1"]
    assert report.questions == 1 and report.contexts == 1
    assert len(report.bad) == 1, report.bad
    assert report.bad[0].file == str(path)
    return report.bad[0]


def without(d: dict, key: str) -> dict:
    d = copy.deepcopy(d)
    del d[key]
    return d


def replaced(d: dict, **changes: Any) -> dict:
    return {**copy.deepcopy(d), **changes}


def with_answer(qid: str, answer: Any) -> dict:
    return replaced(qa(qid), answers=[answer])


LOC = "data[0].paragraphs[0].qas[1]"


@pytest.mark.parametrize(
    ("question", "record_id", "reason"),
    [
        ("q2", LOC, "question must be an object, got string"),
        (without(qa("q2"), "id"), LOC, "question has no 'id'"),
        (replaced(qa("q2"), id=2), LOC, "'id' must be a string, got integer (2)"),
        (replaced(qa("q2"), id=""), LOC, "'id' is empty"),
        (without(qa("q2"), "question"), "q2", "question has no 'question'"),
        (replaced(qa("q2"), question=None), "q2", "'question' must be a string, got null"),
        (replaced(qa("q2"), question=""), "q2", "'question' is empty"),
        (replaced(qa("q2"), question="  "), "q2", "'question' is only whitespace"),
        (without(qa("q2"), "answers"), "q2", "question has no 'answers'"),
        (replaced(qa("q2"), answers={"text": "東京"}), "q2", "'answers' must be a list, got object"),
        (replaced(qa("q2"), answers=[]), "q2", "'answers' is empty"),
        (with_answer("q2", "東京"), "q2", "answers[0] must be an object, got string"),
        (with_answer("q2", {"answer_start": 0}), "q2", "answers[0] has no 'text'"),
        (with_answer("q2", {"text": "東京"}), "q2", "answers[0] has no 'answer_start'"),
        (
            with_answer("q2", {"text": 1, "answer_start": 0}),
            "q2",
            "answers[0]: 'text' must be a string, got integer (1)",
        ),
        (with_answer("q2", {"text": "", "answer_start": 0}), "q2", "answers[0]: 'text' is empty"),
        (
            with_answer("q2", {"text": "東京", "answer_start": "0"}),
            "q2",
            "answers[0]: 'answer_start' must be an integer, got string",
        ),
        (
            with_answer("q2", {"text": "東京", "answer_start": 0.0}),
            "q2",
            "answers[0]: 'answer_start' must be an integer, got number (0.0)",
        ),
        (
            with_answer("q2", {"text": "東", "answer_start": False}),
            "q2",
            "answers[0]: 'answer_start' must be an integer, got boolean (false)",
        ),
        (
            with_answer("q2", {"text": "東京", "answer_start": 11}),
            "q2",
            "answers[0]: answer_start 11 is out of range: span [11, 13) does not fit a "
            "context of 12 characters",
        ),
        (
            with_answer("q2", {"text": "東京", "answer_start": -1}),
            "q2",
            "answers[0]: answer_start -1 is out of range",
        ),
        (
            with_answer("q2", {"text": "東京", "answer_start": 3}),
            "q2",
            "answers[0]: answer_start 3 does not point at the answer text '東京': context has '日本'",
        ),
    ],
)
def test_bad_question(tmp_path: Path, question: Any, record_id: str, reason: str) -> None:
    record = check_one_question(tmp_path, question)
    assert record.id == record_id
    assert record.reason.startswith(reason), record.reason


def test_one_bad_answer_makes_the_question_bad(tmp_path: Path) -> None:
    question = qa("q2")
    question["answers"].append({"text": "首都", "answer_start": 7})
    record = check_one_question(tmp_path, question)
    assert record.id == "q2"
    assert record.reason.startswith("answers[1]: answer_start 7 does not point at")


def test_duplicate_id_in_same_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", doc(qa("q1"), qa("q2"), qa("q1", "日本", 3)))
    examples, report = check_squad(path)
    assert [e.answers[0].text for e in examples] == ["東京", "東京"]
    reason = f"duplicate question id (first seen in {path})"
    assert report.bad == [BadRecord(str(path), "q1", reason)]


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", doc(qa("q1"), qa("q2")))
    b = write(tmp_path / "b.json", doc(qa("q3"), qa("q2", "日本", 3)))
    examples, report = check_squad([a, b])
    assert [(e.id, e.source) for e in examples] == [("q1", str(a)), ("q2", str(a)), ("q3", str(b))]
    assert report.bad == [BadRecord(str(b), "q2", f"duplicate question id (first seen in {a})")]
    assert report.questions == 3


# --------------------------------------------------------------------------- load modes and reports


@pytest.fixture()
def mixed(tmp_path: Path) -> tuple[Path, Path]:
    """A good file, and a file with one good and two bad questions."""
    good = write(tmp_path / "good.json", doc(qa("g1"), qa("g2")))
    mixed = write(
        tmp_path / "mixed.json",
        doc(qa("m1"), qa("m2", "東京", 3), replaced(qa("m3"), question="")),
    )
    return good, mixed


def test_error_mode_raises_with_all_bad_records(mixed: tuple[Path, Path]) -> None:
    good, bad_file = mixed
    with pytest.raises(DataValidationError) as info:
        load_squad([good, bad_file])
    assert [(r.file, r.id) for r in info.value.bad] == [
        (str(bad_file), "m2"),
        (str(bad_file), "m3"),
    ]
    message = str(info.value)
    assert message.startswith("2 bad records in SQuAD data:")
    assert f"{bad_file}: m2: answers[0]: answer_start 3 does not point" in message
    assert f"{bad_file}: m3: 'question' is empty" in message
    assert isinstance(info.value, ValueError)


def test_error_message_caps_the_listing() -> None:
    bad = [BadRecord("f.json", f"q{i}", "bad") for i in range(25)]
    message = str(DataValidationError(bad))
    assert message.count("f.json: q") == 20
    assert message.endswith("... and 5 more")
    assert "f.json: q19: bad" in message and "q20" not in message


def test_skip_mode_drops_only_bad_questions_and_warns(
    mixed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    examples = load_squad(list(mixed), on_bad_record="skip")
    assert [e.id for e in examples] == ["g1", "g2", "m1"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("warning: skipped 2 bad SQuAD records (")
    assert "m2: answers[0]" in err and "m3: 'question' is empty" in err


def test_skip_mode_is_silent_on_clean_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_squad(write(tmp_path / "a.json", good_doc()), on_bad_record="skip")
    assert capsys.readouterr().err == ""


def test_skip_mode_warning_quotes_only_the_first_few(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "a.json", doc(*[qa(f"q{i}", "東京", 5) for i in range(6)]))
    assert load_squad(path, on_bad_record="skip") == []
    err = capsys.readouterr().err
    assert "skipped 6 bad SQuAD records" in err and err.rstrip().endswith("... and 3 more)")
    assert "q2:" in err and "q3:" not in err


def test_invalid_on_bad_record(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"on_bad_record must be 'error' or 'skip', got 'ignore'"):
        load_squad(tmp_path / "never-read.json", on_bad_record="ignore")  # type: ignore[arg-type]


def test_format_report(mixed: tuple[Path, Path]) -> None:
    _, report = check_squad(list(mixed))
    text = format_report(report)
    assert "files:       2" in text
    assert "articles:    2" in text
    assert "contexts:    2" in text
    assert "questions:   3" in text
    assert "bad records: 2" in text
    assert f"{mixed[1]}: m3: 'question' is empty" in text


def test_format_report_uses_thousands_separators() -> None:
    report = SquadReport(files=["a.json"], articles=691, contexts=9713, questions=31748, bad=[])
    assert format_report(report).splitlines()[1:] == [
        "articles:    691",
        "contexts:    9,713",
        "questions:   31,748",
        "bad records: 0",
    ]


# --------------------------------------------------------------------------- the real data


def real_data(relative: str) -> Path:
    from nami.paths import DataNotFoundError, default_data

    from conftest import on_fixture_data

    if on_fixture_data():
        pytest.skip(f"checks the real {relative} (the tests run on the committed fixture data)")
    try:
        return default_data(relative)
    except DataNotFoundError:
        pytest.skip(f"data {relative} not available")


def test_real_jsquad_dev() -> None:
    from nami.paths import JSQUAD_DEV

    examples, report = check_squad(real_data(JSQUAD_DEV))
    assert report.bad == []
    assert (report.articles, report.contexts, report.questions) == (59, 1145, 4442)
    assert len(examples) == 4442
    assert all(1 <= len(e.answers) <= 3 for e in examples)
    assert all(" [SEP] " in e.context for e in examples)


def test_real_jaquad_train() -> None:
    from nami.paths import JAQUAD_TRAIN

    path = real_data(JAQUAD_TRAIN)
    examples, report = check_squad(path)
    assert len(report.files) == 30
    assert report.bad == []
    assert (report.articles, report.contexts, report.questions) == (691, 9713, 31748)
    assert len(examples) == 31748
