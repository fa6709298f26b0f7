"""Sentence- and paragraph-level waves (seed plan 4): ``sentence_wave`` and ``segment_wave``.

The plain Wave layer relates each token to one global norm per dimension. These mixers compute the
same complex waves against the norm of the token's own *sentence* (split after ``。！？``; line
breaks are whitespace to the tokenizer, so they leave no token to split on) or of its own
*segment* (the spans between ``[SEP]`` tokens: title, paragraph, question — the paragraph level of
a QA window), then modulate the two waves as the Wave layer does. A token thus learns what is in
its sentence / paragraph and how it relates to it. The group ids come from the token ids
(:func:`group_ids`), so no data pipeline changes; ``ModelConfig.sentence_boundary_ids`` (filled
from the tokenizer by training) names the sentence-ending pieces. O(S·D); 4·D² parameters each.
"""

from __future__ import annotations

import torch
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer
from nami.models.wave import combine_waves


def group_ids(input_ids: torch.Tensor, boundary_ids: list[int] | None, sep_id: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sentence_ids, segment_ids)`` ``(B, S)``: a boundary token belongs to the group it closes.

    Segments end at ``[SEP]``; sentences end at a sentence boundary piece or ``[SEP]``.
    """
    sep = input_ids == sep_id
    ends = sep.clone()
    if boundary_ids:
        ends |= torch.isin(input_ids, torch.tensor(boundary_ids, device=input_ids.device))
    segment = sep.long().cumsum(1) - sep.long()
    sentence = ends.long().cumsum(1) - ends.long()
    return sentence, segment


def grouped_wave_mix(w: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor, eps: float, mode: str) -> torch.Tensor:
    """:func:`~nami.models.wave.wave_mix` with one norm per (group, dimension) instead of per sequence.

    ``w (B, S, 2D)``, ``mask (B, S, 1)``, ``groups (B, S)`` long ≥ 0 (ids below ``S``).
    """
    w = w * mask
    squares = w * w
    sums = torch.zeros_like(squares).scatter_add_(1, groups.unsqueeze(-1).expand_as(squares), squares)  # (B, S, 2D)
    global_sq = sums.gather(1, groups.unsqueeze(-1).expand_as(squares)) + eps
    imag = torch.sqrt((global_sq - squares).clamp_min(0.0) + eps)
    return combine_waves(w, imag, mode)


class _GroupWave(nn.Module):
    level = "sentence"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.mode, self.eps = config.wave_mode, config.wave_eps
        self.to_waves = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(2 * d, eps=config.norm_eps)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        groups = inputs.sentence_ids if self.level == "sentence" else inputs.segment_ids
        if groups is None:
            raise ValueError(f"mixer {self.level}_wave needs {self.level} ids (built by the Encoder from token ids)")
        w = self.to_waves(x)
        w = w.to(torch.promote_types(w.dtype, torch.float32))
        mask = (inputs.padding_mask & (groups >= 0)).to(w.dtype).unsqueeze(-1)  # proxy tokens (id −1) join no group
        return self.out(self.norm(grouped_wave_mix(w, mask, groups.clamp_min(0), self.eps, self.mode)))


@register_mixer("sentence_wave", as_architecture=False)
class SentenceWave(_GroupWave):
    """``(B, S, D) -> (B, S, D)``: Wave maths against each token's sentence norm."""

    level = "sentence"


@register_mixer("segment_wave", as_architecture=False)
class SegmentWave(_GroupWave):
    """``(B, S, D) -> (B, S, D)``: Wave maths against each token's segment (paragraph) norm."""

    level = "segment"
