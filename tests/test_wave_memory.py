"""The Wave maths with a hand-written, memory-light backward (nami.models.wave.wave_mix_recompute and
wave_mixer_recompute, the default training path of a non-causal WaveLayer): same forward values, the
same gradients, fewer bytes kept for backward."""

from __future__ import annotations

import pytest
import torch
from helpers import saved_bytes

from nami.models import MixerInputs, ModelConfig, WaveLayer
from nami.models.speed import autograd_wave_layers, recompute_wave_layers
from nami.models.wave import _WaveMixerRecompute, causal_wave_mix, wave_mix, wave_mix_recompute, wave_mixer_recompute

MODES = ("modulation", "interference")
KINDS = pytest.mark.parametrize("causal", [False, True], ids=["global", "causal"])


def plain_mix(w, mask, eps, mode, causal=False):
    """The plain maths under autograd: wave_mix, or causal_wave_mix's prefix norms from the start."""
    return causal_wave_mix(w, mask, eps, mode)[0] if causal else wave_mix(w, mask, eps, mode)


@pytest.fixture(params=[4096, 12, 4, 2, 1], ids=["one-chunk", "rows-2-and-1", "positions-3-and-3", "positions-2-2-2", "chunks-of-1"])
def chunked(request, monkeypatch):
    """The recompute forward and backward (batch of 3, 6 positions) in one chunk, in chunks of whole rows
    (2 rows, then 1), in chunks of 3 or 2 positions of one row (carried from chunk to chunk), and of 1."""
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


def test_chunks_are_contiguous_and_split_long_rows_equally(monkeypatch):
    import nami.models.wave as wave

    monkeypatch.setattr(wave, "BACKWARD_CHUNK_TOKENS", 1024)
    short = wave._chunks(torch.zeros(5, 512, 4), torch.ones(5, 512, 1))  # whole sequences, two rows a chunk
    assert [(c.rows, c.whole) for c in short] == [(slice(0, 2), True), (slice(2, 4), True), (slice(4, 6), True)]
    long = wave._chunks(torch.zeros(2, 1025, 4), torch.ones(2, 1025, 1))  # 513 + 512 positions, never 1,024 + 1
    assert [(c.rows, c.positions, c.index) for c in long] == [
        (slice(0, 1), slice(0, 512), 0), (slice(0, 1), slice(512, 1025), 1),
        (slice(1, 2), slice(0, 512), 0), (slice(1, 2), slice(512, 1025), 1)]
    w = torch.zeros(2, 1025, 4)
    assert all(w[c.rows, c.positions].is_contiguous() and c.mask.shape == (1, c.positions.stop - c.positions.start, 1)
               for c in long)


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_forward_is_bit_identical_to_the_eager_maths(mode, causal, chunked):  # the forward runs chunk by chunk too
    w, mask = batch(torch.float32)
    assert torch.equal(wave_mix_recompute(w, mask, 1e-6, mode, causal), plain_mix(w, mask, 1e-6, mode, causal))
    low = w.to(torch.bfloat16)  # promoted inside, exactly as WaveLayer promotes before wave_mix
    assert torch.equal(wave_mix_recompute(low, mask.float(), 1e-6, mode, causal),
                       plain_mix(low.float(), mask.float(), 1e-6, mode, causal))


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_in_float64_on_padding_one_token_and_equal_tokens(mode, causal, chunked):
    w, mask = batch()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: wave_mix_recompute(x, mask, 1e-6, mode, causal), (w,), eps=1e-6,
                                    atol=1e-5)


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_gradients_equal_autograd_through_the_eager_maths(mode, causal, chunked):
    """In float32 both paths round (a one-token row has t ≈ T ≈ 1/√eps, so T − t cancels), differently
    once T is summed in chunks: each is held to a float64 reference, the recompute no worse than eager."""
    w, mask = batch(torch.float32, seed=1)
    upstream = torch.randn(3, 6, 8)

    def grad(mix, dtype):
        x = w.to(dtype).clone().requires_grad_()
        (mix(x, mask.to(dtype), 1e-6, mode, causal) * upstream.to(dtype)).sum().backward()
        return x.grad

    reference = grad(plain_mix, torch.float64)
    eager, recompute = grad(plain_mix, torch.float32), grad(wave_mix_recompute, torch.float32)
    eager_error = (eager.double() - reference).abs().max().item()
    recompute_error = (recompute.double() - reference).abs().max().item()
    assert recompute_error <= max(1.5 * eager_error, 1e-5), (recompute_error, eager_error)
    torch.testing.assert_close(recompute.double(), reference, rtol=1e-4, atol=2e-4)
    assert recompute[1, 4:].abs().sum() == 0  # padding gets no gradient


