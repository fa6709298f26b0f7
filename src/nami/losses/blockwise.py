"""nami's own Cut Cross-Entropy (Wijmans et al. 2024, arXiv 2411.09009) for CPUs, in plain PyTorch.

Why hand-written: the reference CCE kernels (``cut-cross-entropy``) are Triton and need CUDA; their
``torch_compile`` path runs on CPU but materialises the logits. PyTorch 2.13's
``torch.nn.functional.linear_cross_entropy`` (our ``torch_chunked`` anchor) chunks over the batch
only and has no gradient filtering. Nothing available does CCE — vocabulary-blocked, recompute in
backward, gradient filtering — on CPU, so this module does it with ordinary tensor ops.

Algorithm (``hidden`` ``h`` (N, D), ``weight`` ``W`` (V, D), per-row loss ``lse_r − h_r·W_{t_r}``)::

    forward, per tile (≤ R rows × ≤ B vocabulary entries; never N × V):
        z = h_rows @ W_blockᵀ                     (matmul in the compute dtype, then fp32/fp64)
        m = max_v z;  s = Σ_v exp(z − m)            (tile max and tile sum of exponentials)
    per row block:  lse = M + log Σ_tiles s·exp(m − M),  M = max_tiles m
                    (streaming log-sum-exp: only an (R, V/B) table of (m, s) is kept)
    target logit: gather-dot h_r · W[t_r] (one (R, D) gather per row block)
    backward, per tile that is not skipped:
        z = h_rows @ W_blockᵀ                       (recomputed)
        G = s_r · exp(z − lse_r)                    (softmax part of dL/dz, s_r = dL/dloss_r)
        grad_h[rows] += G @ W_block;   grad_W[block] += Gᵀ @ h_rows
    one-hot part, once:  grad_h[r] −= s_r W[t_r];   grad_W[t_r] −= s_r h_r   (index_add)

Rows whose target is ``ignore_index`` are dropped before any matmul (compacted), so an MLM-style
batch where most positions are ignored costs only its labelled rows.

**Gradient filtering.** The forward pass also records, per row and vocabulary block, the block's
log-sum-exp and maximum logit (an (N, V/B) table — small). In backward the softmax mass of every
(row, block) segment, ``mass = exp(block_lse − lse)``, and its largest probability
``exp(block_max − lse)`` are therefore known *before* recomputing anything, so a skipped segment
costs nothing (CCE's kernel recomputes a tile before it can decide to skip it). Skipping is decided
per (row, block) — finer than CCE's 2-D tiles in the row direction: a tile whose rows are only
partly skipped is computed on the gathered active rows. The dropped gradient of row ``r`` is
exactly ``s_r · (the dropped softmax entries)``, all of one sign, so its L1 norm w.r.t. the
logits is ``|s_r| · dropped_r`` where ``dropped_r`` is the softmax mass of the skipped segments;
it propagates to ``‖Δgrad_h_r‖₂ ≤ |s_r| dropped_r max_v‖W_v‖₂`` and
``Σ_v ‖Δgrad_W_v‖₂ ≤ Σ_r |s_r| dropped_r ‖h_r‖₂``. Policies:

- ``"paper"``: skip a segment when every softmax value in it is below ``threshold`` (default
  ``2**-12``, the paper's bf16-derived value). No bound on ``dropped_r`` beyond
  ``(#skipped entries)·threshold``, which is vacuous for a large vocabulary: early in training from
  scratch the softmax is near uniform (1/V ≈ 3e-5 at V = 32k, below 2^-12) and the policy drops
  almost all of the softmax gradient, leaving only the −1 at the target.
- ``"bounded_mass"`` (nami's improvement): per row, skip the lowest-mass segments (ascending order)
  only while their *total* mass stays ≤ ``threshold`` (ε, default 1e-3). Hence ``dropped_r ≤ ε``
  for every row — a provable bound on the gradient error — regardless of how peaked the softmax is.
  On a near-uniform softmax each segment holds ≈ B/V of the mass (≫ ε), so nothing is skipped and
  the gradient is exact; as training sharpens the softmax, most segments hold negligible mass and
  are skipped, which is when filtering pays.

Pass a ``stats`` dict to record what was dropped (filled during backward): ``dropped_mass`` (N,)
per-row skipped softmax mass, ``grad_logits_l1_error`` (N,) = ``|s_r|·dropped_r`` (the exact L1
error of dL/dlogits per row), ``segments_total``/``segments_skipped``/``skipped_fraction``.

**Precision.** Parity (1e-5 relative) is asserted in fp32. Under ``torch.autocast`` (or with
bf16/fp16 inputs) the matmuls (logits, recompute, both gradient products) run in the low-precision
dtype — which is where CPU speed comes from (AMX bf16 ≈ 3× fp32 here) and is what
``cross_entropy(linear(h, W))`` does under autocast, whose logits are bf16 too — while the
log-sum-exp, the softmax and the gradient accumulators are fp32. The target logit is a gather-dot
accumulated in fp32 and then rounded to the low-precision dtype, as the matmul tiles the
log-sum-exp was computed from are; without that rounding a confidently predicted target (logit ≈ 20,
bf16 spacing 0.125) gives a slightly negative loss. Float64 inputs compute in float64 (so
``gradcheck`` works). The per-row losses are returned in the accumulation dtype (fp32 for bf16/fp16
inputs); gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

PAPER_THRESHOLD = 2.0**-12
"""The paper's filter threshold: bf16 machine epsilon / 32 (``cut-cross-entropy``'s "high")."""

BOUNDED_MASS_EPS = 1e-3
"""Default per-row bound on the total skipped softmax mass for ``filter_policy="bounded_mass"``."""

FILTER_POLICIES = ("none", "paper", "bounded_mass")

# Fraction of active rows in a tile below which the active rows are gathered instead of computing
# the whole tile (a gather costs an (rows, D) copy; the dense tile is rows × B × D multiply-adds).
_GATHER_BELOW = 0.5


@dataclass
class BlockwiseConfig:
    block_rows: int
    block_vocab: int
    filter_policy: str = "none"
    threshold: float = 0.0
    compute_dtype: torch.dtype = torch.float32
    stats: dict[str, Any] | None = field(default=None, repr=False)
    # When rows were compacted (ignored targets removed): their positions among ``n_rows_total``.
    row_index: torch.Tensor | None = field(default=None, repr=False)
    n_rows_total: int | None = None


def _acc_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def _tile(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous (rows, cols) view on the front of a preallocated flat buffer."""
    return buffer[: rows * cols].view(rows, cols)


