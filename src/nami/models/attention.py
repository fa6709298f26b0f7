"""Multi-head self-attention, the Transformer's mixer (architecture ``transformer``).

Through ``torch.nn.functional.scaled_dot_product_attention``; 4·D² projection weights, like the Wave
layer's two 2·D² projections, so a Transformer and a Wave model of one preset have the same size.
Cost: O(S²·D) time; memory O(S) on CPU's fused kernel, O(S²) on the math path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer


@register_mixer("attention", arch="transformer")
class SelfAttention(nn.Module):
    """Multi-head self-attention over real tokens: ``(B, S, D) -> (B, S, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.attention_dropout_p  # on the attention probabilities

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, width = x.shape
        q, k, v = (
            self.qkv(x).view(batch, seq_len, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        )  # each (B, H, S, D/H)
        keys_allowed = inputs.padding_mask[:, None, None, :]  # (B, 1, 1, S): padding keys are never attended to
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys_allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width))
