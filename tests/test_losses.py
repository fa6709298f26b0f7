"""nami.losses.linear_cross_entropy: parity with cross_entropy(h @ W.T), filtering bounds, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nami.losses import (
    AUTO_CPU_IMPL,
    BOUNDED_MASS_EPS,
    IMPLEMENTATIONS,
    PAPER_THRESHOLD,
    cce_available,
    frequency_vocab_order,
    linear_cross_entropy,
    resolve_impl,
)

EXACT = ("blockwise", "torch_chunked")
TOL = 1e-5


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems; do not compete with other jobs on the machine
    yield
    torch.set_num_threads(before)


def make_case(n, v, d, *, ignore_every=0, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64) * (scale / d**0.5)
    targets = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        targets[::ignore_every] = -100
    return hidden, weight, targets


def run(hidden, weight, targets, dtype=torch.float64, **kwargs):
    """Loss and gradients w.r.t. hidden and weight (backward of loss.sum() for reduction none)."""
    h = hidden.detach().to(dtype).clone().requires_grad_()
    w = weight.detach().to(dtype).clone().requires_grad_()
    loss = linear_cross_entropy(h, w, targets, **kwargs)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), h.grad, w.grad


def reference(hidden, weight, targets, reduction="mean", ignore_index=-100):
    """float64 ``F.cross_entropy(h @ W.T)`` itself (mean by hand: sum / count of valid targets)."""
    h = hidden.detach().double().clone().requires_grad_()
    w = weight.detach().double().clone().requires_grad_()
    inner = "sum" if reduction == "mean" else reduction
    loss = F.cross_entropy(h @ w.T, targets, ignore_index=ignore_index, reduction=inner)
    if reduction == "mean":
        loss = loss / (targets != ignore_index).sum().clamp(min=1)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), h.grad, w.grad


def assert_rel(actual, expected, tol=TOL):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp(min=1e-30)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)
    assert (actual - expected).norm() <= tol * expected.norm() + 1e-30


# ------------------------------------------------------------------------------------ parity

SHAPES = [  # (N, V, D): N and V not multiples of the (16, 32) test block; N=1; one-tile case
    (1, 7, 5),
    (37, 101, 16),
    (130, 300, 24),
    (16, 32, 8),
]


@pytest.mark.parametrize("impl", EXACT)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_float64_reference(impl, reduction, shape):
    n, v, d = shape
    hidden, weight, targets = make_case(n, v, d, ignore_every=4 if n > 1 else 0)
    ref = reference(hidden, weight, targets, reduction)
    got = run(hidden, weight, targets, torch.float32, impl=impl, reduction=reduction, block_size=(16, 32))
    for a, e in zip(got, ref):
        assert_rel(a, e)


@pytest.mark.parametrize("impl", EXACT)
@pytest.mark.parametrize("signs", ["zero_and_positive", "mixed"])
def test_reduction_none_with_arbitrary_upstream_gradient(impl, signs):
    hidden, weight, targets = make_case(40, 90, 8, ignore_every=7)
    coef = torch.linspace(0, 2, 40, dtype=torch.float64) if signs == "zero_and_positive" else torch.randn(
        40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = []
    for fn in ("ours", "ref"):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        if fn == "ours":
            loss = linear_cross_entropy(h, w, targets, impl=impl, reduction="none", block_size=(16, 32))
        else:
            loss = F.cross_entropy(h @ w.T, targets, reduction="none")
        (loss * coef).sum().backward()
        grads.append((h.grad, w.grad))
    for a, e in zip(*grads):
        assert_rel(a, e, 1e-10)


@pytest.mark.parametrize("block_size", [1, (3, 1000), (1000, 7), (4, 4)])
def test_blockwise_block_shapes(block_size):
    hidden, weight, targets = make_case(23, 50, 6, ignore_every=5)
    ref = reference(hidden, weight, targets)
    got = run(hidden, weight, targets, torch.float64, impl="blockwise", block_size=block_size)
    for a, e in zip(got, ref):
        assert_rel(a, e, 1e-10)


def test_naive_matches_cross_entropy():
    hidden, weight, targets = make_case(20, 30, 4, ignore_every=3)
    for a, e in zip(run(hidden, weight, targets, impl="naive"), reference(hidden, weight, targets)):
        assert_rel(a, e, 1e-12)


@pytest.mark.parametrize("impl", ["naive", *EXACT])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_targets_ignored_gives_zero_not_nan(impl, reduction):
    hidden, weight, _ = make_case(9, 13, 4)
    targets = torch.full((9,), -100)
    loss, gh, gw = run(hidden, weight, targets, torch.float32, impl=impl, reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(gh, torch.zeros_like(gh)) and torch.equal(gw, torch.zeros_like(gw))


def test_custom_ignore_index_and_none_zeroes():
    hidden, weight, targets = make_case(12, 10, 4)
    targets[[1, 5]] = 3
    loss = linear_cross_entropy(hidden, weight, targets, ignore_index=3, reduction="none", impl="blockwise")
    assert loss[1] == 0 and loss[5] == 0
    ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=3, reduction="none")
    assert_rel(loss, ref, 1e-12)


def test_gradcheck_float64():
    hidden, weight, targets = make_case(5, 9, 3, ignore_every=4)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    for reduction in ("mean", "none"):
        def f(h, w, reduction=reduction):
            return linear_cross_entropy(h, w, targets, impl="blockwise", reduction=reduction, block_size=(2, 4))
        assert torch.autograd.gradcheck(f, (h, w))


def test_vocab_order_does_not_change_result():
    hidden, weight, targets = make_case(40, 70, 8, ignore_every=6)
    order = torch.randperm(70, generator=torch.Generator().manual_seed(1))
    ref = reference(hidden, weight, targets)
    got = run(hidden, weight, targets, impl="blockwise", block_size=(16, 16), vocab_order=order)
    for a, e in zip(got, ref):
        assert_rel(a, e, 1e-10)


def test_auto_resolves_on_cpu():
    assert resolve_impl("auto", "cpu") == AUTO_CPU_IMPL["full_precision"]
    assert resolve_impl("auto", "cpu", compute_dtype=torch.bfloat16) == AUTO_CPU_IMPL["low_precision"]
    assert resolve_impl("auto", "cpu", "bounded_mass") == "blockwise"
    assert set(AUTO_CPU_IMPL.values()) <= {"torch_chunked", "blockwise"}  # memory-efficient paths only
    hidden, weight, targets = make_case(10, 20, 4)
    stats = {}
    loss = linear_cross_entropy(hidden, weight, targets, stats=stats)
    assert stats["impl"] == AUTO_CPU_IMPL["full_precision"]
    assert_rel(loss, reference(hidden, weight, targets)[0], 1e-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear_cross_entropy(hidden.float(), weight.float(), targets, stats=stats)
    assert stats["impl"] == AUTO_CPU_IMPL["low_precision"]


# ------------------------------------------------------------------------------------ filtering


def peaked_case(n=24, v=96, d=96, seed=0):
    """W = c·I (so logits = c·h and dL/dhidden = c·dL/dlogits) and rows peaked at their target."""
    g = torch.Generator().manual_seed(seed)
    c = 2.0
    weight = torch.eye(v, d, dtype=torch.float64) * c
    targets = torch.randint(0, v, (n,), generator=g)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    hidden[torch.arange(n), targets] += torch.linspace(2.0, 6.0, n, dtype=torch.float64)
    targets[3] = -100
    return hidden, weight, targets, c


@pytest.mark.parametrize("policy", ["paper", "bounded_mass"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_filtering_error_equals_reported_dropped_mass(policy, reduction):
    hidden, weight, targets, c = peaked_case()
    exact = run(hidden, weight, targets, impl="blockwise", reduction=reduction, block_size=(8, 8))
    stats = {}
    got = run(hidden, weight, targets, impl="blockwise", reduction=reduction, block_size=(8, 8),
              filter_policy=policy, stats=stats)
    assert torch.equal(got[0], exact[0])  # the loss is never filtered
    assert stats["segments_skipped"] > 0
    dropped = stats["dropped_mass"]
    assert dropped.shape == (24,) and dropped[3] == 0
    # logits = c·h, so the per-row L1 error of dL/dhidden is exactly c · |s_r| · dropped_r
    err_l1 = (got[1] - exact[1]).abs().sum(dim=1)
    torch.testing.assert_close(err_l1, c * stats["grad_logits_l1_error"], rtol=1e-9, atol=1e-12)
    s = torch.full((24,), 1 / 23, dtype=torch.float64) if reduction == "mean" else torch.ones(24, dtype=torch.float64)
    s[3] = 0
    torch.testing.assert_close(stats["grad_logits_l1_error"], s * dropped, rtol=1e-12, atol=0)
    if policy == "bounded_mass":
        assert dropped.max() <= BOUNDED_MASS_EPS
    print(f"\n{policy}/{reduction}: skipped {stats['skipped_fraction']:.0%} of segments, "
          f"max dropped mass {dropped.max():.2e}, max |Δ dL/dz|_1 {stats['grad_logits_l1_error'].max():.2e}")


@pytest.mark.parametrize("threshold", [1e-4, 1e-2])
def test_bounded_mass_bounds_hidden_and_weight_gradients(threshold):
    hidden, weight, targets = make_case(64, 256, 16, scale=12.0, seed=3)  # peaked softmax
    targets[::7] = -100
    exact = run(hidden, weight, targets, impl="blockwise", block_size=(16, 16))
    stats = {}
    got = run(hidden, weight, targets, impl="blockwise", block_size=(16, 16), filter_policy="bounded_mass",
              filter_threshold=threshold, stats=stats)
    assert stats["skipped_fraction"] > 0.3
    dropped, err = stats["dropped_mass"], stats["grad_logits_l1_error"]
    assert dropped.max() <= threshold
    n_valid = int((targets != -100).sum())
    assert torch.all(err <= threshold / n_valid + 1e-15)
    # ‖Δgrad_h_r‖₂ ≤ |s_r| dropped_r max_v‖W_v‖₂ ;  Σ_v ‖Δgrad_W_v‖₂ ≤ Σ_r |s_r| dropped_r ‖h_r‖₂
    w_norm = weight.norm(dim=1).max()
    assert torch.all((got[1] - exact[1]).norm(dim=1) <= err * w_norm + 1e-12)
    assert (got[2] - exact[2]).norm(dim=1).sum() <= (err * hidden.norm(dim=1)).sum() + 1e-12


def test_paper_threshold_drops_everything_on_a_uniform_softmax_bounded_mass_does_not():
    """From-scratch training: softmax ≈ 1/V < 2^-12. The paper's rule discards the softmax gradient."""
    v = 16384
    hidden, weight, targets = make_case(6, v, 4, scale=1e-3)  # logits ≈ 0, p ≈ 1/V ≈ 6e-5
    assert 1 / v < PAPER_THRESHOLD
    exact = run(hidden, weight, targets, torch.float32, impl="blockwise", block_size=(8, 512))
    paper, bounded = {}, {}
    got_paper = run(hidden, weight, targets, torch.float32, impl="blockwise", block_size=(8, 512),
                    filter_policy="paper", stats=paper)
    got_bounded = run(hidden, weight, targets, torch.float32, impl="blockwise", block_size=(8, 512),
                      filter_policy="bounded_mass", stats=bounded)
    assert paper["skipped_fraction"] == 1.0
    assert paper["dropped_mass"].min() > 0.99  # only the −1 at the target survives
    assert bounded["segments_skipped"] == 0  # each 512-entry segment holds 1/32 of the mass ≫ 1e-3
    for a, e in zip(got_bounded[1:], exact[1:]):
        assert torch.equal(a, e)
    # the softmax part of dL/dW (every non-target row) is gone entirely
    others = torch.ones(v, dtype=torch.bool)
    others[targets] = False
    assert exact[2][others].abs().min() > 0
    assert torch.equal(got_paper[2][others], torch.zeros_like(got_paper[2][others]))