def _buffers(rows: int, cols: int, compute: torch.dtype, acc: torch.dtype, device) -> tuple:
    """Reusable flat tile buffers: one in ``acc``, one in ``compute`` when that differs."""
    if rows == 0 or cols == 0:
        return None, None
    size = rows * cols
    low = torch.empty(size, dtype=compute, device=device) if compute != acc else None
    return torch.empty(size, dtype=acc, device=device), low


def _logits(h: torch.Tensor, w: torch.Tensor, buffers: tuple) -> torch.Tensor:
    """``h @ wᵀ`` in the operands' dtype, as an accumulation-dtype tile backed by ``buffers``."""
    acc_buf, low_buf = buffers
    out = _tile(acc_buf, h.shape[0], w.shape[0])
    if low_buf is None:
        return torch.mm(h, w.t(), out=out)
    return out.copy_(torch.mm(h, w.t(), out=_tile(low_buf, h.shape[0], w.shape[0])))


class BlockwiseLinearCrossEntropy(torch.autograd.Function):
    """Per-row ``lse(h Wᵀ) − h·W[t]`` for already-valid targets; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                cfg: BlockwiseConfig) -> torch.Tensor:
        device_type = hidden.device.type
        with torch.autocast(device_type, enabled=False):
            loss, lse, block_lse, block_max = _forward(hidden, weight, targets, cfg, ctx.needs_input_grad)
        ctx.cfg = cfg
        ctx.save_for_backward(hidden, weight, targets, lse, block_lse, block_max)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        hidden, weight, targets, lse, block_lse, block_max = ctx.saved_tensors
        cfg: BlockwiseConfig = ctx.cfg
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w = _backward(hidden, weight, targets, lse, block_lse, block_max, grad_loss, cfg,
                                       ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_h, grad_w, None, None


def _forward(hidden, weight, targets, cfg: BlockwiseConfig, needs_grad):
    acc = _acc_dtype(cfg.compute_dtype)
    h = hidden.to(cfg.compute_dtype)
    w = weight.to(cfg.compute_dtype)
    n, v = h.shape[0], w.shape[0]
    rows, bv = cfg.block_rows, cfg.block_vocab
    n_blocks = math.ceil(v / bv)
    record = cfg.filter_policy != "none" and (needs_grad[0] or needs_grad[1])
    lse = torch.empty(n, dtype=acc, device=h.device)
    loss = torch.empty(n, dtype=acc, device=h.device)
    block_lse = torch.empty(n, n_blocks, dtype=acc, device=h.device) if record else None
    block_max = torch.empty(n, n_blocks, dtype=acc, device=h.device) if record else None
    buffers = _buffers(min(rows, n), min(bv, v), cfg.compute_dtype, acc, h.device)
    tile_max = torch.empty(min(rows, n), n_blocks, dtype=acc, device=h.device)
    tile_sum = torch.empty_like(tile_max)
    for r0 in range(0, n, rows):
        hb = h[r0 : r0 + rows]
        rb = hb.shape[0]
        for j, v0 in enumerate(range(0, v, bv)):
            z = _logits(hb, w[v0 : v0 + bv], buffers)
            m = torch.amax(z, dim=1, out=tile_max[:rb, j])
            torch.sum(z.sub_(m[:, None]).exp_(), dim=1, out=tile_sum[:rb, j])
        # streaming log-sum-exp: combine the per-tile (max, sum of exp) of this row block
        tm, ts = tile_max[:rb], tile_sum[:rb]
        row_max = tm.amax(dim=1)
        lse_b = row_max + torch.log((ts * torch.exp(tm - row_max[:, None])).sum(dim=1))
        lse[r0 : r0 + rows] = lse_b
        if record:
            block_max[r0 : r0 + rows] = tm
            block_lse[r0 : r0 + rows] = tm + torch.log(ts)
        target_logit = (hb.to(acc) * w.index_select(0, targets[r0 : r0 + rows]).to(acc)).sum(dim=1)
        if cfg.compute_dtype != acc:  # round like the low-precision matmul output the lse was computed from
            target_logit = target_logit.to(cfg.compute_dtype).to(acc)
        loss[r0 : r0 + rows] = lse_b - target_logit
    return loss, lse, block_lse, block_max


def plan_skips(lse: torch.Tensor, block_lse: torch.Tensor, block_max: torch.Tensor, policy: str,
               threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which (row, vocabulary block) segments to skip, and each segment's softmax mass.

    Returns ``(skip, mass)``, both (N, n_blocks); ``skip`` is bool.
    """
    mass = torch.exp(block_lse - lse[:, None])
    if policy == "paper":
        skip = torch.exp(block_max - lse[:, None]) < threshold
    elif policy == "bounded_mass":
        sorted_mass, order = torch.sort(mass, dim=1)
        # prefix of the ascending masses whose running total stays within ε (a hair inside, so that
        # re-summing the skipped masses in another order cannot round past ε)
        keep_sorted = torch.cumsum(sorted_mass, dim=1) > threshold * (1 - 1e-5)
        skip = torch.empty_like(keep_sorted).scatter_(1, order, ~keep_sorted)
    else:
        raise ValueError(f"unknown filter policy {policy!r}")
    return skip, mass


