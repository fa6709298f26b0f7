"""Reliability, round two: options checked before anything starts, torn logs, half-started runs,
manifests that must cover what loading reads, non-finite models, non-regular input files, a full
disk, failing child runs. Each test pins one class of defect (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from nami.cli import _option_fields, main
from nami.io import InputFileError, atomic_write, read_input_json, read_jsonl, write_manifest
from nami.training import checkpoint as ckpt

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "runs" / "wave"
DATA = FIXTURES / "tiny_qa.json"
TOKENIZER = RUN / "tokenizer"


def one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("nami: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def run_main(args: list[str]) -> int:
    """``main`` as the command line runs it (argparse exits through SystemExit)."""
    try:
        return main(args)
    except SystemExit as stop:
        return int(stop.code)


# --- option values: NaN, inf, negative, malformed — for every command ---------------------------------

def _numeric_train_options() -> list[tuple[str, type]]:
    options = []
    for name, hint, _ in _option_fields():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args else hint
        if base in (int, float):
            options.append((name, base))
    return options


TRAIN_BASE = ["train", "--preset", "tiny", "--tokenizer", str(TOKENIZER), "--train-data", str(DATA),
              "--eval-data", str(DATA), "--max-steps", "1", "--quiet"]
# (command line before the option, option, whether 0 is a valid value)
OTHER_OPTIONS = [
    (["predict", "--checkpoint", str(RUN), "--data", str(DATA), "--output", "p.json"], "--threads", False),
    (["predict", "--checkpoint", str(RUN), "--data", str(DATA), "--output", "p.json"], "--num-beams", False),
    (["ask", "--checkpoint", str(RUN), "--context", "c", "--question", "q"], "--n-best", False),
    (["generate", "--checkpoint", str(RUN), "--prompt", "p"], "--max-new-tokens", False),
    (["generate", "--checkpoint", str(RUN), "--prompt", "p"], "--temperature", True),
    (["generate", "--checkpoint", str(RUN), "--prompt", "p"], "--top-k", False),
    (["generate", "--checkpoint", str(RUN), "--prompt", "p"], "--top-p", False),
    (["generate", "--checkpoint", str(RUN), "--prompt", "p"], "--seed", True),
    (["compare", "--preset", "smoke"], "--minutes", False),
    (["compare", "--preset", "smoke-pretrain"], "--pretrain-minutes", True),
    (["ablate", "--variants", "wave"], "--minutes", False),
    (["ablate", "--variants", "wave"], "--seeds", True),
    (["bench", "scaling"], "--seq-lens", False),
    (["bench", "scaling"], "--tokens", False),
    (["bench", "scaling"], "--repeats", False),
    (["bench", "scaling"], "--threads", False),
    (["bench", "scaling"], "--memory-cap-mb", False),
    (["bench", "scaling"], "--time-limit-s", False),
    (["bench", "generation"], "--prompt-lens", False),
    (["bench", "generation"], "--new-tokens", False),
    (["bench", "generation"], "--memory-cap-mb", False),
    (["bench", "roofline"], "--seq-len", False),
    (["bench", "roofline"], "--repeats", False),
    (["tokenizer", "train", "--corpus", str(DATA), "--out", "tok"], "--vocab-size", False),
    (["baseline", "lexical", "--data", str(DATA)], "--window", False),
    (["predict", "--checkpoint", str(RUN), "--data", str(DATA), "--output", "p.json"], "--batch-size", False),
]
BAD_VALUES = st.one_of(st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "-1e400", "x", "", "1e", "0x10"]),
                       st.integers(max_value=-1).map(str), st.floats(max_value=-1e-9, allow_nan=False).map(repr))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(OTHER_OPTIONS), value=BAD_VALUES, zero=st.booleans())
def test_bad_option_values_of_every_command_are_one_error_line(case, value, zero, capsys, tmp_path_factory):
    prefix, option, zero_ok = case
    if zero and not zero_ok:
        value = "0"
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("opts"))
    try:
        code = run_main([*prefix, f"{option}={value}"])
        assert code == 2, (prefix, option, value)
        one_error_line(capsys, option if option != "--batch-size" else "--batch-size")
        assert os.listdir(".") == []  # nothing written: refused before any work
    finally:
        os.chdir(cwd)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(_numeric_train_options()), value=BAD_VALUES)
def test_bad_values_of_every_training_option_are_refused_before_a_run_exists(option, value, capsys, tmp_path_factory):
    name, _ = option
    runs = tmp_path_factory.mktemp("runs")
    code = run_main([*TRAIN_BASE, "--runs-dir", str(runs), f"--{name.replace('_', '-')}={value}"])
    assert code == 2, (name, value)
    err = one_error_line(capsys)
    assert name in err or name.replace("_", "-") in err, err  # the option is named
    assert list(runs.iterdir()) == []  # no run directory was created


@pytest.mark.parametrize("config, fragment", [
    ([1], "expected a JSON object"),
    ({"dropout": "x"}, "dropout='x'"),
    ({"weight_decay": None}, "weight_decay=None"),
    ({"epochs": "inf"}, "epochs='inf'"),
    ({"seed": -1}, "seed=-1"),
    ({"train_data": [1]}, "train_data=[1]"),
    ({"run_name": "../elsewhere"}, "run_name"),
    ({"branch_schedule": {"conv": float("nan")}}, "branch_schedule"),
])
def test_bad_config_files_are_one_error_line(config, fragment, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config), "utf-8")
    assert run_main(["train", "--config", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, fragment)
    assert not (tmp_path / "runs").exists()
    assert run_main(["train", "--config", str(tmp_path)]) == 2  # a directory
    one_error_line(capsys, "is a directory")


@pytest.mark.parametrize("text, fragment", [('{"max_minutes": NaN}', "max_minutes=nan"),
                                            ('{"lr": 1e400}', "lr=inf"), ('{"epochs": Infinity}', "epochs=inf")])
def test_a_literal_nan_or_inf_in_a_config_file_is_refused(text, fragment, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(text, "utf-8")  # Python's json module reads NaN, Infinity and 1e400 (= inf)
    assert run_main(["train", "--config", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, fragment, "finite")
    assert not (tmp_path / "runs").exists()


# --- lengths that batching pads -------------------------------------------------------------------


def test_max_length_not_a_multiple_of_16_trains(tmp_path):
    """Batches are padded to a multiple of 16: max_length=40 and 8 once crashed at the first long batch."""
    from nami.runs.config import TrainConfig
    from nami.training.loop import train

    for length in (40, 8):
        config = TrainConfig.from_dict(dict(
            preset="tiny", tokenizer=str(TOKENIZER), train_data=[str(DATA)], eval_data=str(DATA), max_length=length,
            doc_stride=4, max_steps=2, eval_every_minutes=None, eval_subset=4, runs_dir=str(tmp_path),
            run_name=f"len{length}", precision="fp32", threads=1))
        result = train(config, quiet=True)
        saved = json.loads((result.run_dir / "config.json").read_text())
        assert saved["model"]["max_len"] == -(-length // 16) * 16
        assert math.isfinite(result.final_eval["f1"])


# --- runs: torn logs, a stop before the first checkpoint, manifests, non-finite weights -----------------


def _tiny_config(tmp_path: Path, name: str, **overrides):
    from nami.runs.config import TrainConfig

    values = dict(
        preset="tiny", tokenizer=str(TOKENIZER), train_data=[str(DATA)], eval_data=str(DATA), max_length=64,
        max_steps=4, checkpoint_every_steps=2, checkpoint_every_minutes=None, eval_every_minutes=None, eval_subset=4,
        runs_dir=str(tmp_path), run_name=name, precision="fp32", threads=1)
    return TrainConfig.from_dict({**values, **overrides})


def test_a_torn_metrics_line_does_not_block_resume(tmp_path, capsys):
    from nami.training.loop import resume, train

    reference = train(_tiny_config(tmp_path, "ref"), quiet=True).run_dir
    run = train(_tiny_config(tmp_path, "r"), quiet=True).run_dir
    shutil.rmtree(ckpt.checkpoint_dirs(run)[-1])  # back to the step-2 checkpoint, as after a crash
    (run / ckpt.FINAL_EVAL_FILE).unlink()
    with (run / ckpt.METRICS_FILE).open("a") as log:
        log.write('[1, 2]\n{"type": "train", "st')  # a non-object line and a torn last line
    capsys.readouterr()
    resume(run, quiet=True)
    assert "dropped 2 unreadable line(s)" in capsys.readouterr().err
    records, bad = read_jsonl(run / ckpt.METRICS_FILE)
    assert bad == [] and records[-1]["type"] == "final_eval"
    assert [r for r in records if r["type"] == "resume"][0]["dropped_log_lines"]
    assert load_file(run / "model.safetensors").keys() == load_file(reference / "model.safetensors").keys()
    for key, value in load_file(run / "model.safetensors").items():
        assert torch.equal(value, load_file(reference / "model.safetensors")[key]), key


def test_read_jsonl_keeps_objects_and_numbers_bad_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n[1,2]\n\n{"b": 2}\n{"c": \xff\n'.encode("utf-8", "surrogateescape").decode("utf-8"))
    assert read_jsonl(path) == ([{"a": 1}, {"b": 2}], [2, 5])


def test_a_run_stopped_before_its_first_checkpoint_starts_again_on_resume(tmp_path, capsys):
    from nami.training.loop import resume, train

    reference = train(_tiny_config(tmp_path, "ref", checkpoint_every_steps=None), quiet=True).run_dir
    run = train(_tiny_config(tmp_path, "r", checkpoint_every_steps=None), quiet=True).run_dir
    # What SIGKILL before the first checkpoint leaves: config, tokenizer, a start record, no checkpoint.
    shutil.rmtree(run / ckpt.CHECKPOINTS_DIR, ignore_errors=True)
    for name in (ckpt.FINAL_EVAL_FILE, ckpt.PREDICTIONS_FILE, ckpt.WEIGHTS_FILE):
        (run / name).unlink(missing_ok=True)
    capsys.readouterr()
    resume(run, quiet=True)
    assert "starting it again from step 0" in capsys.readouterr().err
    records, _ = read_jsonl(run / ckpt.METRICS_FILE)
    assert [r["type"] for r in records].count("start") == 1
    for key, value in load_file(run / "model.safetensors").items():
        assert torch.equal(value, load_file(reference / "model.safetensors")[key]), key


def _copy_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    return run


def _ask(run: Path) -> list[str]:
    return ["ask", "--checkpoint", str(run), "--context", "東京は日本の首都です。", "--question", "日本の首都は？"]


def test_the_manifest_must_list_the_weights_and_config(tmp_path, capsys):
    run = _copy_run(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["model.safetensors"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert run_main(_ask(run)) == 2
    one_error_line(capsys, "does not list model.safetensors")
    (run / "manifest.json").write_text("{}")
    assert run_main(_ask(run)) == 2
    one_error_line(capsys, "does not list config.json")


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, capsys):
    run = _copy_run(tmp_path)
    weights = load_file(run / "model.safetensors")
    name = next(k for k in weights if weights[k].is_floating_point())
    weights[name][0] = float("nan")
    save_file(weights, str(run / "model.safetensors"))
    write_manifest(run, ckpt.root_files(run))  # even with a regenerated manifest
    assert run_main(_ask(run)) == 2
    one_error_line(capsys, name, "non-finite")


def test_an_edited_model_shape_with_a_regenerated_manifest_is_one_error_line(tmp_path, capsys):
    run = _copy_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model"]["d_model"] *= 2
    (run / "config.json").write_text(json.dumps(config))
    write_manifest(run, ckpt.root_files(run))
    assert run_main(_ask(run)) == 2
    one_error_line(capsys, "config.json and the weights disagree")  # checked before the model is built


def test_non_finite_span_scores_are_refused(monkeypatch):
    from nami.pipelines import pipeline

    qa = pipeline("question-answering", model=str(RUN))
    real_forward = qa.model.forward

    def nan_forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        out.start.fill_(float("nan"))
        return out

    monkeypatch.setattr(qa.model, "forward", nan_forward)
    with pytest.raises(ValueError, match="non-finite"):
        qa(question="日本の首都は？", context="東京は日本の首都です。")


def test_predict_and_ask_on_a_masked_lm_run_are_one_error_line(tmp_path, capsys):
    from nami.models import MaskedLMModel, ModelConfig
    from nami.text import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.load(TOKENIZER)
    model = MaskedLMModel(ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, max_len=64))
    model.save_pretrained(tmp_path / "mlm", tokenizer=tokenizer)
    assert run_main(_ask(tmp_path / "mlm")) == 2
    one_error_line(capsys, "mlm")
    assert run_main(["predict", "--checkpoint", str(tmp_path / "mlm"), "--data", str(DATA), "--output",
                     str(tmp_path / "p.json"), "--quiet"]) == 2
    one_error_line(capsys, "mlm")
    assert not (tmp_path / "p.json").exists()


# --- input files: only regular files, named problems -------------------------------------------------


def test_fifos_devices_directories_and_symlink_loops_are_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "data.json"
    os.mkfifo(fifo)  # reading it would block forever
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    for path, fragment in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                           (loop, "symlink loop"), (tmp_path / "nope.json", "not found")):
        assert run_main(["data", "check", str(path)]) != 0
        captured = capsys.readouterr()
        assert fragment in captured.out + captured.err, (path, captured)
        assert run_main(["evaluate", "--data", str(DATA), "--predictions", str(path)]) == 2
        one_error_line(capsys, str(path), fragment.split()[-1])
        assert run_main(["train", "--config", str(path)]) == 2
        one_error_line(capsys, "--config", str(path))
    assert run_main(["evaluate", "--data", str(DATA), "--predictions", str(tmp_path)]) == 2
    one_error_line(capsys, "is a directory")
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000)
    assert run_main(["evaluate", "--data", str(DATA), "--predictions", str(nested)]) == 2
    one_error_line(capsys, "nested too deeply")


def test_input_size_limit(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"a": "' + "x" * 100 + '"}')
    with pytest.raises(InputFileError, match="more than"):
        read_input_json(path, "--data", max_bytes=50)


# --- a full disk ---------------------------------------------------------------------------------------


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    from nami.training.loop import train

    run = train(_tiny_config(tmp_path, "r", max_steps=2), quiet=True).run_dir
    before = ckpt.checkpoint_dirs(run)
    assert before

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ckpt.CheckpointError, match="cannot save the checkpoint.*is intact"):
        ckpt.save_checkpoint(run, 99, model, optimizer, {}, keep=2)
    assert ckpt.checkpoint_dirs(run) == before
    assert not any(p.name.startswith(".tmp") for p in (run / ckpt.CHECKPOINTS_DIR).iterdir())


def test_a_full_disk_names_the_output_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "out.json"
    target.write_text("old")

    def write(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, write)
    assert info.value.filename == str(target) and target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left


def test_a_full_disk_in_a_command_is_one_error_line(tmp_path, monkeypatch, capsys):
    import nami.io

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(nami.io, "atomic_write", full)
    out = tmp_path / "preds.json"
    assert run_main(["baseline", "lexical", "--data", str(DATA), "--output", str(out), "--quiet"]) == 1
    one_error_line(capsys, str(out), "disk full")
    assert not out.exists()


# --- multi-run commands and reports ----------------------------------------------------------------------


def test_compare_child_failure_and_a_file_as_out_are_one_error_line(tmp_path, monkeypatch, capsys):
    import nami.reports.compare as compare

    args = ["compare", "--preset", "smoke", "--train-data", str(DATA), "--eval-data", str(DATA), "--tokenizer",
            str(TOKENIZER), "--quiet", "--no-lexical"]
    (tmp_path / "file").write_text("x")
    assert run_main([*args, "--out", str(tmp_path / "file")]) == 2
    one_error_line(capsys, "--out", "is a file")
    monkeypatch.setattr(compare, "_run_chain", lambda commands, log: (3, 0.1))
    assert run_main([*args, "--out", str(tmp_path / "cmp")]) == 1
    one_error_line(capsys, "training failed for wave (exit 3)")


@pytest.mark.parametrize("content", ["[]", "{}", '{"models": {"wave": {}}}', '{"models": []}'])
def test_report_on_a_results_file_that_is_not_a_compare_record(content, tmp_path, capsys):
    (tmp_path / "results.json").write_text(content)
    assert run_main(["report", str(tmp_path)]) == 2
    one_error_line(capsys, "results.json", "results record")


def test_tokenizer_train_out_below_a_file_is_refused_before_reading(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    assert run_main(["tokenizer", "train", "--corpus", "/dev/zero", "--out", str(tmp_path / "file.txt" / "sub")]) == 2
    one_error_line(capsys, "is a file, not a directory")


def test_bench_out_directory_is_refused_before_the_benchmark(tmp_path, capsys):
    for command in (["bench", "scaling"], ["bench", "generation"], ["bench", "roofline"]):
        assert run_main([*command, "--out", str(tmp_path)]) == 2
        one_error_line(capsys, "is a directory")


def test_ablate_adds_to_an_out_of_the_same_protocol_and_refuses_another(tmp_path):
    from nami.reports.ablate import _earlier_runs

    protocol = {"preset": "standard", "budget_minutes": 55.0, "stages": {"finetune": {"task": "qa", "minutes": 35}},
                "eval_data": "dev.json"}
    run = {"seed": 0, "exact_match": 1.0, "f1": 2.0}
    path = tmp_path / "abl.json"
    path.write_text(json.dumps({"machine": "m", "commit": "c", "date": "d", "protocol": protocol,
                                "rows": [{"name": "wave+conv", "runs": [run]}]}))
    assert _earlier_runs(path, protocol) == {"wave+conv": [{"machine": "m", "commit": "c", "date": "d", **run}]}
    with pytest.raises(ValueError, match="another protocol.*budget_minutes"):
        _earlier_runs(path, {**protocol, "budget_minutes": 8.0})
    assert _earlier_runs(tmp_path / "none.json", protocol) == {}


def test_ablate_merge_pools_runs_of_one_protocol_and_refuses_duplicates(tmp_path, capsys):
    from nami.reports.ablate import merge_ablations

    protocol = {"preset": "scratch", "budget_minutes": 8.0, "stages": {"finetune": {"task": "qa", "minutes": 8.0}},
                "eval_data": "dev.json", "description": "screening", "seeds": [0], "questions": 10}

    def run(seed, f1):
        return {"seed": seed, "exact_match": f1 / 2, "f1": f1, "params": 5, "train_tokens_per_s": 100.0,
                "eval_questions_per_s": 9.0, "train_peak_mb": 50.0, "steps": 7}

    def record(machine, rows):
        return {"command": f"nami ablate ({machine})", "commit": "c" * 40, "machine": machine, "date": "2026-11-30",
                "protocol": protocol, "rows": [{"name": n, "options": {"arch": "wave"}, "runs": rs} for n, rs in rows]}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(record("host A", [("wave", [run(0, 20.0)]), ("wave+conv", [run(0, 60.0)])])))
    b.write_text(json.dumps(record("host B", [("wave+proxy", [run(0, 25.0)]), ("wave", [run(1, 22.0)])])))
    merged = merge_ablations([str(a), str(b)], str(tmp_path / "all"))
    rows = {row["name"]: row for row in merged["rows"]}
    assert rows["wave"]["f1"] == pytest.approx(21.0) and [r["machine"] for r in rows["wave"]["runs"]] == ["host A",
                                                                                                        "host B"]
    assert set(rows) == {"wave", "wave+conv", "wave+proxy"} and merged["protocol"]["seeds"] == [0, 1]
    assert "host B" in (tmp_path / "all.md").read_text()
    with pytest.raises(ValueError, match="already in an earlier file"):
        merge_ablations([str(a), str(a)], str(tmp_path / "dup"))
    other = json.loads(b.read_text())
    other["protocol"] = {**protocol, "budget_minutes": 55.0}
    b.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="another protocol"):
        merge_ablations([str(a), str(b)], str(tmp_path / "x"))


def test_a_finished_run_is_not_retrained_by_resume(tmp_path, capsys):
    """--resume on a finished run returns its recorded result; with its checkpoints deleted (to save
    space) it is refused, instead of training again from step 0 over the saved weights."""
    from nami.training.loop import resume, train

    result = train(_tiny_config(tmp_path, "r"), quiet=True)
    run = result.run_dir
    weights = (run / ckpt.WEIGHTS_FILE).read_bytes()
    log = (run / ckpt.METRICS_FILE).read_text()
    capsys.readouterr()
    again = resume(run, quiet=True)
    assert "is finished" in capsys.readouterr().out
    assert again.final_eval == result.final_eval and again.steps == result.steps == 4
    assert (run / ckpt.WEIGHTS_FILE).read_bytes() == weights and (run / ckpt.METRICS_FILE).read_text() == log
    shutil.rmtree(run / ckpt.CHECKPOINTS_DIR)
    (run / ckpt.FINAL_EVAL_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="checkpoints/ are gone.*nami predict"):
        resume(run, quiet=True)
    assert (run / ckpt.WEIGHTS_FILE).read_bytes() == weights


def test_resume_with_a_progress_bar_past_its_time_budget(tmp_path, capsys):
    """A run killed in its final evaluation has trained past its budget; the bar's start is clamped
    (tqdm dropped its total and the bar format failed on it)."""
    from nami.training.loop import resume, train

    run = train(_tiny_config(tmp_path, "r", max_steps=None, max_minutes=0.01), quiet=True).run_dir
    (run / ckpt.FINAL_EVAL_FILE).unlink()
    latest = ckpt.checkpoint_dirs(run)[-1]
    state = json.loads((latest / ckpt.STATE_FILE).read_text())
    state["progress"]["train_seconds"] = 0.01 * 60 + 5.0
    (latest / ckpt.STATE_FILE).write_text(json.dumps(state) + "\n")
    ckpt.write_manifest(latest, [ckpt.WEIGHTS_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE_FILE])
    resume(run, quiet=False)
    assert (run / ckpt.FINAL_EVAL_FILE).exists() and "Traceback" not in capsys.readouterr().err
    # its last checkpoint was saved again at the same step: replaced whole, nothing left aside
    assert ckpt.checkpoint_dirs(run)[-1] == latest and not list((run / ckpt.CHECKPOINTS_DIR).glob(".*"))
    ckpt.load_checkpoint(latest)  # and it verifies


def test_more_threads_than_cpus_is_warned_about(tmp_path, capsys):
    from nami.training.loop import train

    before = torch.get_num_threads()
    try:
        train(_tiny_config(tmp_path, "t", threads=(os.cpu_count() or 1) * 8, max_steps=1), quiet=True)
    finally:
        torch.set_num_threads(before)  # the rest of the session keeps its threads
    assert "more than the" in capsys.readouterr().err


def test_a_kill_inside_a_same_step_checkpoint_swap_is_recovered(tmp_path):
    from nami.training.loop import resume, train

    reference = train(_tiny_config(tmp_path, "ref", keep_checkpoints=1), quiet=True).run_dir
    run = train(_tiny_config(tmp_path, "r", keep_checkpoints=1), quiet=True).run_dir
    (run / ckpt.FINAL_EVAL_FILE).unlink()
    latest = ckpt.checkpoint_dirs(run)[-1]
    latest.rename(latest.parent / f".old-{latest.name}")  # killed between the swap's two renames
    assert ckpt.checkpoint_dirs(run) == []
    resume(run, quiet=True)  # the complete checkpoint is renamed back, not a restart from step 0
    assert ckpt.checkpoint_dirs(run) == [latest] and not list(latest.parent.glob(".old-*"))
    for key, value in load_file(run / "model.safetensors").items():
        assert torch.equal(value, load_file(reference / "model.safetensors")[key]), key
    records, _ = read_jsonl(run / ckpt.METRICS_FILE)
    assert [r["type"] for r in records].count("start") == 1 and any(r["type"] == "resume" for r in records)


def test_training_warns_about_options_its_task_ignores(tmp_path, capsys):
    from nami.training.loop import train

    train(_tiny_config(tmp_path, "w", max_steps=1, num_beams=3), quiet=True)
    assert "nami: warning: option num_beams=3 is read by task generative-qa only" in capsys.readouterr().err
