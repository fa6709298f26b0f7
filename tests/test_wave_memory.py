"""The Wave maths with a hand-written, memory-light backward (nami.models.wave.wave_mix_recompute):
same forward values, the same gradients, fewer bytes kept for backward."""

from __future__ import annotations

import pytest
import torch

from nami.models import MixerInputs, ModelConfig, WaveLayer
from nami.models.speed import recompute_wave_layers
from nami.models.wave import _WaveMixNormRecompute, wave_mix, wave_mix_norm_recompute, wave_mix_recompute

MODES = ("modulation", "interference")


@pytest.fixture(params=[4096, 7, 1], ids=["one-chunk", "chunks-of-2", "chunks-of-1"])
def chunked(request, monkeypatch):
    """The recompute forward and backward over positions in one chunk, in chunks of 2 and of 1 (batch of 3)."""
    import nami.models.wave as wave

    monkeypatch.setattr(wave, "BACKWARD_CHUNK_TOKENS", request.param)
    return request.param


def batch(dtype=torch.float64, seed=0):
    """``w (3, 6, 8)`` with padding in row 1, a one-token row 2 and all-equal tokens in row 0."""
    torch.manual_seed(seed)
    w = torch.randn(3, 6, 8, dtype=dtype)
    w[0] = w[0, :1]  # all tokens equal
    mask = torch.ones(3, 6, 1, dtype=dtype)
    mask[1, 4:] = 0
    mask[2, 1:] = 0  # one real token
    return w, mask


