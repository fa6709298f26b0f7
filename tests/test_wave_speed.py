"""The Wave layer's fast path keeps the maths of a straightforward complex-number reference."""

from __future__ import annotations

import pytest
import torch
from helpers import saved_bytes

from nami.models import MixerInputs, QAModel, WaveLayer, preset_config
from nami.models.speed import compile_wave_layers, wave_tail


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

    mix = compile_wave_layers(model, compiled=broken, compiled_tail=broken)
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

    def shifted(*args):  # a stand-in "compiled" tail whose use is visible in the output
        calls.append(1)
        return wave_tail(*args) + 1.0

    compile_wave_layers(model, compiled_tail=shifted)
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
@pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])
@pytest.mark.slow
def test_compiled_wave_layer_matches_eager_values_and_gradients(causal):
    """The compiled tail (maths, LayerNorm, projection) against the eager node, causal layers too."""
    torch.manual_seed(2)
    config = preset_config("tiny", "wave", vocab_size=50, max_len=64, causal=causal)
    eager, compiled = QAModel(config), QAModel(config)
    compiled.load_state_dict(eager.state_dict())
    mix = compile_wave_layers(compiled)
    calls, tail = [], mix.compiled_tail
    mix.compiled_tail = lambda *args: calls.append(1) or tail(*args)  # the compiled tail, not a fallback, ran
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
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])
@pytest.mark.slow
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


@pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])
def test_wave_tail_compiles_to_one_graph(causal):
    """No graph break inside the compiled tail: a break would split it into pieces that Inductor cannot
    fuse across, each keeping its own tensors for backward (a symbolic ``p > 0`` test on a float
    argument did this to an experimental whole-block graph: ``dynamic=True`` traces floats)."""
    torch.manual_seed(0)
    layer = WaveLayer(preset_config("tiny", "wave", vocab_size=50, max_len=64, causal=causal))
    w, mask = torch.randn(2, 8, layer.out.in_features), torch.ones(2, 8, 1)  # (B, S, 2D)
    explained = torch._dynamo.explain(wave_tail)(w, mask, 1e-6, "modulation", causal, layer.norm.weight,
                                                 layer.norm.bias, 1e-5, layer.out.weight, layer.out.bias)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compile_failure_warnings_are_one_line(monkeypatch):
    """torch logs a failed backward compile with its whole traceback (g++'s output included)."""
    import logging

    from nami.models.speed import COMPILE_LOGGERS, OneLineCompileWarnings

    monkeypatch.delenv("NAMI_DEBUG", raising=False)
    try:
        raise RuntimeError("C++ compile error\n" + "g++ output line\n" * 500)
    except RuntimeError:
        import sys

        record = logging.LogRecord(COMPILE_LOGGERS[0], logging.WARNING, __file__, 1, "failed to compile %s",
                                   ("backwards",), sys.exc_info())
    assert OneLineCompileWarnings().filter(record)
    text = logging.Formatter().format(record)
    assert text.count("\n") == 0 and "RuntimeError: C++ compile error" in text and "failed to compile backwards" in text
