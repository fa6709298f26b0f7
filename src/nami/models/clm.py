"""A causal language model: a causal encoder stack (a decoder) whose hidden states meet the tied
vocabulary matrix only inside the loss (:func:`nami.losses.linear_cross_entropy`) or, when
generating, one position at a time — the ``(B, S, V)`` logits are never materialised.

The same class is the Wave decoder (``arch="wave"``: prefix norms, a constant-size state per layer)
and the Transformer decoder (``arch="transformer"``: causal attention, a key/value cache); both
stream through :class:`~nami.models.inputs.DecodingCache` (see :mod:`nami.models.generation`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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
                cache: DecodingCache | None = None,
                head_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states ``(B, S, D)``, or with ``head_loss`` the loss ``head_loss(hidden, output_weight)``
        computed inside ``forward`` (where a sharded model, FSDP2, has its output matrix gathered)."""
        hidden = self.encoder(input_ids, attention_mask, positions=positions, cache=cache)
        if head_loss is None:
            return hidden
        # As if computed after forward returned: in fp32, outside the training loop's bf16 autocast
        # (which wraps forward); the vocabulary-layer losses choose their own precision.
        with torch.autocast(hidden.device.type, enabled=False):
            return head_loss(hidden.float(), self.output_weight)

    def step(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: DecodingCache) -> torch.Tensor:
        """One decoding step: ids, mask, positions ``(B,)`` → hidden states ``(B, D)`` (the fast path of
        :meth:`forward` with one token per row; :meth:`Encoder.step`). Falls back to ``forward``
        where the encoder cannot step (branches, proxies, hierarchy)."""
        if self.encoder.can_step():
            return self.encoder.step(input_ids, mask, positions, cache)
        return self(input_ids[:, None], mask[:, None], positions=positions[:, None], cache=cache)[:, 0]

    def train(self, mode: bool = True) -> "CausalLMModel":
        self._bf16_output = None  # see logits(): weights may have changed unseen by their version counter
        return super().train(mode)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of a few positions ``(..., D) -> (..., V)``, returned in float32 (decoding only).

        Under bf16 autocast the product reads a cached bf16 copy of the output matrix: at batch 1
        decoding is bound by reading that ``(V, D)`` matrix once per token (32 MB in fp32 for
        V = 32k, D = 256), so half the bytes is nearly half the step. The copy is remade whenever
        the weights change (their version counter) and dropped by every ``train()`` / ``eval()``
        (fused optimizers and ``p.data.copy_`` change weights without bumping that counter;
        :func:`~nami.models.generation.generate` calls ``eval()`` first). Outside autocast: fp32.
        """
        weight = self.output_weight
        if torch.is_autocast_enabled(hidden.device.type) and \
                torch.get_autocast_dtype(hidden.device.type) == torch.bfloat16:
            key = (weight._version, weight.data_ptr(), weight.device)
            cached = getattr(self, "_bf16_output", None)
            if cached is None or cached[0] != key:
                cached = (key, weight.detach().to(torch.bfloat16))
                self._bf16_output = cached
            return torch.nn.functional.linear(hidden.to(torch.bfloat16), cached[1]).float()
        return hidden.float() @ weight.float().T
