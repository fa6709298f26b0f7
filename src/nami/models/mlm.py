"""Masked-language-model pretraining head.

The model returns hidden states only for the masked positions, ``(M, D)``; the loss multiplies
them with the vocabulary matrix inside :func:`nami.losses.linear_cross_entropy`, so no
``(M, V)`` logits tensor is ever materialised in training. The output matrix is the input token
embedding by default (tied), or its own parameter.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from nami.models.block import Encoder
from nami.models.common import init_weights
from nami.models.config import ModelConfig
from nami.models.pretrained import PreTrainedMixin


class MaskedLMModel(PreTrainedMixin, nn.Module):
    """Encoder + ``Linear → GELU → LayerNorm`` transform; output weight ``(V, D)`` tied by default."""

    task = "mlm"

    def __init__(self, config: ModelConfig, tie_embeddings: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.transform = nn.Sequential(
            nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.LayerNorm(config.d_model, eps=config.norm_eps)
        )
        self.transform.apply(init_weights)
        self.untied_output = None
        if not tie_embeddings:
            self.untied_output = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
            nn.init.normal_(self.untied_output, std=0.02)

    @classmethod
    def model_kwargs(cls, saved: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"tie_embeddings": "untied_output" not in weights}

    @property
    def output_weight(self) -> torch.Tensor:
        """The ``(V, D)`` vocabulary matrix the loss multiplies hidden states with."""
        return self.encoder.embeddings.token.weight if self.untied_output is None else self.untied_output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                head_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states ``(M, D)`` at ``positions`` (flat indices into ``B * S``), or with ``head_loss``
        the loss ``head_loss(hidden (M, D), output_weight (V, D))``: computed inside ``forward``, where
        a sharded model (FSDP2) has its output matrix gathered."""
        hidden = self.encoder(input_ids, attention_mask)
        hidden = self.transform(hidden.reshape(-1, hidden.shape[-1])[positions])
        if head_loss is None:
            return hidden
        # As if computed after forward returned: in fp32, outside the training loop's bf16 autocast
        # (which wraps forward); the vocabulary-layer losses choose their own precision.
        with torch.autocast(hidden.device.type, enabled=False):
            return head_loss(hidden.float(), self.output_weight)
