"""Optional ``torch.compile`` of the Wave layer's element-wise maths.

The Wave layer's cost outside its two matrix products is a chain of small element-wise ops (square,
sum over tokens, subtract, clamp, square root, the complex product, concatenation) in fp32; unfused,
each reads and writes the whole ``(B, S, 2D)`` tensor. ``torch.compile`` (Inductor, C++ codegen on
CPU) fuses them. Only :func:`~nami.models.wave.wave_mix` is compiled, so module structure, weight
names and checkpoints are unchanged.

When compilation is impossible here (no C++ compiler, an unsupported platform, a dynamo error) the
layer runs the eager function instead; this is never silent: a warning names the error and
``CompiledWaveMix.failure`` keeps it (``nami train`` logs it in ``metrics.jsonl``).

Only training steps (autograd on) use the compiled function. Evaluation and prediction (under
``torch.no_grad`` / ``inference_mode``) run the eager one: fused code rounds fp32 differently in the
last bits, enough to flip an occasional near-tie in n-best span decoding, and a run's recorded dev
scores must be exactly what ``nami predict`` (eager) reproduces from its weights.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from nami.models.wave import WaveLayer, wave_mix, wave_mix_recompute


class CompiledWaveMix:
    """Callable with :func:`wave_mix`'s signature: the compiled function, or eager after a failure."""

    def __init__(self, compiled: Callable[..., torch.Tensor] | None = None) -> None:
        self.compiled = compiled if compiled is not None else torch.compile(wave_mix, dynamic=True)
        self.failure: str | None = None

    def __call__(self, *args: object) -> torch.Tensor:
        if self.failure is None and torch.is_grad_enabled():  # training steps only (see the module docstring)
            try:
                return self.compiled(*args)
            except Exception as err:  # any compiler failure: reported below, then eager
                self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                warnings.warn(f"torch.compile of the Wave layer failed ({self.failure}); running it eagerly "
                              "(same maths, slower)", RuntimeWarning, stacklevel=2)
        return wave_mix(*args)


def compile_wave_layers(model: nn.Module, compiled: Callable[..., torch.Tensor] | None = None) -> CompiledWaveMix:
    """Give every :class:`WaveLayer` of ``model`` one shared :class:`CompiledWaveMix`; returns it."""
    mix = CompiledWaveMix(compiled)
    layers = [m for m in model.modules() if isinstance(m, WaveLayer)]
    if not layers:
        raise ValueError("compile_wave_layers: the model has no Wave layers (is it a Transformer?)")
    for layer in layers:
        layer.mix = mix
    return mix


def recompute_wave_layers(model: nn.Module) -> int:
    """Give every :class:`WaveLayer` the memory-light backward (the default of a new layer): in
    training steps the wave maths, the LayerNorm and the output projection run as one autograd node that
    keeps ``w`` in its autocast dtype and ``G²`` and recomputes the rest
    (:func:`~nami.models.wave.wave_mixer_recompute`; with RoPE, whose rotation sits between them,
    the maths alone: :func:`~nami.models.wave.wave_mix_recompute`). Same forward values; returns how
    many layers use it."""
    layers = [m for m in model.modules() if isinstance(m, WaveLayer)]
    if not layers:
        raise ValueError("recompute_wave_layers: the model has no Wave layers")
    for layer in layers:
        layer.mix = wave_mix_recompute
    return len(layers)


def autograd_wave_layers(model: nn.Module) -> int:
    """Make every :class:`WaveLayer` of ``model`` backpropagate by autograd through the plain maths
    (:func:`~nami.models.wave.wave_mix`): the reference the hand-written backward is tested
    against, and ``wave_recompute=false``. Same forward values, several more fp32 ``(B, S, 2D)``
    tensors kept per layer for backward. Returns how many layers changed."""
    layers = [m for m in model.modules() if isinstance(m, WaveLayer)]
    for layer in layers:
        layer.mix = wave_mix
    return len(layers)
