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
        sentence_ids: ``(B, S)`` long or None: which sentence each token belongs to (−1: none,
            e.g. a proxy token); built by the Encoder when a hierarchical mixer is used.
        segment_ids: ``(B, S)`` long or None: which ``[SEP]``-delimited segment (title, paragraph,
            question) each token belongs to; the paragraph level.
        cache: a :class:`DecodingCache` (causal decoders: each causal mixer reads and extends its
            layer's state), or None (a plain full-sequence forward).
    """

    padding_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    sentence_ids: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    cache: Any = None


class DecodingCache:
    """Per-layer decoding state of a causal decoder, filled by a prefill forward and extended by steps.

    A Wave layer keeps its running sum of squares ``(B, 1, 2D)`` (constant size); an attention
    layer keeps its keys / values ``(B, H, L, D/H)`` and which of them are real ``(B, L)`` (growing
    with the prompt); a causal conv its last ``k − 1`` inputs. ``nbytes()`` measures it.

    ``capacity``: attention layers preallocate keys / values for that many positions and write each
    step in place (Hugging Face's ``StaticCache`` idea) instead of growing them with ``torch.cat``,
    which copies the whole cache every step; ``None`` = grow (the older, slower baseline).
    Keys beyond ``capacity`` are refused with an error.
    """

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"DecodingCache capacity={capacity!r}: expected a positive integer or None")
        self.capacity = capacity
        self.states: dict[Any, Any] = {}

    def get(self, layer: int) -> Any:
        return self.states.get(layer)

    def set(self, layer: int, state: Any) -> None:
        self.states[layer] = state

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (B',) of every state, in that order (beam search: beams that survive)."""

        def pick(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.index_select(0, rows)
            if isinstance(x, tuple):
                return tuple(pick(v) for v in x)
            return x

        self.states = {layer: pick(state) for layer, state in self.states.items()}

    def nbytes(self) -> int:
        def size(x: Any) -> int:
            if isinstance(x, torch.Tensor):
                return x.numel() * x.element_size()
            if isinstance(x, (tuple, list)):
                return sum(size(v) for v in x)
            return 0

        return sum(size(v) for v in self.states.values())
