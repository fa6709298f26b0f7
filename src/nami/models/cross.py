"""Mixing across the question / context boundary of a QA window (the seed's cross-attention question).

A QA window is ``[CLS] question [SEP] context [SEP]`` with token types 0 (question side) and ≥ 1
(context, incl. the question-match type 2). Two mixers let one segment read the other; both need
``MixerInputs.token_type_ids`` and refuse clearly without them.

* ``cross_wave`` — can one sequence's wave modulate another's? Each segment's *global wave* per
  dimension is the wave of its mean token, ``Ẑ = m + i·sqrt(G² − m²)`` with ``m = Σ_i w_i / √N``
  and ``G`` the segment's norm (``|m| ≤ G`` by Cauchy–Schwarz, so it is a valid wave). A context
  token's own wave (relative to the context's ``G``) is multiplied by the question's ``Ẑ`` and a
  question token's by the context's: phases add, magnitudes multiply, as in the Wave paper's
  modulation. O(S·D) time and memory; 4·D² parameters.
* ``question_attention`` — the standard reference for the same job: DrQA's aligned question
  embedding (Chen et al. 2017), ``f_j = Σ_{i ∈ question} softmax_i(α(x_j)·α(x_i)) x_i`` with
  ``α = ReLU(Linear)``, for every token. Only question tokens are keys (they come first in the
  window), so it costs O(S·Q·D), not O(S²·D). 2·D² parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer


def _segments(inputs: MixerInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks ``(B, S)`` of real question-side (type 0) and real context-side (type >= 1) tokens; the
    encoder's proxy tokens (type −1) are on neither side."""
    if inputs.token_type_ids is None:
        raise ValueError(f"mixer {name!r} needs token types (a QA model with segment embeddings)")
    real = inputs.padding_mask
    return real & (inputs.token_type_ids == 0), real & (inputs.token_type_ids >= 1)


@register_mixer("cross_wave", as_architecture=False)
class CrossWave(nn.Module):
    """``(B, S, D) -> (B, S, D)``: each token's wave modulated by the other segment's global wave."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.eps = config.wave_eps
        self.to_wave = nn.Linear(d, d)
        self.norm = nn.LayerNorm(2 * d, eps=config.norm_eps)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        question, context = _segments(inputs, "cross_wave")
        w = self.to_wave(x)
        w = w.to(torch.promote_types(w.dtype, torch.float32))  # >= fp32 wave maths, as in the Wave layer
        mixed = cross_wave_mix(w, question, context, self.eps)
        return self.out(self.norm(mixed))


def cross_wave_mix(w: torch.Tensor, question: torch.Tensor, context: torch.Tensor, eps: float) -> torch.Tensor:
    """Each token's wave times the other segment's global wave: ``w (B, S, D)``, the segments' masks
    ``(B, S)`` bool (disjoint) → ``(B, S, 2D)`` = [real, imaginary], zero on tokens of neither segment.

    Per segment ``s`` and dimension: ``G_s² = Σ_{i∈s} w_i² + ε``, the global wave ``Ẑ_s = m_s + i·sqrt(G_s² −
    m_s²)`` with ``m_s = Σ_{i∈s} w_i / √N_s``; a token ``j`` of ``s`` is ``z_j = w_j + i·sqrt(G_s² − w_j²)``
    and becomes ``z_j · Ẑ_other``. The segment sums are two batched products over the sequence; each
    token then reads its own and the other segment's statistics (about half the element-wise passes of
    a loop over the two segments)."""
    on = (question | context).unsqueeze(-1).to(w.dtype)  # (B, S, 1)
    ws = w * on
    segments = torch.stack([question, context], 1).to(w.dtype)  # (B, 2, S)
    g2 = segments @ (ws * ws) + eps  # (B, 2, D): G² of the question, of the context
    mean = (segments @ ws) / segments.sum(-1, keepdim=True).clamp_min(1.0).sqrt()  # Σ w / √N
    g_im = torch.sqrt((g2 - mean * mean).clamp_min(0.0) + eps)
    is_q = question.unsqueeze(-1)  # (B, S, 1)
    q, c = slice(0, 1), slice(1, 2)
    own_im = torch.sqrt((torch.where(is_q, g2[:, q], g2[:, c]) - ws * ws).clamp_min(0.0) + eps) * on
    o_re = torch.where(is_q, mean[:, c], mean[:, q])  # the other segment's global wave
    o_im = torch.where(is_q, g_im[:, c], g_im[:, q])
    return torch.cat([ws * o_re - own_im * o_im, ws * o_im + own_im * o_re], dim=-1)


@register_mixer("question_attention", as_architecture=False)
class QuestionAttention(nn.Module):
    """``(B, S, D) -> (B, S, D)``: DrQA's aligned question embedding for every token (module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.align = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        question, _ = _segments(inputs, "question_attention")
        # The question side comes first in every window (after any proxy tokens): keys are the
        # positions up to the last question token of the batch.
        last = (question * torch.arange(1, x.shape[1] + 1, device=x.device)).max()
        span = max(int(last), 1)
        keys_allowed = question[:, :span]  # (B, Qs)
        keys_allowed = keys_allowed | ~keys_allowed.any(1, keepdim=True)  # no question token: attend uniformly
        a = F.relu(self.align(x))  # (B, S, D)
        y = F.scaled_dot_product_attention(a[:, None], a[:, None, :span], x[:, None, :span],
                                           attn_mask=keys_allowed[:, None, None, :], scale=1.0)
        return self.out(y[:, 0])
