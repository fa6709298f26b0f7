"""Local token mixers: a depthwise convolution and windowed self-attention (seed plan 5).

Both see only nearby tokens, which a plain Wave layer cannot: its only mixing is one norm per
dimension over the whole sequence, so it knows *what* is in the sequence but not *where*. Used as
a parallel branch of a Wave block (``ModelConfig.branches=["conv"]``) or as whole layers of a hybrid
stack (``ModelConfig.mixers``). Both are padding-correct: padding tokens are zeroed (conv) or
masked (attention) before they could reach a real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer
from nami.models.rotary import rotate_heads


@register_mixer("conv", as_architecture=False)
class DepthwiseConv(nn.Module):
    """Depthwise 1-D convolution over the sequence, kernel ``k = conv_kernel`` (centred):
    ``(B, S, D) -> (B, S, D)``. Cost O(S·D·k) time, O(S·D) memory; D·k + D parameters."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        k = config.conv_kernel
        self.conv = nn.Conv1d(config.d_model, config.d_model, k, padding=k // 2, groups=config.d_model)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        x = x * inputs.padding_mask.unsqueeze(-1).to(x.dtype)  # padding contributes nothing
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


@register_mixer("local_attention", as_architecture=False)
class LocalAttention(nn.Module):
    """Multi-head self-attention within ``±W`` tokens (``W = local_window``): ``(B, S, D) -> (B, S, D)``.

    The sequence is cut into blocks of ``W`` queries; each block attends to its own and its two
    neighbouring key blocks (``3W`` keys) with a band mask ``|i − j| ≤ W``, so time and memory are
    O(S·W), never O(S²). Padding keys are masked; a query always sees itself (no empty rows).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.window = config.local_window
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.rope = (config.rope_base, config.rope_scale) if config.attention_rope else None

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, width = x.shape
        w, h = self.window, self.n_heads
        n_blocks = -(-seq_len // w)
        pad = n_blocks * w - seq_len
        qkv = F.pad(self.qkv(x), (0, 0, 0, pad))  # (B, nW, 3D)
        real = F.pad(inputs.padding_mask, (0, pad), value=False)  # (B, nW)
        q, k, v = qkv.view(batch, n_blocks * w, 3, h, width // h).permute(2, 0, 3, 1, 4)  # (B, H, nW, d)
        if self.rope is not None:  # positions of the padded tail continue past S (masked anyway)
            positions = inputs.positions if inputs.positions is not None else torch.arange(seq_len, device=x.device)
            positions = F.pad(positions, (0, pad), value=0) if pad else positions
            q, k = (rotate_heads(t, positions, *self.rope) for t in (q, k))

        qb = q.unflatten(2, (n_blocks, w))  # (B, H, nb, W, d)
        kb = F.pad(k.unflatten(2, (n_blocks, w)), (0, 0, 0, 0, 1, 1))  # (B, H, nb + 2, W, d): empty edge blocks
        vb = F.pad(v.unflatten(2, (n_blocks, w)), (0, 0, 0, 0, 1, 1))
        rb = F.pad(real.unflatten(1, (n_blocks, w)), (0, 0, 1, 1), value=False)  # (B, nb + 2, W)
        # previous, own and next block of every block: (…, nb, 3W, …)
        kb = torch.cat([kb[:, :, :-2], kb[:, :, 1:-1], kb[:, :, 2:]], dim=3)
        vb = torch.cat([vb[:, :, :-2], vb[:, :, 1:-1], vb[:, :, 2:]], dim=3)
        key_real = torch.cat([rb[:, :-2], rb[:, 1:-1], rb[:, 2:]], dim=2)  # (B, nb, 3W)
        offset = torch.arange(3 * w, device=x.device)[None, :] - w - torch.arange(w, device=x.device)[:, None]
        band = offset.abs() <= w  # (W, 3W): key position − query position within ±W
        allowed = (band[None, None] & key_real[:, :, None, :]) | (offset == 0)[None, None]  # a query sees itself
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed[:, None])  # (B, H, nb, W, d)
        y = y.flatten(2, 3)[:, :, :seq_len]  # (B, H, S, d)
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width))