def test_frequency_order_helps_bounded_mass_skip_more():
    # 256 tokens, the first-in-frequency ones scattered over the id space; rows peaked on them
    g = torch.Generator().manual_seed(0)
    v, d, n = 256, 16, 48
    counts = torch.rand(v, generator=g)
    order = frequency_vocab_order(counts)
    frequent = order[:16]
    weight = torch.randn(v, d, generator=g, dtype=torch.float64)
    weight[frequent] *= 4
    targets = frequent[torch.randint(0, 16, (n,), generator=g)]
    # rows only moderately peaked: with the frequent tokens scattered, some of their blocks cannot be
    # skipped; in frequency order they share the first blocks and the rest can (a tie would not tell)
    hidden = 0.1 * weight[targets] + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    plain, ordered = {}, {}
    run(hidden, weight, targets, impl="blockwise", block_size=(16, 16), filter_policy="bounded_mass", stats=plain)
    run(hidden, weight, targets, impl="blockwise", block_size=(16, 16), filter_policy="bounded_mass",
        vocab_order=order, stats=ordered)
    assert ordered["skipped_fraction"] > plain["skipped_fraction"]
    assert ordered["dropped_mass"].max() <= BOUNDED_MASS_EPS


def test_filter_threshold_zero_means_exact():
    hidden, weight, targets, _ = peaked_case()
    stats = {}
    got = run(hidden, weight, targets, impl="blockwise", filter_policy="paper", filter_threshold=0, stats=stats)
    exact = run(hidden, weight, targets, impl="blockwise")
    assert stats["segments_skipped"] == 0
    for a, e in zip(got, exact):
        assert torch.equal(a, e)


