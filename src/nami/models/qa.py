"""Extractive QA: an encoder with a span head that scores each token as answer start / end."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.block import Encoder
from nami.models.config import ModelConfig
from nami.models.pretrained import PreTrainedMixin


class SpanLogits(NamedTuple):
    """Start / end scores ``(B, S)`` in float32; padding positions are ``-inf``. A named tuple, so
    that wrappers which look for tensors in a module's outputs (DeepSpeed ZeRO-3's backward hooks,
    Accelerate's fp32 conversion) find them."""

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


class ExitHead(nn.Module):
    """An early-exit span head on an intermediate block: LayerNorm + :class:`SpanHead`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.head = SpanHead(config.d_model)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> SpanLogits:
        return self.head(self.norm(hidden), attention_mask)


class QAModel(PreTrainedMixin, nn.Module):
    """Encoder + :class:`SpanHead`. Training loss: mean of start and end cross-entropies.

    ``forward(input_ids (B, S), attention_mask (B, S) bool, token_type_ids (B, S) | None) -> SpanLogits``.
    With ``config.exit_layers``, ``forward(..., with_exits=True)`` also returns the early-exit heads'
    logits (self-distillation); decoding uses the last layer only.
    """

    task = "qa"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.span_head = SpanHead(config.d_model)
        # Created last: a model without exits initialises exactly as before they existed.
        self.exit_heads = nn.ModuleList(ExitHead(config) for _ in config.exit_layers) if config.exit_layers else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
        *, with_exits: bool = False,
    ) -> SpanLogits | tuple[SpanLogits, list[SpanLogits]]:
        """``with_exits``: also the early-exit heads' logits (``config.exit_layers`` order)."""
        if not with_exits:
            return self.span_head(self.encoder(input_ids, attention_mask, token_type_ids), attention_mask)
        if not self.exit_heads:
            return self.span_head(self.encoder(input_ids, attention_mask, token_type_ids), attention_mask), []
        hidden, kept = self.encoder(input_ids, attention_mask, token_type_ids, keep_layers=self.config.exit_layers)
        exits = [head(h, attention_mask) for head, h in zip(self.exit_heads, kept)]
        return self.span_head(hidden, attention_mask), exits

    @staticmethod
    def loss(logits: SpanLogits, start_positions: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
        """Mean of the start and end cross-entropies; positions are token indices ``(B,)``."""
        return 0.5 * (F.cross_entropy(logits.start, start_positions) + F.cross_entropy(logits.end, end_positions))

    @staticmethod
    def distillation_loss(student: SpanLogits, teacher: SpanLogits, temperature: float = 1.0) -> torch.Tensor:
        """``T² · KL(softmax(teacher / T) || softmax(student / T))`` averaged over start and end and the
        batch; the teacher is detached (it only teaches). Padding (``-inf`` in both) contributes 0."""

        def kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # -inf -> a large finite value: 0 · (−inf − (−inf)) would be NaN; exp(−1e4) is exactly 0.
            s = s.masked_fill(torch.isinf(s), -1e4) / temperature
            t = t.detach().masked_fill(torch.isinf(t), -1e4) / temperature
            return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean",
                            log_target=True)

        return temperature ** 2 * 0.5 * (kl(student.start, teacher.start) + kl(student.end, teacher.end))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameter counts (token and position tables are "embedding")."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    return {"total": total, "non_embedding": total - embedding}
