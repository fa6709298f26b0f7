"""The command line: exit codes and messages for data checks and bad input (no tracebacks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from nami.cli import main


def write(path, obj) -> str:
    path.write_text(json.dumps(obj, ensure_ascii=False), "utf-8")
    return str(path)


GOOD = {"data": [{"title": "t", "paragraphs": [{"context": "東京は日本の首都。", "qas": [
    {"id": "q1", "question": "日本の首都は?", "answers": [{"text": "東京", "answer_start": 0}]}]}]}]}


def test_data_check_clean_file_exits_0_with_summary(tmp_path, capsys):
    assert main(["data", "check", write(tmp_path / "good.json", GOOD)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"questions:\s+1\b", out), out


def test_data_check_bad_records_exit_1_one_line_each(tmp_path, capsys):
    bad = json.loads(json.dumps(GOOD))
    qas = bad["data"][0]["paragraphs"][0]["qas"]
    qas.append({"id": "q2", "question": "?", "answers": [{"text": "大阪", "answer_start": 0}]})
    qas.append({"id": "q3", "question": "", "answers": [{"text": "東京", "answer_start": 0}]})
    path = write(tmp_path / "bad.json", bad)
    assert main(["data", "check", path]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: q2: ") and "answer_start" in lines[0]
    assert lines[1].startswith(f"{path}: q3: ")


def test_data_check_truncated_json_is_reported_not_raised(tmp_path, capsys):
    path = tmp_path / "trunc.json"
    path.write_text(json.dumps(GOOD, ensure_ascii=False)[:-7], "utf-8")
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert str(path) in out and "JSON" in out


def test_train_on_bad_data_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe not utf-8")
    assert main(["train", "--train-data", str(path), "--eval-data", str(path), "--quiet",
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nami: error:") and str(path) in err and "UTF-8" in err and "Traceback" not in err


def test_evaluate_reports_missing_predictions(tmp_path, capsys):
    data = write(tmp_path / "good.json", GOOD)
    preds = write(tmp_path / "pred.json", {})
    assert main(["evaluate", "--data", data, "--predictions", preds]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"exact_match": 0.0, "f1": 0.0, "count": 1}
    assert "q1" in captured.err


def test_evaluate_malformed_predictions_names_the_file(tmp_path, capsys):
    data = write(tmp_path / "good.json", GOOD)
    preds = tmp_path / "pred.json"
    preds.write_text("{oops", "utf-8")
    assert main(["evaluate", "--data", data, "--predictions", str(preds)]) == 2
    assert str(preds) in capsys.readouterr().err


def test_predict_on_a_missing_run_is_a_clear_error(tmp_path, capsys):
    data = write(tmp_path / "good.json", GOOD)
    assert main(["predict", "--checkpoint", str(tmp_path / "nope"), "--data", data, "--output",
                 str(tmp_path / "o.json")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", str(tmp_path / "empty"), "--data", data, "--output",
                 str(tmp_path / "o.json")]) == 2
    assert "not a nami run directory" in capsys.readouterr().err


def test_tokenizer_train_cli_writes_a_loadable_tokenizer(tiny_squad, tmp_path, capsys):
    from nami.text import JapaneseTokenizer

    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(tiny_squad), "--out", str(out), "--vocab-size", "800",
                 "--quiet"]) == 0
    tok = JapaneseTokenizer.load(out)
    enc = tok.encode("東京は日本の首都です。")
    assert len(enc.ids) > 0 and tok.vocab_size <= 800


def test_module_entry_point_runs_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nami", "compare", "--preset", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown compare preset" in proc.stderr and "Traceback" not in proc.stderr


def test_training_curves_plot_is_written(tmp_path):
    from nami.reports.plots import plot_training_curves, smooth

    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    runs = {}
    for name, offset in (("wave", 0.0), ("transformer", 1.0)):
        run = tmp_path / name
        run.mkdir()
        records = [{"type": "train", "step": s, "train_seconds": 60.0 * s, "loss": 4.0 - s / 10 + offset}
                   for s in range(5)]
        records += [{"type": "eval", "step": 4, "train_seconds": 240.0, "f1": 20.0 + offset},
                    {"type": "final_eval", "train_seconds": 300.0, "f1": 25.0 + offset}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs[name] = run
    out = plot_training_curves(runs, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_json_and_none_options_parse_on_the_command_line(tmp_path):
    from nami.cli import build_parser, train_config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--branches", "conv", "--branch-schedule", '{"conv": 0.5}',
                              "--eval-every-minutes", "none", "--max-minutes", "3"])
    config = train_config_from_args(args)
    assert config.branch_schedule == {"conv": 0.5} and config.eval_every_minutes is None and config.max_minutes == 3
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert ":data:" not in help_text and "(default: all cores) (default" not in help_text
    assert "e.g. 'wave wave attention wave'" in " ".join(help_text.split())


def test_branch_schedule_that_is_not_json_is_one_line(capsys):
    import pytest

    with pytest.raises(SystemExit) as exited:  # argparse's exit, as for every other bad option value
        main(["train", "--branch-schedule", "conv=0.5"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--branch-schedule" in err and "JSON object" in err and "Traceback" not in err


def test_a_runs_config_json_can_seed_a_new_run():
    from pathlib import Path

    from nami.cli import build_parser, train_config_from_args

    run_config = Path(__file__).parent / "fixtures" / "runs" / "wave" / "config.json"
    args = build_parser().parse_args(["train", "--config", str(run_config), "--lr", "0.01"])
    config = train_config_from_args(args)
    saved = json.loads(run_config.read_text())["train"]
    assert config.arch == saved["arch"] and config.max_steps == saved["max_steps"] and config.lr == 0.01
    assert config.run_name != saved["run_name"]  # a new run, not the old one's directory


def test_bad_value_in_a_config_file_names_the_file(tmp_path, capsys):
    path = write(tmp_path / "c.json", {"lr": "fast"})
    assert main(["train", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and path in err


def test_generate_refuses_top_k_without_a_temperature(capsys):
    from pathlib import Path

    run = Path(__file__).parent / "fixtures" / "runs" / "wave"
    assert main(["generate", "--checkpoint", str(run), "--prompt", "x", "--top-k", "5"]) == 2
    assert "--temperature" in capsys.readouterr().err


def test_a_squad_file_without_questions_is_a_bad_file(tmp_path, capsys):
    path = write(tmp_path / "empty.json", {"data": []})
    assert main(["data", "check", path]) == 1
    assert f"{path}: <file>: no questions" in capsys.readouterr().out
    assert main(["evaluate", "--data", path, "--predictions", write(tmp_path / "p.json", {})]) != 0
    err = capsys.readouterr().err
    assert path in err and "evaluate_predictions" not in err


def test_evaluating_predictions_of_another_dataset_is_an_error(tmp_path, capsys):
    data = write(tmp_path / "good.json", GOOD)
    assert main(["evaluate", "--data", data, "--predictions", write(tmp_path / "p.json", {"other-1": "x"})]) == 2
    err = capsys.readouterr().err
    assert "none of its 1 question ids" in err and data in err
    assert main(["evaluate", "--data", data, "--predictions", write(tmp_path / "q.json", {"q1": "東京"})]) == 0


@pytest.mark.slow
def test_a_plugin_mixer_trains_and_predicts_from_the_command_line(tmp_path):
    """README: a module in $NAMI_PLUGINS registers a mixer; `nami train --arch` and `nami predict` know it."""
    import os
    from pathlib import Path

    (tmp_path / "my_mixers.py").write_text(
        "import torch\nfrom nami import register_mixer\n\n\n@register_mixer('plugin_mean')\n"
        "class MeanMixer(torch.nn.Module):\n    def __init__(self, config):\n        super().__init__()\n"
        "        self.proj = torch.nn.Linear(config.d_model, config.d_model)\n\n"
        "    def forward(self, x, inputs):\n        keep = inputs.padding_mask[..., None].to(x.dtype)\n"
        "        mean = (x * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)\n"
        "        return self.proj(x + mean)\n", "utf-8")
    fixtures = Path(__file__).parent / "fixtures"
    data = str(fixtures / "tiny_qa.json")
    env = {**os.environ, "NAMI_PLUGINS": "my_mixers", "PYTHONPATH": str(tmp_path)}
    run = [sys.executable, "-m", "nami"]
    trained = subprocess.run([*run, "train", "--arch", "plugin_mean", "--preset", "tiny", "--train-data", data,
                              "--eval-data", data, "--tokenizer", str(fixtures / "runs/wave/tokenizer"),
                              "--max-length", "64", "--max-steps", "2", "--eval-every-minutes", "none",
                              "--runs-dir", str(tmp_path / "runs"), "--run-name", "p", "--quiet"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    predicted = subprocess.run([*run, "predict", "--checkpoint", str(tmp_path / "runs" / "p"), "--data", data,
                                "--output", str(tmp_path / "pred.json"), "--quiet"],
                               capture_output=True, text=True, env=env, timeout=600)
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["matches_recorded"] is True
    broken = subprocess.run([*run, "train", "--help"], capture_output=True, text=True, timeout=600,
                            env={**env, "NAMI_PLUGINS": "no_such_module"})
    assert broken.returncode == 2 and "NAMI_PLUGINS: cannot import 'no_such_module'" in broken.stderr


def test_compare_checks_its_paths_before_creating_anything(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--preset", "smoke", "--eval-data", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert f"--eval-data {tmp_path / 'nope.json'}: no such file" in capsys.readouterr().err
    assert main(["compare", "--preset", "smoke", "--tokenizer", str(tmp_path / "tok"), "--out", str(out)]) == 2
    assert "--tokenizer" in capsys.readouterr().err and not out.exists()


def test_report_outputs_never_overwrite_their_inputs(tmp_path, capsys):
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    data = tmp_path / "eval.json"
    data.write_bytes((fixtures / "tiny_qa.json").read_bytes())
    before = data.read_bytes()
    common = ["--preset", "smoke", "--eval-data", str(data), "--train-data", str(data),
              "--tokenizer", str(fixtures / "runs/wave/tokenizer")]
    assert main(["compare", *common, "--out", str(tmp_path / "cmp"), "--results", str(data)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    assert main(["ablate", "--variants", "wave", *common, "--out", str(tmp_path / "eval")]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_a_symlink_loop_is_one_line(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    data = write(tmp_path / "good.json", GOOD)
    assert main(["baseline", "lexical", "--data", data, "--output", str(tmp_path / "a")]) == 2
    assert "symlink loop" in capsys.readouterr().err


def test_a_benchmark_out_must_name_the_json(tmp_path, capsys):
    assert main(["bench", "roofline", "--out", str(tmp_path / "roof.md"), "--quiet"]) == 2
    assert "name the JSON file" in capsys.readouterr().err


def test_compare_without_a_preset_lists_the_presets_instead_of_starting_two_hours(capsys):
    assert main(["compare"]) == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "quick (3.5 training min/model)" in err and "standard (55" in err


@pytest.mark.slow
def test_plugins_that_clash_exit_or_fail_are_one_line_naming_the_plugin(tmp_path):
    import os

    (tmp_path / "clash.py").write_text("import torch\nfrom nami import register_mixer\n\n\n"
                                       "@register_mixer('wave')\nclass Mine(torch.nn.Module):\n    pass\n", "utf-8")
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n", "utf-8")
    (tmp_path / "broken.py").write_text("import no_such_dependency\n", "utf-8")
    for plugin, says in (("clash", "importing 'clash' failed (ValueError: mixer 'wave' is already registered by "
                                   "nami.models.wave.WaveLayer; clash.Mine cannot take its name"),
                         ("quits", "importing 'quits' called sys.exit(3)"),
                         ("broken", "'broken' imports a module that is missing")):
        proc = subprocess.run([sys.executable, "-m", "nami", "train", "--help"], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "NAMI_PLUGINS": plugin, "PYTHONPATH": str(tmp_path)})
        assert proc.returncode == 2 and says in proc.stderr, (plugin, proc.stderr[-1000:])
        assert "Traceback" not in proc.stderr


def test_generate_refuses_a_meta_device_and_an_overflowing_seed_in_one_line(capsys):
    run = "tests/fixtures/runs/wave"
    for argv, says in ((["generate", "--checkpoint", run, "--prompt", "a", "--device", "meta"], "nami runs on cpu"),
                       (["generate", "--checkpoint", run, "--prompt", "a", "--seed", "99999999999999999999999"],
                        "below 2**63")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and says in capsys.readouterr().err


def test_every_option_of_every_command_has_help_text():
    import argparse

    from nami.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")

    walk(build_parser(), ["nami"])
    assert not missing, missing
