"""Fuzzing: tokenizer offsets on hostile Unicode, QA labels next to expanded characters, and SQuAD
loading of malformed files.

The tokenizer is trained once per module on a few hundred lines of JaQuAD train text. Every
encoding of generated text is checked against the rules documented on ``nami.text.Encoding``:

* spans lie in the text, are ordered and never overlap (``offsets[i][1] <= offsets[i + 1][0]``);
* the pieces spell the normalised text (whitespace/control characters removed, literal
  ``[SEP]``/``[MASK]`` kept), an ``[UNK]`` standing for one out-of-vocabulary character;
* each span is exactly what the rules give: a token spans from the first source character it has
  to itself to the end of its last one; a token made only of the rest of an expanded character
  (``㍿`` → ``株式|会社``) is the empty span at that character's end;
* the normalised text of every non-empty span starts with the token's own characters;
* every visible character lies in exactly one span. Characters in no span are exactly the ones
  dropped by design: separators (``str.isspace()`` or Unicode ``Cc``) and format characters
  (``Cf``); a format character may also lie inside a span, between two characters of its token,
  a separator never does;
* "decode of a span equals the original substring": for a token range ``i..j`` that starts and
  ends on character boundaries, ``text[offsets[i][0]:offsets[j][1]]`` normalises to exactly the
  pieces of ``i..j``, and holds the source of tokens ``i..j`` and of no other token.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import jaquad_context_lines
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nami.data.features import FeatureConfig, answer_token_span, build_features
from nami.data.squad import FILE_LEVEL_ID, Answer, DataValidationError, QAExample, check_squad, load_squad
from nami.text import MASK_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, Encoding, JapaneseTokenizer, train_tokenizer
from nami.text.normalize import is_separator, normalize
from nami.text.tokenizer import split_literals

FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Put the NFKC expansions of the tricky characters below into the small vocabulary, so that their
# continuation tokens are real pieces and not only [UNK]s.
EXTRA_LINES = ["株式会社とキログラムとtelの話。", "Tokyo abc ABC 2024年 file ガ パ", "カタカナ ひらがな 漢字 (1)"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> JapaneseTokenizer:
    return train_tokenizer(jaquad_context_lines(300) + EXTRA_LINES, tmp_path_factory.mktemp("fuzz-tok"),
                           vocab_size=2000, show_progress=False)


# ------------------------------------------------------------------------------- text strategy

UNITS = [
    # NFKC expansions: one source character, several normalised ones (﷽ ﷺ: whole Arabic phrases)
    "㍿", "㌔", "ﷺ", "½", "℡", "ﬁ", "¨", "⑴", "㈱", "ǅ", "İ",
    # half- and full-width forms, sound marks
    "ｶﾞ", "ﾊﾟ", "ｱ", "ﾞ", "ＡＢＣ", "１２３", "（", "）", "！",
    # combining marks, alone and after a base
    "\u0301", "\u3099", "\u309a", "e\u0301\u0323", "か\u3099",
    # emoji: plain, skin tone, ZWJ family, flag, variation selector, keycap
    "👍", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "❤\ufe0f", "1\ufe0f\u20e3", "☃",
    # separators and control characters
    " ", "\n", "\t", "\r\n", "\u3000", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\x0c",
    # format characters (dropped): zero-width space/joiners, soft hyphen, BOM, bidi mark
    "\u200b", "\u200c", "\u200d", "\u00ad", "\ufeff", "\u200e",
    # literal specials and near misses
    "[SEP]", "[MASK]", "[", "]", "[sep]", "SEP", "[SEP", "MASK]",
    # lone surrogates (undecodable command-line bytes, JSON escapes)
    "\ud800", "\udcff",
    # SentencePiece's and other tokenizers' markers, which must stay ordinary text here
    "\u2581", "<unk>", "[UNK]", "[CLS]", "[PAD]", " \u2047 ",
    # words
    "東京", "日本", "の", "は", "株式会社", "キロ", "Tokyo", "tel", "abc", "2024年", "カタカナ", "ー", "。",
]
JAPANESE = st.characters(min_codepoint=0x3041, max_codepoint=0x30FF) | st.characters(
    min_codepoint=0x4E00, max_codepoint=0x9FFF
)
ANY_CHAR = st.characters(exclude_categories=())  # every code point: surrogates, unassigned, private use
TEXTS = st.lists(
    st.sampled_from(UNITS) | st.text(JAPANESE, min_size=1, max_size=4) | ANY_CHAR, max_size=30
).map("".join)


# ------------------------------------------------------------------------ the rules as an oracle


@dataclass(frozen=True)
class Unit:
    """One non-separator character of the normalised text (or a whole literal special) and the
    ``[start, end)`` span of the source cluster it came from."""

    char: str
    cluster: tuple[int, int]


def units_of(text: str) -> list[Unit]:
    units = []
    for start, end, special in split_literals(text):
        if special is not None:
            units.append(Unit(text[start:end], (start, end)))
            continue
        norm = normalize(text[start:end])
        units += [
            Unit(char, (start + s, start + e))
            for char, s, e in zip(norm.text, norm.starts, norm.ends, strict=True)
            if char != " "
        ]
    return units


def spelling(text: str) -> str:
    """What the pieces of ``text`` must spell: the normalised text without separators."""
    return "".join(unit.char for unit in units_of(text))


def align(tokenizer: JapaneseTokenizer, text: str, encoding: Encoding) -> list[tuple[Unit, ...]]:
    """The units each token stands for; checks that the pieces spell the normalised text in order."""
    units = units_of(text)
    groups: list[tuple[Unit, ...]] = []
    pos = 0
    for token_id in encoding.ids:
        size = 1 if token_id in (UNK_ID, SEP_ID, MASK_ID) else len(tokenizer.id_to_piece(token_id))
        group = tuple(units[pos : pos + size])
        spelled = "".join(unit.char for unit in group)
        if token_id == UNK_ID:
            assert len(group) == 1 and tokenizer.encode(spelled).ids == [UNK_ID], (text, spelled)
        elif token_id in (SEP_ID, MASK_ID):
            assert spelled == SPECIAL_TOKENS[token_id], (text, spelled)
        else:
            assert spelled == tokenizer.id_to_piece(token_id), (text, spelled)
        groups.append(group)
        pos += size
    assert pos == len(units), f"pieces do not spell {spelling(text)!r} of {text!r}"
    return groups


def own_units(groups: list[tuple[Unit, ...]], k: int) -> tuple[Unit, ...]:
    """Units of token ``k`` whose source character no earlier token has (the rest continue one)."""
    taken = groups[k - 1][-1].cluster if k > 0 else None
    return tuple(unit for unit in groups[k] if unit.cluster != taken)


def rule_spans(groups: list[tuple[Unit, ...]]) -> list[tuple[int, int]]:
    """Spans as the rules of ``Encoding`` define them, from the units of each token."""
    spans = []
    for k, group in enumerate(groups):
        own = own_units(groups, k)
        end = group[-1].cluster[1]
        spans.append((own[0].cluster[0] if own else end, end))
    return spans


def check_encoding(tokenizer: JapaneseTokenizer, text: str) -> Encoding:
    """Encode ``text`` and check every property of the module docstring; returns the encoding."""
    encoding = tokenizer.encode(text)
    spans = encoding.offsets
    assert len(encoding.ids) == len(spans) == len(encoding.word_ids)
    # Word numbers increase along the text; a special literal is a word of its own.
    assert all(a <= b for a, b in pairwise(encoding.word_ids)), (text, encoding.word_ids)
    for k, token_id in enumerate(encoding.ids):
        if token_id in (SEP_ID, MASK_ID):
            assert encoding.word_ids.count(encoding.word_ids[k]) == 1, (text, k)
    # In the text, ordered, non-overlapping.
    assert all(0 <= start <= end <= len(text) for start, end in spans), (text, spans)
    assert all(end <= start for (_, end), (start, _) in pairwise(spans)), (text, spans)
    # The pieces spell the text, and every span is the one the rules give.
    groups = align(tokenizer, text, encoding)
    assert spans == rule_spans(groups), text
    # A non-empty span normalises to text starting with the token's own characters (all of its
    # piece unless it begins with the rest of an expanded character); specials span their literal.
    for k, (token_id, (start, end)) in enumerate(zip(encoding.ids, spans, strict=True)):
        if token_id in (SEP_ID, MASK_ID):
            assert text[start:end] == SPECIAL_TOKENS[token_id]
        elif start < end:
            own = "".join(unit.char for unit in own_units(groups, k))
            assert own and spelling(text[start:end]).startswith(own), (text, k, own)
        else:  # an empty span only continues an expanded character
            assert k > 0 and not own_units(groups, k) and spans[k - 1][1] == start, (text, k)
    # Every visible character is in exactly one span; the others are dropped by design.
    visible = {i for unit in units_of(text) for i in range(*unit.cluster)}
    owner = {i: k for k, (start, end) in enumerate(spans) for i in range(start, end)}
    covered = Counter(i for start, end in spans for i in range(start, end))
    for i, char in enumerate(text):
        assert not (covered[i] and is_separator(char)), (text, i, char)
        if i in visible:
            assert covered[i] == 1, (text, i, char)
        elif covered[i]:
            assert unicodedata.category(char) == "Cf" and spans[owner[i]][0] < i, (text, i, char)
        else:
            assert is_separator(char) or unicodedata.category(char) == "Cf", (text, i, char)
    # Decode of a token range equals its original substring (ranges on character boundaries).
    aligned = [k == 0 or groups[k][0].cluster != groups[k - 1][-1].cluster for k in range(len(spans))] + [True]
    for i in range(len(spans)):
        for j in [*range(i, min(i + 6, len(spans))), len(spans) - 1]:
            if j < i or not (aligned[i] and aligned[j + 1]):
                continue
            substring = text[spans[i][0] : spans[j][1]]
            assert spelling(substring) == "".join(unit.char for group in groups[i : j + 1] for unit in group)
            inside = {owner[c] for c in visible if spans[i][0] <= c < spans[j][1]}
            assert inside == set(range(i, j + 1)) - {k for k in range(i, j + 1) if spans[k][0] == spans[k][1]}
    return encoding


# ---------------------------------------------------------------------------------- tokenizer


@FUZZ
@given(TEXTS)
@example("㍿")  # the issue: 株式|会社 shared the span of ㍿; now 会社 is empty at its end
@example("東京㍿長")
@example("℡a")  # "te|la": la starts inside ℡ and spans only "a"
@example("½ 1⁄2")
@example("ﷺ")  # one character, several MeCab words
@example(" \u0301x")  # bug: a mark after a space joined its cluster, so a token spanned the space
@example("\n\u3099\u200b\u0301")
@example("\ud800東京\udcff")  # bug: a lone surrogate crashed MeCab (UnicodeEncodeError)
@example("[SEP]\u0301[MASK]ﾞ")
@example("👨\u200d👩\u200d👧 👍🏽 🇯🇵")
def test_offsets_on_generated_text(tokenizer: JapaneseTokenizer, text: str) -> None:
    check_encoding(tokenizer, text)


@FUZZ
@given(st.text(ANY_CHAR, max_size=40))
def test_offsets_on_arbitrary_code_points(tokenizer: JapaneseTokenizer, text: str) -> None:
    check_encoding(tokenizer, text)


def test_continuation_tokens_have_empty_spans(tokenizer: JapaneseTokenizer) -> None:
    encoding = check_encoding(tokenizer, "東京㍿。")
    assert tokenizer.decode(encoding.ids) == "東京株式会社。"
    assert encoding.offsets[0] == (0, 2)
    assert encoding.offsets[1] == (2, 3)  # the first token of ㍿ carries it
    assert set(encoding.offsets[2:-1]) == {(3, 3)}  # the rest are empty at its end
    assert encoding.offsets[-1] == (3, 4)
    assert check_encoding(tokenizer, "℡a").offsets[-1] == (1, 2)


def test_surrogates_and_controls_are_unk_or_separators(tokenizer: JapaneseTokenizer) -> None:
    encoding = check_encoding(tokenizer, "東京\udcff\x00大阪")
    assert encoding.ids[1] == UNK_ID and encoding.offsets[1] == (2, 3)
    assert [start for start, _ in encoding.offsets][2] == 4  # NUL separates, in no span


# ------------------------------------------------------------------- QA labels and zero-width


def _labelled_answers(features: Any, context: str) -> list[str]:
    """The answer text every labelled window decodes to; checks nothing unselectable is labelled."""
    answers = []
    for i in range(len(features)):
        offsets = features.context_offsets[i]
        selectable = offsets[:, 0] >= 0
        assert (offsets[selectable, 0] < offsets[selectable, 1]).all()  # no empty span is selectable
        start, end = features.start_positions[i], features.end_positions[i]
        if start:
            assert selectable[start] and selectable[end] and start <= end
            answers.append(context[offsets[start, 0] : offsets[end, 1]])
        else:
            assert end == 0
    return answers


@pytest.mark.parametrize("answer", ["㍿", "東京㍿", "㍿長", "½", "長", "℡"])
def test_answers_next_to_expanded_characters_are_labelled_exactly(tokenizer: JapaneseTokenizer,
                                                                   answer: str) -> None:
    context = "東京㍿長は½と℡の会社。"
    example_ = QAExample("q", "東京", context, (Answer(answer, context.index(answer)),), "", "t")
    for config in (FeatureConfig(max_length=64), FeatureConfig(max_length=12, doc_stride=2, max_question_tokens=2)):
        labelled = _labelled_answers(build_features([example_], tokenizer, config, show_progress=False), context)
        assert labelled and set(labelled) == {answer}


def test_answer_token_span_skips_trailing_empty_spans() -> None:
    # 株式 (0,1) 会社 (1,1) then a space, 長 (2,3): the answer "㍿ " ends on no real token.
    offsets = np.array([[0, 1], [1, 1], [2, 3]])
    assert answer_token_span(offsets, 0, 2) == (0, 0)
    assert answer_token_span(offsets, 0, 1) == (0, 0)
    assert answer_token_span(offsets, 1, 3) == (2, 2)
    assert answer_token_span(offsets, 1, 2) is None


@FUZZ
@given(TEXTS, st.data())
def test_labels_decode_to_token_aligned_answers(tokenizer: JapaneseTokenizer, context: str,
                                                data: st.DataObject) -> None:
    encoding = tokenizer.encode(context)
    real = [k for k, (start, end) in enumerate(encoding.offsets) if start < end and encoding.ids[k] != SEP_ID]
    if not real:
        return
    first = data.draw(st.sampled_from(real))
    last = data.draw(st.sampled_from([k for k in real if k >= first]))
    start, end = encoding.offsets[first][0], encoding.offsets[last][1]
    answer = context[start:end]
    example_ = QAExample("q", "東京", context, (Answer(answer, start),), "", "t")
    config = FeatureConfig(max_length=16, doc_stride=3, max_question_tokens=2)
    features = build_features([example_], tokenizer, config, show_progress=False)
    labelled = _labelled_answers(features, context)
    assert set(labelled) <= {answer}
    span = answer_token_span(np.asarray(encoding.offsets).reshape(-1, 2), start, end)
    assert span is not None and span[0] == first and span[1] <= last
    if span[1] - span[0] + 1 <= 9:  # fits in a window: 16 - ([CLS] + 2 + [SEP] + [SEP]) - stride 3 + 1
        assert labelled, (context, answer)


# ------------------------------------------------------------------------------ SQuAD loading

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR, max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
CONTEXT_CHARS = JAPANESE | st.sampled_from(list("AbcＸ１ 。\n㍿👍"))


@st.composite
def squad_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid SQuAD document (unique ids, answers at their answer_start)."""
    n_questions = 0
    articles = []
    for _ in range(draw(st.integers(1, 2))):
        paragraphs = []
        for _ in range(draw(st.integers(1, 2))):
            context = draw(st.text(CONTEXT_CHARS, min_size=1, max_size=20).filter(str.strip))
            visible = [i for i, char in enumerate(context) if not char.isspace()]
            qas = []
            for _ in range(draw(st.integers(1, 2))):
                start = draw(st.sampled_from(visible))
                end = draw(st.integers(start + 1, len(context)))
                n_questions += 1
                qas.append({"id": f"q{n_questions}", "question": draw(st.text(JAPANESE, min_size=1, max_size=6)),
                            "answers": [{"text": context[start:end], "answer_start": start}]})
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": draw(st.text(max_size=5)), "paragraphs": paragraphs})
    return {"version": "v1.1", "data": articles}


