"""The Wave Network encoder (Zhang & Sheng 2024, arXiv 2411.02674), stacked into N layers.

A token is a complex vector per dimension k: its magnitude is the *global semantics*
``G_k = ||w_{:,k}||_2`` (the L2 norm of dimension k over the sequence's real tokens) and its
phase ``α_{j,k}`` encodes how token j relates to that whole, with ``cos α = w_{j,k} / G_k``.
We never compute the angle: the closed forms

    real part      = G·cos α = w
    imaginary part = G·sin α = sqrt(G² − w²)

give the same complex number without atan2/cos/sin round trips (faster, and no gradient
singularities). Two such waves, projected from the same input, are combined by

    interference (addition):        Z = Z1 + Z2
    modulation (multiplication):    Z = Z1 · Z2

and the result is mapped back to the real width by ``Linear(LayerNorm([Re Z, Im Z]))``. The
LayerNorm is needed because modulation grows like G1·G2, i.e. with sequence length.

Numerics: the wave maths runs in float32 even under bf16 autocast (the sum of squares over the
sequence and G² − w² cancel badly in bf16). ``wave_eps`` goes under both square roots, and
G² − w² is clamped at 0 before it, so a one-token sequence (G² − w² = 0), all-equal tokens and
padding all keep finite gradients. Padding tokens are zeroed before the norm, so they never
change the outputs of real tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from nami.models.common import Embeddings, FeedForward, init_weights
from nami.models.config import ModelConfig


def to_complex(w: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Real ``w (B, S, D)`` → (real, imaginary) parts of its wave representation.

    ``mask (B, S, 1)`` is 1.0 for real tokens and 0.0 for padding.
    """
    w = w * mask
    squares = w * w
    global_sq = squares.sum(dim=1, keepdim=True) + eps  # G² per (batch, dimension): (B, 1, D)
    imag = torch.sqrt((global_sq - squares).clamp_min(0.0) + eps)
    return w, imag


class WaveLayer(nn.Module):
    """Token mixing by wave interference or modulation: ``(B, S, D) -> (B, S, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.mode = config.wave_mode
        self.eps = config.wave_eps
        self.to_waves = nn.Linear(d, 2 * d)  # the two real vectors that become Z1 and Z2
        self.norm = nn.LayerNorm(2 * d, eps=config.norm_eps)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.to_waves(x).float().chunk(2, dim=-1)
        mask = mask.to(w1.dtype).unsqueeze(-1)
        re1, im1 = to_complex(w1, mask, self.eps)
        re2, im2 = to_complex(w2, mask, self.eps)
        if self.mode == "interference":
            real, imag = re1 + re2, im1 + im2
        else:  # modulation: (a + ib)(c + id) = (ac − bd) + i(ad + bc)
            real, imag = re1 * re2 - im1 * im2, re1 * im2 + im1 * re2
        return self.out(self.norm(torch.cat([real, imag], dim=-1)))


class WaveBlock(nn.Module):
    """Pre-norm residual block: ``x + WaveLayer(LN(x))`` then ``x + FFN(LN(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.wave = WaveLayer(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.wave(self.norm1(x), mask))
        return x + self.ffn(self.norm2(x))


class WaveEncoder(nn.Module):
    """Embeddings + N Wave blocks + final LayerNorm.

    ``forward(input_ids (B, S), attention_mask (B, S) bool, token_type_ids (B, S) | None) -> (B, S, D)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "wave":
            raise ValueError(f"WaveEncoder needs arch='wave', got {config.arch!r}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(WaveBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.apply(init_weights)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.final_norm(x)
