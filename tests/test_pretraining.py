"""Masked-LM pretraining and QA fine-tuning from a pretrained encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nami.data.mlm import FIRST_REGULAR_ID, MLMCollator
from nami.models import preset_config
from nami.models.mlm import MaskedLMModel
from nami.runs.config import TrainConfig
from nami.training import checkpoint as ckpt
from nami.training.loop import train


def test_mlm_masking_follows_80_10_10_and_never_masks_specials():
    rng = np.random.default_rng(0)
    seqs = [np.concatenate([[2], rng.integers(FIRST_REGULAR_ID, 500, size=254), [3]]) for _ in range(64)]
    collate = MLMCollator(seqs, pad_id=0, mask_id=4, vocab_size=500, generator=torch.Generator().manual_seed(0))
    batch = collate(list(range(64)))
    targets, inputs = batch["targets"], batch["input_ids"]
    chosen = targets != -100
    original = torch.from_numpy(np.stack(seqs))
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS] / [SEP]
    assert abs(chosen.float().mean().item() - 0.15 * 254 / 256) < 0.01
    masked = (inputs == 4) & chosen
    kept = (inputs == original) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1 - 0.1 * 1 / 495) < 0.03
    assert torch.equal(targets[chosen], original[chosen])
    assert torch.equal(inputs[~chosen], original[~chosen])


def test_mlm_model_returns_hidden_states_only_for_masked_positions():
    config = preset_config("tiny", "wave", vocab_size=100, max_len=32)
    model = MaskedLMModel(config)
    ids = torch.randint(5, 100, (2, 16))
    hidden = model(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([3, 20]))
    assert hidden.shape == (2, config.d_model)
    # the rows it returns are those positions' (flat index b * S + s), each from its own sequence only
    model.eval()
    with torch.no_grad():
        mask = torch.ones_like(ids, dtype=torch.bool)
        full = model.transform(model.encoder(ids, mask).reshape(-1, config.d_model))
        torch.testing.assert_close(model(ids, mask, torch.tensor([3, 20])), full[[3, 20]])
        other = ids.clone()
        other[1, :5] = 7  # row 1 changes: position 3 (row 0) keeps its value, 20 (row 1) does not
        moved = model(other, mask, torch.tensor([3, 20]))
    torch.testing.assert_close(moved[0], full[3], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(moved[1], full[20], rtol=1e-3, atol=1e-3)
    assert model.output_weight is model.encoder.embeddings.token.weight
    assert MaskedLMModel(config, tie_embeddings=False).output_weight.shape == (100, config.d_model)


def mlm_config(tiny_squad, tokenizer_dir, runs, **overrides) -> TrainConfig:
    values = dict(task="mlm", arch="transformer", preset="tiny", train_data=[str(tiny_squad)],
                  eval_data=str(tiny_squad), tokenizer=str(tokenizer_dir), max_length=64, batch_size=8, lr=3e-3,
                  max_steps=60, eval_every_minutes=None, eval_subset=8, pppl_sequences=4, runs_dir=str(runs),
                  run_name="mlm", precision="fp32", loss_impl="naive", log_every=5)
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def pretrained(tiny_squad, tiny_tokenizer_dir, tmp_path_factory):
    return train(mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path_factory.mktemp("runs")), quiet=True)


def test_pretraining_lowers_the_masked_lm_loss_and_reports_pppl(pretrained):
    records = [json.loads(line) for line in (pretrained.run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    final = pretrained.final_eval
    assert 0 <= final["masked_accuracy"] <= 100 and final["masked_tokens"] > 0
    assert 1.0 < final["pseudo_perplexity"] < 800  # vocabulary of the tiny tokenizer


def test_masked_lm_resume_is_exact(tiny_squad, tiny_tokenizer_dir, tmp_path):
    """Masks drawn at collation came one batch late after a resume (the loader collates a batch
    ahead of the step that saves the RNG); drawn in the step (Task.ready) they match."""
    import shutil

    from safetensors.torch import load_file

    from nami.training.loop import resume

    def run(name):
        return train(mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path, run_name=name, max_steps=6, batch_size=4,
                                dropout=0.1, log_every=1, checkpoint_every_steps=3, checkpoint_every_minutes=None,
                                keep_checkpoints=5, pppl_sequences=2, eval_subset=4), quiet=True).run_dir

    straight, cut = run("straight"), run("cut")
    shutil.rmtree(cut / "checkpoints" / "step-00000006")  # as if killed after the step-3 checkpoint
    (cut / ckpt.FINAL_EVAL_FILE).unlink()
    resume(cut, quiet=True)

    def losses(run_dir):
        records = map(json.loads, (run_dir / ckpt.METRICS_FILE).read_text().splitlines())
        return [r["loss"] for r in records if r["type"] == "train"]

    assert losses(cut) == losses(straight) and len(losses(straight)) == 6
    records = [json.loads(line) for line in (cut / ckpt.METRICS_FILE).read_text().splitlines()]
    assert [(r["step"], r["from"]) for r in records if r["type"] == "resume"] == [(3, "step-00000003")]
    a, b = load_file(str(straight / ckpt.WEIGHTS_FILE)), load_file(str(cut / ckpt.WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetuning_starts_from_the_pretrained_encoder(pretrained, tiny_squad, tmp_path):
    from safetensors.torch import load_file

    config = TrainConfig.from_dict(dict(arch="transformer", preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad),
                         init_from=str(pretrained.run_dir), max_length=64, batch_size=8, max_steps=1, lr=1e-9,
                         warmup=0.0, eval_every_minutes=None, runs_dir=str(tmp_path), run_name="qa",
                         precision="fp32"))
    result = train(config, quiet=True)
    before = load_file(str(pretrained.run_dir / ckpt.WEIGHTS_FILE))
    after = load_file(str(result.run_dir / ckpt.WEIGHTS_FILE))
    key = "encoder.blocks.0.mixer.qkv.weight"
    assert torch.allclose(before[key], after[key], atol=1e-6)  # lr ~0: still the pretrained weights
    tok_a = json.loads((pretrained.run_dir / ckpt.CONFIG_FILE).read_text())["tokenizer_fingerprint"]
    tok_b = json.loads((result.run_dir / ckpt.CONFIG_FILE).read_text())["tokenizer_fingerprint"]
    assert tok_a == tok_b


def test_init_from_with_another_tokenizer_is_refused(pretrained, tiny_squad, tmp_path):
    from nami.data.corpus import read_corpus
    from nami.text import train_tokenizer

    other = tmp_path / "other_tok"
    train_tokenizer(read_corpus([tiny_squad]) + ["別のテキストです。"], other, vocab_size=700, show_progress=False)
    config = TrainConfig.from_dict(dict(arch="transformer", preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad),
                         init_from=str(pretrained.run_dir), tokenizer=str(other), max_length=64, max_steps=1,
                         runs_dir=str(tmp_path), run_name="qa"))
    with pytest.raises(ckpt.CheckpointError, match="is not the tokenizer of --init-from"):
        train(config, quiet=True)


def test_init_from_with_another_architecture_is_refused(pretrained, tiny_squad, tmp_path):
    config = TrainConfig.from_dict(dict(arch="wave", preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad),
                         init_from=str(pretrained.run_dir), max_length=64, max_steps=1, runs_dir=str(tmp_path),
                         run_name="qa"))
    with pytest.raises(ckpt.CheckpointError, match="arch"):
        train(config, quiet=True)
    # an option without weights changes the maths just as much: refused too
    config = TrainConfig.from_dict(dict(arch="transformer", preset="tiny", train_data=[str(tiny_squad)],
                                        eval_data=str(tiny_squad), init_from=str(pretrained.run_dir), max_length=64,
                                        max_steps=1, runs_dir=str(tmp_path), run_name="qa2", norm_eps=1e-3))
    with pytest.raises(ckpt.CheckpointError, match="norm_eps"):
        train(config, quiet=True)


def test_gradient_filtering_is_applied_and_logged(tiny_squad, tiny_tokenizer_dir, tmp_path):
    """--loss-filter reaches the loss: blocks are skipped (near-uniform softmax early in training),
    the figures are logged, and the exact run's records carry none of them."""
    config = mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path, max_steps=10, loss_impl="blockwise",
                        loss_filter="paper", loss_filter_threshold=0.5, run_name="filtered")
    train(config, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "filtered" / ckpt.METRICS_FILE).read_text().splitlines()]
    logged = [r for r in records if r["type"] == "train"]
    assert logged and all(0.0 < r["filter_skipped_fraction"] <= 1.0 for r in logged)
    assert all(0.0 <= r["filter_dropped_mass_mean"] <= r["filter_dropped_mass_max"] for r in logged)
    exact = mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path, max_steps=5, run_name="exact")
    train(exact, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "exact" / ckpt.METRICS_FILE).read_text().splitlines()]
    assert not any("filter_skipped_fraction" in r for r in records)


