"""A causal language model: a causal encoder stack (a decoder) whose hidden states meet the tied
vocabulary matrix only inside the loss (:func:`nami.losses.linear_cross_entropy`) or, when
generating, one position at a time — the ``(B, S, V)`` logits are never materialised.

The same class is the Wave decoder (``arch="wave"``: prefix norms, a constant-size state per layer)
and the Transformer decoder (``arch="transformer"``: causal attention, a key/value cache); both
stream through :class:`~nami.models.inputs.DecodingCache` (see :mod:`nami.models.generation`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nami.models.block import Encoder
from nami.models.config import ModelConfig
from nami.models.inputs import DecodingCache
from nami.models.pretrained import PreTrainedMixin


class CausalLMModel(PreTrainedMixin, nn.Module):
    """Causal encoder + tied output matrix ``(V, D)``.

    ``forward(input_ids (B, S), attention_mask (B, S) bool, positions=None, cache=None) -> hidden (B, S, D)``:
    ``hidden[:, t]`` predicts token ``t + 1``. Padding is on the right.
    """

    task = "clm"
    tasks = ("clm", "generative-qa")  # generative QA fine-tunes the same decoder

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.causal:
            config = dataclasses.replace(config, causal=True)
        self.config = config
        self.encoder = Encoder(config)

    @property
    def output_weight(self) -> torch.Tensor:
        """The ``(V, D)`` vocabulary matrix (tied to the token embedding)."""
        return self.encoder.embeddings.token.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None = None,
                cache: DecodingCache | None = None) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask, positions=positions, cache=cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of a few positions ``(..., D) -> (..., V)`` in float32 (decoding only)."""
        return hidden.float() @ self.output_weight.float().T
