"""The Wave layer's fast path keeps the maths of a straightforward complex-number reference."""

from __future__ import annotations

import pytest
import torch
from helpers import saved_bytes

from nami.models import MixerInputs, QAModel, WaveLayer, preset_config
from nami.models.speed import compile_wave_layers, wave_block, wave_tail


def reference_wave_layer(layer: WaveLayer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """arXiv 2411.02674 read literally: G = per-dimension norm over real tokens, α = arccos(w / G),
    Z = G·e^{iα} as a complex tensor, Z1 + Z2 or Z1 · Z2, then Linear(LayerNorm([Re Z, Im Z]))."""
    w1, w2 = layer.to_waves(x).chunk(2, dim=-1)
    m = mask.to(x.dtype).unsqueeze(-1)

    def wave(w: torch.Tensor) -> torch.Tensor:
        w = w * m
        g = torch.sqrt((w * w).sum(dim=1, keepdim=True))
        alpha = torch.arccos((w / g).clamp(-1, 1))
        return torch.polar(g.expand_as(w), alpha)

    z1, z2 = wave(w1), wave(w2)
    z = z1 + z2 if layer.mode == "interference" else z1 * z2
    return layer.out(layer.norm(torch.cat([z.real, z.imag], dim=-1)))


@pytest.mark.parametrize("mode", ["interference", "modulation"])
def test_wave_layer_equals_the_complex_reference(mode):
    torch.manual_seed(0)
    config = preset_config("tiny", "wave", vocab_size=50, max_len=64, wave_mode=mode, wave_eps=1e-12)
    layer = WaveLayer(config).double()
    x = torch.randn(3, 10, config.d_model, dtype=torch.float64)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    fast = layer(x, MixerInputs(mask))
    ref = reference_wave_layer(layer, x, mask)
    torch.testing.assert_close(fast[mask], ref[mask], rtol=1e-7, atol=1e-7)


def test_compile_failure_is_reported_and_the_maths_is_unchanged():
    torch.manual_seed(1)
    model = QAModel(preset_config("tiny", "wave", vocab_size=50, max_len=64)).eval()
    ids, mask = torch.randint(5, 50, (2, 12)), torch.ones(2, 12, dtype=torch.bool)
    eager = model(ids, mask).start

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    mix = compile_wave_layers(model, compiled=broken, compiled_tail=broken, compiled_block=broken)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here"):
        fallback = model(ids, mask).start
    assert mix.failure == "RuntimeError: no C++ compiler here"
    torch.testing.assert_close(fallback, eager, rtol=0, atol=0)


def test_evaluation_runs_the_eager_maths_so_predict_reproduces_recorded_scores():
    """Only autograd (training) steps take the compiled path; no-grad evaluation is bit-identical to eager."""
    torch.manual_seed(3)
    model = QAModel(preset_config("tiny", "wave", vocab_size=50, max_len=64)).eval()
    ids, mask = torch.randint(5, 50, (2, 12)), torch.ones(2, 12, dtype=torch.bool)
    with torch.no_grad():
        eager = model(ids, mask).start
    calls = []

    def shifted(*args):  # a stand-in "compiled" block whose use is visible in the output
        calls.append(1)
        return wave_block(*args) + 1.0

    compile_wave_layers(model, compiled_block=shifted)
    for context in (torch.no_grad(), torch.inference_mode()):
        with context:
            torch.testing.assert_close(model(ids, mask).start, eager, rtol=0, atol=0)
    assert not calls
    trained = model(ids, mask).start  # autograd on: the compiled path
    assert calls and not torch.equal(trained, eager)


def test_compile_refuses_a_model_without_wave_layers():
    with pytest.raises(ValueError, match="no Wave layers"):
        compile_wave_layers(QAModel(preset_config("tiny", "transformer", vocab_size=50, max_len=64)))


@pytest.mark.slow
@pytest.mark.parametrize(("causal", "part"), [(False, "block"), (True, "block"), (False, "tail")],
                         ids=["global-block", "causal-block", "global-tail"])
def test_compiled_wave_layer_matches_eager_values_and_gradients(causal, part):
    """The compiled whole block (plain Wave blocks) and the compiled tail (maths, LayerNorm,
    projection: Wave layers in blocks with branches, which causal models do not have) against the
    eager modules."""
    torch.manual_seed(2)
    branches = {"block": None, "tail": ["conv"]}[part]
    config = preset_config("tiny", "wave", vocab_size=50, max_len=64, causal=causal, branches=branches)
    eager, compiled = QAModel(config), QAModel(config)
    compiled.load_state_dict(eager.state_dict())
    mix = compile_wave_layers(compiled)
    calls, function = [], getattr(mix, f"compiled_{part}")
    # the compiled function, not a fallback, ran: once per layer
    setattr(mix, f"compiled_{part}", lambda *args: calls.append(1) or function(*args))
    ids, mask = torch.randint(5, 50, (2, 16)), torch.ones(2, 16, dtype=torch.bool)
    mask[0, 10:] = False
    starts, ends = torch.tensor([1, 2]), torch.tensor([3, 4])
    losses = []
    for model in (eager, compiled):
        loss = QAModel.loss(model(ids, mask), starts, ends)
        loss.backward()
        losses.append(loss)
    assert mix.failure is None, mix.failure
    assert len(calls) == config.n_layers
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    # atol: fp32 rounding, fused in another order, amplified where a causal layer's first token has
    # an imaginary part of ~sqrt(2·eps) (gradients up to ~1 differ by ~3e-6 there)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compiled_block_applies_dropout_only_in_training():
    """Dropout inside the compiled block: active in train mode (the output changes and stays unbiased
    in expectation), absent in eval mode with autograd on (equal to the eager block)."""
    torch.manual_seed(4)
    config = preset_config("tiny", "wave", vocab_size=50, max_len=64, dropout=0.3)
    eager, compiled = QAModel(config), QAModel(config)
    compiled.load_state_dict(eager.state_dict())
    mix = compile_wave_layers(compiled)
    block, reference = compiled.encoder.blocks[0], eager.encoder.blocks[0]
    x = torch.randn(4, 16, config.d_model)
    inputs = MixerInputs(padding_mask=torch.ones(4, 16, dtype=torch.bool))
    for model in (eager, compiled):
        model.eval()
    torch.testing.assert_close(block(x, inputs), reference(x, inputs), rtol=1e-5, atol=1e-5)
    compiled.train()
    noisy = torch.stack([block(x, inputs) for _ in range(3)])
    assert mix.failure is None, mix.failure
    assert not torch.allclose(noisy[0], noisy[1])
    clean = reference(x, inputs)
    assert (noisy - clean).abs().mean() > 0.01  # dropped units change the output
    assert (noisy.mean(0) - clean).mean().abs() < 0.05  # inverted dropout: no shift in expectation


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])
def test_compiled_tail_keeps_what_the_eager_node_keeps(causal):
    """With the activation memory budget the compiled tail saves about what the hand-written node saves
    for backward (w and small statistics), not autograd's several (B, S, 2D) tensors."""
    from nami.models import ModelConfig
    from nami.models.speed import autograd_wave_layers

    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=256, causal=causal)
    torch.manual_seed(0)
    node, compiled, plain = WaveLayer(config), WaveLayer(config), WaveLayer(config)
    compiled.load_state_dict(node.state_dict())
    mix = compile_wave_layers(torch.nn.ModuleList([compiled]))
    autograd_wave_layers(torch.nn.ModuleList([plain]))
    x = torch.randn(4, 256, config.d_model)
    inputs = MixerInputs(padding_mask=torch.ones(4, 256, dtype=torch.bool))

    def saved(layer: WaveLayer) -> int:
        return saved_bytes(layer, x, inputs)

    saved(compiled)  # compiles
    node_bytes, compiled_bytes, plain_bytes = saved(node), saved(compiled), saved(plain)
    assert mix.failure is None, mix.failure
    assert compiled_bytes <= 1.1 * node_bytes < 0.5 * plain_bytes, (compiled_bytes, node_bytes, plain_bytes)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])
