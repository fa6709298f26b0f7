"""Models: one residual :class:`Block` around any registered mixer, encoders built from a typed
:class:`ModelConfig`, and the task heads (extractive QA, masked LM) with ``save_pretrained`` /
``from_pretrained``.

The public names are imported lazily (module ``__getattr__``, as in ``nami/__init__``): the
configuration code (``nami.models.config``) and the command line's ``--help`` never import torch.
The built-in mixers are registered on first use of the registry (``load_builtin_mixers``).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it (imported on first use: importing a submodule such as
# nami.models.config, or this package, does not import torch)
_EXPORTS = {
    "Block": "nami.models.block",
    "Encoder": "nami.models.block",
    "build_encoder": "nami.models.block",
    "PRESETS": "nami.models.config",
    "WAVE_MODES": "nami.models.config",
    "ModelConfig": "nami.models.config",
    "preset_config": "nami.models.config",
    "CausalLMModel": "nami.models.clm",
    "beam_search": "nami.models.generation",
    "generate": "nami.models.generation",
    "sample_next": "nami.models.generation",
    "DecodingCache": "nami.models.inputs",
    "MixerInputs": "nami.models.inputs",
    "MaskedLMModel": "nami.models.mlm",
    "QAModel": "nami.models.qa",
    "SpanHead": "nami.models.qa",
    "SpanLogits": "nami.models.qa",
    "count_parameters": "nami.models.qa",
    "SelfAttention": "nami.models.attention",
    "ARCHITECTURES": "nami.models.registry",
    "MIXERS": "nami.models.registry",
    "register_mixer": "nami.models.registry",
    "unregister_mixer": "nami.models.registry",
    "WaveLayer": "nami.models.wave",
    "to_complex": "nami.models.wave",
    "wave_mix": "nami.models.wave",
}

__all__ = [
    "ARCHITECTURES",
    "MIXERS",
    "PRESETS",
    "WAVE_MODES",
    "Block",
    "CausalLMModel",
    "DecodingCache",
    "Encoder",
    "MaskedLMModel",
    "MixerInputs",
    "ModelConfig",
    "QAModel",
    "SelfAttention",
    "SpanHead",
    "SpanLogits",
    "WaveLayer",
    "beam_search",
    "build_encoder",
    "count_parameters",
    "generate",
    "sample_next",
    "preset_config",
    "register_mixer",
    "to_complex",
    "unregister_mixer",
    "wave_mix",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        if name in ("ARCHITECTURES", "MIXERS"):
            module.load_builtin_mixers()  # the registry as users expect it: built-in mixers included
        value = getattr(module, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'nami.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
