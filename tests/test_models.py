"""Model behaviour: padding invariance, finite Wave gradients on edge cases, size parity."""

from __future__ import annotations

import pytest
import torch

from nami.models import (
    ARCHITECTURES,
    MixerInputs,
    ModelConfig,
    QAModel,
    WaveLayer,
    count_parameters,
    preset_config,
    to_complex,
)

ARCHS = list(ARCHITECTURES)  # every registered architecture


def tiny_config(arch: str, **overrides) -> ModelConfig:
    return preset_config("tiny", arch, vocab_size=50, max_len=64, **overrides)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["interference", "modulation"])
def test_padding_does_not_change_real_token_outputs(arch, mode):
    torch.manual_seed(0)
    model = QAModel(tiny_config(arch, wave_mode=mode)).eval()
    ids = torch.randint(5, 50, (1, 11))
    alone = model(ids, torch.ones(1, 11, dtype=torch.bool))
    padded_ids = torch.cat([ids, torch.zeros(1, 21, dtype=torch.long)], dim=1)
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[:, :11] = True
    padded = model(padded_ids, mask)
    torch.testing.assert_close(padded.start[:, :11], alone.start, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded.end[:, :11], alone.end, rtol=1e-5, atol=1e-5)
    assert torch.isinf(padded.start[:, 11:]).all() and (padded.start[:, 11:] < 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_rows_are_independent(arch):
    """Another sequence in the batch (with its own padding) never leaks into a row."""
    torch.manual_seed(1)
    model = QAModel(tiny_config(arch)).eval()
    a = torch.randint(5, 50, (1, 16))
    b = torch.randint(5, 50, (1, 16))
    mask_b = torch.ones(1, 16, dtype=torch.bool)
    mask_b[:, 9:] = False
    both = model(torch.cat([a, b]), torch.cat([torch.ones(1, 16, dtype=torch.bool), mask_b]))
    alone = model(a, torch.ones(1, 16, dtype=torch.bool))
    torch.testing.assert_close(both.start[:1], alone.start, rtol=1e-5, atol=1e-5)


def test_to_complex_matches_polar_definition():
    """Closed form == G·(cos α, sin α) with G the per-dimension norm and cos α = w / G."""
    torch.manual_seed(2)
    w = torch.randn(2, 7, 5, dtype=torch.float64)
    mask = torch.ones(2, 7, 1, dtype=torch.float64)
    real, imag = to_complex(w, mask, eps=0.0)
    g = w.norm(dim=1, keepdim=True)
    alpha = torch.atan2(torch.sqrt(1 - (w / g) ** 2), w / g)
    torch.testing.assert_close(real, g * torch.cos(alpha))
    torch.testing.assert_close(imag, g * torch.sin(alpha))
    # every token's complex magnitude is the global semantics G
    torch.testing.assert_close(torch.sqrt(real**2 + imag**2), g.expand_as(real))


def test_to_complex_ignores_padding():
    w = torch.randn(1, 6, 4)
    mask = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.float32).view(1, 6, 1)
    real, imag = to_complex(w, mask, eps=1e-6)
    real_short, imag_short = to_complex(w[:, :3], torch.ones(1, 3, 1), eps=1e-6)
    torch.testing.assert_close(real[:, :3], real_short)
    torch.testing.assert_close(imag[:, :3], imag_short)


