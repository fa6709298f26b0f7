"""A Wave layer with several global vectors: soft *slots* (research lever: richer global state).

The Wave layer gives every token one global semantics per dimension, the norm over the whole
sequence ``G_k = ||w_{:,k}||``: it knows *what* is in the sequence, not *which part* a token belongs
to (the question or the context, this sentence or that one). A single global vector is also the
capacity limit of phase-based memories (Phase-Associative Memory, 2026: a matrix state fixes what a
single vector cannot). ``slot_wave`` keeps ``H = n_heads`` soft slots instead of one:

    a_{j,h}  = softmax_h(x_j · u_h)                         token j's membership of slot h (learned)
    E_{h,k}  = Σ_i a_{i,h} · w_{i,k}²                         slot h's energy: an (H, 2D) state
    Im_{j,k} = sqrt(Σ_h a_{j,h} · (E_{h,k} − a_{j,h} · w_{j,k}²) + ε)

so a token's imaginary part is the energy of the *other* tokens of the slots it belongs to, read
through its own memberships, and its real part is ``w_{j,k}`` as in the Wave layer. With one slot
(``a = 1``) this is exactly the Wave layer's ``sqrt(G² − w²)`` (tested). The two waves are combined
(modulation or interference) and mapped back by ``Linear(LayerNorm)``, as in the Wave layer.

Cost: O(S·H·D) time, O(S·D + H·D) memory (non-causal); 4·D² + H·D parameters. Causal: prefix
energies, decoding state ``(B, H, 2D)``, constant in the prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer
from nami.models.wave import combine_waves


def slot_wave_mix(w: torch.Tensor, a: torch.Tensor, eps: float, mode: str) -> torch.Tensor:
    """``w (B, S, 2D)`` (masked), memberships ``a (B, S, H)`` (masked) → ``[Re Z, Im Z] (B, S, 2D)``."""
    squares = w * w
    energy = torch.einsum("bsh,bsd->bhd", a, squares)  # (B, H, 2D)
    others = torch.einsum("bsh,bhd->bsd", a, energy) - (a * a).sum(-1, keepdim=True) * squares
    return combine_waves(w, _imag(others, a, eps), mode)


def _imag(others: torch.Tensor, a: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(others + ε·Σ_h a + ε)``: each slot's energy carries ``ε`` as the Wave layer's ``G²`` does, so
    one slot gives exactly its ``sqrt(G² + ε − w² + ε)``; clamped at 0 first, as there."""
    return torch.sqrt((others + eps * a.sum(-1, keepdim=True)).clamp_min(0.0) + eps)


def causal_slot_wave_mix(w: torch.Tensor, a: torch.Tensor, eps: float, mode: str,
                         past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`slot_wave_mix` with prefix energies (token t sees tokens ≤ t); ``past (B, H, 2D)``: the
    energies before this chunk. Returns the mixed waves and the energies after the chunk."""
    squares = w * w
    prefix = torch.einsum("bsh,bsd->bshd", a, squares).cumsum(dim=1)  # (B, S, H, 2D)
    if past is not None:
        prefix = prefix + past[:, None]
    others = torch.einsum("bsh,bshd->bsd", a, prefix) - (a * a).sum(-1, keepdim=True) * squares
    return combine_waves(w, _imag(others, a, eps), mode), prefix[:, -1]


@register_mixer("slot_wave", as_architecture=False)
class SlotWave(nn.Module):
    """Wave mixing with ``H`` soft slots of global state: ``(B, S, D) -> (B, S, D)`` (module docstring)."""

    supports_causal = True  # prefix energies, a (B, H, 2D) decoding state

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.causal = config.causal
        self.layer_index: object = 0  # set by the Encoder: this layer's slot in a DecodingCache
        self.mode = config.wave_mode
        self.eps = config.wave_eps
        self.to_waves = nn.Linear(d, 2 * d)
        self.to_slots = nn.Linear(d, config.n_heads)
        self.norm = nn.LayerNorm(2 * d, eps=config.norm_eps)
        self.out = nn.Linear(2 * d, d)

    def _waves(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked waves and memberships, in fp32 or wider (sums of squares cancel badly in bf16)."""
        w = self.to_waves(x)
        dtype = torch.promote_types(w.dtype, torch.float32)
        m = mask.to(dtype).unsqueeze(-1)
        a = torch.softmax(self.to_slots(x).to(dtype), dim=-1) * m
        return w.to(dtype) * m, a

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        w, a = self._waves(x, inputs.padding_mask)
        if not self.causal:
            mixed = slot_wave_mix(w, a, self.eps, self.mode)
        else:
            cache = inputs.cache
            past = cache.get(self.layer_index) if cache is not None else None
            mixed, energy = causal_slot_wave_mix(w, a, self.eps, self.mode, past)
            if cache is not None:
                cache.set(self.layer_index, energy)
        return self.out(self.norm(mixed))

    def step(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step ``x (B, D)`` → ``(B, D)``, the same as :meth:`forward` on ``(B, 1)`` inputs."""
        w, a = self._waves(x[:, None], mask[:, None])
        mixed, energy = causal_slot_wave_mix(w, a, self.eps, self.mode, cache.get(self.layer_index))
        cache.set(self.layer_index, energy)
        norm = self.norm
        return F.linear(F.layer_norm(mixed[:, 0], norm.normalized_shape, norm.weight, norm.bias, norm.eps),
                        self.out.weight, self.out.bias)


def window_energy(squares: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    """``Σ_{i ∈ window(j)} squares_i`` for every position j of ``squares (B, S, C)``: tokens within
    ``±window`` (causal: the ``window`` before and j itself), by differences of one cumulative sum, O(S·C)."""
    batch, seq_len, width = squares.shape
    zero = squares.new_zeros(batch, 1, width)
    total = torch.cat([zero, squares.cumsum(dim=1)], dim=1)  # total[k] = Σ_{i<k}
    ends = torch.arange(seq_len, device=squares.device) + (1 if causal else window + 1)
    starts = torch.arange(seq_len, device=squares.device) - window
    ends, starts = ends.clamp(max=seq_len), starts.clamp(min=0)
    return total[:, ends] - total[:, starts]


@register_mixer("window_wave", as_architecture=False)
class WindowWave(nn.Module):
    """The Wave maths against each token's *window* norm (research lever: per-window global state):
    ``G_{j,k}² = Σ_{|i − j| ≤ W} w_{i,k}²`` with ``W = local_window``, so a token's imaginary part
    is the energy of its neighbourhood's other tokens — between the conv's few neighbours and the Wave
    layer's whole sequence. ``(B, S, D) -> (B, S, D)``; O(S·D) time and memory; 4·D² parameters.
    Causal: the window is the ``W`` tokens before and the token itself (no decoding state kept: refused
    for step-by-step decoding, it would need the last W inputs)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.causal = config.causal
        self.window = config.local_window
        self.mode = config.wave_mode
        self.eps = config.wave_eps
        self.to_waves = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(2 * d, eps=config.norm_eps)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        w = self.to_waves(x)
        dtype = torch.promote_types(w.dtype, torch.float32)
        w = w.to(dtype) * inputs.padding_mask.to(dtype).unsqueeze(-1)
        squares = w * w
        others = window_energy(squares, self.window, self.causal) + self.eps - squares
        mixed = combine_waves(w, torch.sqrt(others.clamp_min(0.0) + self.eps), self.mode)
        return self.out(self.norm(mixed))
