"""Tests for nami.text: offsets back into the original text, specials, storage and errors.

A small tokenizer is trained once per module on a few hundred lines of JaQuAD train text.
"""

from __future__ import annotations

import copy
import json
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import jaquad_context_lines
from hypothesis import given, settings
from hypothesis import strategies as st

import nami.text.default
from nami.paths import JAQUAD_TRAIN, DataNotFoundError, default_data
from nami.text import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Encoding,
    JapaneseTokenizer,
    TokenizerError,
    default_tokenizer,
    train_tokenizer,
)
from nami.text.normalize import normalize
from nami.text.tokenizer import split_literals

# Make sure the width/case variants under test are in the small vocabulary.
EXTRA_LINES = ["東京(とうきょう)は日本の首都。ABC abc 123 [X] Tokyo タワー", "大阪と京都。", "株式会社"]


def _jaquad_shards() -> list[Path]:
    """The JaQuAD train shards (on the fixture data: its one hand-written shard)."""
    try:
        return sorted(default_data(JAQUAD_TRAIN).glob("*.json"))
    except DataNotFoundError:
        pytest.skip("JaQuAD train data not available")


_jaquad_lines = jaquad_context_lines


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _jaquad_lines(300) + EXTRA_LINES


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str], tmp_path_factory: pytest.TempPathFactory) -> JapaneseTokenizer:
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=2000, show_progress=False)


@pytest.fixture(scope="module")
def samples(corpus: list[str]) -> list[str]:
    """Seen and unseen text, with whitespace, full-width forms and literal specials."""
    unseen = _jaquad_lines(1000)[900:]
    mixed = "手塚治虫 [SEP] 戦後日本の\n漫画家。\u3000（ＡＢＣ）㍿ ｶﾞｷﾞ [MASK] ☃\t終"
    return [*corpus[:40], *unseen, mixed, "[SEP][SEP]  [MASK]"]


def _is_separator(char: str) -> bool:
    return normalize(char).text in ("", " ")


def _expected_spelling(text: str) -> str:
    """What the pieces must spell: normalised text without separators, specials kept literally."""
    return "".join(
        text[start:end] if special is not None else normalize(text[start:end]).text.replace(" ", "")
        for start, end, special in split_literals(text)
    )


def _assert_spells(tokenizer: JapaneseTokenizer, text: str, encoding: Encoding) -> None:
    """The pieces spell the normalised text; each [UNK] stands for one out-of-vocabulary char."""
    expected = _expected_spelling(text)
    pos = 0
    for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
        if token_id in (SEP_ID, MASK_ID):
            piece = text[start:end]
            assert piece == SPECIAL_TOKENS[token_id]
        elif token_id == UNK_ID:
            piece = expected[pos]
            assert tokenizer.encode(piece).ids == [UNK_ID], (text, piece)
        else:
            assert token_id >= len(SPECIAL_TOKENS)
            piece = tokenizer.id_to_piece(token_id)
        assert expected.startswith(piece, pos), (text, pos, piece)
        pos += len(piece)
    assert pos == len(expected), (text, expected[pos:])


def assert_offsets_exact(tokenizer: JapaneseTokenizer, text: str) -> None:
    """Spans are ordered, in bounds, never overlap, cover every visible character and spell the pieces.

    (tests/test_fuzz.py checks the exact span of every token against the rules of ``Encoding``.)
    """
    encoding = tokenizer.encode(text)
    ids, spans = encoding.ids, encoding.offsets
    assert len(ids) == len(spans) == len(encoding)
    assert all(0 <= start <= end <= len(text) for start, end in spans), (text, spans)
    assert all(end <= start for (_, end), (start, _) in pairwise(spans)), (text, spans)
    # An empty span is a continuation: a later token of the expanded character just before it.
    for i, (token_id, (start, end)) in enumerate(zip(ids, spans, strict=True)):
        if start == end:
            assert i > 0 and spans[i - 1][1] == start and token_id not in (SEP_ID, MASK_ID), (text, spans)
            owner = next(span for span in reversed(spans[:i]) if span[0] < span[1])
            assert _ends_in_expansion(text, owner), (text, spans)
    _assert_spells(tokenizer, text, encoding)
    # A token that does not continue an expanded character spells the start of its span's text.
    for i, (token_id, (start, end)) in enumerate(zip(ids, spans, strict=True)):
        owner = next((span for span in reversed(spans[:i]) if span[0] < span[1]), None)
        continued = owner is not None and _ends_in_expansion(text, owner)
        if start < end and token_id >= len(SPECIAL_TOKENS) and not continued:
            assert normalize(text[start:end]).text.replace(" ", "").startswith(tokenizer.id_to_piece(token_id))
    covered = [i for start, end in spans for i in range(start, end)]
    assert len(covered) == len(set(covered))
    visible = {i for i, char in enumerate(text) if not _is_separator(char)}
    assert set(covered) >= visible, [text[i] for i in sorted(visible - set(covered))]