def test_compiled_block_memory_budget(causal, monkeypatch):
    """What the whole-block graph keeps for backward: by default (budget 1.0, the fastest) less than
    autograd through the plain maths and more than the eager block with its memory-light node; at
    a budget of 0.5 less than that eager block (the setting works, and recomputes). A budget that is
    not applied fails the second check (~1.4x the eager block's bytes)."""
    from nami.models import ModelConfig
    from nami.models import speed

    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=256, causal=causal)
    x = torch.randn(4, 256, config.d_model)
    inputs = MixerInputs(padding_mask=torch.ones(4, 256, dtype=torch.bool))

    def block_bytes(backward: str, budget: float = speed.BLOCK_MEMORY_BUDGET) -> int:
        torch.manual_seed(0)
        model = QAModel(config)
        if backward == "autograd":
            speed.autograd_wave_layers(model)
        if backward == "compiled":
            torch._dynamo.reset()  # the budget is read when the graph compiles
            monkeypatch.setattr(speed, "BLOCK_MEMORY_BUDGET", budget)
            mix = compile_wave_layers(model)
            saved_bytes(model.encoder.blocks[0], x, inputs)  # compiles
            assert mix.failure is None, mix.failure
        return saved_bytes(model.encoder.blocks[0], x, inputs)

    node, plain = block_bytes("node"), block_bytes("autograd")
    default, light = block_bytes("compiled"), block_bytes("compiled", budget=0.5)
    assert light <= node < default < plain, (light, node, default, plain)


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [None, (0.1, 0.2)], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])
def test_wave_block_compiles_to_one_graph(causal, dropout):
    """No graph break inside the block: a break splits it into pieces that Inductor cannot fuse across
    and that each keep their own tensors for backward (a symbolic ``p > 0`` test once did this)."""
    from nami.models.speed import block_weights

    torch.manual_seed(0)
    config = preset_config("tiny", "wave", vocab_size=50, max_len=64, causal=causal)
    block = QAModel(config).encoder.blocks[0]
    x, mask = torch.randn(2, 8, config.d_model), torch.ones(2, 8, 1)
    explained = torch._dynamo.explain(wave_block)(x, mask, 1e-6, "modulation", causal, (1e-5, 1e-5, 1e-5), dropout,
                                                  "none", block_weights(block))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
