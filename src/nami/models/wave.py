"""The Wave Network mixer (Zhang & Sheng 2024, arXiv 2411.02674): the maths of one Wave layer.

Stacked by :class:`nami.models.block.Encoder` (architecture ``wave``).

A token is a complex vector per dimension k: its magnitude is the *global semantics*
``G_k = ||w_{:,k}||_2`` (the L2 norm of dimension k over the sequence's real tokens) and its
phase ``α_{j,k}`` encodes how token j relates to that whole, with ``cos α = w_{j,k} / G_k``.
We never compute the angle: the closed forms

    real part      = G·cos α = w
    imaginary part = G·sin α = sqrt(G² − w²)

give the same complex number without atan2/cos/sin round trips (faster, and no gradient
singularities). Two such waves, projected from the same input, are combined by

    interference (addition):        Z = Z1 + Z2
    modulation (multiplication):    Z = Z1 · Z2

and the result is mapped back to the real width by ``Linear(LayerNorm([Re Z, Im Z]))``. The
LayerNorm is needed because modulation grows like G1·G2, i.e. with sequence length.

Numerics: the wave maths runs in float32 even under bf16 autocast (the sum of squares over the
sequence and G² − w² cancel badly in bf16). ``wave_eps`` goes under both square roots, and
G² − w² is clamped at 0 before it, so a one-token sequence (G² − w² = 0), all-equal tokens and
padding all keep finite gradients. Padding tokens are zeroed before the norm, so they never
change the outputs of real tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer
from nami.models.rotary import rope_angles, rotate_waves  # noqa: F401 (re-exported: RoPE as phase rotation)


def to_complex(w: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Real ``w (B, S, D)`` → (real, imaginary) parts of its wave representation.

    ``mask (B, S, 1)`` is 1.0 for real tokens and 0.0 for padding.
    """
    w = w * mask
    squares = w * w
    global_sq = squares.sum(dim=1, keepdim=True) + eps  # G² per (batch, dimension): (B, 1, D)
    imag = torch.sqrt((global_sq - squares).clamp_min(0.0) + eps)
    return w, imag


def wave_mix(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str) -> torch.Tensor:
    """The two waves of ``w = [w1, w2] (B, S, 2D)`` combined → ``[Re Z, Im Z] (B, S, 2D)``.

    Both waves go through :func:`to_complex` as one ``(B, S, 2D)`` tensor (the norms are per
    dimension, so this is the same maths with half the kernel launches); ``mask (B, S, 1)``.
    """
    real, imag = to_complex(w, mask, eps)
    return combine_waves(real, imag, mode)