def _ends_in_expansion(text: str, span: tuple[int, int]) -> bool:
    """Whether the last source character of ``span`` normalises to several characters."""
    start, end = span
    return normalize(text[start:end]).ends.count(end - start) >= 2


# ------------------------------------------------------------------------------ normalisation


def test_normalize_maps_every_char_back() -> None:
    norm = normalize("Ａ㍿ｶﾞ\u3000x\u200by")
    assert norm.text == "a株式会社ガ xy"
    assert norm.starts == [0, 1, 1, 1, 1, 2, 4, 5, 7]
    assert norm.ends == [1, 2, 2, 2, 2, 4, 5, 6, 8]


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=40))
def test_normalize_offsets_are_monotone(text: str) -> None:
    norm = normalize(text)
    assert len(norm.text) == len(norm.starts) == len(norm.ends)
    assert all(0 <= s < e <= len(text) for s, e in zip(norm.starts, norm.ends, strict=True))
    assert norm.starts == sorted(norm.starts) and norm.ends == sorted(norm.ends)


# ---------------------------------------------------------------------------------- encoding


def test_special_ids_are_fixed(tokenizer: JapaneseTokenizer) -> None:
    assert SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) == (0, 1, 2, 3, 4)
    ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    assert ids == (0, 1, 2, 3, 4)
    assert [tokenizer.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert 1000 < tokenizer.vocab_size <= 2000


def test_offsets_round_trip(tokenizer: JapaneseTokenizer, samples: list[str]) -> None:
    for text in samples:
        assert_offsets_exact(tokenizer, text)


# Units that stress the offset map: width variants, expansions, combining and sound marks,
# separators, an invisible format character, an unknown character and the literal specials.
TRICKY = [*"東京都のはガｶﾞﾞ㍿ＡBc１2（)ﬁ½\u3099\u0301 \n\u3000\u200b☃。", "[SEP]", "[MASK]", "[", "]"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(TRICKY), max_size=30).map("".join))
def test_offsets_round_trip_on_generated_text(tokenizer: JapaneseTokenizer, text: str) -> None:
    assert_offsets_exact(tokenizer, text)


def test_width_and_case_variants_share_ids(tokenizer: JapaneseTokenizer) -> None:
    half = tokenizer.encode("東京(とうきょう)ABC123")
    full = tokenizer.encode("東京（とうきょう）ａｂｃ１２３")
    assert half.ids == full.ids
    assert UNK_ID not in half.ids
    tokyo = tokenizer.encode("tokyo").ids
    assert tokenizer.encode("Tokyo").ids == tokenizer.encode("ＴＯＫＹＯ").ids == tokyo


def test_literal_specials_keep_exact_spans(tokenizer: JapaneseTokenizer) -> None:
    text = "東京 [SEP] 大阪[MASK]"
    encoding = tokenizer.encode(text)
    assert encoding.ids.count(SEP_ID) == 1 and encoding.ids.count(MASK_ID) == 1
    assert encoding.offsets[encoding.ids.index(SEP_ID)] == (3, 8)
    assert encoding.offsets[encoding.ids.index(MASK_ID)] == (11, 17)
    # Only the exact upper-case literals are special; [CLS] in text is ordinary text.
    for literal in ("[sep]", "[CLS]", "[ SEP ]"):
        ids = tokenizer.encode(literal).ids
        assert not set(ids) & {CLS_ID, SEP_ID, MASK_ID}, (literal, ids)


