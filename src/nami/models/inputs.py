"""What every block and mixer receives besides the hidden states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class MixerInputs:
    """Per-batch context handed to every :class:`~nami.models.block.Block` and its mixer.

    Attributes:
        padding_mask: ``(B, S)`` bool, True for real tokens. Mixers must keep padding from changing
            the outputs of real tokens.
        token_type_ids: ``(B, S)`` long or None (question / context / question-matched context).
        positions: ``(S,)`` or ``(B, S)`` long token positions (for position-aware mixers).
        sentence_ids: ``(B, S)`` long or None: which sentence each token belongs to (hierarchical
            mixers; not produced by any task yet).
        cache: per-layer decoding state of a streaming decoder, or None (full-sequence forward).
    """

    padding_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    sentence_ids: torch.Tensor | None = None
    cache: Any = None
