"""Encoders (Wave, Transformer) built from one :class:`ModelConfig`, and the QA span model."""

from nami.models.config import ARCHITECTURES, PRESETS, WAVE_MODES, ModelConfig, preset_config
from nami.models.qa import QAModel, SpanHead, SpanLogits, build_encoder, count_parameters
from nami.models.transformer import TransformerEncoder
from nami.models.wave import WaveEncoder, WaveLayer, to_complex

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "WAVE_MODES",
    "ModelConfig",
    "preset_config",
    "QAModel",
    "SpanHead",
    "SpanLogits",
    "build_encoder",
    "count_parameters",
    "TransformerEncoder",
    "WaveEncoder",
    "WaveLayer",
    "to_complex",
]
