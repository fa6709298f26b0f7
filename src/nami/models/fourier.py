"""Frequency-domain gate (seed plan 5; GFNet's global filter, Rao et al. 2021): ``fft_gate``.

Each dimension is filtered along the sequence by a learned filter applied in the frequency domain:
``y = irfft(rfft(x) · H)``. GFNet learns ``H`` per frequency for one fixed input size; text has
variable lengths and padding, and a circular filter would wrap the end of a sequence onto its
start. So the filter is learned as its impulse response — one weight per lag ``−(L−1) … L−1`` and
dimension, ``L = max_len`` (+ ``proxy_tokens``, which the mixers see too) — and for a batch of length ``S`` the inputs (padding zeroed) and the
lags ``|d| < S`` are zero-padded to ``n ≥ 2S`` before the FFT: the product is then exactly the
linear (non-circular) convolution ``y_j = Σ_i x_i · h_{j−i}`` over real tokens, the same for any
padding or batch length (a test checks it against the direct sum). Its frequency response ``rfft(h)``
is the learned complex filter per frequency and dimension. Cost: O(S log S · D) time, O(S·D)
memory; ``(2L − 1)·D`` parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import register_mixer


@register_mixer("fft_gate", as_architecture=False)
class FFTGate(nn.Module):
    """``(B, S, D) -> (B, S, D)``: per-dimension long convolution through the FFT (module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # The mixers see the encoder's proxy tokens too (prepended): L = max_len + proxy_tokens positions
        self.max_len = config.max_len + config.proxy_tokens
        # kernel[max_len - 1 + d] is the weight of lag d = j − i, d in [−(L−1), L−1]
        self.kernel = nn.Parameter(torch.randn(2 * self.max_len - 1, config.d_model) * 0.02)

    def filter_at(self, seq_len: int, n: int) -> torch.Tensor:
        """The impulse response for lags ``|d| < seq_len`` laid out for an ``n``-point FFT: ``(n, D)``."""
        centre = self.max_len - 1
        h = self.kernel.new_zeros(n, self.kernel.shape[1])
        h[:seq_len] = self.kernel[centre : centre + seq_len]  # lags 0 … S−1
        if seq_len > 1:
            h[n - seq_len + 1 :] = self.kernel[centre - seq_len + 1 : centre]  # lags −(S−1) … −1
        return h

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        seq_len = x.shape[1]
        if seq_len > self.max_len:
            raise ValueError(f"fft_gate: sequence length {seq_len} exceeds max_len {self.max_len}")
        n = 1 << (2 * seq_len - 1).bit_length()  # a power of two >= 2S − 1: no wrap-around
        dtype = torch.promote_types(x.dtype, torch.float32)  # >= fp32 under bf16 autocast (FFTs need it)
        xf = x.to(dtype) * inputs.padding_mask.unsqueeze(-1).to(dtype)
        spectrum = torch.fft.rfft(xf, n=n, dim=1) * torch.fft.rfft(self.filter_at(seq_len, n).to(dtype), dim=0)
        return torch.fft.irfft(spectrum, n=n, dim=1)[:, :seq_len].to(x.dtype)
