"""One pre-norm residual block for every mixer, and the encoder that stacks them.

``Block(config, mixer_cls)`` is state-spaces/mamba's shape: the block owns the residual wiring,
normalisation and feed-forward; the mixer (:mod:`nami.models.registry`) owns only token mixing::

    h = LN(x)
    x = x + Dropout(mixer(h, inputs) + Σ branch(h, inputs))     # branches: ModelConfig.branches
    x = x + FFN(LN(x))

Weight names are ``blocks.<i>.{norm1, mixer, norm2, ffn}.*``. Checkpoints saved before the mixer
registry named the mixer ``wave`` or ``attn``; they load unchanged (see :meth:`Block._rename_legacy`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nami.models.common import Embeddings, FeedForward, init_weights
from nami.models.config import ModelConfig
from nami.models.inputs import MixerInputs
from nami.models.registry import mixer_class

_LEGACY_MIXER_NAMES = ("wave.", "attn.")  # WaveBlock.wave / TransformerBlock.attn before the registry


class Block(nn.Module):
    """Pre-norm residual block around any mixer: ``(B, S, D) -> (B, S, D)``."""

    def __init__(self, config: ModelConfig, mixer_cls: type[nn.Module]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mixer = mixer_cls(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)
        # Parallel mixers (ModelConfig.branches); created last so that a model without them is
        # initialised exactly as before they existed.
        self.branches = nn.ModuleList(mixer_class(name)(config) for name in config.branches) \
            if config.branches else None
        self._register_load_state_dict_pre_hook(self._rename_legacy)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        h = self.norm1(x)
        mixed = self.mixer(h, inputs)
        if self.branches is not None:
            for branch in self.branches:
                mixed = mixed + branch(h, inputs)
        x = x + self.dropout(mixed)
        return x + self.ffn(self.norm2(x))

    @staticmethod
    def _rename_legacy(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for old in _LEGACY_MIXER_NAMES:
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + "mixer." + key[len(prefix + old):]] = state_dict.pop(key)


class Encoder(nn.Module):
    """Embeddings + N :class:`Block` s (mixers as ``config`` names them) + final LayerNorm.

    ``forward(input_ids (B, S), attention_mask (B, S) bool, token_type_ids (B, S) | None) -> (B, S, D)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config, mixer_class(name)) for name in config.layer_mixers())
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.apply(init_weights)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        inputs = MixerInputs(padding_mask=attention_mask, token_type_ids=token_type_ids,
                             positions=torch.arange(input_ids.shape[1], device=input_ids.device))
        for block in self.blocks:
            x = block(x, inputs)
        return self.final_norm(x)


def build_encoder(config: ModelConfig) -> Encoder:
    """The encoder ``config`` describes (kept for callers of the pre-registry API)."""
    return Encoder(config)
