"""Bad input from users: corpus files (``nami tokenizer train --corpus``) and ``nami ask``.

Every case is listed, with what the user sees, in docs/reliability_inputs.md.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from nami.cli import main
from nami.data import corpus
from nami.data.corpus import MAX_LINE_CHARS, CorpusError, read_corpus
from nami.pipelines import ask
from nami.runs.config import TrainConfig
from nami.training.loop import train

# ------------------------------------------------------------------------------------ corpora


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def corpus_error(paths: list[Path]) -> str:
    with pytest.raises(CorpusError) as info:
        read_corpus(paths)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_good_text_file_lines_are_stripped_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "\ufeff  東京\r\n\n\x1b[31m色\x1b[0m\n\t大阪".encode())
    assert read_corpus([path]) == ["東京", "\x1b[31m色\x1b[0m", "大阪"]  # BOM, CRLF, ANSI colours are fine


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\n  \n\xe3\x80\x80\r\n", "no text lines (only blank lines)"),
        (b"\xef\xbb\xbf", "no text lines (only blank lines)"),
        (b"text\nPK\x03\x04\x00\x00binary", "line 2 has a NUL byte: a binary file, not UTF-8 text"),
        (b"\x01\x02\x03\x04ab\n" * 50, "200 of the first 300 characters are control characters: a binary file"),
        ("東京\n大阪\n".encode("shift_jis"), "not UTF-8 text: line 1 has byte 0x93 at column 1"),
        ("ok\n\nnaïve".encode("latin-1"), "not UTF-8 text: line 3 has byte 0xef at column 3"),
        ("あ" * (MAX_LINE_CHARS + 1), f"line 1 is longer than {MAX_LINE_CHARS:,} characters"),
    ],
    ids=["empty", "blank-lines", "bom-only", "nul", "controls", "shift-jis", "latin-1", "long-line"],
)
def test_bad_text_files_name_file_and_line(tmp_path: Path, content: bytes | str, message: str) -> None:
    path = write(tmp_path / "corpus.txt", content)
    assert corpus_error([path]).startswith(f"corpus file {path}: {message}")


def test_messages_are_exact(tmp_path: Path) -> None:
    nul = write(tmp_path / "nul.txt", b"a\n\x00")
    assert corpus_error([nul]) == f"corpus file {nul}: line 2 has a NUL byte: a binary file, not UTF-8 text"
    long = write(tmp_path / "long.txt", "x\n" + "あ" * (MAX_LINE_CHARS + 1))
    assert corpus_error([long]) == (
        f"corpus file {long}: line 2 is longer than 1,000,000 characters (one document per line: "
        "is a line break missing?)"
    )


def test_line_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "limit.txt", "あ" * MAX_LINE_CHARS + "\n")
    assert [len(text) for text in read_corpus([path])] == [MAX_LINE_CHARS]


def test_overlong_line_is_refused_after_reading_at_most_the_byte_cap(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A line is read at most 4 * MAX_LINE_CHARS (+1) bytes at a time, so a huge one cannot fill memory.
    monkeypatch.setattr(corpus, "MAX_LINE_CHARS", 4)
    monkeypatch.setattr(corpus, "_MAX_LINE_BYTES", 16)
    path = write(tmp_path / "c.txt", "abcd\n" + "b" * 100)
    assert corpus_error([path]).startswith(f"corpus file {path}: line 2 is longer than 4 characters")


def test_control_characters_below_the_threshold_are_text(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "\x07東京は日本の首都\n")  # 1 of 10 characters
    assert read_corpus([path]) == ["\x07東京は日本の首都"]


def test_missing_paths_and_directories(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    assert corpus_error([missing]) == f"corpus file {missing}: not found"
    texts = tmp_path / "texts"
    texts.mkdir()
    write(texts / "a.txt", "東京")
    assert corpus_error([texts]) == (
        f"corpus directory {texts}: no *.json SQuAD shards in it (name text files one by one)"
    )
    with pytest.raises(CorpusError, match="no files given"):
        read_corpus([])
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    assert corpus_error([fifo]) == f"corpus file {fifo}: not a regular file"


def test_bad_squad_corpus_files(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.json", '{"data": [')
    message = corpus_error([broken])
    assert message.startswith(f"corpus file {broken}: not usable SQuAD data: {broken}: <file>: malformed JSON")
    empty = write(tmp_path / "empty.json", '{"data": []}')
    assert corpus_error([empty]) == (f"corpus file {empty}: not usable SQuAD data: {empty}: <file>: no questions "
                                     "(an empty SQuAD file)")
    missing = tmp_path / "missing.json"
    assert corpus_error([missing]) == f"corpus file {missing}: not usable SQuAD data: {missing}: <file>: file not found"


def test_cli_prints_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(tmp_path / "empty.txt", b"")
    assert main(["tokenizer", "train", "--corpus", str(empty), "--out", str(tmp_path / "tok"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"nami: error: corpus file {empty}: empty file\n"
    assert not (tmp_path / "tok").exists()


# ---------------------------------------------------------------------------------- nami ask


@pytest.mark.parametrize(
    ("context", "question", "message"),
    [
        ("", "どこ?", "--context is empty"),
        (" \n\t\u3000", "どこ?", "--context has no visible text (only whitespace, control or format characters)"),
        ("\x00\x1b\x7f\u200b\ufeff", "どこ?", "--context has no visible text"),
        ("東京", "", "--question is empty"),
        ("東京", "\r\n ", "--question has no visible text"),
        ("東京\udcff", "どこ?", "--context is not valid text: undecodable byte 0xff at character 2 (pass UTF-8)"),
        ("東京", "\ud800?", "--question is not valid text: lone surrogate U+D800 at character 0"),
    ],
)
def test_ask_rejects_unusable_text_naming_the_option(context: str, question: str, message: str) -> None:
    # Input is checked before the run is loaded: no run directory is needed.
    with pytest.raises(ValueError) as info:
        ask("no-such-run", context=context, question=question)
    assert str(info.value).startswith(message)


def test_ask_rejects_n_best_below_one() -> None:
    with pytest.raises(ValueError, match=r"^--n-best=0: expected >= 1$"):
        ask("no-such-run", context="東京", question="どこ?", n_best=0)


def test_cli_ask_reports_empty_context_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--checkpoint", "no-such-run", "--context", " ", "--question", "何?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nami: error: --context has no visible text") and err.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_run(tiny_squad: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 20-step tiny model with short windows (cheap; answers need not be good)."""
    threads = torch.get_num_threads()
    config = TrainConfig.from_dict(dict(
        arch="transformer", preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad),
        tokenizer=str(tiny_tokenizer_dir), max_length=48, doc_stride=16, max_question_tokens=16, batch_size=16,
        max_steps=20, eval_every_minutes=None, eval_subset=16, precision="fp32", threads=1,
        runs_dir=str(tmp_path_factory.mktemp("ask-runs")), run_name="ask",
    ))
    try:
        yield train(config, quiet=True).run_dir
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paragraph(tiny_squad: Path) -> dict[str, Any]:
    return json.loads(tiny_squad.read_text(encoding="utf-8"))["data"][0]["paragraphs"][0]


