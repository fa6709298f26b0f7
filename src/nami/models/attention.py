"""Multi-head self-attention, the Transformer's mixer (architecture ``transformer``).

Through ``torch.nn.functional.scaled_dot_product_attention``; 4·D² projection weights, like the Wave
layer's two 2·D² projections, so a Transformer and a Wave model of one preset have the same size.
Cost: O(S²·D) time; memory O(S) on CPU's fused kernel, O(S²) on the math path.
``attention_rope``: queries and keys rotated by their positions (RoPE, :mod:`nami.models.rotary`) before
the scores, so attention sees relative positions; keys enter the decoding cache already rotated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer
from nami.models.rotary import rotate_heads


@register_mixer("attention", arch="transformer")
class SelfAttention(nn.Module):
    """Multi-head self-attention over real tokens: ``(B, S, D) -> (B, S, D)``."""

    supports_causal = True  # causal mask + a key/value cache that grows with the prompt

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.causal = config.causal
        self.layer_index = 0  # set by the Encoder: this layer's slot in a DecodingCache
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.attention_dropout_p  # on the attention probabilities
        self.rope = (config.rope_base, config.rope_scale) if config.attention_rope else None

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, width = x.shape
        q, k, v = (
            self.qkv(x).view(batch, seq_len, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        )  # each (B, H, S, D/H)
        if self.rope is not None:
            q, k = (rotate_heads(t, inputs.positions, *self.rope) for t in (q, k))
        if self.causal and inputs.cache is None and bool(inputs.padding_mask.all()):
            # A full causal forward without padding: the fused causal kernel, memory linear in S.
            keys_allowed = None
        elif self.causal and inputs.cache is not None and inputs.cache.get(self.layer_index) is None \
                and bool(inputs.padding_mask.all()):
            _store(inputs.cache, self.layer_index, k, v, inputs.padding_mask)  # prefill without padding
            keys_allowed = None
        elif self.causal:
            keys_allowed, k, v = self._causal_keys(k, v, inputs)
        else:
            keys_allowed = inputs.padding_mask[:, None, None, :]  # (B, 1, 1, S): padding keys are never attended to
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys_allowed, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and keys_allowed is None,
        )
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width))

    def step(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step (causal, inference): ``x (B, D)``, ``mask (B,)`` bool → ``(B, D)``;
        appends this token's key/value to ``cache``. The query sees the real cached keys and itself,
        as in :meth:`forward` on a ``(B, 1, D)`` input (tested), through functional calls."""
        batch, width = x.shape
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).view(batch, 3, self.n_heads, 1, width // self.n_heads) \
            .unbind(1)  # each (B, H, 1, D/H)
        if self.rope is not None:
            q, k = (rotate_heads(t, positions[:, None], *self.rope) for t in (q, k))
        k, v, valid = _store(cache, self.layer_index, k, v, mask[:, None])
        allowed = valid.clone()
        allowed[:, -1] = True  # itself: a finished row's query is never left without keys
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :])
        return F.linear(y.reshape(batch, width), self.out.weight, self.out.bias)

    def _causal_keys(self, k: torch.Tensor, v: torch.Tensor, inputs: MixerInputs):
        """Keys/values with the cached past prepended, and the mask ``(B, 1, S, L)``: a query sees real
        keys at or before its own position (and always itself, so padded rows are never empty)."""
        valid = inputs.padding_mask
        if inputs.cache is not None:
            k, v, valid = _store(inputs.cache, self.layer_index, k, v, valid)
        seq_len, total = inputs.padding_mask.shape[1], k.shape[2]
        query_at = torch.arange(total - seq_len, total, device=k.device)[:, None]  # (S, 1) key-axis positions
        key_at = torch.arange(total, device=k.device)[None, :]
        allowed = ((key_at <= query_at)[None] & valid[:, None, :]) | (key_at == query_at)[None]
        return allowed[:, None], k, v


def _store(cache, slot, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
    """Append keys / values ``(B, H, n, d)`` and their real-token mask ``(B, n)`` to ``cache[slot]``;
    return all of them so far. With ``cache.capacity`` they are written in place into buffers
    preallocated for that many positions (the returned tensors are views: nothing is copied);
    without, the cache grows by ``torch.cat`` (a full copy every step)."""
    past = cache.get(slot)
    capacity = getattr(cache, "capacity", None)
    if capacity is None:
        if past is not None:
            k, v, valid = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2), torch.cat([past[2], valid], 1)
        cache.set(slot, (k, v, valid))
        return k, v, valid
    if past is None:
        batch, heads, _, width = k.shape
        past = (k.new_empty(batch, heads, capacity, width), v.new_empty(batch, heads, capacity, width),
                valid.new_zeros(batch, capacity), 0)
    keys, values, real, length = past
    end = length + k.shape[2]
    if end > capacity:
        raise ValueError(f"DecodingCache capacity={capacity} is full: {end} positions needed (give a larger "
                         "capacity, or None to grow the cache)")
    keys[:, :, length:end] = k
    values[:, :, length:end] = v
    real[:, length:end] = valid
    cache.set(slot, (keys, values, real, end))
    return keys[:, :, :end], values[:, :, :end], real[:, :end]
