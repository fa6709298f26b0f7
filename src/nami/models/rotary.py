"""Rotary position embedding (RoPE, Su et al. 2021), shared by the Wave layer and attention.

One rotation, two readings: a Wave layer's combined wave ``Z`` is rotated by a position phase
(``wave_rope``: RoPE as phase rotation, the seed's plan), and attention's queries and keys are rotated
pairwise (``attention_rope``) so that ``q_j · k_l`` depends on positions only through ``j − l``. Both
treat the last dimension as ``[real half, imaginary half]`` (GPT-NeoX's "rotate half" layout).
"""

from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, dim: int, base: float, scale: float,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``θ_{j,k} = j · scale · base^(−k/dim)`` for positions ``(S,)`` → ``(S, dim)`` float32.

    A complex dimension is one RoPE pair, so ``k`` runs over all ``dim`` dimensions and the
    frequencies span ``1 … base^(−(dim−1)/dim)``, as in RoPE with ``dim`` pairs.
    """
    freqs = base ** (-torch.arange(dim, device=positions.device, dtype=dtype) / dim)
    return (positions.to(dtype) * scale)[..., None] * freqs


def rotate_waves(mixed: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE as phase rotation: ``[Re Z, Im Z] (B, S, 2D)`` → ``[Re, Im]`` of ``Z · e^{iθ}``.

    ``angles``: ``(S, D)`` or ``(B, S, D)``. Rotation composes with the wave maths by adding
    phases: applied once to the combined wave, it equals rotating one factor of a modulation
    (``Z1·e^{iθ} · Z2``: phases add) and both terms of an interference. For any two tokens,
    ``Z'_j · conj(Z'_l) = Z_j · conj(Z_l) · e^{i(θ_j − θ_l)}`` depends on positions only through
    ``j − l`` (tested).
    """
    re, im = mixed.chunk(2, dim=-1)
    cos, sin = torch.cos(angles).to(mixed.dtype), torch.sin(angles).to(mixed.dtype)
    return torch.cat([re * cos - im * sin, re * sin + im * cos], dim=-1)


def rotate_heads(x: torch.Tensor, positions: torch.Tensor | None, base: float, scale: float) -> torch.Tensor:
    """RoPE on attention queries or keys: ``x (B, H, S, d)`` rotated by positions ``(S,)`` or ``(B, S)``
    (None: ``0 … S−1``) over its ``d/2`` pairs ``(x_k, x_{k+d/2})``. Computed in fp32 or wider and
    returned in ``x``'s dtype (bf16 angles would lose the low frequencies' precision)."""
    if positions is None:
        positions = torch.arange(x.shape[-2], device=x.device)
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    angles = rope_angles(positions, x.shape[-1] // 2, base, scale, wide.dtype)  # (S, d/2) or (B, S, d/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, S, d/2): the same angles for every head
    return rotate_waves(wide, angles).to(x.dtype)