@pytest.mark.parametrize("mode", ["interference", "modulation"])
@pytest.mark.parametrize(
    "case",
    ["one_token", "all_equal_tokens", "padding", "zeros"],
)
def test_wave_layer_gradients_are_finite_on_edge_cases(mode, case):
    torch.manual_seed(3)
    config = tiny_config("wave", wave_mode=mode)
    layer = WaveLayer(config)
    d = config.d_model
    if case == "one_token":
        x, mask = torch.randn(2, 1, d), torch.ones(2, 1, dtype=torch.bool)
    elif case == "all_equal_tokens":
        x, mask = torch.randn(2, 1, d).expand(2, 9, d).clone(), torch.ones(2, 9, dtype=torch.bool)
    elif case == "padding":
        x, mask = torch.randn(2, 8, d), torch.tensor([[True] * 1 + [False] * 7, [True] * 8])
    else:  # the input projection sees exact zeros
        x, mask = torch.zeros(2, 5, d), torch.ones(2, 5, dtype=torch.bool)
        torch.nn.init.zeros_(layer.to_waves.bias)
    x.requires_grad_(True)
    out = layer(x, MixerInputs(mask))
    (out * mask.unsqueeze(-1)).sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_wave_layer_is_finite_under_bf16_autocast_on_long_sequences():
    torch.manual_seed(4)
    config = preset_config("tiny", "wave", vocab_size=50, max_len=4096, wave_mode="modulation")
    model = QAModel(config)
    ids = torch.randint(5, 50, (1, 2048))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.ones_like(ids, dtype=torch.bool))
        loss = QAModel.loss(logits, torch.tensor([3]), torch.tensor([5]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_same_preset_models_have_parameter_counts_within_5_percent():
    for preset in ("tiny", "small", "base"):
        wave = count_parameters(QAModel(preset_config(preset, "wave", vocab_size=32000)))
        trans = count_parameters(QAModel(preset_config(preset, "transformer", vocab_size=32000)))
        for key in ("total", "non_embedding"):
            assert abs(wave[key] - trans[key]) / trans[key] < 0.05, (preset, key, wave, trans)


def test_interference_and_modulation_differ():
    torch.manual_seed(5)
    x = torch.randn(1, 6, 64)
    mask = torch.ones(1, 6, dtype=torch.bool)
    a = WaveLayer(tiny_config("wave", wave_mode="interference"))
    b = WaveLayer(tiny_config("wave", wave_mode="modulation"))
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x, MixerInputs(mask)), b(x, MixerInputs(mask)))


@pytest.mark.parametrize(
    "field,value",
    [("arch", "rnn"), ("wave_mode", "sum"), ("d_model", 0), ("n_layers", -1), ("dropout", 1.0), ("pad_id", 99),
     ("attention_dropout", -0.1)],
)
def test_bad_model_options_are_rejected_with_their_name(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(vocab_size=50, **{field: value})


def test_sequence_longer_than_max_len_is_a_clear_error():
    model = QAModel(tiny_config("wave"))
    ids = torch.ones(1, 65, dtype=torch.long)
    with pytest.raises(ValueError, match="max_len"):
        model(ids, torch.ones_like(ids, dtype=torch.bool))


@pytest.mark.parametrize("arch", ARCHS)
def test_segment_embeddings_change_outputs_only_when_enabled(arch):
    torch.manual_seed(6)
    ids = torch.randint(5, 50, (1, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    types = (torch.arange(12) >= 5).long()[None]
    with_segments = QAModel(tiny_config(arch, type_vocab_size=2)).eval()
    torch.nn.init.normal_(with_segments.encoder.embeddings.segment.weight)
    assert not torch.allclose(with_segments(ids, mask, types).start, with_segments(ids, mask).start)
    without = QAModel(tiny_config(arch)).eval()
    assert without.encoder.embeddings.segment is None
    torch.testing.assert_close(without(ids, mask, types).start, without(ids, mask).start)


@pytest.mark.parametrize("attention_dropout,expected", [(None, 0.1), (0.0, 0.0), (0.3, 0.3)])
def test_attention_dropout_is_separate_from_hidden_dropout(monkeypatch, attention_dropout, expected):
    """``attention_dropout`` reaches scaled_dot_product_attention in training (None = ``dropout``), never in eval."""
    import nami.models.attention as transformer_module

    seen = []
    real_sdpa = transformer_module.F.scaled_dot_product_attention

    def recording_sdpa(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return real_sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(transformer_module.F, "scaled_dot_product_attention", recording_sdpa)
    config = tiny_config("transformer", dropout=0.1, attention_dropout=attention_dropout)
    model = QAModel(config)
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones_like(ids, dtype=torch.bool)
    model.train()(ids, mask)
    assert seen and set(seen) == {expected}
    seen.clear()
    model.eval()(ids, mask)
    assert set(seen) == {0.0}
    # Hidden dropout still acts when attention dropout is off: two training passes differ.
    torch.manual_seed(0)
    first = model.train()(ids, mask)
    second = model(ids, mask)
    assert not torch.equal(first.start, second.start)


def test_configs_saved_before_attention_dropout_existed_still_load():
    data = tiny_config("transformer", dropout=0.1).to_dict()
    del data["attention_dropout"]
    config = ModelConfig.from_dict(data)
    assert config.attention_dropout is None and config.attention_dropout_p == 0.1