def test_whitespace_never_becomes_a_token(tokenizer: JapaneseTokenizer) -> None:
    assert len(tokenizer.encode(" \n\t\u3000\r\n ")) == 0
    spaced = tokenizer.encode("東京\n\n大阪\u3000と\t京都")
    assert spaced.ids == tokenizer.encode("東京 大阪 と 京都").ids
    assert all(not text.isspace() for text in ("東京\n\n大阪\u3000と\t京都"[s:e] for s, e in spaced.offsets))
    assert next(start for start, _ in spaced.offsets if start > 2) == 4  # 大 after the two newlines


def test_empty_string_encodes_to_nothing(tokenizer: JapaneseTokenizer) -> None:
    encoding = tokenizer.encode("")
    assert encoding == Encoding([], [], []) and len(encoding) == 0


def test_encoding_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        Encoding([5, 6], [(0, 1)], [0, 1])
    with pytest.raises(ValueError, match="word ids"):
        Encoding([5, 6], [(0, 1), (1, 2)], [0])


def test_word_ids_group_the_pieces_of_each_mecab_word(tokenizer: JapaneseTokenizer) -> None:
    from nami.text.segment import words

    text = "梅雨前線は揚子江気団とともに北上する。 [SEP] 小笠原諸島"
    encoding = tokenizer.encode(text)
    groups: dict[int, list[tuple[int, int]]] = {}
    for word, span in zip(encoding.word_ids, encoding.offsets, strict=True):
        groups.setdefault(word, []).append(span)
    assert list(groups) == sorted(groups)  # numbered in text order
    # Each group's pieces are contiguous and spell exactly one MeCab word (this text has no
    # characters that normalisation changes, so original and normalised words coincide).
    spelled = [text[spans[0][0] : spans[-1][1]] for spans in groups.values()]
    assert all(a[1] == b[0] for spans in groups.values() for a, b in pairwise(spans))
    expected = [*words("梅雨前線は揚子江気団とともに北上する。"), "[SEP]", *words("小笠原諸島")]
    assert spelled == expected


def test_unknown_characters_are_one_unk_each(tokenizer: JapaneseTokenizer) -> None:
    encoding = tokenizer.encode("東京☃☃都")
    assert encoding.ids[1:3] == [UNK_ID, UNK_ID]
    assert encoding.offsets[1:3] == [(2, 3), (3, 4)]


def test_expanded_character_gives_empty_continuation_spans(tokenizer: JapaneseTokenizer) -> None:
    # ㍿ -> 株式会社 is several tokens: the first spans ㍿, the others are empty at its end.
    encoding = tokenizer.encode("東京㍿。")
    assert tokenizer.decode(encoding.ids) == "東京株式会社。"
    expanded = [span for span in encoding.offsets if span[0] >= 2 and span[1] <= 3]
    assert len(expanded) >= 2
    assert expanded == [(2, 3)] + [(3, 3)] * (len(expanded) - 1)
    assert encoding.offsets[-1] == (3, 4)  # 。 keeps its own span
    # ½ -> 1⁄2: digits are split, so three tokens share one character.
    assert tokenizer.encode("½").offsets == [(0, 1), (1, 1), (1, 1)]


def test_decode_and_id_to_piece(tokenizer: JapaneseTokenizer) -> None:
    assert tokenizer.decode(tokenizer.encode("東京 [SEP] 大阪").ids) == "東京[SEP]大阪"
    with pytest.raises(IndexError):
        tokenizer.id_to_piece(tokenizer.vocab_size)


# ----------------------------------------------------------------------------------- storage