def _norm_and_out(dtype=torch.float64, seed=2) -> tuple[torch.nn.LayerNorm, torch.nn.Linear]:
    torch.manual_seed(seed)
    norm = torch.nn.LayerNorm(8, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():  # not the identity, so the gradient through γ and β is exercised
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    out = torch.nn.Linear(8, 5, dtype=torch.float64)  # drawn in float64, then cast: the same values in every dtype
    return norm.to(dtype), out.to(dtype)


def _plain(w, mask, mode, norm, out, causal=False):
    return out(norm(plain_mix(w, mask, 1e-6, mode, causal)))


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_mixer_node_forward_is_bit_identical(mode, causal, chunked):
    """Mixing, LayerNorm and output projection in one node: the plain modules' values exactly, in fp32 and
    under bf16 autocast (where the projection runs in bf16, as nn.Linear's does)."""
    if chunked == 1:
        pytest.skip("a one-token projection runs MKL's matrix-vector kernel, which rounds differently; the node's "
                    "chunks split S equally, so they hold one token only where the plain maths' do too (S = 1)")
    w, mask = batch(torch.float32)
    norm, out = _norm_and_out(torch.float32)
    assert torch.equal(wave_mixer_recompute(w, mask, 1e-6, mode, norm, out, causal),
                       _plain(w, mask, mode, norm, out, causal))
    low = w.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a WaveLayer under bf16 autocast
        fused = wave_mixer_recompute(low, mask.float(), 1e-6, mode, norm, out, causal)
        eager = _plain(low.float(), mask.float(), mode, norm, out, causal)
    assert fused.dtype == eager.dtype == torch.bfloat16 and torch.equal(fused, eager)


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_mixer_node_gradcheck_in_float64(mode, causal, chunked):
    w, mask = batch()
    norm, out = _norm_and_out()
    inputs = (w.requires_grad_(), norm.weight, norm.bias, out.weight, out.bias)
    assert torch.autograd.gradcheck(
        lambda x, g, b, ow, ob: _WaveMixerRecompute.apply(x, mask, 1e-6, mode, causal, g, b, 1e-5, ow, ob), inputs,
        eps=1e-6, atol=1e-5)


def test_mixer_node_without_a_projection_bias():
    w, mask = batch()
    norm, _ = _norm_and_out()
    out = torch.nn.Linear(8, 5, bias=False, dtype=torch.float64)
    inputs = (w.requires_grad_(), out.weight)
    assert torch.autograd.gradcheck(
        lambda x, ow: _WaveMixerRecompute.apply(x, mask, 1e-6, "modulation", False, norm.weight, norm.bias, 1e-5,
                                                ow, None),
        inputs, eps=1e-6, atol=1e-5)


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_mixer_node_gradients_equal_autograd(mode, causal, chunked):
    """Held to a float64 reference like the tests above (float32 rounding differs between hosts' kernels)."""
    w, mask = batch(torch.float32, seed=3)
    upstream = torch.randn(3, 6, 5)

    def grads(fused: bool, dtype):
        norm, out = _norm_and_out(dtype)
        x = w.to(dtype).clone().requires_grad_()
        m = mask.to(dtype)
        y = wave_mixer_recompute(x, m, 1e-6, mode, norm, out, causal) if fused else _plain(x, m, mode, norm, out, causal)
        (y * upstream.to(dtype)).sum().backward()
        return [g.double() for g in (x.grad, norm.weight.grad, norm.bias.grad, out.weight.grad, out.bias.grad)]

    reference = grads(False, torch.float64)
    eager, fused = grads(False, torch.float32), grads(True, torch.float32)
    for f, e, r in zip(fused, eager, reference):
        fused_error, eager_error = (f - r).abs().max().item(), (e - r).abs().max().item()
        assert fused_error <= max(1.5 * eager_error, 1e-5), (fused_error, eager_error)
        torch.testing.assert_close(f, r, rtol=1e-4, atol=2e-4)
    assert fused[0][1, 4:].abs().sum() == 0  # padding gets no gradient


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh runs it)")
@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_mixer_node_on_cuda_matches_autograd_in_fp32_and_bf16_autocast(mode, causal, chunked):
    """The node is device-agnostic: on CUDA its gradients are as close to a float64 reference as
    autograd's, and under bf16 autocast it matches the plain modules to bf16 rounding."""
    w, mask = batch(torch.float32, seed=3)
    upstream = torch.randn(3, 6, 5)

    def grads(fused: bool, dtype, autocast: bool = False):
        norm, out = (module.cuda() for module in _norm_and_out(dtype))
        x = w.to(dtype).cuda().requires_grad_()
        m = mask.to(dtype).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = wave_mixer_recompute(x, m, 1e-6, mode, norm, out, causal) if fused else \
                _plain(x, m, mode, norm, out, causal)
        (y.float() * upstream.cuda()).sum().backward()
        return [y.detach().double().cpu()] + [g.double().cpu() for g in (x.grad, norm.weight.grad, norm.bias.grad,
                                                                          out.weight.grad, out.bias.grad)]

    reference = grads(False, torch.float64)
    eager, fused = grads(False, torch.float32), grads(True, torch.float32)
    for f, e, r in zip(fused, eager, reference):
        fused_error, eager_error = (f - r).abs().max().item(), (e - r).abs().max().item()
        assert fused_error <= max(1.5 * eager_error, 1e-5), (fused_error, eager_error)
    low_eager, low_fused = grads(False, torch.float32, autocast=True), grads(True, torch.float32, autocast=True)
    for f, e in zip(low_fused, low_eager):
        torch.testing.assert_close(f, e, rtol=2e-2, atol=2e-2)
    assert fused[1][1, 4:].abs().sum() == 0  # padding gets no gradient


