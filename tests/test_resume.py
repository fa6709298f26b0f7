"""Crash safety: SIGKILL + resume is exact, SIGTERM saves and exits, corruption is detected,
non-finite values stop training, nothing is unpickled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nami.models import QAModel
from nami.runs.config import TrainConfig
from nami.training import checkpoint as ckpt
from nami.training.loop import NonFiniteError, resume, train

SRC = Path(__file__).resolve().parents[1] / "src"


def config_dict(tiny_squad, tokenizer_dir, runs_dir, run_name, **overrides) -> dict:
    values = dict(
        arch="wave", preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad),
        tokenizer=str(tokenizer_dir), max_length=64, doc_stride=32, batch_size=4, lr=3e-3, max_steps=40,
        eval_every_minutes=None, checkpoint_every_steps=3, checkpoint_every_minutes=None, keep_checkpoints=2,
        log_every=1, threads=1, runs_dir=str(runs_dir), run_name=run_name, precision="bf16",
        dropout=0.1,  # a random stream to restore exactly (dropout draws from torch's global RNG)
    )
    values.update(overrides)
    return TrainConfig.from_dict(values).to_dict()


def start_training(config: dict, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / f"{config['run_name']}.json"
    path.write_text(json.dumps(config), "utf-8")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "nami", "train", "--config", str(path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    metrics = run_dir / ckpt.METRICS_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file():
            steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def deterministic_records(run_dir: Path) -> list[dict]:
    """The metrics that must not depend on interruptions (timings excluded)."""
    out = []
    for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "train":
            out.append({k: r[k] for k in ("step", "epoch", "loss", "lr")})
        elif r["type"] == "final_eval":
            out.append({k: r[k] for k in ("exact_match", "f1", "count", "step")})
    return out


def assert_resumed_from(run_dir: Path, step: int) -> None:
    """It really continued from ``step`` (a restart from 0 would give the same weights and records:
    training is deterministic): one start record and a resume record from that checkpoint."""
    records = [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    assert step > 0 and [r["type"] for r in records].count("start") == 1
    assert [(r["step"], r["from"]) for r in records if r["type"] == "resume"] == [(step, f"step-{step:08d}")]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / ckpt.WEIGHTS_FILE)), load_file(str(b / ckpt.WEIGHTS_FILE))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ: {different[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_squad, tiny_tokenizer_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = TrainConfig.from_dict(config_dict(tiny_squad, tiny_tokenizer_dir, runs, "reference"))
    return train(config, quiet=True).run_dir


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(uninterrupted, tiny_squad, tiny_tokenizer_dir,
                                                                   tmp_path):
    kill_at = random.Random().randint(4, 34)
    print(f"killing at step {kill_at}")
    config = config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path / "runs", "killed")
    run_dir = tmp_path / "runs" / "killed"
    proc = start_training(config, tmp_path)
    wait_for_step(run_dir, kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.checkpoint_dirs(run_dir), "no checkpoint was written before the kill"
    assert not (run_dir / ckpt.FINAL_EVAL_FILE).exists()
    latest = int(ckpt.checkpoint_dirs(run_dir)[-1].name.split("-")[1])
    resume(run_dir, quiet=True)
    assert_resumed_from(run_dir, latest)
    assert_same_weights(uninterrupted, run_dir)
    assert deterministic_records(run_dir) == deterministic_records(uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(uninterrupted, tiny_squad, tiny_tokenizer_dir, tmp_path):
    config = config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path / "runs", "terminated", checkpoint_every_steps=100)
    run_dir = tmp_path / "runs" / "terminated"
    proc = start_training(config, tmp_path)
    wait_for_step(run_dir, 7, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    saved = ckpt.checkpoint_dirs(run_dir)
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) >= 7
    resume(run_dir, quiet=True)
    assert_resumed_from(run_dir, int(saved[0].name.split("-")[1]))
    assert_same_weights(uninterrupted, run_dir)
    assert deterministic_records(run_dir) == deterministic_records(uninterrupted)


def test_only_the_newest_checkpoints_are_kept(uninterrupted):
    names = [p.name for p in ckpt.checkpoint_dirs(uninterrupted)]
    assert names == ["step-00000039", "step-00000040"]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_weights_are_detected_naming_the_file(uninterrupted, tmp_path):
    run = copy_run(uninterrupted, tmp_path / "run")
    flip_a_byte(run / ckpt.WEIGHTS_FILE)
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors: checksum mismatch"):
        ckpt.load_run(run)


def test_truncated_checkpoint_file_is_detected_on_resume(uninterrupted, tmp_path):
    run = copy_run(uninterrupted, tmp_path / "run")
    (run / ckpt.FINAL_EVAL_FILE).unlink()  # unfinished: a finished run is not resumed at all
    optimizer_file = ckpt.checkpoint_dirs(run)[-1] / ckpt.OPTIMIZER_FILE
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.pt: checksum mismatch") as err:
        resume(run, quiet=True)
    assert len(ckpt.checkpoint_dirs(run)) == 2  # keep_checkpoints=2: the way out is named
    assert f"the earlier checkpoint {ckpt.checkpoint_dirs(run)[-2].name} may be intact" in str(err.value)


def test_modified_tokenizer_is_detected(uninterrupted, tmp_path):
    run = copy_run(uninterrupted, tmp_path / "run")
    (run / "tokenizer" / "tokenizer.json").write_text("{}", "utf-8")
    with pytest.raises(ckpt.CheckpointError, match="tokenizer.json"):
        ckpt.load_run(run)


def test_no_pickle_loading_anywhere_in_the_package():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text("utf-8")
        for needle in ("weights_only=" + "False", "pickle" + ".load"):
            if needle in text:
                offenders.append(f"{path}: {needle}")
        if "torch.load(" in text:
            calls = text.split("torch.load(")[1:]
            offenders += [f"{path}: torch.load without weights_only=True" for c in calls
                          if "weights_only=True" not in c.split(")")[0]]
    assert not offenders, offenders


def test_nan_loss_stops_training_naming_the_step(tiny_squad, tiny_tokenizer_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = QAModel.loss

    def loss_with_nan(*args):
        calls["n"] += 1
        value = real_loss(*args)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(QAModel, "loss", staticmethod(loss_with_nan))
    config = TrainConfig.from_dict(config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path, "nan", max_steps=6))
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 3"):
        train(config, quiet=True)


def test_nan_loss_can_be_skipped_a_bounded_number_of_times(tiny_squad, tiny_tokenizer_dir, tmp_path, monkeypatch):
    real_loss = QAModel.loss
    calls = {"n": 0}

    def loss_with_nan(*args):
        calls["n"] += 1
        value = real_loss(*args)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(QAModel, "loss", staticmethod(loss_with_nan))
    config = TrainConfig.from_dict(
        config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path, "skip", max_steps=6, nonfinite_skips=1))
    result = train(config, quiet=True)
    assert result.final_eval["skipped_batches"] == 1 and result.steps == 6
    skipped = [json.loads(line) for line in (result.run_dir / ckpt.METRICS_FILE).read_text().splitlines()
               if json.loads(line)["type"] == "skipped_batch"]
    assert len(skipped) == 1 and "step 3" in skipped[0]["reason"]


def test_nonfinite_gradient_names_the_parameter(tiny_squad, tiny_tokenizer_dir, tmp_path, monkeypatch):
    real_forward = QAModel.forward

    def forward_with_bad_gradient(self, input_ids, attention_mask, token_type_ids=None):
        logits = real_forward(self, input_ids, attention_mask, token_type_ids)
        bias = self.span_head.proj.bias
        poison = torch.sqrt(bias - bias.detach()).sum() * 0.0  # value 0, gradient inf * 0 = nan
        return logits._replace(start=logits.start + poison)

    monkeypatch.setattr(QAModel, "forward", forward_with_bad_gradient)
    config = TrainConfig.from_dict(
        config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path, "grad", max_steps=3, precision="fp32"))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient in .*span_head\.proj\.bias at step 1"):
        train(config, quiet=True)


def test_resume_rejects_extra_options(uninterrupted, capsys):
    from nami.cli import main

    assert main(["train", "--resume", str(uninterrupted), "--lr", "0.1"]) == 2
    assert "--lr" in capsys.readouterr().err


def test_tokenizer_and_vocab_size_together_are_refused(tiny_tokenizer_dir, capsys):
    from nami.cli import main

    assert main(["train", "--tokenizer", str(tiny_tokenizer_dir), "--vocab-size", "8000", "--quiet"]) == 2
    assert "--vocab-size" in capsys.readouterr().err


def test_run_whose_model_vocab_differs_from_its_tokenizer_is_refused(uninterrupted, tmp_path):
    run = copy_run(uninterrupted, tmp_path / "run")
    config = json.loads((run / ckpt.CONFIG_FILE).read_text())
    config["model"]["vocab_size"] += 1
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ckpt.CheckpointError, match="config.json: checksum mismatch"):
        ckpt.load_run(run)
    ckpt.write_manifest(run, [n for n in json.loads((run / ckpt.MANIFEST_FILE).read_text())])  # a deliberate edit
    with pytest.raises(ckpt.CheckpointError, match="does not match the model's vocab_size"):
        ckpt.load_run(run)


def test_checkpoint_written_by_an_interrupted_save_is_ignored(uninterrupted, tmp_path):
    run = copy_run(uninterrupted, tmp_path / "run")
    (run / "checkpoints" / ".tmp-step-00000041").mkdir()
    assert ckpt.checkpoint_dirs(run)[-1].name == "step-00000040"


def test_resume_refuses_an_edited_config_and_never_re_signs_it(tiny_squad, tiny_tokenizer_dir, tmp_path):
    """A run directory is untrusted: an edited config.json (here lr 3e-3 → 50) is refused on resume,
    and the manifest still records the config the run started with (it was re-signed before)."""
    from nami.io import MANIFEST_FILE

    config = TrainConfig.from_dict(config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path / "runs", "edited",
                                               max_steps=4, checkpoint_every_steps=2, precision="fp32", dropout=0.0))
    result = train(config, quiet=True)
    run_dir = result.run_dir
    (run_dir / ckpt.FINAL_EVAL_FILE).unlink()  # as if stopped after its last checkpoint
    manifest = (run_dir / MANIFEST_FILE).read_text()
    saved = json.loads((run_dir / ckpt.CONFIG_FILE).read_text())
    saved["train"]["lr"] = 50.0
    (run_dir / ckpt.CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ckpt.CheckpointError, match="config.json: checksum mismatch"):
        resume(run_dir, quiet=True)
    assert (run_dir / MANIFEST_FILE).read_text() == manifest


def test_a_weights_refresh_keeps_the_recorded_checksums_of_files_it_did_not_write(tmp_path):
    from nami.io import MANIFEST_FILE, update_manifest, write_manifest

    (tmp_path / "a.json").write_text("1")
    (tmp_path / "b.bin").write_text("x")
    write_manifest(tmp_path, ["a.json", "b.bin"])
    before = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / "a.json").write_text("2")  # edited by someone else
    (tmp_path / "b.bin").write_text("y")  # written by this process
    (tmp_path / "c.txt").write_text("new")
    update_manifest(tmp_path, ["b.bin"], ["a.json", "b.bin", "c.txt"])
    after = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert after["a.json"] == before["a.json"] and after["b.bin"] != before["b.bin"] and "c.txt" in after


def test_saving_a_loaded_model_again_in_place_keeps_its_tokenizer_usable(tmp_path):
    import shutil

    from nami.pipelines import pipeline

    run = tmp_path / "wave"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "wave", run)
    model = QAModel.from_pretrained(run)
    model.save_pretrained(run)  # no tokenizer given: the one in the directory stays tied to the weights
    assert json.loads((run / ckpt.CONFIG_FILE).read_text())["tokenizer_fingerprint"] is not None
    answer = pipeline("question-answering", run)({"question": "富士山の標高は?", "context": "富士山の標高は3776メートルである。"})
    assert answer["answer"]


def test_resume_does_not_write_through_symlinks_in_the_run(tiny_squad, tiny_tokenizer_dir, tmp_path):
    """An untrusted run directory: a .lock symlink had nami create its target, a checkpoints symlink had
    checkpoints written (and step-* folders deleted) in another directory. Both are refused now."""
    import shutil

    config = TrainConfig.from_dict(config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path / "runs", "linked",
                                               max_steps=4, checkpoint_every_steps=2, precision="fp32", dropout=0.0))
    run_dir = train(config, quiet=True).run_dir
    (run_dir / ckpt.FINAL_EVAL_FILE).unlink()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(run_dir / ckpt.CHECKPOINTS_DIR), elsewhere)
    (run_dir / ckpt.CHECKPOINTS_DIR).symlink_to(elsewhere)
    with pytest.raises(ckpt.CheckpointError, match="checkpoints: a symlink"):
        resume(run_dir, quiet=True)
    (run_dir / ckpt.CHECKPOINTS_DIR).unlink()
    shutil.move(str(elsewhere), run_dir / ckpt.CHECKPOINTS_DIR)
    (run_dir / ckpt.LOCK_FILE).unlink(missing_ok=True)
    (run_dir / ckpt.LOCK_FILE).symlink_to(tmp_path / "created-by-nami")
    with pytest.raises(ckpt.CheckpointError, match="symlink"):
        resume(run_dir, quiet=True)
    assert not (tmp_path / "created-by-nami").exists()


def test_resume_sees_changed_training_data(tiny_squad, tiny_tokenizer_dir, tmp_path):
    """A run records a fingerprint of its data; --resume on changed data is refused, or with
    allow_changed_data continued and logged (it went on silently before)."""
    import shutil

    data = tmp_path / "train.json"
    shutil.copy(tiny_squad, data)
    config = TrainConfig.from_dict(config_dict(data, tiny_tokenizer_dir, tmp_path / "runs", "data", max_steps=4,
                                               checkpoint_every_steps=2, precision="fp32", dropout=0.0))
    run_dir = train(config, quiet=True).run_dir
    (run_dir / ckpt.FINAL_EVAL_FILE).unlink()
    shrunk = json.loads(data.read_text("utf-8"))
    shrunk["data"][0]["paragraphs"] = shrunk["data"][0]["paragraphs"][:-2]
    data.write_text(json.dumps(shrunk, ensure_ascii=False), "utf-8")
    with pytest.raises(ckpt.CheckpointError, match="data changed since the run started"):
        resume(run_dir, quiet=True)
    resume(run_dir, quiet=True, allow_changed_data=True)
    records = [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    assert any(r["type"] == "resume" and "data_changed" in r for r in records)


@pytest.mark.parametrize("edit, says", [
    (lambda s: {}, "progress"), (lambda s: [1], "expected a JSON object"),
    (lambda s: {**s, "progress": {**s["progress"], "step": -100}}, "progress.step=-100"),
    (lambda s: {**s, "progress": {**s["progress"], "extra": 1}}, "progress: expected an object"),
    (lambda s: {**s, "rng": {**s["rng"], "python": [3, [1, 2], None]}}, "rng.python")])
def test_a_checkpoint_state_of_the_wrong_shape_names_its_field(tiny_squad, tiny_tokenizer_dir, tmp_path, edit, says):
    from dataclasses import fields

    from nami.io import write_manifest
    from nami.training.loop import Progress

    assert tuple(f.name for f in fields(Progress)) == ckpt.PROGRESS_FIELDS
    config = TrainConfig.from_dict(config_dict(tiny_squad, tiny_tokenizer_dir, tmp_path / "runs", "state", max_steps=2,
                                               checkpoint_every_steps=2, precision="fp32", dropout=0.0))
    run_dir = train(config, quiet=True).run_dir
    (run_dir / ckpt.FINAL_EVAL_FILE).unlink()
    checkpoint = ckpt.checkpoint_dirs(run_dir)[-1]
    state = json.loads((checkpoint / ckpt.STATE_FILE).read_text())
    (checkpoint / ckpt.STATE_FILE).write_text(json.dumps(edit(state)))
    write_manifest(checkpoint, [ckpt.WEIGHTS_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE_FILE])  # as an attacker would
    with pytest.raises(ckpt.CheckpointError, match=says.replace("[", r"\[")):
        resume(run_dir, quiet=True)
