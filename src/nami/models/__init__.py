"""Models: one residual :class:`Block` around any registered mixer, encoders built from a typed
:class:`ModelConfig`, and the task heads (extractive QA, masked LM) with ``save_pretrained`` /
``from_pretrained``.

Importing this package registers the built-in mixers (``wave``, ``attention``).
"""

# isort: off
# Registration order is the order of ARCHITECTURES: the seed's Wave first, then its baseline.
from nami.models import wave as _wave  # noqa: F401  (registers the "wave" mixer)
from nami.models import attention as _attention  # noqa: F401  (registers "attention" / arch "transformer")
from nami.models import local as _local  # noqa: F401  (branch / hybrid mixers "conv", "local_attention")
from nami.models import fourier as _fourier  # noqa: F401  ("fft_gate")
from nami.models import cross as _cross  # noqa: F401  ("cross_wave", "question_attention")
from nami.models import hierarchy as _hierarchy  # noqa: F401  ("sentence_wave", "segment_wave")
# isort: on
from nami.models.block import Block, Encoder, build_encoder
from nami.models.config import PRESETS, WAVE_MODES, ModelConfig, preset_config
from nami.models.clm import CausalLMModel
from nami.models.generation import beam_search, generate, sample_next
from nami.models.inputs import DecodingCache, MixerInputs
from nami.models.mlm import MaskedLMModel
from nami.models.qa import QAModel, SpanHead, SpanLogits, count_parameters
from nami.models.attention import SelfAttention
from nami.models.registry import ARCHITECTURES, MIXERS, register_mixer, unregister_mixer
from nami.models.wave import WaveLayer, to_complex, wave_mix

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