class _WaveMixRecompute(torch.autograd.Function):
    """:func:`wave_mix` (or :func:`causal_wave_mix` without a cache, ``causal=True``) with a
    hand-written backward that keeps only ``w`` (in its own dtype: bf16 under autocast) and ``G²``
    ``(B, 1, 2D)`` (causal: the running sums where chunks start), and recomputes the rest. Autograd
    through the plain maths keeps several fp32 ``(B, S, 2D)`` tensors (``w·mask``, its squares,
    ``G² − w²``, the clamp and square-root outputs, the products) — the Wave layer's training memory
    (issue: a Wave layer lighter than attention). Forward values are bit-identical to the plain maths
    (same operations in the same order); gradients agree to rounding (tested against autograd and
    ``gradcheck``).

    Backward, with ``r = G² − s`` (``s = w²`` masked), ``im = sqrt(max(r, 0) + ε)``, the upstream
    gradients ``g_re``, ``g_im`` of the real and imaginary parts and ``t = g_im / im · [r ≥ 0]``::

        ∂L/∂s_u = ½ · (Σ_tokens t − t_u)        (s_u enters r_u directly and through G² = Σ s + ε)
        ∂L/∂w_u = (g_re + w_u · (Σ_tokens t − t_u)) · mask

    Causal (prefix norms, ``r_u = Σ_{v≤u} s_v + ε − s_u``): s_u enters only the later tokens' r, so
    ``Σ_tokens t − t_u`` becomes the suffix sum ``Σ_{v>u} t_v`` (no difference of large sums).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool) -> torch.Tensor:
        mixed, state = _chunked_forward(w, mask, eps, mode, causal, lambda mixed: mixed)
        ctx.save_for_backward(w, mask, state)
        ctx.eps, ctx.mode, ctx.causal = eps, mode, causal
        return mixed

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, mask, state = ctx.saved_tensors
        g_w = _chunked_backward(w, mask, state, ctx.eps, ctx.mode, ctx.causal,
                                lambda c, real, imag: grad[c.rows, c.positions].to(real.dtype))
        return g_w, None, None, None, None


# Tokens (batch × sequence positions) per chunk of the recompute forward and backward: their fp32
# (rows, 2D) temporaries (waves, products, their gradients) are then bounded whatever B and S are,
# instead of a dozen (B, S, 2D) tensors alive at once at the step's memory peak, and small enough to
# stay in cache between the element-wise operations (S = 512, fp32: 512–2,048 trained equally fast
# within noise, 4,096 and 16,384 slower and with a higher memory peak).
BACKWARD_CHUNK_TOKENS = 1024


class _Chunk(NamedTuple):
    """A contiguous block ``w[rows, positions]`` of the recompute paths: whole sequences of several
    batch rows, or (S > :data:`BACKWARD_CHUNK_TOKENS`) consecutive positions of one row. Contiguous
    blocks need no strided copies, and a chunk of whole sequences finishes its rows in one pass."""
    rows: slice
    positions: slice
    index: int  # which chunk of its rows' positions (0 for whole sequences)
    whole: bool  # whole sequences: Σ over the sequence is this chunk's own sum
    mask: torch.Tensor


def _chunks(w: torch.Tensor, mask: torch.Tensor) -> list[_Chunk]:
    """The :class:`_Chunk` s of ``w (B, S, 2D)``, at most :data:`BACKWARD_CHUNK_TOKENS` tokens each, in
    memory order (a row's position chunks in sequence order)."""
    batch, seq = w.shape[0], w.shape[1]

    def part(rows: slice, positions: slice) -> torch.Tensor:
        return mask[rows if mask.shape[0] == batch else slice(None), positions if mask.shape[1] == seq else slice(None)]

    if seq <= BACKWARD_CHUNK_TOKENS:
        step = max(1, BACKWARD_CHUNK_TOKENS // max(seq, 1))
        return [_Chunk(slice(b, b + step), slice(None), 0, True, part(slice(b, b + step), slice(None)))
                for b in range(0, batch, step)]
    # equal parts (S = 1,025: 513 + 512, not 1,024 + 1: a one-token projection takes the matrix-vector
    # kernel, whose rounding differs from the matrix product's, and the forward would not be bit-identical)
    n = -(-seq // BACKWARD_CHUNK_TOKENS)
    bounds = [seq * i // n for i in range(n + 1)]
    return [_Chunk(slice(b, b + 1), slice(s, e), i, False, part(slice(b, b + 1), slice(s, e)))
            for b in range(batch) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))]


def _prefix_sums(squares: torch.Tensor, before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running sums of ``squares (B, rows, 2D)`` after the float64 sum ``before (B, 1, 2D)`` of the
    earlier positions → (the sums in ``squares``' dtype, the float64 sum after the chunk). CPU
    ``cumsum`` accumulates fp32 in float64 and rounds each output, so carrying the float64 sum from
    chunk to chunk gives :func:`causal_wave_mix`'s one ``cumsum`` bit for bit (tested)."""
    running = torch.cat([before, squares.to(torch.float64)], dim=1).cumsum(dim=1)[:, 1:]
    return running.to(squares.dtype), running[:, -1:].clone()  # not a view: callers may change the sums in place


def _chunk_waves(w: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype, eps: float, global_sq=None,
                 before=None, sum_into=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(real, G² − w², imag, the float64 running sum after the chunk or None) of a chunk
    ``w (rows, positions, 2D)``: non-causal from ``G²``, causal from ``before`` (the running sum before
    it); ``sum_into`` (whole sequences): G² summed here, as :func:`to_complex` sums it, and written
    there. Shared by the recompute forward and backward, so both compute exactly the same values."""
    real = w.to(dtype) * mask
    squares = real * real
    carry = None
    if sum_into is not None:
        global_sq = torch.add(squares.sum(dim=1, keepdim=True), eps, out=sum_into)
    if global_sq is None:
        running, carry = _prefix_sums(squares, before)
        raw = running.add_(eps).sub_(squares)  # running + ε − w², in place
    else:
        raw = torch.sub(global_sq, squares, out=squares)
    return real, raw, raw.clamp_min(0.0).add_(eps).sqrt_(), carry


def _chunked_forward(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool,
                     finish) -> tuple[torch.Tensor, torch.Tensor]:
    """``(finish(mixed waves), state)`` of the recompute paths, the element-wise maths a chunk at a
    time. Non-causal: ``G² (B, 1, 2D)`` (summed as :func:`wave_mix` sums it: by a chunk of whole
    sequences for its rows, else over the whole of ``w`` first) is the state. Causal: the running sum carries from a row's chunk to the next; the
    state is its float64 value where each position chunk starts, ``(B, position chunks, 2D)``.
    ``finish`` maps a chunk's mixed waves ``(rows, positions, 2D)`` to its output (identity, or
    LayerNorm and projection)."""
    dtype = torch.promote_types(w.dtype, torch.float32)
    chunks = _chunks(w, mask)
    if causal:
        starts = torch.zeros((w.shape[0], max(c.index for c in chunks) + 1, w.shape[-1]), dtype=torch.float64,
                             device=w.device)
    elif chunks[0].whole:  # G² of each chunk's rows from the chunk itself (no pass over the whole w first)
        global_sq = torch.empty((w.shape[0], 1, w.shape[-1]), dtype=dtype, device=w.device)
    else:
        squares = w.to(dtype) * mask  # squared in place: one (B, S, 2D) temporary instead of two
        global_sq = squares.mul_(squares).sum(dim=1, keepdim=True) + eps
        del squares
    out = None
    for c in chunks:
        part = w if len(chunks) == 1 else w[c.rows, c.positions]
        if causal:
            real, _, imag, after = _chunk_waves(part, c.mask, dtype, eps, before=starts[c.rows, c.index:c.index + 1])
            if c.index + 1 < starts.shape[1]:
                starts[c.rows, c.index + 1:c.index + 2] = after
        elif c.whole:
            real, _, imag, _ = _chunk_waves(part, c.mask, dtype, eps, sum_into=global_sq[c.rows])
        else:
            real, _, imag, _ = _chunk_waves(part, c.mask, dtype, eps, global_sq[c.rows])
        chunk = finish(_combine_into(real, imag, mode))
        if len(chunks) == 1:
            out = chunk
            break
        if out is None:
            out = torch.empty((w.shape[0], w.shape[1], chunk.shape[-1]), dtype=chunk.dtype, device=chunk.device)
        out[c.rows, c.positions] = chunk
    return out, starts if causal else global_sq


def _combine_into(real: torch.Tensor, imag: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`combine_waves` written into one buffer (no concatenation copy): the same operations in
    the same order, so the same values bit for bit (tested through the recompute paths)."""
    mixed = torch.empty_like(real)
    half = real.shape[-1] // 2
    re1, re2 = real.chunk(2, dim=-1)
    im1, im2 = imag.chunk(2, dim=-1)
    if mode == "interference":
        torch.add(re1, re2, out=mixed[..., :half])
        torch.add(im1, im2, out=mixed[..., half:])
    else:
        torch.mul(re1, re2, out=mixed[..., :half]).sub_(im1 * im2)
        torch.mul(re1, im2, out=mixed[..., half:]).add_(im1 * re2)
    return mixed


def _chunked_backward(w: torch.Tensor, mask: torch.Tensor, state: torch.Tensor, eps: float, mode: str,
                      causal: bool, mixed_grad) -> torch.Tensor:
    """∂L/∂w of the recompute paths, a chunk at a time (see :class:`_WaveMixRecompute`).

    ``mixed_grad(chunk, real, imag)`` gives the gradient ``(rows, positions, 2D)`` of the mixed waves
    of a :class:`_Chunk` from their recomputed parts. Non-causal, with ``T = Σ_tokens t``: a chunk of
    whole sequences has its rows' ``T`` at once and writes ``g_re·mask + w·(T − t)``; chunks of
    positions (long sequences) take two passes: pass 1 writes ``g_re`` and keeps ``t`` while ``T``
    accumulates, pass 2 adds ``w·(T − t)``. ``T − t`` is formed as a difference first (as autograd
    through the plain maths does): a one-token row, where ``t = T`` is large, then gets exactly
    ``g_re``. Causal: each row's chunks from last to first, the suffix sums of ``t`` carried backwards.
    """
    dtype = torch.promote_types(w.dtype, torch.float32)
    chunks = _chunks(w, mask)
    # whole-sequence chunks finish their rows at once: their gradient goes straight into w's dtype
    # (bf16 under autocast) a chunk at a time; others accumulate over passes in fp32
    g_w = torch.empty(w.shape, dtype=w.dtype if not causal and chunks[0].whole else dtype, device=w.device)
    after = None
    kept_t = total = None
    for c in reversed(chunks) if causal else chunks:
        rows, positions, m = c.rows, c.positions, c.mask
        if causal:
            real, raw, imag, _ = _chunk_waves(w[rows, positions], m, dtype, eps,
                                              before=state[rows, c.index:c.index + 1])
        else:
            real, raw, imag, _ = _chunk_waves(w[rows, positions], m, dtype, eps, state[rows])
        g_real, g_imag = _wave_part_grads(real, imag, mixed_grad(c, real, imag), mode)
        t = g_imag.div_(imag).masked_fill_(raw < 0, 0.0)  # 2·(∂L/∂im)·∂im/∂r: ½ and the 2 of ∂s/∂w cancel exactly
        if causal:
            if c.index == state.shape[1] - 1:  # a row's last chunk: nothing after it
                after = torch.zeros((t.shape[0], 1, t.shape[-1]), dtype=dtype, device=w.device)
            suffix = torch.cat([t, after], dim=1).flip(1).cumsum(dim=1).flip(1)  # k: Σ_{v≥k} t_v + after
            torch.mul(g_real.addcmul_(real, suffix[:, 1:]), m, out=g_w[rows, positions])
            after = suffix[:, :1]
        elif c.whole:
            if g_w.dtype == dtype:
                torch.mul(g_real, m, out=g_w[rows]).addcmul_(real, t.sum(dim=1, keepdim=True) - t)
            else:  # the same fp32 values, rounded to w's dtype as the chunk is written
                g_w[rows] = g_real.mul_(m).addcmul_(real, t.sum(dim=1, keepdim=True) - t)
        else:
            if kept_t is None:
                kept_t, total = torch.empty_like(g_w), torch.zeros_like(state)
            total[rows] += t.sum(dim=1, keepdim=True)
            kept_t[rows, positions] = t
            torch.mul(g_real, m, out=g_w[rows, positions])
    if kept_t is not None:  # pass 2 of position chunks; real is 0 at padding: the mask of pass 1 stays exact
        for c in chunks:
            real = w[c.rows, c.positions].to(dtype) * c.mask
            g_w[c.rows, c.positions].addcmul_(real, total[c.rows] - kept_t[c.rows, c.positions])
    return g_w.to(w.dtype)  # a no-op where it already is


def _wave_part_grads(real: torch.Tensor, imag: torch.Tensor, grad: torch.Tensor,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the real and imaginary parts ``(B, S, 2D)`` from that of the mixed waves ``grad``,
    written into two buffers with fused multiply-adds (no concatenation copies)."""
    g_a, g_b = grad.chunk(2, dim=-1)  # gradients of Re Z and Im Z, (B, S, D) each
    g_real, g_imag = torch.empty_like(real), torch.empty_like(imag)
    half = real.shape[-1] // 2
    if mode == "interference":  # Z = Z1 + Z2
        g_real[..., :half], g_real[..., half:] = g_a, g_a
        g_imag[..., :half], g_imag[..., half:] = g_b, g_b
        return g_real, g_imag
    # Z = Z1 · Z2: Re = re1·re2 − im1·im2, Im = re1·im2 + im1·re2
    re1, re2 = real.chunk(2, dim=-1)
    im1, im2 = imag.chunk(2, dim=-1)
    for out, a, b, c, d, sign in ((g_real[..., :half], g_a, re2, g_b, im2, 1.0),    # ∂/∂re1 = g_a·re2 + g_b·im2
                                  (g_real[..., half:], g_a, re1, g_b, im1, 1.0),    # ∂/∂re2 = g_a·re1 + g_b·im1
                                  (g_imag[..., :half], g_b, re2, g_a, im2, -1.0),   # ∂/∂im1 = g_b·re2 − g_a·im2
                                  (g_imag[..., half:], g_b, re1, g_a, im1, -1.0)):  # ∂/∂im2 = g_b·re1 − g_a·im1
        torch.mul(a, b, out=out).addcmul_(c, d, value=sign)
    return g_real, g_imag


class _WaveMixerRecompute(torch.autograd.Function):
    """``Linear(LayerNorm(wave_mix(w)))`` — everything of a Wave layer after its first matrix
    product; causal: with :func:`causal_wave_mix` — in one autograd node that keeps only ``w`` (in its
    own dtype: bf16 under autocast), the mask and ``G² (B, 1, 2D)`` (causal: the running sums where
    chunks start), and recomputes the mixed waves, the normalisation and the output projection's
    input in backward, a chunk at a time (:func:`_chunks`). Apart from the saving of
    :class:`_WaveMixRecompute`, neither the LayerNorm's fp32 input nor the output projection's
    ``(B, S, 2D)`` input is kept: a Wave block then keeps less per token for backward than a
    Transformer block (``benchmarks/block_saved_bytes.py``). Forward values are bit-identical to
    ``out(norm(wave_mix(w)))`` (the same operations; under autocast the projection runs in bf16 as
    ``nn.Linear`` does); gradients agree to rounding (tested against autograd and ``gradcheck``).

    Backward of a chunk, upstream gradient ``g_y (rows, D)``, projection ``y = n·Wᵀ + b``::

        ∂L/∂W += g_yᵀ · n,   ∂L/∂b += Σ g_y,   ∂L/∂n = g_y · W      (n = LayerNorm(mixed), recomputed)
        ∂L/∂mixed, ∂L/∂γ, ∂L/∂β  from ATen's fused LayerNorm backward (native_layer_norm_backward)

    then the wave maths' backward (:func:`_chunked_backward`). The matrix products run in the dtype
    the forward's projection ran in (bf16 under autocast, like autograd's), their sums over chunks
    accumulate in fp32.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool,
                norm_weight: torch.Tensor, norm_bias: torch.Tensor, norm_eps: float, out_weight: torch.Tensor,
                out_bias: torch.Tensor | None) -> torch.Tensor:
        def finish(mixed: torch.Tensor) -> torch.Tensor:
            normed = F.layer_norm(mixed, (mixed.shape[-1],), norm_weight, norm_bias, norm_eps)
            return F.linear(normed, out_weight, out_bias)

        out, state = _chunked_forward(w, mask, eps, mode, causal, finish)
        ctx.save_for_backward(w, mask, state, norm_weight, norm_bias, out_weight)
        ctx.eps, ctx.mode, ctx.causal, ctx.norm_eps, ctx.gemm_dtype = eps, mode, causal, norm_eps, out.dtype
        ctx.has_out_bias = out_bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, mask, state, norm_weight, norm_bias, out_weight = ctx.saved_tensors
        needs = ctx.needs_input_grad  # 5, 6: γ, β; 8, 9: W, b
        acc = torch.promote_types(w.dtype, torch.float32)  # the wave maths' dtype: fp32 (fp64 in gradcheck)
        sums = {name: torch.zeros(shape, dtype=acc, device=w.device) for name, shape in
                (("norm_weight", norm_weight.shape), ("norm_bias", norm_bias.shape),
                 ("out_weight", out_weight.shape), ("out_bias", out_weight.shape[:1]))}
        gemm_weight = out_weight.to(ctx.gemm_dtype)
        shape = (norm_weight.shape[0],)

        def mixed_grad(c: _Chunk, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
            mixed = _combine_into(real, imag, ctx.mode)
            normed, mean, rstd = torch.native_layer_norm(mixed, shape, norm_weight, norm_bias, ctx.norm_eps)
            g_y = grad[c.rows, c.positions]
            flat_g = g_y.reshape(-1, g_y.shape[-1]).to(ctx.gemm_dtype)  # contiguous: 2-D products, no batched copies
            if needs[8]:
                sums["out_weight"] += (flat_g.t() @ normed.reshape(-1, normed.shape[-1]).to(ctx.gemm_dtype)).to(acc)
            if needs[9]:
                sums["out_bias"] += flat_g.to(acc).sum(dim=0)
            g_normed = (flat_g @ gemm_weight).to(acc).view(mixed.shape)
            g_mixed, g_gamma, g_beta = torch.ops.aten.native_layer_norm_backward(
                g_normed, mixed, shape, mean, rstd, norm_weight, norm_bias, [True, needs[5], needs[6]])
            if needs[5]:
                sums["norm_weight"] += g_gamma
            if needs[6]:
                sums["norm_bias"] += g_beta
            return g_mixed

        with torch.autocast(w.device.type, enabled=False):  # dtypes are chosen above, as in the forward
            g_w = _chunked_backward(w, mask, state, ctx.eps, ctx.mode, ctx.causal, mixed_grad)

        def param_grad(name: str, like: torch.Tensor, index: int) -> torch.Tensor | None:
            return sums[name].to(like.dtype) if needs[index] else None

        return (g_w, None, None, None, None, param_grad("norm_weight", norm_weight, 5),
                param_grad("norm_bias", norm_bias, 6), None, param_grad("out_weight", out_weight, 8),
                param_grad("out_bias", out_weight, 9) if ctx.has_out_bias else None)


def wave_mixer_recompute(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, norm: nn.LayerNorm,
                         out: nn.Linear, causal: bool = False) -> torch.Tensor:
    """``out(norm(wave_mix(w)))`` (causal: prefix norms, as :func:`causal_wave_mix` from the start)
    with the memory-light backward of :class:`_WaveMixerRecompute`: ``w (B, S, 2D)`` in any float
    dtype (promoted to >= fp32 inside), ``mask (B, S, 1)`` >= fp32 → ``(B, S, D)``."""
    return _WaveMixerRecompute.apply(w, mask, eps, mode, causal, norm.weight, norm.bias, norm.eps, out.weight,
                                     out.bias)


def wave_mix_recompute(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str,
                       causal: bool = False) -> torch.Tensor:
    """:func:`wave_mix` (causal: :func:`causal_wave_mix` from the start, without its state) with the
    memory-light backward of :class:`_WaveMixRecompute`: ``w`` in any float dtype (promoted to >=
    fp32 inside), ``mask (B, S, 1)`` >= fp32."""
    return _WaveMixRecompute.apply(w, mask, eps, mode, causal)


wave_mix_recompute.takes_low_precision = True  # WaveLayer hands it w before the fp32 promotion


def combine_waves(real: torch.Tensor, imag: torch.Tensor, mode: str) -> torch.Tensor:
    """``[w1, w2]`` real and imaginary parts ``(B, S, 2D)`` → ``[Re Z, Im Z]`` of ``Z1 + Z2`` or ``Z1 · Z2``."""
    re1, re2 = real.chunk(2, dim=-1)
    im1, im2 = imag.chunk(2, dim=-1)
    if mode == "interference":
        return torch.cat([re1 + re2, im1 + im2], dim=-1)
    # modulation: (a + ib)(c + id) = (ac − bd) + i(ad + bc)
    return torch.cat([re1 * re2 - im1 * im2, re1 * im2 + im1 * re2], dim=-1)


def causal_wave_mix(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str,
                    past_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wave_mix` with *prefix* norms: token t sees ``G_t² = Σ_{s≤t} w_s²`` (a causal Wave layer).

    ``past_sq (B, 1, 2D)``: the sum of squares of the tokens before this chunk (a decoding
    cache), or None at the start. Returns the mixed waves ``(B, S, 2D)`` and the running sum after
    the chunk ``(B, 1, 2D)`` — the layer's whole decoding state, whatever the prompt length.
    Padding (``mask`` 0) adds nothing to the sums, so right-padded prompts of different lengths
    end with the state of their own last real token.
    """
    w = w * mask
    if past_sq is not None and w.shape[1] == 1:
        return causal_wave_step(w, past_sq, eps, mode)
    squares = w * w
    running = squares.cumsum(dim=1)
    if past_sq is not None:
        running = running + past_sq
    imag = torch.sqrt((running + eps - squares).clamp_min(0.0) + eps)
    return combine_waves(w, imag, mode), running[:, -1:]


def causal_wave_step(w: torch.Tensor, past_sq: torch.Tensor, eps: float,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of :func:`causal_wave_mix`, in the fewest operations (it runs once per layer
    per generated token): masked ``w`` and the running sum ``past_sq`` of the tokens before it, both
    ``(..., 2D)`` of one token per row → (mixed waves, the running sum after it). ``G_t² − w_t²`` is
    the sum over the tokens *before* t, i.e. ``past_sq``, so the imaginary part needs no subtraction
    (the full forward's value up to rounding; tested)."""
    return _combine_step(w, torch.sqrt(past_sq + 2.0 * eps), mode), torch.addcmul(past_sq, w, w)


def _combine_step(real: torch.Tensor, imag: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`combine_waves` with fused multiply-adds (five element-wise operations instead of seven)."""
    if mode == "interference":
        return combine_waves(real, imag, mode)
    re1, re2 = real.chunk(2, dim=-1)
    im1, im2 = imag.chunk(2, dim=-1)
    return torch.cat([torch.addcmul(re1 * re2, im1, im2, value=-1.0), torch.addcmul(re1 * im2, im1, re2)], dim=-1)


@register_mixer("wave")
class WaveLayer(nn.Module):
    """Token mixing by wave interference or modulation: ``(B, S, D) -> (B, S, D)`` (mixer ``wave``).

    Cost: two ``D × 2D`` / ``2D × D`` matrix products per token plus O(S·D) element-wise maths: linear
    in S. Training steps (autograd on, no decoding cache) run everything after ``to_waves`` as one
    memory-light autograd node (:func:`wave_mixer_recompute`, causal or not; with RoPE, whose rotation
    sits between the maths and the LayerNorm, the maths alone: :func:`wave_mix_recompute`); evaluation
    and decoding run the plain maths (:func:`wave_mix`, :func:`causal_wave_mix`) — the same values.
    ``self.backend`` says which runs a training step (:meth:`set_backend`): ``"recompute"`` (the
    default: that node), ``"autograd"`` (autograd through the plain maths :func:`wave_mix`: the
    reference, more memory; :func:`nami.models.speed.autograd_wave_layers`) or ``"compiled"``
    (everything after ``to_waves`` as one ``torch.compile``-d graph that keeps what the node keeps;
    :func:`nami.models.speed.compile_wave_layers`). Evaluation runs the plain maths with any of them.
    """

    supports_causal = True  # prefix norms (causal_wave_mix), constant-size decoding state

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.causal = config.causal
        self.layer_index = 0  # set by the Encoder: this layer's slot in a DecodingCache
        self.mode = config.wave_mode
        self.eps = config.wave_eps
        self.to_waves = nn.Linear(d, 2 * d)  # the two real vectors that become Z1 and Z2
        self.norm = nn.LayerNorm(2 * d, eps=config.norm_eps)
        self.out = nn.Linear(2 * d, d)
        self.backend = "recompute"  # the memory-light training path (above); set_backend changes it
        self.compiled = None  # the compiled functions of the "compiled" backend (nami.models.speed)
        self.rope = (config.rope_base, config.rope_scale) if config.wave_rope else None

    BACKENDS = ("recompute", "autograd", "compiled")

    def set_backend(self, backend: str, compiled=None) -> None:
        """Which code runs this layer's training steps: ``recompute`` | ``autograd`` | ``compiled``
        (``compiled``: a :class:`nami.models.speed.CompiledWaveMix`). The same values either way."""
        if backend not in self.BACKENDS:
            raise ValueError(f"Wave layer backend {backend!r}: expected one of {', '.join(self.BACKENDS)}")
        if backend == "compiled" and compiled is None:
            raise ValueError("the compiled backend needs its compiled functions (nami.models.speed.compile_wave_layers)")
        self.backend, self.compiled = backend, compiled if backend == "compiled" else None

    @property
    def mix(self):
        """The maths function of the backend (what older code patched in as ``layer.mix``)."""
        return {"recompute": wave_mix_recompute, "autograd": wave_mix}.get(self.backend, self.compiled)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        w = self.to_waves(x)
        wave_dtype = torch.promote_types(w.dtype, torch.float32)  # >= fp32 even under bf16 autocast (module docstring)
        mask = inputs.padding_mask.to(wave_dtype).unsqueeze(-1)
        training = torch.is_grad_enabled() and inputs.cache is None
        if training and self.rope is None and self.backend == "compiled":  # the tail as one graph
            return self.compiled.tail(w, mask, self.eps, self.mode, self.causal, self.norm, self.out)
        if training and self.backend == "recompute":  # a training step, memory-light
            if self.rope is None:  # mixing, LayerNorm and projection in one memory-light node
                return wave_mixer_recompute(w, mask, self.eps, self.mode, self.norm, self.out, self.causal)
            mixed = wave_mix_recompute(w, mask, self.eps, self.mode, self.causal)  # keeps w as it is
            return self._finish(mixed, x, inputs)
        w = w.to(wave_dtype)
        if self.causal:
            cache = inputs.cache
            past = cache.get(self.layer_index) if cache is not None else None
            mixed, running = causal_wave_mix(w, mask, self.eps, self.mode, past)
            if cache is not None:
                cache.set(self.layer_index, running)
        else:  # evaluation runs the plain maths: the same values, faster without autograd (measured)
            maths = self.compiled if self.backend == "compiled" else wave_mix  # compiled: its training steps only
            mixed = maths(w, mask, self.eps, self.mode)
        return self._finish(mixed, x, inputs)

    def step(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step (causal layers, inference): ``x (B, D)`` of one new token per row,
        ``mask (B,)`` bool (False: a finished row, which changes no state), ``positions (B,)``
        → ``(B, D)``; reads and extends this layer's running sum in ``cache``. The same maths as
        :meth:`forward` on a ``(B, 1, D)`` input (tested), in functional calls: a decoding step is
        short enough that module-call overhead is a visible part of it."""
        w = F.linear(x, self.to_waves.weight, self.to_waves.bias)
        w = w.to(torch.promote_types(w.dtype, torch.float32)) * mask.to(torch.float32)[:, None]
        past = cache.get(self.layer_index)
        past = past[:, 0] if past is not None else torch.zeros_like(w)  # (B, 2D)
        mixed, running = causal_wave_step(w, past, self.eps, self.mode)
        cache.set(self.layer_index, running[:, None])
        if self.rope is not None:
            mixed = rotate_waves(mixed, rope_angles(positions, mixed.shape[-1] // 2, *self.rope))
        norm = self.norm
        return F.linear(F.layer_norm(mixed, norm.normalized_shape, norm.weight, norm.bias, norm.eps),
                        self.out.weight, self.out.bias)

    def _finish(self, mixed: torch.Tensor, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        """Optional RoPE phase rotation, then ``Linear(LayerNorm(mixed))`` back to width D."""
        if self.rope is not None:
            positions = inputs.positions if inputs.positions is not None else torch.arange(x.shape[1], device=x.device)
            mixed = rotate_waves(mixed, rope_angles(positions, mixed.shape[-1] // 2, *self.rope))
        return self.out(self.norm(mixed))