def assert_exact_candidates(result: dict[str, Any], context: str) -> None:
    assert result["candidates"], result
    assert result["answer"] == result["candidates"][0]["text"]
    for cand in result["candidates"]:
        assert cand["text"] and context[cand["start"] : cand["end"]] == cand["text"], cand


def test_ask_long_context_uses_several_windows(tiny_run: Path, paragraph: dict[str, Any]) -> None:
    context = "\n".join([paragraph["context"]] * 6)
    result = ask(tiny_run, context=context, question=paragraph["qas"][0]["question"], n_best=5)
    assert result["windows"] >= 4
    assert len(result["candidates"]) == 5
    assert_exact_candidates(result, context)


@pytest.mark.parametrize(
    "prefix",
    [
        "The quick brown fox — naïve café. ",
        "👨\u200d👩\u200d👧 🇯🇵 👍🏽 ❤\ufe0f ",
        "\x00\x1b[31m\x7f\x85\u2028\u200b\ufeff\x01",
        "㍿㌔½℡ﷺ ｶﾞ\u3099 ",
        "[SEP] [MASK] ",
    ],
    ids=["latin", "emoji", "controls", "expansions", "specials"],
)
def test_ask_odd_text_keeps_offsets_exact(tiny_run: Path, paragraph: dict[str, Any], prefix: str) -> None:
    context = prefix + paragraph["context"] + prefix
    result = ask(tiny_run, context=context, question=prefix + paragraph["qas"][0]["question"], n_best=3)
    assert_exact_candidates(result, context)


