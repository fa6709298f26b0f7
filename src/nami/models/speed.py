"""Optional ``torch.compile`` of the Wave layer after its first matrix product (``compile_wave``).

The Wave layer's cost outside its two matrix products is a chain of small element-wise ops (square,
sum over tokens, subtract, clamp, square root, the complex product) in fp32, then a LayerNorm and,
under bf16 autocast, dtype conversions; unfused, each reads and writes the whole ``(B, S, 2D)``
tensor. In training steps :meth:`CompiledWaveMix.tail` runs ``out(norm(maths(w)))`` — what the
eager :func:`~nami.models.wave.wave_mixer_recompute` node computes — as one graph that
``torch.compile`` (Inductor, C++ codegen on CPU) fuses, with AOTAutograd's activation memory
budget (:data:`ACTIVATION_MEMORY_BUDGET`) set so that, like the eager node, it keeps only ``w`` for
backward and recomputes the rest (measured with saved-tensor hooks: the same bytes). A layer with
RoPE, whose rotation sits between the maths and the LayerNorm, compiles the maths alone
(:func:`~nami.models.wave.wave_mix`). Module structure, weight names and checkpoints are unchanged.

When compilation is impossible here (no C++ compiler, an unsupported platform, a dynamo error) the
layer runs the eager functions instead; this is never silent: a warning names the error and
``CompiledWaveMix.failure`` keeps it (``nami train`` logs it in ``metrics.jsonl``).

Only training steps (autograd on) use the compiled functions. Evaluation and prediction (under
``torch.no_grad`` / ``inference_mode``) run the eager maths: fused code rounds fp32 differently in the
last bits, enough to flip an occasional near-tie in n-best span decoding, and a run's recorded dev
scores must be exactly what ``nami predict`` (eager) reproduces from its weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.wave import WaveLayer, causal_wave_mix, wave_mix, wave_mixer_recompute

# AOTAutograd's activation memory budget for the compiled tail (torch._functorch.config): the fraction
# of what autograd would keep for backward that the partitioner may keep, recomputing the rest. At
# 0.5 it keeps w (and small statistics) and recomputes the maths, the LayerNorm and the projection's
# input: about the eager node's saving (tests/test_wave_speed.py checks the bytes; at 1.0 it keeps
# several (B, S, 2D) tensors). Old vs new compile: results/compile_tail_{fp32,bf16}.md.
ACTIVATION_MEMORY_BUDGET = 0.5


def wave_tail(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool, norm_weight: torch.Tensor,
              norm_bias: torch.Tensor, norm_eps: float, out_weight: torch.Tensor,
              out_bias: torch.Tensor | None) -> torch.Tensor:
    """``out(norm(maths(w)))`` in plain operations, what :meth:`CompiledWaveMix.tail` compiles: ``w
    (B, S, 2D)`` in any float dtype (the maths in >= fp32, as :class:`WaveLayer` runs it), ``mask
    (B, S, 1)`` → ``(B, S, D)``; causal: prefix norms from the start (:func:`causal_wave_mix`)."""
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    mixed = causal_wave_mix(w, mask, eps, mode)[0] if causal else wave_mix(w, mask, eps, mode)
    return F.linear(F.layer_norm(mixed, (mixed.shape[-1],), norm_weight, norm_bias, norm_eps), out_weight, out_bias)


# torch logs a failed eager compile of the backward graph as a warning with the whole traceback and the
# C++ compiler's output (over a thousand lines when Ctrl-C reaches g++ mid-compile); the backward is
# compiled again when it first runs. One line is kept; NAMI_DEBUG=1 keeps everything.
COMPILE_LOGGERS = ("torch._functorch._aot_autograd.graph_compile",)


class OneLineCompileWarnings(logging.Filter):
    """Turns a log record's traceback into one line naming the error (NAMI_DEBUG: left whole)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and not os.environ.get("NAMI_DEBUG"):
            err = record.exc_info[1]
            first = next((line for line in str(err).strip().splitlines() if line.strip()), "")
            record.msg = f"{record.getMessage()} ({type(err).__name__}: {first[:200]}; NAMI_DEBUG=1 shows all)"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _quiet_compile_logs() -> None:
    for name in COMPILE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineCompileWarnings) for f in logger.filters):
            logger.addFilter(OneLineCompileWarnings())