def _backward(hidden, weight, targets, lse, block_lse, block_max, grad_loss, cfg: BlockwiseConfig,
              need_h: bool, need_w: bool):
    acc = _acc_dtype(cfg.compute_dtype)
    h = hidden.to(cfg.compute_dtype)
    w = weight.to(cfg.compute_dtype)
    n, v = h.shape[0], w.shape[0]
    rows, bv = cfg.block_rows, cfg.block_vocab
    scale = grad_loss.to(acc)
    grad_h = torch.zeros(n, h.shape[1], dtype=acc, device=h.device) if need_h else None
    grad_w = torch.zeros(v, w.shape[1], dtype=acc, device=h.device) if need_w else None

    skip = mass = None
    if block_lse is not None:
        skip, mass = plan_skips(lse, block_lse, block_max, cfg.filter_policy, cfg.threshold)
    actually_skipped = torch.zeros_like(skip) if skip is not None else None

    same = cfg.compute_dtype == acc
    buffers = _buffers(min(rows, n), min(bv, v), cfg.compute_dtype, acc, h.device)
    # s·exp(z − lse) = exp(z − (lse − log s)) when s ≥ 0 (s = 0 → offset +inf → 0): one pass fewer
    fold = bool((scale >= 0).all()) if n else True
    offset = lse - torch.log(scale) if fold else lse
    for r0 in range(0, n, rows):
        hb = h[r0 : r0 + rows]
        sb = scale[r0 : r0 + rows]
        lb = offset[r0 : r0 + rows]
        gh = grad_h[r0 : r0 + rows] if need_h else None
        for j, v0 in enumerate(range(0, v, bv)):
            wj = w[v0 : v0 + bv]
            idx = None
            hs, ss, ls = hb, sb, lb
            if skip is not None:
                seg_skip = skip[r0 : r0 + rows, j]
                n_active = hb.shape[0] - int(seg_skip.sum())
                if n_active == 0:
                    actually_skipped[r0 : r0 + rows, j] = True
                    continue
                if n_active < _GATHER_BELOW * hb.shape[0]:
                    actually_skipped[r0 : r0 + rows, j] = seg_skip
                    idx = (~seg_skip).nonzero().squeeze(1)
                    hs, ss, ls = hb.index_select(0, idx), sb.index_select(0, idx), lb.index_select(0, idx)
            z = _logits(hs, wj, buffers)
            g = z.sub_(ls[:, None]).exp_()  # s_r · softmax: the softmax part of dL/dz
            if not fold:
                g.mul_(ss[:, None])
            gc = g if same else _tile(buffers[1], g.shape[0], g.shape[1]).copy_(g)
            if need_h:
                if idx is None:
                    if same:
                        gh.addmm_(gc, wj)
                    else:
                        gh.add_(torch.mm(gc, wj))
                else:
                    gh.index_add_(0, idx, torch.mm(gc, wj).to(acc))
            if need_w:
                if same:
                    grad_w[v0 : v0 + bv].addmm_(gc.t(), hs)
                else:
                    grad_w[v0 : v0 + bv].add_(torch.mm(gc.t(), hs))
        # one-hot part of dL/dz: −s_r at the target column
        tb = targets[r0 : r0 + rows]
        if need_h:
            gh.sub_(sb[:, None] * w.index_select(0, tb).to(acc))
        if need_w:
            grad_w.index_add_(0, tb, -(sb[:, None] * hb.to(acc)))

    if cfg.stats is not None:
        _record_stats(cfg, scale, mass, actually_skipped, n)
    return (grad_h.to(hidden.dtype) if need_h else None, grad_w.to(weight.dtype) if need_w else None)


