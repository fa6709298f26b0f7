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
import torch.nn.functional as F
from torch import nn

from nami.models.common import Embeddings, FeedForward, init_weights
from nami.models.config import ModelConfig
from nami.models.hierarchy import group_ids
from nami.models.inputs import DecodingCache, MixerInputs
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
        self.branch_names = list(config.branches or ())
        self.branch_on = [True] * len(self.branch_names)  # stage-wise training switches branches on (set_branches)
        self._register_load_state_dict_pre_hook(self._rename_legacy)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        h = self.norm1(x)
        mixed = self.mixer(h, inputs)
        if self.branches is not None:
            for branch, on in zip(self.branches, self.branch_on):
                if on:
                    mixed = mixed + branch(h, inputs)
        x = x + self.dropout(mixed)
        return x + self.ffn(self.norm2(x))

    def step(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DecodingCache) -> torch.Tensor:
        """One decoding step ``(B, D) -> (B, D)`` (inference): :meth:`forward` for one token per row,
        through the ``step`` of the mixer and of every branch that is on, and functional calls
        (dropout is the identity in eval mode). mamba's ``Block.step`` / ``Mamba.step`` shape."""
        h = F.layer_norm(x, self.norm1.normalized_shape, self.norm1.weight, self.norm1.bias, self.norm1.eps)
        mixed = self.mixer.step(h, mask, positions, cache)
        if self.branches is not None:
            for branch, on in zip(self.branches, self.branch_on):
                if on:
                    mixed = mixed + branch.step(h, mask, positions, cache)
        x = x + mixed
        ffn, norm = self.ffn, self.norm2
        h = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        h = F.gelu(F.linear(h, ffn.up.weight, ffn.up.bias), approximate=ffn.act.approximate)
        return x + F.linear(h, ffn.down.weight, ffn.down.bias)

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
        for index, block in enumerate(self.blocks):
            block.mixer.layer_index = index  # its slot in a DecodingCache
            for j, branch in enumerate(block.branches or ()):
                branch.layer_index = (index, j)  # a branch's own slot (causal conv: its last inputs)
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.apply(init_weights)
        # Proxy tokens (created last: a model without them initialises exactly as before they existed).
        self.proxies = nn.Parameter(torch.randn(config.proxy_tokens, config.d_model) * 0.02) \
            if config.proxy_tokens else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
        *, positions: torch.Tensor | None = None, cache: DecodingCache | None = None,
        keep_layers: list[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``positions (B, S)`` and ``cache``: causal decoding (prefill, then one token per step).
        ``keep_layers``: also return the hidden states ``(B, S, D)`` after those blocks (early exits)."""
        x = self.embeddings(input_ids, token_type_ids, positions)
        if cache is not None and not self.config.causal:
            raise ValueError("a DecodingCache needs a causal model (ModelConfig.causal=true)")
        inputs = MixerInputs(padding_mask=attention_mask, token_type_ids=token_type_ids,
                             positions=positions if positions is not None
                             else torch.arange(input_ids.shape[1], device=input_ids.device), cache=cache)
        if self.config.uses_hierarchy():
            inputs.sentence_ids, inputs.segment_ids = group_ids(input_ids, self.config.sentence_boundary_ids)
        k = self.config.proxy_tokens
        if k:
            x, inputs = self._with_proxies(x, inputs)
        kept = []
        for index, block in enumerate(self.blocks):
            x = block(x, inputs)
            if keep_layers and index in keep_layers:
                kept.append(x[:, k:] if k else x)
        out = self.final_norm(x[:, k:] if k else x)
        return (out, kept) if keep_layers else out

    def can_step(self) -> bool:
        """Whether :meth:`step` applies: a causal stack in eval mode whose mixers all have a ``step``
        method, and so do their branches (a registered causal mixer without one decodes through
        :meth:`forward`). Proxy tokens and sentence/segment groups have no causal form
        (``ModelConfig`` refuses them)."""
        return self.config.causal and not self.training and all(
            callable(getattr(module, "step", None)) for block in self.blocks
            for module in (block.mixer, *(block.branches or ())))

    def step(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: DecodingCache) -> torch.Tensor:
        """One decoding step: token ids ``(B,)``, ``mask (B,)`` bool (False: a finished row, which
        changes no state), ``positions (B,)`` → final hidden states ``(B, D)``. Equal to
        :meth:`forward` on ``(B, 1)`` inputs with the same cache (tested); see :meth:`can_step`."""
        x = self.embeddings(input_ids[:, None], None, positions[:, None])[:, 0]
        for block in self.blocks:
            x = block.step(x, mask, positions, cache)
        norm = self.final_norm
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _with_proxies(self, x: torch.Tensor, inputs: MixerInputs) -> tuple[torch.Tensor, MixerInputs]:
        """Prepend the K proxy tokens: real (mask True), position 0, token type / group −1."""
        batch, k = x.shape[0], self.config.proxy_tokens

        def front(t: torch.Tensor | None, value) -> torch.Tensor | None:
            if t is None:
                return None
            if t.dim() == 1:  # (S,) positions
                return torch.cat([t.new_full((k,), value), t])
            return torch.cat([t.new_full((batch, k), value), t], dim=1)

        x = torch.cat([self.proxies.to(x.dtype).expand(batch, k, -1), x], dim=1)
        return x, MixerInputs(padding_mask=front(inputs.padding_mask, True),
                              token_type_ids=front(inputs.token_type_ids, -1), positions=front(inputs.positions, 0),
                              sentence_ids=front(inputs.sentence_ids, -1), segment_ids=front(inputs.segment_ids, -1))


def build_encoder(config: ModelConfig) -> Encoder:
    """The encoder ``config`` describes (kept for callers of the pre-registry API)."""
    return Encoder(config)


def set_branches(model: nn.Module, progress: float, schedule: dict[str, float]) -> None:
    """Stage-wise training: a branch named in ``schedule`` is on once training ``progress`` (0 … 1)
    reaches its value (e.g. ``{"sentence_wave": 0.33, "segment_wave": 0.66}``: token level first,
    then sentences, then paragraphs); branches not named stay on. Off branches are skipped."""
    for block in model.modules():
        if isinstance(block, Block) and block.branches is not None:
            block.branch_on = [progress >= schedule.get(name, 0.0) for name in block.branch_names]