def _locations(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (key/index tuples) to every value inside ``node``."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for key, child in children:
        found.append((*path, key))
        found += _locations(child, (*path, key))
    return found


def _retype(value: Any) -> Any:
    """The same information with another JSON type."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return str(value) if value % 2 else float(value)
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return "null"


@st.composite
def mutated_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with 1-3 fields deleted, retyped, replaced or (answer_start) shifted."""
    doc = copy.deepcopy(draw(squad_docs()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_locations(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        operation = draw(st.sampled_from(["delete", "retype", "replace", "shift"]))
        if operation == "delete":
            del parent[key]
        elif operation == "retype":
            parent[key] = _retype(parent[key])
        elif operation == "replace":
            parent[key] = draw(JSON_VALUES)
        elif isinstance(parent[key], int):
            parent[key] += draw(st.integers(-3, 3))
        if not _locations(doc):
            break
    return doc


def _encode(doc: Any, ascii_only: bool) -> bytes:
    # Lone surrogates become \ud800 escapes (ascii_only) or CESU-8 bytes, which are not UTF-8.
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch file, rewritten by every example."""
    return tmp_path_factory.mktemp("squad-fuzz") / "doc.json"


def check_loading(path: Path) -> list[QAExample]:
    """The loading contract on any file; returns the examples that "skip" mode keeps."""
    examples, report = check_squad(path)  # never raises
    assert report.files == [str(path)] and report.questions == len(examples)
    for bad in report.bad:
        assert bad.file == str(path)
        assert isinstance(bad.id, str) and bad.id and isinstance(bad.reason, str) and bad.reason
        str(bad).encode("utf-8")  # printable by `nami data check`
    assert len({ex.id for ex in examples}) == len(examples)
    for ex in examples:
        assert ex.question.strip() and ex.context.strip() and ex.answers
        for answer in ex.answers:
            assert answer.text.strip() and ex.context[answer.start : answer.end] == answer.text
        for text in (ex.id, ex.question, ex.context, ex.title, *(a.text for a in ex.answers)):
            text.encode("utf-8")  # no lone surrogates: tokenizable, writable as predictions
    try:
        loaded = load_squad(path, on_bad_record="error")
    except DataValidationError as err:
        assert report.bad and err.bad == report.bad
    else:
        assert not report.bad and loaded == examples
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        skipped = load_squad(path, on_bad_record="skip")
    assert skipped == examples
    assert ("skipped" in stderr.getvalue()) == bool(report.bad)
    return skipped


@FUZZ
@given(squad_docs(), st.booleans())
def test_valid_documents_load_completely(squad_file: Path, doc: dict[str, Any], ascii_only: bool) -> None:
    squad_file.write_bytes(_encode(doc, ascii_only))
    examples = check_loading(squad_file)
    assert len(examples) == sum(len(p["qas"]) for a in doc["data"] for p in a["paragraphs"])
    squad_file.write_bytes(b"\xef\xbb\xbf" + _encode(doc, ascii_only))  # a UTF-8 BOM is fine
    assert check_loading(squad_file) == examples


@FUZZ
@given(mutated_docs(), st.booleans())
def test_mutated_records_are_reported_not_raised(squad_file: Path, doc: dict[str, Any], ascii_only: bool) -> None:
    squad_file.write_bytes(_encode(doc, ascii_only))
    check_loading(squad_file)


@FUZZ
@given(JSON_VALUES | st.builds(lambda data: {"data": data}, JSON_VALUES), st.booleans())
@example({"data": [{"paragraphs": [{"context": "東京", "qas": [
    {"id": "\ud800", "question": "q", "answers": [{"text": "東京", "answer_start": 0}]}]}]}]}, True)
def test_random_json_values_are_reported_not_raised(squad_file: Path, value: Any, ascii_only: bool) -> None:
    squad_file.write_bytes(_encode(value, ascii_only))
    check_loading(squad_file)


@FUZZ
@given(squad_docs(), st.data())
def test_damaged_bytes_are_reported_not_raised(squad_file: Path, doc: dict[str, Any], data: st.DataObject) -> None:
    raw = _encode(doc, ascii_only=False)
    damage = data.draw(st.sampled_from(["truncate", "insert", "utf-16", "bom-only"]))
    if damage == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif damage == "insert":
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    elif damage == "utf-16":
        raw = json.dumps(doc, ensure_ascii=False).encode("utf-16")
    else:
        raw = b"\xef\xbb\xbf"
    squad_file.write_bytes(raw)
    examples = check_loading(squad_file)
    if damage in ("truncate", "utf-16", "bom-only"):
        _, report = check_squad(squad_file)
        assert not examples and [bad.id for bad in report.bad] == [FILE_LEVEL_ID]


@FUZZ
@given(st.binary(max_size=200))
@example(b"[" * 100_000)  # bug: RecursionError escaped check_squad
@example(b'{"data": [' + b"1" * 5000 + b"]}")  # bug: ValueError (integer digit limit) escaped check_squad
@example(b'{"data": [{"paragraphs": [{"context": "\\ud800", "qas": []}]}]}')
@example(b"\xff\xfe{")
def test_random_bytes_are_reported_not_raised(squad_file: Path, raw: bytes) -> None:
    squad_file.write_bytes(raw)
    check_loading(squad_file)


def test_regression_reasons(squad_file: Path) -> None:
    squad_file.write_bytes(b"[" * 100_000)
    assert check_squad(squad_file)[1].bad[0].reason == "unreadable JSON: arrays/objects nested too deeply"
    squad_file.write_bytes(b'{"data": [' + b"1" * 5000 + b"]}")
    assert check_squad(squad_file)[1].bad[0].reason == (
        "unreadable JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"
    )
    squad_file.write_text(json.dumps({"data": [{"paragraphs": [{"context": "東京\ud800", "qas": []}]}]}))
    (bad,) = check_squad(squad_file)[1].bad
    assert bad.id == "data[0].paragraphs[0]"
    assert bad.reason == "'context' is not valid Unicode text: lone surrogate U+D800 at character 2"
    qa = {"id": "q1", "question": "何\udcff", "answers": [{"text": "東京", "answer_start": 0}]}
    squad_file.write_text(json.dumps({"data": [{"title": "\udcff", "paragraphs": [{"context": "東京", "qas": [qa]}]}]}))
    (bad,) = check_squad(squad_file)[1].bad
    assert (bad.id, bad.reason) == ("q1", "'question' is not valid Unicode text: lone surrogate U+DCFF at character 1")
    qa["question"] = "何?"
    squad_file.write_text(json.dumps({"data": [{"title": "\udcff", "paragraphs": [{"context": "東京", "qas": [qa]}]}]}))
    assert [ex.title for ex in load_squad(squad_file)] == [""]  # a title with a surrogate counts as absent
