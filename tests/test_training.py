"""End-to-end training behaviour on a tiny real-text QA set."""

from __future__ import annotations

import json

import pytest
import torch

from nami.cli import main
from nami.models import ARCHITECTURES
from nami.pipelines import predict_file
from nami.runs.config import TrainConfig
from nami.training import checkpoint as ckpt
from nami.training.loop import lr_factor, train


def tiny_train_config(tiny_squad, tokenizer_dir, tmp_path, arch: str, **overrides) -> TrainConfig:
    values = dict(
        arch=arch, preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad), tokenizer=str(tokenizer_dir),
        max_length=96, batch_size=16, lr=3e-3, warmup=0.1, max_steps=150, eval_every_minutes=None, eval_subset=16,
        runs_dir=str(tmp_path / "runs"), log_every=10, precision="fp32",
        # Train and eval data are the same file here: keep their context format identical (the
        # Wave model, which sees positions but no neighbours, cannot absorb a 2-token shift).
        title_prefix=False,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def overfit_runs(tiny_squad, tiny_tokenizer_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overfit")
    return {
        arch: train(tiny_train_config(tiny_squad, tiny_tokenizer_dir, tmp, arch, run_name=f"overfit-{arch}"),
                    quiet=True)
        for arch in ARCHITECTURES
    }


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_tiny_model_overfits_16_examples(overfit_runs, arch):
    result = overfit_runs[arch]
    assert result.final_eval["count"] == 16
    assert result.final_eval["exact_match"] >= 90.0, result.final_eval


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_run_directory_holds_config_weights_state_and_metrics(overfit_runs, arch):
    run_dir = overfit_runs[arch].run_dir
    for name in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE, ckpt.MANIFEST_FILE, ckpt.METRICS_FILE, ckpt.FINAL_EVAL_FILE,
                 ckpt.PREDICTIONS_FILE, "tokenizer", "checkpoints/step-00000150"):
        assert (run_dir / name).exists(), name
    records = [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    assert records[0]["type"] == "start" and records[-1]["type"] == "final_eval"
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < losses[0] / 3
    _, optimizer_state, _, state = ckpt.load_checkpoint(run_dir / "checkpoints" / "step-00000150")
    assert state["progress"]["step"] == 150 and optimizer_state["state"]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_checkpoint_reload_gives_identical_predictions_and_f1(overfit_runs, tiny_squad, tmp_path, arch):
    run_dir = overfit_runs[arch].run_dir
    summary = predict_file(run_dir, str(tiny_squad), tmp_path / "pred.json", quiet=True)
    saved = json.loads((run_dir / ckpt.PREDICTIONS_FILE).read_text())
    assert json.loads((tmp_path / "pred.json").read_text()) == saved
    assert summary["matches_recorded"] is True
    assert summary["f1"] == overfit_runs[arch].final_eval["f1"]


def test_cli_predict_and_evaluate_agree_with_the_run(overfit_runs, tiny_squad, tmp_path, capsys):
    run_dir = overfit_runs["transformer"].run_dir
    pred = tmp_path / "p.json"
    assert main(["predict", "--checkpoint", str(run_dir), "--data", str(tiny_squad), "--output", str(pred),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", str(tiny_squad), "--predictions", str(pred)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["count"] == 16
    assert scores["f1"] == overfit_runs["transformer"].final_eval["f1"]


def test_runs_saved_before_answer_boundaries_existed_decode_on_tokens(overfit_runs, tiny_squad, tmp_path):
    """A run whose config.json lacks ``answer_boundaries`` keeps token-boundary decoding (so its
    recorded F1 is reproduced); ``--answer-boundaries`` re-decodes it and is never compared with it."""
    import shutil

    run_dir = tmp_path / "old-run"
    shutil.copytree(overfit_runs["transformer"].run_dir, run_dir)
    assert ckpt.read_run_config(run_dir)[0].answer_boundaries == "word"  # new runs: word boundaries
    config = json.loads((run_dir / ckpt.CONFIG_FILE).read_text())
    del config["train"]["answer_boundaries"]
    (run_dir / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    ckpt.write_manifest(run_dir, list(json.loads((run_dir / ckpt.MANIFEST_FILE).read_text())))
    assert ckpt.read_run_config(run_dir)[0].answer_boundaries == "token"
    assert TrainConfig.from_dict({}).answer_boundaries == "word"  # a user's --config file: the default
    token = predict_file(run_dir, str(tiny_squad), tmp_path / "token.json", quiet=True)
    assert token["answer_boundaries"] == "token" and "matches_recorded" in token
    word = predict_file(run_dir, str(tiny_squad), tmp_path / "word.json", answer_boundaries="word", quiet=True)
    assert word["answer_boundaries"] == "word" and "matches_recorded" not in word
    assert main(["predict", "--checkpoint", str(run_dir), "--data", str(tiny_squad), "--output",
                 str(tmp_path / "cli.json"), "--answer-boundaries", "word", "--quiet"]) == 0
    assert json.loads((tmp_path / "cli.json").read_text()) == json.loads((tmp_path / "word.json").read_text())


def test_question_match_runs_train_reload_and_refuse_a_mismatched_model(tiny_squad, tiny_tokenizer_dir, tmp_path):
    from nami.data.features import FeatureConfig, build_features
    from nami.data.squad import load_squad
    from nami.evaluation.predict import predict_answers

    config = tiny_train_config(tiny_squad, tiny_tokenizer_dir, tmp_path, "transformer", max_steps=40,
                               question_match=True, run_name="match")
    result = train(config, quiet=True)
    model, tokenizer, saved = ckpt.load_run(result.run_dir)
    assert saved.question_match is True and model.config.type_vocab_size == 3
    summary = predict_file(result.run_dir, str(tiny_squad), tmp_path / "pred.json", quiet=True)
    assert summary["matches_recorded"] is True
    # A model with two token types cannot read question-match batches: a clear error, not an IndexError.
    plain_model, _, plain_config = ckpt.load_run(train(
        tiny_train_config(tiny_squad, tiny_tokenizer_dir, tmp_path, "transformer", max_steps=1, run_name="plain"),
        quiet=True).run_dir)
    examples = load_squad(tiny_squad)
    features = build_features(examples, tokenizer, FeatureConfig.from_config(plain_config), show_progress=False)
    with pytest.raises(ValueError, match="question_match"):
        predict_answers(plain_model, examples, features, pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id,
                        question_match=True, show_progress=False)
    with pytest.raises(ValueError, match="question_match=False"):  # and the reverse
        predict_answers(model, examples, features, pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id,
                        question_match=False, show_progress=False)


def test_question_match_needs_segment_embeddings():
    with pytest.raises(ValueError, match="question_match"):
        TrainConfig(question_match=True, segment_embeddings=False)
    with pytest.raises(ValueError, match="question_match"):
        TrainConfig(question_match="yes")


def test_cli_ask_returns_a_substring_of_the_context(overfit_runs, tiny_squad, capsys):
    data = json.loads(tiny_squad.read_text())
    para = data["data"][0]["paragraphs"][0]
    run_dir = overfit_runs["transformer"].run_dir
    assert main(["ask", "--checkpoint", str(run_dir), "--context", para["context"],
                 "--question", para["qas"][0]["question"], "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == para["qas"][0]["answers"][0]["text"]
    for cand in answer["candidates"]:
        assert para["context"][cand["start"] : cand["end"]] == cand["text"]


def test_seeded_runs_are_bitwise_reproducible(tiny_squad, tiny_tokenizer_dir, tmp_path):
    runs = [
        train(tiny_train_config(tiny_squad, tiny_tokenizer_dir, tmp_path, "wave", max_steps=12, run_name=f"r{i}"),
              quiet=True)
        for i in range(2)
    ]
    from safetensors.torch import load_file

    a, b = (load_file(str(r.run_dir / ckpt.WEIGHTS_FILE)) for r in runs)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_precision_is_resolved_for_this_hardware_and_saved(tiny_squad, tiny_tokenizer_dir, tmp_path, monkeypatch):
    """``--precision auto`` (the default) becomes bf16 only where the hardware has native bf16, and
    the run's saved config holds the choice (so a resume on another host keeps it)."""
    from nami import resources
    from nami.training import loop

    assert TrainConfig().precision == "auto"
    assert resources.resolve_precision("bf16") == "bf16" and resources.resolve_precision("fp32") == "fp32"
    assert resources.resolve_precision("auto") == ("bf16" if resources.native_bf16("cpu") else "fp32")
    assert resources.resolve_precision("auto", "mps") == "fp32"
    for native, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(loop, "resolve_precision",
                            lambda p, device, native=native: resources.resolve_precision(p, device) if p != "auto"
                            else ("bf16" if native else "fp32"))
        result = train(tiny_train_config(tiny_squad, tiny_tokenizer_dir, tmp_path, "wave", max_steps=2,
                                         precision="auto", run_name=f"auto-{expected}"), quiet=True)
        saved, _, _ = ckpt.read_run_config(result.run_dir)
        assert saved.precision == expected


def test_existing_run_name_is_refused(overfit_runs, tiny_squad, tiny_tokenizer_dir):
    run_dir = overfit_runs["wave"].run_dir
    config = tiny_train_config(tiny_squad, tiny_tokenizer_dir, run_dir.parent.parent, "wave",
                               runs_dir=str(run_dir.parent), run_name=run_dir.name)
    with pytest.raises(FileExistsError):
        train(config, quiet=True)


def test_lr_schedule_warms_up_and_decays_to_zero():
    assert lr_factor(0.0, 0.1, "cosine") == 0.0
    assert lr_factor(0.05, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1, "cosine") == pytest.approx(0.0)


@pytest.mark.parametrize(
    "option,value",
    [("arch", "lstm"), ("precision", "fp8"), ("batch_size", 0), ("lr", -1.0), ("negative_fraction", 2.0),
     ("max_minutes", 0.0), ("schedule", "step"), ("on_bad_record", "ignore")],
)
def test_bad_train_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        TrainConfig.from_dict({option: value})


def test_cli_reports_bad_options_without_traceback(capsys):
    # Refused while the arguments are parsed (before torch is imported), naming the option.
    with pytest.raises(SystemExit) as exited:
        main(["train", "--batch-size", "0", "--quiet"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "expected a finite integer >= 1" in err and "Traceback" not in err
    # A bad value that only the config can judge is refused by validate, also without a traceback.
    assert main(["train", "--warmup", "1.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "warmup" in err and "Traceback" not in err


def test_no_wave_recompute_trains_through_autograd_to_the_same_weights(tiny_squad, tiny_tokenizer_dir, tmp_path,
                                                                        monkeypatch):
    """``nami train --no-wave-recompute``: the Wave maths back-propagates through autograd (the
    reference), and training ends at the default's weights up to rounding (not bit for bit: the two
    backward passes round differently)."""
    from safetensors.torch import load_file

    import nami.training.loop as loop

    switched = []
    monkeypatch.setattr(loop, "autograd_wave_layers", lambda model: switched.append(model) or 0)
    default = train(tiny_train_config(tiny_squad, tiny_tokenizer_dir, tmp_path, "wave", max_steps=12, run_name="d"),
                    quiet=True)
    assert not switched
    monkeypatch.undo()
    assert main(["train", "--arch", "wave", "--preset", "tiny", "--train-data", str(tiny_squad), "--eval-data",
                 str(tiny_squad), "--tokenizer", str(tiny_tokenizer_dir), "--max-length", "96", "--batch-size", "16",
                 "--doc-stride", "128", "--max-question-tokens", "64",  # not --preset tiny's quick first-run values
                 "--lr", "3e-3", "--warmup", "0.1", "--max-steps", "12", "--eval-subset", "16", "--runs-dir",
                 str(tmp_path / "runs"), "--log-every", "10", "--precision", "fp32", "--no-title-prefix",
                 "--no-wave-recompute", "--run-name", "a", "--quiet"]) == 0
    assert ckpt.read_run_config(tmp_path / "runs" / "a")[0].wave_recompute is False
    a, b = (load_file(str(tmp_path / "runs" / name / ckpt.WEIGHTS_FILE)) for name in ("d", "a"))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the other backward really ran
    # the span head's bias shifts every position's logit alike: its true gradient is 0, so Adam steps it by
    # rounding noise, which differs between the two backward passes; every other weight agrees to 1e-5
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a if k != "span_head.proj.bias")