def test_save_load_round_trip(tokenizer: JapaneseTokenizer, samples: list[str], tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    loaded = JapaneseTokenizer.load(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model", "tokenizer.json"]
    assert loaded.fingerprint == tokenizer.fingerprint
    assert len(tokenizer.fingerprint) == 16
    assert loaded.vocab_size == tokenizer.vocab_size
    assert [loaded.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["special_tokens"] == {
        token: i for i, token in enumerate(SPECIAL_TOKENS)
    }
    for text in samples:
        assert loaded.encode(text) == tokenizer.encode(text)
    # DataLoader workers receive the tokenizer through __getstate__/__setstate__ (as deepcopy does).
    copied = copy.deepcopy(tokenizer)
    assert copied.encode(samples[0]) == tokenizer.encode(samples[0])


def _copy(tokenizer: JapaneseTokenizer, directory: Path) -> Path:
    tokenizer.save(directory)
    return directory


def test_load_missing_or_corrupt_raises(tokenizer: JapaneseTokenizer, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="missing"):
        JapaneseTokenizer.load(tmp_path / "nowhere")
    only_config = _copy(tokenizer, tmp_path / "only_config")
    (only_config / "spm.model").unlink()
    with pytest.raises(TokenizerError, match=r"spm\.model"):
        JapaneseTokenizer.load(only_config)
    bad_model = _copy(tokenizer, tmp_path / "bad_model")
    (bad_model / "spm.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError):
        JapaneseTokenizer.load(bad_model)
    bad_json = _copy(tokenizer, tmp_path / "bad_json")
    (bad_json / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerError, match="corrupt"):
        JapaneseTokenizer.load(bad_json)
    old_format = _copy(tokenizer, tmp_path / "old_format")
    config = json.loads((old_format / "tokenizer.json").read_text())
    (old_format / "tokenizer.json").write_text(json.dumps({**config, "format_version": 0}))
    with pytest.raises(TokenizerError, match="format version"):
        JapaneseTokenizer.load(old_format)


# ---------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("texts", "options", "message"),
    [
        ([], {}, "empty corpus"),
        (["", " \n\u3000"], {}, "empty corpus"),
        ("東京", {}, "not a single string"),
        (["東京"], {"vocab_size": 8}, "vocab_size"),
        (["東京"], {"vocab_size": "300"}, "vocab_size"),
        (["東京"], {"vocab_size": 300.0}, "vocab_size"),
        (["東京"], {"model_type": "wordpiece"}, "model_type"),
    ],
)
def test_train_rejects_bad_input(texts: object, options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(texts, tmp_path, show_progress=False, **options)  # type: ignore[arg-type]
    assert not (tmp_path / "spm.model").exists()


def test_train_vocab_smaller_than_alphabet_raises(corpus: list[str], tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="SentencePiece training failed"):
        train_tokenizer(corpus, tmp_path, vocab_size=100, show_progress=False)


def test_bpe_tokenizer(corpus: list[str], tokenizer: JapaneseTokenizer, tmp_path: Path) -> None:
    bpe = train_tokenizer(corpus[:100], tmp_path, vocab_size=1200, model_type="bpe", show_progress=False)
    assert [bpe.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert bpe.config["model_type"] == "bpe"
    assert bpe.fingerprint != tokenizer.fingerprint
    assert_offsets_exact(bpe, corpus[0] + " [SEP] " + corpus[150])


def test_training_is_deterministic(corpus: list[str], tokenizer: JapaneseTokenizer, tmp_path: Path) -> None:
    again = train_tokenizer(corpus, tmp_path, vocab_size=2000, show_progress=False)
    assert again.fingerprint == tokenizer.fingerprint


def test_default_tokenizer_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shards = _jaquad_shards()
    monkeypatch.setattr(nami.text.default, "_corpus_files", lambda: shards[:1])  # one shard: fast
    monkeypatch.setenv("NAMI_CACHE", str(tmp_path))
    trainings = []
    train = nami.text.default._train
    monkeypatch.setattr(nami.text.default, "_train", lambda *a, **k: trainings.append(1) or train(*a, **k))
    first = default_tokenizer(5000)
    (cached,) = (tmp_path / "tokenizers").iterdir()
    assert cached.name.startswith("jaquad-train-unigram-5000-")
    assert "JaQuAD train" in first.config["training_corpus"]["description"]
    assert default_tokenizer(5000).fingerprint == first.fingerprint and len(trainings) == 1  # loaded, not retrained
    assert sorted(p.name for p in (tmp_path / "tokenizers").iterdir()) == [cached.name]
    rebuilt = default_tokenizer(5000, rebuild=True)
    assert rebuilt.fingerprint == first.fingerprint and len(trainings) == 2  # retrained, deterministically