@KINDS
@pytest.mark.parametrize("mode", MODES)
def test_a_wave_layer_keeps_less_for_backward_by_default_and_trains_the_same(mode, causal):
    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64, wave_mode=mode, causal=causal)
    torch.manual_seed(0)
    light = WaveLayer(config)  # the default: the hand-written backward
    plain = WaveLayer(config)
    plain.load_state_dict(light.state_dict())
    assert autograd_wave_layers(torch.nn.ModuleList([plain])) == 1
    x = torch.randn(4, 32, config.d_model)
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[3, 20:] = False
    inputs = MixerInputs(padding_mask=mask)
    plain_bytes = saved_bytes(plain, x, inputs)
    light_bytes = saved_bytes(light, x, inputs)
    # Autograd keeps several fp32 (B, S, 2D) tensors (the maths, the LayerNorm's input, the projection's
    # bf16 input); the node keeps w in bf16 and G² (B, 1, 2D), plus to_waves' bf16 input (B, S, D).
    tokens, d = 4 * 32, config.d_model
    assert light_bytes < 0.25 * plain_bytes, (light_bytes, plain_bytes)
    chunk_starts = 4 * 2 * d * (1 + tokens // 1024)  # causal: the running sums where chunks start
    assert light_bytes - _weight_bytes(light) <= tokens * (2 * d + 2 * 2 * d + 4) + 4 * 2 * d + chunk_starts, light_bytes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(light(x, inputs), plain(x, inputs))
    for a, b in zip(light.parameters(), plain.parameters()):  # bf16 autocast: bf16 rounding only
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-2, atol=4e-3)
    # fp32, against a float64 reference: causal rows start with a one-token prefix (G² − w² ≈ ε, rounded
    # in fp32 by both paths; t ≈ 1/√ε, which autograd's reverse cumsum minus t also cancels).
    reference = WaveLayer(config).double()
    reference.load_state_dict(light.state_dict())
    autograd_wave_layers(torch.nn.ModuleList([reference]))
    upstream = torch.randn(4, 32, config.d_model)
    for layer, data in ((light, x), (plain, x), (reference, x.double())):
        layer.zero_grad()
        (layer(data, inputs) * upstream.to(data.dtype)).sum().backward()
    for a, b, r in zip(light.parameters(), plain.parameters(), reference.parameters()):
        light_error, plain_error = (a.grad.double() - r.grad).abs().max(), (b.grad.double() - r.grad).abs().max()
        assert light_error <= max(1.5 * plain_error, 1e-5), (light_error, plain_error)
        assert (a.grad.double() - r.grad).norm() <= 1e-3 * r.grad.norm()  # fp32 rounding of ε-sized differences
    assert recompute_wave_layers(torch.nn.ModuleList([plain])) == 1 and plain.mix is light.mix


def _weight_bytes(layer: WaveLayer) -> int:
    """Bytes of the weights (fp32) and of their bf16 copies that autograd saves for the products."""
    return sum(p.numel() * (4 + 2) for p in layer.parameters() if p.dim() == 2)


def test_evaluation_runs_the_plain_maths_with_the_same_values():
    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64)
    layer = WaveLayer(config).eval()
    x = torch.randn(2, 16, config.d_model)
    inputs = MixerInputs(padding_mask=torch.ones(2, 16, dtype=torch.bool))
    with torch.no_grad():
        evaluated = layer(x, inputs)
    assert torch.equal(layer(x, inputs).detach(), evaluated)


def test_wave_recompute_option():
    from nami.runs.config import TrainConfig

    assert TrainConfig().wave_recompute is True  # the default
    # compile_wave replaces either backward; a model without (non-causal) Wave layers ignores it
    TrainConfig.from_dict({"wave_recompute": True, "compile_wave": True})
    TrainConfig.from_dict({"arch": "transformer"})
    with pytest.raises(ValueError, match="wave_recompute"):
        TrainConfig.from_dict({"wave_recompute": "yes"})
