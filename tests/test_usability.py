"""A new user's first hour: self-explaining commands, training you can watch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nami.cli import _option_fields, build_parser, main

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "runs" / "wave"
DATA = FIXTURES / "tiny_qa.json"


def help_of(*command: str) -> str:
    import os
    from unittest import mock

    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    with mock.patch.dict(os.environ, {"COLUMNS": "10000"}):  # argparse wraps at $COLUMNS: not inside smoke-pretrain
        return parser.format_help()


def test_every_training_option_has_help_text():
    from nami.cli import _model_field_help
    from nami.runs.config import OPTION_HELP

    helps = {**_model_field_help(), **OPTION_HELP}
    missing = [name for name, _, _ in _option_fields() if not helps.get(name)]
    assert not missing, missing


def test_task_specific_options_are_offered_only_where_they_apply():
    train, pretrain = help_of("train"), help_of("pretrain")
    assert "--doc-stride" in train and "--doc-stride" not in pretrain
    assert "--mlm-probability" in pretrain and "--mlm-probability" not in train
    assert "--loss-impl" in train and "--loss-impl" in pretrain  # generative QA and pretraining use it
    assert "overlap" in train  # --doc-stride is documented against Hugging Face's meaning
    assert "{tiny,small,base}" in train  # choices are shown


def test_compare_help_lists_every_preset_with_its_duration():
    from nami.reports.presets import COMPARE_PRESETS

    text = " ".join(help_of("compare").split())
    for name in COMPARE_PRESETS:
        assert f"{name} (" in text, name
    assert "quick (3.5 training min/model)" in text


def test_loss_filter_outside_masked_lm_pretraining_is_refused():
    from nami.runs.config import TrainConfig

    with pytest.raises(ValueError, match="loss_filter=paper: applies to masked-LM pretraining only"):
        TrainConfig.from_dict({"task": "clm", "loss_filter": "paper"})


def test_quiet_training_still_prints_the_run_directory_and_final_scores(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--tokenizer", str(RUN / "tokenizer"), "--train-data", str(DATA),
            "--eval-data", str(DATA), "--max-length", "64", "--max-steps", "2", "--eval-every-minutes", "0.01",
            "--runs-dir", str(tmp_path), "--run-name", "r", "--threads", "1", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2, out
    assert out[0].endswith(f"-> {tmp_path / 'r'}") and "EM" in out[1] and out[1].endswith(f"-> {tmp_path / 'r'}")


def test_a_time_budget_gives_a_bar_with_a_total(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--tokenizer", str(RUN / "tokenizer"), "--train-data", str(DATA),
            "--eval-data", str(DATA), "--max-length", "64", "--max-minutes", "0.02", "--runs-dir", str(tmp_path),
            "--run-name", "r", "--threads", "1", "--eval-every-minutes", "10"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "/1 s of training" in err, err[-2000:]


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("tensorboard")
    from nami.runs.config import TrainConfig
    from nami.training.loop import train

    config = TrainConfig.from_dict(dict(
        preset="tiny", tokenizer=str(RUN / "tokenizer"), train_data=[str(DATA)], eval_data=str(DATA), max_length=64,
        max_steps=4, log_every=1, eval_every_minutes=None, runs_dir=str(tmp_path), run_name="tb", threads=1,
        log_with="tensorboard"))
    run = train(config, quiet=True).run_dir
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, list((run / "tensorboard").rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [r["loss"] for r in logged if r["type"] == "train"]
    assert losses == pytest.approx(expected, rel=1e-6)


def test_data_check_lists_each_bad_record_once(tmp_path, capsys):
    data = {"data": [{"title": "t", "paragraphs": [{"context": "東京は首都", "qas": [
        {"id": "q1", "question": "首都は？", "answers": [{"text": "大阪", "answer_start": 0}]}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    assert main(["data", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("q1") == 1, captured
    assert "bad records: 1" in captured.err


REPO = Path(__file__).resolve().parents[1]
# README quick-start commands that need no trained run (the others need runs/<run> or hours of CPU).
NEEDS_NO_RUN = ("nami data check", "nami report", "nami baseline lexical", "nami --help", "nami --version",
                "nami compare --help", "nami train --help")


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text("utf-8")
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [c for c in commands if c.startswith(NEEDS_NO_RUN)]


@pytest.mark.slow
def test_readme_quick_start_commands_that_need_no_run_succeed_as_written(tmp_path, monkeypatch, capsys):
    import shlex
    import shutil

    from nami.paths import DataNotFoundError, data_root

    from conftest import on_fixture_data

    try:
        data_root()
    except DataNotFoundError:
        pytest.skip("no data directory")
    if on_fixture_data():
        pytest.skip("README's commands name the real data files (the tests run on the committed fixture data)")
    commands = quick_start_commands()
    assert len(commands) >= 5, commands  # the README keeps such lines
    monkeypatch.chdir(REPO)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "report":  # on a copy: a committed report is never rewritten by the tests
            copy = tmp_path / Path(argv[1]).name
            shutil.copytree(REPO / argv[1], copy, ignore=shutil.ignore_patterns("runs"))
            argv[1] = str(copy)
        try:
            code = main(argv)
        except SystemExit as stop:  # --help / --version
            code = stop.code
        assert code in (0, None), (command, capsys.readouterr().err[-2000:])
    capsys.readouterr()


def test_top_level_help_names_the_environment_variables():
    text = build_parser().format_help()
    for name in ("NAMI_DATA", "NAMI_CACHE", "NAMI_PLUGINS", "NAMI_DEBUG"):
        assert name in text


def test_preset_tiny_is_a_quick_first_run_unless_told_otherwise():
    """`nami train --preset tiny` (any --arch, the variant table's names too): a small tokenizer on two
    shards, short windows, a small batch, 30 s; every option given on the command line wins."""
    from nami.cli import TINY_FIRST_USE, build_parser, train_config_from_args

    parser = build_parser()
    quick = train_config_from_args(parser.parse_args(["train", "--arch", "wave+conv", "--preset", "tiny"]))
    assert quick.model.name == "tiny" and quick.max_minutes == 0.5
    for name, value in TINY_FIRST_USE.items():
        assert getattr(quick, name) == value, name
    assert quick.train_data is None or 1 <= len(quick.train_data) <= 2
    given = train_config_from_args(parser.parse_args(
        ["train", "--preset", "tiny", "--max-length", "256", "--max-steps", "7", "--tokenizer", "tok"]))
    assert given.max_length == 256 and given.max_steps == 7 and given.max_minutes is None
    assert given.vocab_size == 32000 and given.tokenizer_shards is None  # the given tokenizer decides
    small = train_config_from_args(parser.parse_args(["train", "--preset", "small"]))
    assert small.max_length == 384 and small.tokenizer_shards is None and small.max_minutes is None
    pretrain = parser.parse_args(["pretrain", "--preset", "tiny"])
    pretrain.task = "mlm"
    config = train_config_from_args(pretrain)
    assert config.max_length == 128 and config.doc_stride == 128  # QA-only options are left alone