def _record_stats(cfg: BlockwiseConfig, scale, mass, actually_skipped, n: int) -> None:
    stats = cfg.stats
    if mass is None:
        dropped = torch.zeros(n, dtype=scale.dtype, device=scale.device)
        total = skipped = 0
    else:
        dropped = (mass * actually_skipped).sum(dim=1)
        total, skipped = actually_skipped.numel(), int(actually_skipped.sum())
    error = scale.abs() * dropped
    if cfg.row_index is not None:  # back to the caller's row positions (ignored rows: 0)
        full = torch.zeros(cfg.n_rows_total, dtype=dropped.dtype, device=dropped.device)
        dropped = full.index_copy(0, cfg.row_index, dropped)
        error = full.index_copy(0, cfg.row_index, error)
    stats["filter_policy"] = cfg.filter_policy
    stats["threshold"] = cfg.threshold
    stats["dropped_mass"] = dropped
    stats["grad_logits_l1_error"] = error
    stats["segments_total"] = total
    stats["segments_skipped"] = skipped
    stats["skipped_fraction"] = skipped / total if total else 0.0


def blockwise_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  cfg: BlockwiseConfig) -> torch.Tensor:
    """Per-row negative log-likelihood (N,) for targets that are all valid class indices."""
    return BlockwiseLinearCrossEntropy.apply(hidden, weight, targets, cfg)