@pytest.mark.parametrize("overrides, message", [
    (dict(loss_filter="sometimes"), "loss_filter"),
    (dict(loss_filter="paper", loss_impl="naive"), "cannot filter"),
    (dict(loss_filter="paper", loss_impl="blockwise", loss_filter_threshold=1.5), "loss_filter_threshold"),
])
def test_bad_filter_options_are_refused(tiny_squad, tiny_tokenizer_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path, **overrides)


def test_frequency_vocab_order_reaches_the_loss_and_keeps_it(tiny_squad, tiny_tokenizer_dir, tmp_path, monkeypatch):
    """--loss-vocab-order frequency passes a frequency permutation to the blockwise loss; the losses
    match the unordered run (ordering changes which tokens share a block, not the maths)."""
    import nami.losses as losses_module  # MLMTask.loss imports linear_cross_entropy from here at each call

    seen = []
    original = losses_module.linear_cross_entropy

    def recording(*args, vocab_order=None, **kwargs):
        seen.append(vocab_order)
        return original(*args, vocab_order=vocab_order, **kwargs)

    monkeypatch.setattr(losses_module, "linear_cross_entropy", recording)
    losses = {}
    for order in ("none", "frequency"):
        config = mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path, max_steps=5, log_every=1, loss_impl="blockwise",
                            loss_vocab_order=order, run_name=f"order-{order}")
        train(config, quiet=True)
        losses[order] = [json.loads(line)["loss"] for line in
                         (tmp_path / f"order-{order}" / ckpt.METRICS_FILE).read_text().splitlines()
                         if json.loads(line)["type"] == "train"]
    ordered = [o for o in seen if o is not None]
    assert len(ordered) == 5 and sorted(ordered[0].tolist()) == list(range(len(ordered[0])))
    assert ordered[0].tolist() != list(range(len(ordered[0])))  # a real permutation, frequent tokens first
    assert losses["none"] == pytest.approx(losses["frequency"], rel=1e-4)
    with pytest.raises(ValueError, match="loss_vocab_order"):
        mlm_config(tiny_squad, tiny_tokenizer_dir, tmp_path, loss_vocab_order="frequency", loss_impl="naive")
