"""Pieces both encoders share: token + position embeddings and the feed-forward sublayer."""

from __future__ import annotations

import torch
from torch import nn

from nami.models.config import ModelConfig


class Embeddings(nn.Module):
    """Token + learned absolute position (+ optional segment) embeddings: ``(B, S) -> (B, S, D)``.

    ``position_embedding="none"`` drops the position table (a model whose mixers carry position,
    e.g. ``wave_rope``, or none at all)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_len, config.d_model) if config.position_embedding == "learned" \
            else None
        self.segment = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.dropout = nn.Dropout(config.dropout)
        self.max_len = config.max_len

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``positions``: ``(B, S)`` per-row position ids (decoding), or None = ``0 … S−1``."""
        seq_len = input_ids.shape[1]
        x = self.token(input_ids)
        if self.position is not None:
            if positions is None:
                if seq_len > self.max_len:
                    raise ValueError(f"sequence length {seq_len} exceeds the model's max_len {self.max_len}")
                x = x + self.position(torch.arange(seq_len, device=input_ids.device))
            else:
                if positions.numel() and int(positions.max()) >= self.max_len:
                    raise ValueError(f"position {int(positions.max())} exceeds the model's learned positions "
                                     f"(max_len {self.max_len})")
                x = x + self.position(positions)
        if self.segment is not None and token_type_ids is not None:
            x = x + self.segment(token_type_ids)
        return self.dropout(x)


class FeedForward(nn.Module):
    """Position-wise ``Linear(D, F) -> GELU -> Linear(F, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff)
        self.down = nn.Linear(config.d_ff, config.d_model)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


def init_weights(module: nn.Module) -> None:
    """BERT-style initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