# ------------------------------------------------------------------------------------ low precision


@pytest.mark.parametrize("impl", ["naive", *EXACT])
def test_bf16_autocast_runs_and_stays_close(impl):
    hidden, weight, targets = make_case(64, 300, 32, ignore_every=5, scale=3.0)
    ref = reference(hidden, weight, targets)
    h = hidden.float().clone().requires_grad_()
    w = weight.float().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, targets, impl=impl, block_size=(16, 64))
    assert loss.dtype == torch.float32
    loss.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert abs(loss.item() - ref[0].item()) <= 1e-2 * ref[0].item()
    for a, e in ((h.grad, ref[1]), (w.grad, ref[2])):
        assert (a.double() - e).norm() <= 3e-2 * e.norm()


def test_bf16_autocast_confident_targets_match_naive():
    """Target logit rounded like the bf16 logits tiles: no negative losses on confident rows."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2000, 32, generator=g) / 32**0.5
    targets = torch.randint(0, 2000, (64,), generator=g)
    hidden = 0.5 * torch.randn(64, 32, generator=g) + 20.0 * weight[targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, impl="blockwise", reduction="none", block_size=(16, 256))
        naive = linear_cross_entropy(hidden, weight, targets, impl="naive", reduction="none")
    assert ours.min() >= 0
    torch.testing.assert_close(ours, naive.float(), rtol=0, atol=2e-3)


def test_blockwise_bf16_inputs():
    hidden, weight, targets = make_case(20, 50, 16, scale=3.0)
    loss, gh, _ = run(hidden, weight, targets, torch.bfloat16, impl="blockwise", block_size=(8, 16))
    ref = reference(hidden, weight, targets)
    assert loss.dtype == torch.float32 and gh.dtype == torch.bfloat16
    assert abs(loss.item() - ref[0].item()) <= 1e-2 * ref[0].item()
    assert (gh.double() - ref[1]).norm() <= 3e-2 * ref[1].norm()


# ------------------------------------------------------------------------------------ errors

H, W, T = torch.randn(4, 3), torch.randn(6, 3), torch.tensor([0, 1, 5, -100])


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((H[0], W, T), {}, "hidden must be"),
        ((H, W[0], T), {}, "classifier_weight must be"),
        ((H, torch.randn(6, 4), T), {}, "disagree on D"),
        ((H, W, T[:3]), {}, "targets must be"),
        ((H, W, T.int()), {}, "torch.long"),
        ((H, W, torch.tensor([0, 1, 6, -100])), {}, "outside"),
        ((H, W, torch.tensor([0, -2, 1, 1])), {}, "outside"),
        ((H, W.double(), T), {}, "same dtype"),
        ((H.long(), W, T), {}, "floating"),
        ((H, W, T), {"impl": "fast"}, "unknown impl"),
        ((H, W, T), {"reduction": "avg"}, "unknown reduction"),
        ((H, W, T), {"filter_policy": "magic"}, "unknown filter_policy"),
        ((H, W, T), {"filter_policy": "paper", "filter_threshold": 1.0}, r"\[0, 1\)"),
        ((H, W, T), {"filter_policy": "paper", "filter_threshold": -0.1}, r"\[0, 1\)"),
        ((H, W, T), {"filter_threshold": 0.01}, "filter_policy='none'"),
        ((H, W, T), {"impl": "naive", "filter_policy": "paper"}, "exact gradient"),
        ((H, W, T), {"impl": "torch_chunked", "filter_policy": "bounded_mass"}, "exact gradient"),
        ((H, W, T), {"block_size": 0}, "block_size"),
        ((H, W, T), {"block_size": (4, 4, 4)}, "block_size"),
        ((H, W, T), {"vocab_order": torch.tensor([0, 1, 2, 3, 4, 4])}, "permutation"),
        ((H, W, T), {"vocab_order": torch.arange(5)}, "vocab_order must be"),
    ],
)
def test_bad_inputs_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(*args, **kwargs)


def test_cce_on_cpu_raises_clearly():
    assert "cce" in IMPLEMENTATIONS
    with pytest.raises((RuntimeError, ImportError), match="impl='cce' needs"):
        linear_cross_entropy(H, W, T, impl="cce")
    with pytest.raises(ValueError, match="bounded_mass"):
        linear_cross_entropy(H, W, T, impl="cce", filter_policy="bounded_mass")


# ------------------------------------------------------------------------------------ CUDA (gpu_check.sh)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_cce = pytest.mark.skipif(not cce_available(), reason="needs CUDA, a bf16 GPU and cut-cross-entropy")


def cuda_case(n, v, d, *, seed=0, peaked=False):
    hidden, weight, targets = make_case(n, v, d, ignore_every=5, seed=seed, scale=4.0 if peaked else 1.0)
    return hidden.cuda(), weight.cuda(), targets.cuda()


@needs_cuda
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_blockwise_fp32_parity(reduction):
    torch.backends.cuda.matmul.allow_tf32 = False
    hidden, weight, targets = cuda_case(300, 5000, 64)
    ref = reference(hidden, weight, targets, reduction)
    got = run(hidden, weight, targets, torch.float32, impl="blockwise", reduction=reduction, block_size=(128, 1024))
    for a, e in zip(got, ref):
        assert_rel(a, e)


@needs_cce
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(1, 7, 16), (300, 5000, 64), (2048, 32768, 256)])
def test_cce_bf16_matches_reference(reduction, shape):
    """cce on bf16 inputs vs the float64 reference on the same (bf16-rounded) inputs, filtering off."""
    hidden, weight, targets = cuda_case(*shape)
    if shape[0] == 1:
        targets[:] = 3
    hidden, weight = hidden.bfloat16(), weight.bfloat16()
    ref = reference(hidden, weight, targets, reduction)
    loss, gh, gw = run(hidden, weight, targets, torch.bfloat16, impl="cce", reduction=reduction)
    assert loss.dtype == torch.float32
    assert (loss.double() - ref[0]).norm() <= 1e-2 * ref[0].norm()
    for a, e in ((gh, ref[1]), (gw, ref[2])):
        assert torch.isfinite(a).all()
        assert (a.double() - e).norm() <= 3e-2 * e.norm()


@needs_cce
def test_cce_autocast_paper_filter_and_all_ignored():
    hidden, weight, targets = cuda_case(512, 32768, 128, peaked=True)
    ref = reference(hidden.bfloat16(), weight.bfloat16(), targets)
    h = hidden.float().clone().requires_grad_()
    w = weight.float().clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, targets, impl="cce", filter_policy="paper")
    loss.backward()
    assert abs(loss.item() - ref[0].item()) <= 1e-2 * ref[0].item()
    assert (h.grad.double() - ref[1]).norm() <= 5e-2 * ref[1].norm()
    assert (w.grad.double() - ref[2]).norm() <= 5e-2 * ref[2].norm()
    none = torch.full_like(targets, -100)
    loss, gh, gw = run(hidden, weight, none, torch.bfloat16, impl="cce")
    assert loss.item() == 0 and not gh.any() and not gw.any()
    assert resolve_impl("auto", "cuda") == "cce"