@pytest.mark.parametrize("mode", MODES)
def test_forward_is_bit_identical_to_the_eager_maths(mode, chunked):  # the forward runs chunk by chunk too
    w, mask = batch(torch.float32)
    assert torch.equal(wave_mix_recompute(w, mask, 1e-6, mode), wave_mix(w, mask, 1e-6, mode))
    low = w.to(torch.bfloat16)  # promoted inside, exactly as WaveLayer promotes before wave_mix
    assert torch.equal(wave_mix_recompute(low, mask.float(), 1e-6, mode), wave_mix(low.float(), mask.float(), 1e-6,
                                                                                 mode))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_in_float64_on_padding_one_token_and_equal_tokens(mode, chunked):
    w, mask = batch()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: wave_mix_recompute(x, mask, 1e-6, mode), (w,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_equal_autograd_through_the_eager_maths(mode, chunked):
    """In float32 both paths round (a one-token row has t ≈ T ≈ 1/√eps, so T − t cancels), differently
    once T is summed in chunks: each is held to a float64 reference, the recompute no worse than eager."""
    w, mask = batch(torch.float32, seed=1)
    upstream = torch.randn(3, 6, 8)

    def grad(mix, dtype):
        x = w.to(dtype).clone().requires_grad_()
        (mix(x, mask.to(dtype), 1e-6, mode) * upstream.to(dtype)).sum().backward()
        return x.grad

    reference = grad(wave_mix, torch.float64)
    eager, recompute = grad(wave_mix, torch.float32), grad(wave_mix_recompute, torch.float32)
    eager_error = (eager.double() - reference).abs().max().item()
    recompute_error = (recompute.double() - reference).abs().max().item()
    assert recompute_error <= max(1.5 * eager_error, 1e-5), (recompute_error, eager_error)
    torch.testing.assert_close(recompute.double(), reference, rtol=1e-4, atol=2e-4)
    assert recompute[1, 4:].abs().sum() == 0  # padding gets no gradient


def _norm(dtype=torch.float64, seed=2) -> torch.nn.LayerNorm:
    torch.manual_seed(seed)
    norm = torch.nn.LayerNorm(8, eps=1e-5, dtype=dtype)
    with torch.no_grad():  # not the identity, so the gradient through γ and β is exercised
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    return norm


@pytest.mark.parametrize("mode", MODES)
def test_mixing_and_layernorm_in_one_node_forward_is_bit_identical(mode, chunked):
    w, mask = batch(torch.float32)
    norm = _norm(torch.float32)
    assert torch.equal(wave_mix_norm_recompute(w, mask, 1e-6, mode, norm), norm(wave_mix(w, mask, 1e-6, mode)))
    low = w.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a WaveLayer under bf16 autocast
        fused = wave_mix_norm_recompute(low, mask.float(), 1e-6, mode, norm)
        eager = norm(wave_mix(low.float(), mask.float(), 1e-6, mode))
    assert fused.dtype == eager.dtype == torch.float32 and torch.equal(fused, eager)


@pytest.mark.parametrize("mode", MODES)
def test_mixing_and_layernorm_in_one_node_gradcheck_in_float64(mode, chunked):
    w, mask = batch()
    norm = _norm()
    inputs = (w.requires_grad_(), norm.weight, norm.bias)
    assert torch.autograd.gradcheck(
        lambda x, g, b: _WaveMixNormRecompute.apply(x, mask, 1e-6, mode, g, b, 1e-5), inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_mixing_and_layernorm_in_one_node_gradients_equal_autograd(mode, chunked):
    """Held to a float64 reference like the test above (float32 rounding differs between hosts' kernels)."""
    w, mask = batch(torch.float32, seed=3)
    upstream = torch.randn(3, 6, 8)

    def grads(fused: bool, dtype):
        norm = _norm(dtype)
        x = w.to(dtype).clone().requires_grad_()
        m = mask.to(dtype)
        out = wave_mix_norm_recompute(x, m, 1e-6, mode, norm) if fused else norm(wave_mix(x, m, 1e-6, mode))
        (out * upstream.to(dtype)).sum().backward()
        return [g.double() for g in (x.grad, norm.weight.grad, norm.bias.grad)]

    reference = grads(False, torch.float64)
    eager, fused = grads(False, torch.float32), grads(True, torch.float32)
    for f, e, r in zip(fused, eager, reference):
        fused_error, eager_error = (f - r).abs().max().item(), (e - r).abs().max().item()
        assert fused_error <= max(1.5 * eager_error, 1e-5), (fused_error, eager_error)
        torch.testing.assert_close(f, r, rtol=1e-4, atol=2e-4)
    assert fused[0][1, 4:].abs().sum() == 0  # padding gets no gradient


def _saved_bytes(layer: WaveLayer, x: torch.Tensor, inputs: MixerInputs) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x, inputs).float().sum().backward()
    return total


@pytest.mark.parametrize("mode", MODES)
def test_a_wave_layer_keeps_less_for_backward_and_trains_the_same(mode):
    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64, wave_mode=mode)
    torch.manual_seed(0)
    eager = WaveLayer(config)
    light = WaveLayer(config)
    light.load_state_dict(eager.state_dict())
    model = torch.nn.ModuleList([light])
    assert recompute_wave_layers(model) == 1
    x = torch.randn(4, 32, config.d_model)
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[3, 20:] = False
    inputs = MixerInputs(padding_mask=mask)
    eager_bytes = _saved_bytes(eager, x, inputs)
    light_bytes = _saved_bytes(light, x, inputs)
    # The wave maths and its LayerNorm kept several fp32 (B, S, 2D) tensors; now w in bf16 and G² (B, 1, 2D).
    assert light_bytes < 0.45 * eager_bytes, (light_bytes, eager_bytes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(light(x, inputs), eager(x, inputs))
    for a, b in zip(light.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-2, atol=1e-4)  # bf16 autocast: rounding only


def test_wave_recompute_option_is_checked():
    from nami.training.config import TrainConfig

    with pytest.raises(ValueError, match="choose one"):
        TrainConfig.from_dict({"wave_recompute": True, "compile_wave": True})
    with pytest.raises(ValueError, match="needs non-causal Wave layers"):
        TrainConfig.from_dict({"wave_recompute": True, "arch": "transformer"})
