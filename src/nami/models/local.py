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
    """Depthwise 1-D convolution over the sequence, kernel ``k = conv_kernel``: ``(B, S, D) -> (B, S, D)``.
    Cost O(S·D·k) time, O(S·D) memory; D·k + D parameters.

    Centred in an encoder; in a causal decoder (``ModelConfig.causal``) it sees the token itself and
    the ``k − 1`` before it (left padding), the short causal convolution that H3, Hyena, Mamba and
    RWKV's token shift put beside their global mixers. Its decoding state is the last ``k − 1``
    inputs of each row ``(B, k − 1, D)`` (constant size, whatever the prompt), kept in the
    :class:`~nami.models.inputs.DecodingCache` under this module's ``layer_index``; padding (a
    finished row, the tail of a shorter prompt) changes no state.
    """

    supports_causal = True  # left-padded, with a fixed-size state of the last k - 1 inputs

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        k = config.conv_kernel
        self.causal = config.causal
        self.layer_index: object = 0  # set by the Encoder: this module's slot in a DecodingCache
        # The same weights either way (an encoder's conv loads into a decoder's); only the padding differs.
        self.conv = nn.Conv1d(config.d_model, config.d_model, k, padding=0 if self.causal else k // 2,
                              groups=config.d_model)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        x = x * inputs.padding_mask.unsqueeze(-1).to(x.dtype)  # padding contributes nothing
        if not self.causal:
            return self.conv(x.transpose(1, 2)).transpose(1, 2)
        k = self.conv.kernel_size[0]
        cache = inputs.cache
        past = cache.get(self.layer_index) if cache is not None else None
        if past is None:
            past = x.new_zeros(x.shape[0], k - 1, x.shape[2])
        seq = torch.cat([past.to(x.dtype), x], dim=1)  # (B, k - 1 + S, D)
        if cache is not None:
            cache.set(self.layer_index, self._last_real(seq, inputs.padding_mask, k))
        return self.conv(seq.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def _last_real(seq: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        """The last ``k − 1`` real inputs of each row of ``seq = [state, chunk]``: the chunk's real
        tokens must come first in each row (right padding, as every nami decoder batches prompts)."""
        if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("causal conv with a DecodingCache: a row has a real token after padding (expected "
                             "right-padded prompts)")
        count = mask.sum(1)  # (B,) real tokens of the chunk
        index = count[:, None] + torch.arange(k - 1, device=seq.device)[None]  # (B, k - 1)
        return seq.gather(1, index[..., None].expand(-1, -1, seq.shape[2]))

    def step(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step ``x (B, D)`` → ``(B, D)``: the same as :meth:`forward` on ``(B, 1)``
        inputs with the same cache (tested); a row with ``mask`` False keeps its state."""
        k = self.conv.kernel_size[0]
        x = x * mask.to(x.dtype)[:, None]
        past = cache.get(self.layer_index)
        if past is None:
            past = x.new_zeros(x.shape[0], k - 1, x.shape[1])
        window = torch.cat([past.to(x.dtype), x[:, None]], dim=1)  # (B, k, D)
        cache.set(self.layer_index, torch.where(mask[:, None, None], window[:, 1:], past))
        weight = self.conv.weight[:, 0].to(x.dtype)  # (D, k)
        return torch.einsum("bkd,dk->bd", window, weight) + self.conv.bias.to(x.dtype)


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