def _memory_budget():
    config = getattr(torch, "_functorch", None) and getattr(torch._functorch, "config", None)
    if config is None or not hasattr(config, "activation_memory_budget"):  # older torch: its default partitioner
        return contextlib.nullcontext()
    return config.patch(activation_memory_budget=ACTIVATION_MEMORY_BUDGET)


class CompiledWaveMix:
    """Callable with :func:`wave_mix`'s signature (RoPE layers: the maths alone), and :meth:`tail`
    (other layers: maths, LayerNorm and output projection): the compiled functions, or eager after a
    failure. ``compiled`` / ``compiled_tail``: stand-ins for the compiled functions (tests)."""

    def __init__(self, compiled: Callable[..., torch.Tensor] | None = None,
                 compiled_tail: Callable[..., torch.Tensor] | None = None) -> None:
        _quiet_compile_logs()
        self.compiled = compiled if compiled is not None else torch.compile(wave_mix, dynamic=True)
        self.compiled_tail = compiled_tail if compiled_tail is not None else torch.compile(wave_tail, dynamic=True)
        self.failure: str | None = None

    def __call__(self, *args: object) -> torch.Tensor:
        if self.failure is None and torch.is_grad_enabled():  # training steps only (see the module docstring)
            try:
                return self.compiled(*args)
            except Exception as err:  # any compiler failure: reported below, then eager
                self._failed(err)
        return wave_mix(*args)

    def tail(self, w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool, norm: nn.LayerNorm,
             out: nn.Linear) -> torch.Tensor:
        """``out(norm(maths(w)))`` of a training step, compiled (:func:`wave_tail`); after a failure the
        eager node :func:`~nami.models.wave.wave_mixer_recompute` (the same values, the same saving)."""
        if self.failure is None:
            try:
                with _memory_budget():
                    return self.compiled_tail(w, mask, eps, mode, causal, norm.weight, norm.bias, norm.eps,
                                              out.weight, out.bias)
            except Exception as err:  # any compiler failure: reported below, then eager
                self._failed(err)
        return wave_mixer_recompute(w, mask, eps, mode, norm, out, causal)

    def _failed(self, err: Exception) -> None:
        self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        warnings.warn(f"torch.compile of the Wave layer failed ({self.failure}); running it eagerly "
                      "(same maths, slower)", RuntimeWarning, stacklevel=3)


def compile_wave_layers(model: nn.Module, compiled: Callable[..., torch.Tensor] | None = None,
                        compiled_tail: Callable[..., torch.Tensor] | None = None) -> CompiledWaveMix:
    """Give every :class:`WaveLayer` of ``model`` one shared :class:`CompiledWaveMix`; returns it."""
    mix = CompiledWaveMix(compiled, compiled_tail)
    layers = [m for m in model.modules() if isinstance(m, WaveLayer)]
    if not layers:
        raise ValueError("compile_wave_layers: the model has no Wave layers (is it a Transformer?)")
    for layer in layers:
        layer.set_backend("compiled", mix)
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
        layer.set_backend("recompute")
    return len(layers)


def autograd_wave_layers(model: nn.Module) -> int:
    """Make every :class:`WaveLayer` of ``model`` backpropagate by autograd through the plain maths
    (:func:`~nami.models.wave.wave_mix`): the reference the hand-written backward is tested
    against, and ``wave_recompute=false``. Same forward values, several more fp32 ``(B, S, 2D)``
    tensors kept per layer for backward. Returns how many layers changed."""
    layers = [m for m in model.modules() if isinstance(m, WaveLayer)]
    for layer in layers:
        layer.set_backend("autograd")
    return len(layers)