def test_ask_expanded_character_alone_is_the_whole_answer(tiny_run: Path) -> None:
    # ㍿ -> 株式会社 is several tokens, but only the first (spanning ㍿) can be an answer boundary.
    result = ask(tiny_run, context="㍿", question="会社は?", n_best=3)
    assert [(c["text"], c["start"], c["end"]) for c in result["candidates"]] == [("㍿", 0, 1)]


def test_ask_context_without_answerable_tokens_gives_no_answer(tiny_run: Path) -> None:
    result = ask(tiny_run, context="[SEP]", question="何?")
    assert result["answer"] == "" and result["candidates"] == [] and result["windows"] == 1


@pytest.mark.parametrize("options, message", [
    (dict(task="generative-qa", question_match=True), "question_match=True is read by task qa only: this generative-qa"),
    (dict(task="qa", num_beams=4), "num_beams=4 is read by task generative-qa only"),
    (dict(task="clm", tie_embeddings=False), "tie_embeddings=False is read by task mlm only"),
    (dict(task="clm", mlm_probability=0.3), "mlm_probability"),
])
def test_options_a_task_never_reads_are_named(options, message):
    from nami.runs.config import TrainConfig

    assert [line for line in TrainConfig.from_dict(options).ignored_options() if message in line]
    assert TrainConfig.from_dict({"task": options["task"]}).ignored_options() == []  # the defaults are fine


@pytest.mark.parametrize("config, says", [
    ({"zero_optimization": {"stage": 3}, "optimizer": {"type": "SGD", "params": {"lr": 100}}}, '"optimizer" section'),
    ({"zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupLR"}}, '"scheduler" section'),
    ({"zero_optimization": 3}, "zero_optimization: expected an object"),
    ({"zero_optimization": {"stage": 3}, "bf16": True}, "bf16: expected an object"),
    ({"zero_optimization": {"stage": 3}, "gradient_clipping": float("nan")}, "gradient_clipping=nan"),
    ({"zero_optimization": {"stage": 3}, "gradient_clipping": "x"}, "gradient_clipping='x'"),
    ({"zero_optimization": {"stage": 3}, "train_batch_size": 7}, "train_batch_size=7 must be"),
    ({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu=0"),
])
def test_a_deepspeed_config_nami_would_ignore_or_deepspeed_would_crash_on_is_refused(tmp_path, config, says):
    import json

    from nami.runs.deepspeed import deepspeed_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(says)):
        deepspeed_config("zero3", str(path), global_batch=32, world=1, max_grad_norm=1.0)


def test_a_stale_extension_build_lock_is_found(tmp_path):
    """A DeepSpeed op build killed midway leaves torch's build lock, and every later ZeRO run waited on it
    forever; nami names it instead (fresh locks of a build in progress are left alone)."""
    from nami.training.distributed import stale_extension_locks

    op = tmp_path / "py311_cpu" / "cpu_adam"
    op.mkdir(parents=True)
    (op / "lock").write_text("")
    assert stale_extension_locks(tmp_path) == []  # fresh: a build may hold it right now
    old = time.time() - 3600
    os.utime(op / "lock", (old, old))
    assert stale_extension_locks(tmp_path) == [op / "lock"]
    assert stale_extension_locks(tmp_path / "none") == []


def test_a_name_clash_names_both_modules():
    import torch

    from nami.models.registry import register_mixer

    class Mine(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match=r"registered by nami\.models\.wave\.WaveLayer; .*Mine cannot take its name"):
        register_mixer("wave", Mine)
