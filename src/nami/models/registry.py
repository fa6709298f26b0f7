"""The one list of token mixers and architectures.

A *mixer* is the token-mixing sublayer of a :class:`~nami.models.block.Block`: a module built as
``cls(config)`` whose ``forward(x (B, S, D), inputs: MixerInputs) -> (B, S, D)`` lets tokens see each
other (the Wave layer's global norm, attention, ...). An *architecture* is a name a user picks
(``--arch``): the mixer used by every layer unless ``ModelConfig.mixers`` names one per layer.

Adding a mixer is one file plus one line::

    @register_mixer("my_mixer")            # also an architecture named "my_mixer"
    class MyMixer(nn.Module):
        def __init__(self, config): ...
        def forward(self, x, inputs): ...

Everything that lists architectures (config validation, ``nami compare``, benchmarks, the tests'
parametrisation) reads :data:`ARCHITECTURES` / :data:`MIXERS` from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:  # this module is imported by configuration code that must not need torch
    import torch
    from torch import nn


@runtime_checkable
class Mixer(Protocol):
    """The contract of a token mixer (checked for every registered mixer by ``tests/test_mixers.py``).

    * ``__init__(config: ModelConfig)`` — its options are fields of the config;
    * ``forward(x (B, S, D), inputs: MixerInputs) -> (B, S, D)`` — padding (``inputs.padding_mask``
      False) never changes a real token's output, and rows of a batch never see each other;
    * ``supports_causal`` (class attribute, default False) — it can run in a decoder: then it reads
      ``config.causal``, sees only earlier tokens, and keeps its decoding state in
      ``inputs.cache`` under its ``layer_index`` (set by the Encoder);
    * optional ``step(x (B, D), mask (B,), positions (B,), cache) -> (B, D)`` — one decoding step, equal
      to ``forward`` on ``(B, 1)`` inputs with the same cache.
    """

    def forward(self, x: "torch.Tensor", inputs: Any) -> "torch.Tensor": ...

MIXERS: dict[str, type[nn.Module]] = {}
ARCHITECTURES: dict[str, str] = {}  # architecture name -> the mixer of every layer
# The built-in mixer modules (load_builtin_mixers). Whatever module is imported first, the registry
# keeps them in this order (the order of ARCHITECTURES: the seed's Wave first, then its baseline).
BUILTIN_MIXER_MODULES = ("wave", "attention", "local", "fourier", "cross", "hierarchy", "slots")
_BUILTIN_ORDER = ("wave", "attention", "conv", "local_attention", "fft_gate", "cross_wave", "question_attention",
                  "sentence_wave", "segment_wave", "slot_wave", "window_wave")


def _reorder() -> None:
    """Built-in mixers first in their fixed order, then others in registration order."""
    rank = {name: i for i, name in enumerate(_BUILTIN_ORDER)}
    for table, key in ((MIXERS, lambda item: item[0]), (ARCHITECTURES, lambda item: item[1])):
        items = sorted(table.items(), key=lambda item: rank.get(key(item), len(rank)))
        table.clear()
        table.update(items)


def register_mixer(name: str, cls: type[nn.Module] | None = None, *, arch: str | None = None,
                   as_architecture: bool = True) -> Callable[[type[nn.Module]], type[nn.Module]] | type[nn.Module]:
    """Register ``cls`` as mixer ``name`` and as architecture ``arch`` (default: ``name``).

    Usable as a decorator (``@register_mixer("wave")``) or a call (``register_mixer("toy", Toy)``).
    ``as_architecture=False`` registers a mixer that is only used inside other models (a parallel
    branch, ``ModelConfig.branches``, or one layer of a hybrid, ``ModelConfig.mixers``).
    Names already taken are refused: shadowing a mixer would silently change saved models.
    """

    def add(mixer_cls: type[nn.Module]) -> type[nn.Module]:
        arch_name = arch or name
        if name in MIXERS and MIXERS[name] is not mixer_cls:
            raise ValueError(f"mixer {name!r} is already registered by {MIXERS[name].__module__}."
                             f"{MIXERS[name].__qualname__}; {mixer_cls.__module__}.{mixer_cls.__qualname__} "
                             "cannot take its name")
        if as_architecture and arch_name in ARCHITECTURES and ARCHITECTURES[arch_name] != name:
            raise ValueError(f"architecture {arch_name!r} is already registered (mixer {ARCHITECTURES[arch_name]!r})")
        MIXERS[name] = mixer_cls
        if as_architecture:
            ARCHITECTURES[arch_name] = name
        _reorder()
        return mixer_cls

    return add(cls) if cls is not None else add


def unregister_mixer(name: str) -> None:
    """Remove mixer ``name`` and the architectures that use it (tests, notebooks)."""
    MIXERS.pop(name, None)
    for arch in [a for a, m in ARCHITECTURES.items() if m == name]:
        del ARCHITECTURES[arch]


def mixer_class(name: str) -> type[nn.Module]:
    load_builtin_mixers()
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}: expected one of {', '.join(MIXERS)}")
    return MIXERS[name]



def load_builtin_mixers() -> None:
    """Import (and so register) the built-in mixer modules; cheap after the first call.

    Called by whatever reads the registry (``ModelConfig.validate``, :func:`mixer_class`, the
    package's ``ARCHITECTURES`` / ``MIXERS``), not when this module is imported: the mixer modules
    import ``register_mixer`` from here, and configuration code must not need torch.
    """
    for module in BUILTIN_MIXER_MODULES:
        importlib.import_module(f"nami.models.{module}")
