"""A pre-LN Transformer encoder of the same shape as :class:`~nami.models.wave.WaveEncoder`.

Same embeddings, widths, depth and feed-forward; the only difference is the token-mixing
sublayer: multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``
(4·D² projection weights, like the Wave layer's two 2·D² projections).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.common import Embeddings, FeedForward, init_weights
from nami.models.config import ModelConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention over real tokens: ``(B, S, D) -> (B, S, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.attention_dropout_p  # on the attention probabilities

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq_len, width = x.shape
        q, k, v = (
            self.qkv(x).view(batch, seq_len, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        )  # each (B, H, S, D/H)
        keys_allowed = mask[:, None, None, :]  # (B, 1, 1, S): padding keys are never attended to
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys_allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), mask))
        return x + self.ffn(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Embeddings + N Transformer blocks + final LayerNorm.

    ``forward(input_ids (B, S), attention_mask (B, S) bool, token_type_ids (B, S) | None) -> (B, S, D)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "transformer":
            raise ValueError(f"TransformerEncoder needs arch='transformer', got {config.arch!r}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.apply(init_weights)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.final_norm(x)
