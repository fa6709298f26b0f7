"""Extractive QA: an encoder with a span head that scores each token as answer start / end."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.block import Encoder
from nami.models.config import ModelConfig
from nami.models.pretrained import PreTrainedMixin


@dataclass
class SpanLogits:
    """Start / end scores ``(B, S)`` in float32; padding positions are ``-inf``."""

    start: torch.Tensor
    end: torch.Tensor


class SpanHead(nn.Module):
    """``Linear(D, 2)``: hidden ``(B, S, D)`` -> start / end logits ``(B, S)``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 2)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> SpanLogits:
        logits = self.proj(hidden).float().masked_fill(~attention_mask.unsqueeze(-1), float("-inf"))
        return SpanLogits(start=logits[..., 0], end=logits[..., 1])


class QAModel(PreTrainedMixin, nn.Module):
    """Encoder + :class:`SpanHead`. Training loss: mean of start and end cross-entropies.

    ``forward(input_ids (B, S), attention_mask (B, S) bool, token_type_ids (B, S) | None) -> SpanLogits``.
    """

    task = "qa"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.span_head = SpanHead(config.d_model)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> SpanLogits:
        return self.span_head(self.encoder(input_ids, attention_mask, token_type_ids), attention_mask)

    @staticmethod
    def loss(logits: SpanLogits, start_positions: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
        """Mean of the start and end cross-entropies; positions are token indices ``(B,)``."""
        return 0.5 * (F.cross_entropy(logits.start, start_positions) + F.cross_entropy(logits.end, end_positions))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameter counts (token and position tables are "embedding")."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    return {"total": total, "non_embedding": total - embedding}
