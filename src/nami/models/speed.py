"""Optional ``torch.compile`` of the Wave blocks' training steps (``compile_wave``).

The Wave layer's cost outside its two matrix products is a chain of small element-wise ops (square,
sum over tokens, subtract, clamp, square root, the complex product) in fp32, then a LayerNorm and,
under bf16 autocast, dtype conversions; unfused, each reads and writes the whole ``(B, S, 2D)``
tensor, and the block around it adds more such passes (two LayerNorms, the residual adds, GELU and
its backward, the bias copies and bias gradients of four linear layers). In training steps a plain
Wave :class:`~nami.models.block.Block` (no RoPE, no parallel branches) runs as one graph,
:func:`wave_block` (:meth:`CompiledWaveMix.block`), that ``torch.compile`` (Inductor, C++ codegen on
CPU) fuses around the matrix products (AOTAutograd's activation memory budget
:data:`BLOCK_MEMORY_BUDGET` trades its speed against what it keeps for backward: by default the
fastest, which keeps more than the eager block with its memory-light Wave node; set 0.5 for a third
less than that, at a slower fp32 step). Other Wave layers compile
less: a layer in a block with branches runs :meth:`CompiledWaveMix.tail` (maths, LayerNorm and
output projection, what the eager :func:`~nami.models.wave.wave_mixer_recompute` node computes); a
layer with RoPE, whose rotation sits between the maths and the LayerNorm, the maths alone
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
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nami.models.wave import WaveLayer, causal_wave_mix, wave_mix, wave_mix_recompute, wave_mixer_recompute

# AOTAutograd's activation memory budget (torch._functorch.config) of each compiled graph: the
# fraction of what autograd would keep for backward that the partitioner may keep, recomputing the
# rest (element-wise work, never the matrix products). The tail at 0.5 keeps w (and small statistics)
# and recomputes the maths, the LayerNorm and the projection's input: about the eager node's saving
# (at 1.0 it keeps several (B, S, 2D) tensors). The whole block at 1.0 (the partitioner's default):
# the fastest measured (results/compile_budget-{fp32,bf16}.md); it keeps more than the eager block
# with its memory-light node (less than autograd through the plain maths). At 0.5 it keeps the least
# of all (a third less than the eager block) for a slower fp32 step. tests/test_wave_speed.py checks
# the bytes of both graphs.
TAIL_MEMORY_BUDGET = 0.5
BLOCK_MEMORY_BUDGET = 1.0


def wave_tail(w: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool, norm_weight: torch.Tensor,
              norm_bias: torch.Tensor, norm_eps: float, out_weight: torch.Tensor,
              out_bias: torch.Tensor | None) -> torch.Tensor:
    """``out(norm(maths(w)))`` in plain operations, what :meth:`CompiledWaveMix.tail` compiles: ``w
    (B, S, 2D)`` in any float dtype (the maths in >= fp32, as :class:`WaveLayer` runs it), ``mask
    (B, S, 1)`` → ``(B, S, D)``; causal: prefix norms from the start (:func:`causal_wave_mix`)."""
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    mixed = causal_wave_mix(w, mask, eps, mode)[0] if causal else wave_mix(w, mask, eps, mode)
    return F.linear(F.layer_norm(mixed, (mixed.shape[-1],), norm_weight, norm_bias, norm_eps), out_weight, out_bias)


def wave_block(x: torch.Tensor, mask: torch.Tensor, eps: float, mode: str, causal: bool, norm_eps: tuple[float, ...],
               dropout: tuple[float, float] | None, gelu: str, weights: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """One plain Wave :class:`~nami.models.block.Block` in plain operations, what
    :meth:`CompiledWaveMix.block` compiles: ``x (B, S, D)``, ``mask (B, S, 1)`` → ``(B, S, D)``::

        x = x + Dropout(out(LN(maths(to_waves(LN1(x))))))
        x + Dropout(down(GELU(up(LN2(x)))))

    ``norm_eps``: the three LayerNorms' eps (norm1, the Wave layer's, norm2); ``dropout``: the block's
    and the feed-forward's p, or None (eval mode, or p = 0: no dropout op at all; a None test, not a
    ``p > 0`` one, because ``torch.compile(dynamic=True)`` traces floats symbolically and a symbolic
    condition breaks the graph); ``weights``: :func:`block_weights`."""
    n1w, n1b, in_w, in_b, nw, nb, out_w, out_b, n2w, n2b, up_w, up_b, down_w, down_b = weights
    h = F.layer_norm(x, (x.shape[-1],), n1w, n1b, norm_eps[0])
    mixed = wave_tail(F.linear(h, in_w, in_b), mask, eps, mode, causal, nw, nb, norm_eps[1], out_w, out_b)
    x = x + (mixed if dropout is None else F.dropout(mixed, dropout[0], True))
    h = F.layer_norm(x, (x.shape[-1],), n2w, n2b, norm_eps[2])
    h = F.linear(F.gelu(F.linear(h, up_w, up_b), approximate=gelu), down_w, down_b)
    return x + (h if dropout is None else F.dropout(h, dropout[1], True))


def block_weights(block: nn.Module) -> tuple[torch.Tensor | None, ...]:
    """The tensors :func:`wave_block` takes, in its order, from a Wave ``Block``."""
    layer, ffn = block.mixer, block.ffn
    return (block.norm1.weight, block.norm1.bias, layer.to_waves.weight, layer.to_waves.bias, layer.norm.weight,
            layer.norm.bias, layer.out.weight, layer.out.bias, block.norm2.weight, block.norm2.bias,
            ffn.up.weight, ffn.up.bias, ffn.down.weight, ffn.down.bias)


def fuses_whole(block: nn.Module) -> bool:
    """Whether :func:`wave_block` computes ``block``: a Wave mixer without RoPE, no parallel branches."""
    layer = getattr(block, "mixer", None)
    return isinstance(layer, WaveLayer) and layer.rope is None and getattr(block, "branches", None) is None


def _memory_budget(budget: float):
    config = getattr(torch, "_functorch", None) and getattr(torch._functorch, "config", None)
    if config is None or not hasattr(config, "activation_memory_budget"):  # older torch: its default partitioner
        return contextlib.nullcontext()
    return config.patch(activation_memory_budget=budget)


class CompiledWaveMix:
    """Callable with :func:`wave_mix`'s signature (RoPE layers: the maths alone), :meth:`tail` (layers
    in blocks with branches: maths, LayerNorm and output projection) and :meth:`block` (plain Wave
    blocks, whole): the compiled functions, or eager after a failure. ``compiled`` /
    ``compiled_tail`` / ``compiled_block``: stand-ins for the compiled functions (tests)."""

    def __init__(self, compiled: Callable[..., torch.Tensor] | None = None,
                 compiled_tail: Callable[..., torch.Tensor] | None = None,
                 compiled_block: Callable[..., torch.Tensor] | None = None) -> None:
        self.compiled = compiled if compiled is not None else torch.compile(wave_mix, dynamic=True)
        self.compiled_tail = compiled_tail if compiled_tail is not None else torch.compile(wave_tail, dynamic=True)
        self.compiled_block = compiled_block if compiled_block is not None \
            else torch.compile(wave_block, dynamic=True)
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
                with _memory_budget(TAIL_MEMORY_BUDGET):
                    return self.compiled_tail(w, mask, eps, mode, causal, norm.weight, norm.bias, norm.eps,
                                              out.weight, out.bias)
            except Exception as err:  # any compiler failure: reported below, then eager
                self._failed(err)
        return wave_mixer_recompute(w, mask, eps, mode, norm, out, causal)

    def block(self, block: nn.Module, x: torch.Tensor, inputs) -> torch.Tensor:
        """A training step of a plain Wave ``block`` (:func:`fuses_whole`) as one compiled graph
        (:func:`wave_block`): ``x (B, S, D)`` → ``(B, S, D)``; after a failure the block's eager
        modules (whose Wave layer then runs the eager node)."""
        if self.failure is None:
            layer = block.mixer
            mask = inputs.padding_mask.to(torch.promote_types(x.dtype, torch.float32)).unsqueeze(-1)
            dropout = (block.dropout.p, block.ffn.dropout.p)
            dropout = dropout if block.training and any(dropout) else None
            norm_eps = (block.norm1.eps, layer.norm.eps, block.norm2.eps)
            try:
                with _memory_budget(BLOCK_MEMORY_BUDGET):
                    return self.compiled_block(x, mask, layer.eps, layer.mode, layer.causal, norm_eps, dropout,
                                               block.ffn.act.approximate, block_weights(block))
            except Exception as err:  # any compiler failure: reported below, then eager
                self._failed(err)
        return block.eager_forward(x, inputs)

    def _failed(self, err: Exception) -> None:
        self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        warnings.warn(f"torch.compile of the Wave layer failed ({self.failure}); running it eagerly "
                      "(same maths, slower)", RuntimeWarning, stacklevel=3)


def compile_wave_layers(model: nn.Module, compiled: Callable[..., torch.Tensor] | None = None,
                        compiled_tail: Callable[..., torch.Tensor] | None = None,
                        compiled_block: Callable[..., torch.Tensor] | None = None) -> CompiledWaveMix:
    """Give every :class:`WaveLayer` of ``model`` one shared :class:`CompiledWaveMix`, and every plain
    Wave block (:func:`fuses_whole`) its :meth:`~CompiledWaveMix.block` as ``compiled_step``; returns it."""
    mix = CompiledWaveMix(compiled, compiled_tail, compiled_block)
    layers = [m for m in model.modules() if isinstance(m, WaveLayer)]
    if not layers:
        raise ValueError("compile_wave_layers: the model has no Wave layers (is it a Transformer?)")
    for layer in layers:
        layer.mix = mix
    for module in model.modules():
        if hasattr(module, "compiled_step") and fuses_whole(module):
            module.compiled_step = mix.block
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
