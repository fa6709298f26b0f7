"""Typed model configuration shared by every encoder, with named size presets.

One dataclass describes every architecture so that a Wave model and a Transformer built from the
same preset have the same width, depth and feed-forward size (and, by construction, parameter
counts within a few percent: a Wave layer has 4·D² projection weights, attention has 4·D²).
``ModelConfig.from_name("small", arch="transformer")`` is the litgpt-style way in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

WaveMode = Literal["interference", "modulation"]
WAVE_MODES: tuple[str, ...] = ("interference", "modulation")

# The largest sizes a config may name: far beyond any model nami trains, and small enough that a hostile
# config.json (an untrusted run directory) cannot make nami build per-layer lists or meta tensors whose
# sizes overflow before the weights are compared (tests/test_hostile_runs.py).
SIZE_LIMITS = {"vocab_size": 2**24, "max_len": 2**24, "d_model": 2**16, "n_layers": 2**12, "d_ff": 2**20,
               "n_heads": 2**12}

# Size presets: (d_model, n_layers, d_ff, n_heads). Every architecture takes the same preset.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, n_layers=2, d_ff=128, n_heads=2),
    "small": dict(d_model=256, n_layers=4, d_ff=1024, n_heads=4),
    "base": dict(d_model=512, n_layers=8, d_ff=2048, n_heads=8),
}
POSITION_EMBEDDINGS: tuple[str, ...] = ("learned", "none")
# Fields that training fills from the tokenizer and the task (not chosen by the user).
DATA_FIELDS: tuple[str, ...] = ("vocab_size", "max_len", "pad_id", "type_vocab_size", "sentence_boundary_ids")
HIERARCHY_MIXERS: tuple[str, ...] = ("sentence_wave", "segment_wave")


@dataclass
class ModelConfig:
    """Hyper-parameters of an encoder + task head.

    Attributes:
        arch: an architecture of :data:`~nami.models.registry.ARCHITECTURES` (``"wave"``,
            ``"transformer"``, or a registered one): the mixer of every layer. On the command line
            also a model variant of the table (``wave+conv``, ``wave_plus``, ``conv-only``,
            ``transformer+rope``, ...: ``nami ablate --help`` lists them), which sets its options.
        vocab_size: number of token ids (specials included).
        max_len: longest sequence the learned position table covers.
        d_model: hidden width D.
        n_layers: number of blocks.
        d_ff: feed-forward inner width.
        n_heads: attention heads (Transformer only).
        wave_mode: how the two complex waves combine (Wave only): ``interference`` adds them,
            ``modulation`` multiplies them.
        dropout: dropout probability on embeddings and residual branches. Defaults to 0: on CPU the
            random-number generation costs about a third of a training step (measured on the 2-core
            hosts nami is developed on).
        attention_dropout: dropout on the attention probabilities (Transformer only); ``None``
            means the same as ``dropout``. On CPU it is the expensive part: with it,
            ``scaled_dot_product_attention`` draws one random number per (head, query, key), so a
            small-preset step at (32, 256) takes ~1.8x the no-dropout time vs ~1.2x without it.
        norm_eps: LayerNorm epsilon.
        wave_eps: added under the square roots of the Wave layer so gradients stay finite.
        pad_id: id of the padding token (its embedding is kept at zero).
        type_vocab_size: number of segment (token type) embeddings added to the input, BERT's
            question / context distinction; 0 = none. The same for both architectures.
        mixers: one mixer name per layer (a hybrid stack, e.g. ``["wave", "wave", "attention",
            "wave"]``), or one name for every layer (``"conv"``); ``None`` = the architecture's mixer
            in every layer.
        branches: mixers added in parallel to every layer's mixer (``x + mixer(h) + Σ branch(h)``
            with ``h = LN(x)``), e.g. ``["conv"]``: local, frequency-domain or cross-segment mixing
            next to the Wave layer's global norm. ``None`` = none (the plain block).
        position_embedding: ``"learned"`` absolute position table, or ``"none"`` (positions, if
            any, come from the mixers: ``wave_rope``).
        wave_rope: rotate every Wave layer's combined wave by a position angle (RoPE as phase
            rotation, :func:`nami.models.wave.rotate_waves`); ``rope_base`` / ``rope_scale`` set the
            angles ``θ_{j,k} = j · rope_scale · rope_base^(−k/D)``.
        attention_rope: rotary position embedding (RoPE, Su et al. 2021) on every attention layer's
            queries and keys (``attention`` and ``local_attention`` mixers), so attention scores
            depend on positions only through their difference; the same angles as ``wave_rope``
            (``rope_base`` / ``rope_scale``), over each head's ``D/H/2`` dimension pairs. Adds no weights.
        conv_kernel: width of the depthwise convolution mixer ``conv`` (odd).
        local_window: tokens each side a ``local_attention`` query sees (window ``2W + 1``).
        proxy_tokens: K learned tokens prepended inside the encoder: they take part in every layer's
            mixing (carrying global state) and are stripped before any head.
        sentence_boundary_ids: token ids that end a sentence (``。``, ``!``, ``?`` pieces), filled
            from the tokenizer by training when a hierarchical mixer is used.
        exit_layers: extractive QA: blocks (0-based, before the last) that get an early-exit span head
            of their own (LayerNorm + Linear(D, 2)); trained on the answers and, with
            ``TrainConfig.self_distill``, taught by the last layer's span distribution
            (self-distillation, seed plan 6). ``None`` = none; decoding always uses the last layer.
        causal: a decoder: every token sees only itself and earlier tokens (Wave: prefix norms;
            attention: a causal mask), with a streaming ``DecodingCache``. Mixers that cannot be
            causal are refused.
        name: the size preset this config came from (``from_name``), ``None`` for a custom one.
            Informational: it names run directories and never changes the maths.
    """

    arch: str = "wave"
    vocab_size: int = 32000
    max_len: int = 512
    d_model: int = 256
    n_layers: int = 4
    d_ff: int = 1024
    n_heads: int = 4
    wave_mode: WaveMode = "modulation"
    dropout: float = 0.0
    attention_dropout: float | None = None
    norm_eps: float = 1e-5
    wave_eps: float = 1e-6
    pad_id: int = 0
    type_vocab_size: int = 0
    mixers: list[str] | None = None
    branches: list[str] | None = None
    position_embedding: str = "learned"
    wave_rope: bool = False
    attention_rope: bool = False
    rope_base: float = 10000.0
    rope_scale: float = 1.0
    conv_kernel: int = 9
    local_window: int = 32
    proxy_tokens: int = 0
    sentence_boundary_ids: list[int] | None = None
    exit_layers: list[int] | None = None
    causal: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        from nami.models.registry import ARCHITECTURES, MIXERS, load_builtin_mixers

        load_builtin_mixers()  # imports torch: validation is where a config meets the models
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"model option arch={self.arch!r}: expected one of {', '.join(ARCHITECTURES)}")
        for name, most in SIZE_LIMITS.items():  # first: a per-layer list of 1e9 entries is itself a memory bomb
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ValueError(f"model option {name}={value!r}: expected a positive integer <= {most:,}")
        if isinstance(self.mixers, str):  # one mixer name: every layer (a variant that fits any depth)
            self.mixers = [self.mixers] * self.n_layers if isinstance(self.n_layers, int) else self.mixers
        if self.mixers is not None:
            if not isinstance(self.mixers, (list, tuple)) or len(self.mixers) != self.n_layers:
                raise ValueError(f"model option mixers={self.mixers!r}: expected a list of n_layers={self.n_layers} "
                                 "mixer names (or null)")
            self.mixers = list(self.mixers)
            for mixer in self.mixers:
                if mixer not in MIXERS:
                    raise ValueError(f"model option mixers: unknown mixer {mixer!r} (expected one of "
                                     f"{', '.join(MIXERS)})")
        if self.wave_mode not in WAVE_MODES:
            raise ValueError(f"model option wave_mode={self.wave_mode!r}: expected one of {WAVE_MODES}")
        if self.branches is not None:
            if not isinstance(self.branches, (list, tuple)):
                raise ValueError(f"model option branches={self.branches!r}: expected a list of mixer names (or null)")
            self.branches = list(self.branches)
            for branch in self.branches:
                if branch not in MIXERS:
                    raise ValueError(f"model option branches: unknown mixer {branch!r} (expected one of "
                                     f"{', '.join(MIXERS)})")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"model option position_embedding={self.position_embedding!r}: expected one of "
                             f"{', '.join(POSITION_EMBEDDINGS)}")
        for flag in ("wave_rope", "attention_rope"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"model option {flag}={getattr(self, flag)!r}: expected true or false")
        if not _number_in(self.rope_base, 1.0, math.inf, low_open=True):
            raise ValueError(f"model option rope_base={self.rope_base!r}: expected a number > 1")
        if not _number_in(self.rope_scale, 0.0, math.inf, low_open=True):
            raise ValueError(f"model option rope_scale={self.rope_scale!r}: expected a number > 0")
        if isinstance(self.conv_kernel, bool) or not isinstance(self.conv_kernel, int) or self.conv_kernel < 1 \
                or self.conv_kernel % 2 == 0:
            raise ValueError(f"model option conv_kernel={self.conv_kernel!r}: expected an odd positive integer")
        if isinstance(self.local_window, bool) or not isinstance(self.local_window, int) or self.local_window < 1:
            raise ValueError(f"model option local_window={self.local_window!r}: expected a positive integer")
        uses = set(self.layer_mixers()) | set(self.branches or ())
        if self.exit_layers is not None:
            layers = self.exit_layers
            if (not isinstance(layers, (list, tuple)) or not layers
                    or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layers - 1
                           for i in layers) or len(set(layers)) != len(layers)):
                raise ValueError(f"model option exit_layers={layers!r}: expected distinct block indices 0 <= i < "
                                 f"n_layers - 1 = {self.n_layers - 1} (the last block has the main head)")
            self.exit_layers = sorted(layers)
        if isinstance(self.proxy_tokens, bool) or not isinstance(self.proxy_tokens, int) or self.proxy_tokens < 0:
            raise ValueError(f"model option proxy_tokens={self.proxy_tokens!r}: expected an integer >= 0")
        if self.causal and self.proxy_tokens:
            raise ValueError("model option proxy_tokens: not supported by a causal decoder (set proxy_tokens=0)")
        if not isinstance(self.causal, bool):
            raise ValueError(f"model option causal={self.causal!r}: expected true or false")
        if self.causal:
            cannot = sorted(m for m in uses if not getattr(MIXERS[m], "supports_causal", False))
            if cannot:
                raise ValueError(f"model option causal=true: mixer(s) {', '.join(cannot)} cannot run causally "
                                 "(a causal decoder takes wave and attention layers)")
        if uses & {"attention", "local_attention"} and self.d_model % self.n_heads:
            raise ValueError(f"model option d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.attention_rope and uses & {"attention", "local_attention"} and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"model option attention_rope=true: the head width d_model/n_heads = "
                             f"{self.d_model // self.n_heads} must be even (RoPE rotates dimension pairs)")
        if not _number_in(self.dropout, 0.0, 1.0):
            raise ValueError(f"model option dropout={self.dropout!r}: expected a number 0 <= dropout < 1")
        if self.attention_dropout is not None and not _number_in(self.attention_dropout, 0.0, 1.0):
            raise ValueError(f"model option attention_dropout={self.attention_dropout!r}: expected a number "
                             "0 <= value < 1 (or null = same as dropout)")
        if isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int) or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"model option pad_id={self.pad_id} outside the vocabulary (size {self.vocab_size})")
        value = self.type_vocab_size
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"model option type_vocab_size={self.type_vocab_size!r}: expected an integer >= 0")
        for name in ("norm_eps", "wave_eps"):
            if not _number_in(getattr(self, name), 0.0, 1.0, low_open=True):
                raise ValueError(f"model option {name}={getattr(self, name)!r}: expected a number 0 < value < 1")

    def uses_hierarchy(self) -> bool:
        """Whether a sentence/segment-level mixer needs group ids."""
        return bool((set(self.layer_mixers()) | set(self.branches or ())) & set(HIERARCHY_MIXERS))

    def layer_mixers(self) -> list[str]:
        """The mixer name of each layer."""
        from nami.models.registry import ARCHITECTURES, load_builtin_mixers

        load_builtin_mixers()
        return list(self.mixers) if self.mixers is not None else [ARCHITECTURES.get(self.arch, self.arch)] * self.n_layers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_name(cls, name: str, arch: str = "wave", **overrides: Any) -> "ModelConfig":
        """The config of size preset ``name`` (:data:`PRESETS`) for ``arch``, with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}: expected one of {', '.join(PRESETS)}")
        return cls(**{"arch": arch, **PRESETS[name], "name": name, **overrides})

    @property
    def attention_dropout_p(self) -> float:
        """The dropout probability on attention weights (``attention_dropout``, else ``dropout``)."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)


def preset_config(name: str, arch: str, **overrides: Any) -> ModelConfig:
    """``ModelConfig.from_name(name, arch, **overrides)`` (the name older scripts use)."""
    return ModelConfig.from_name(name, arch, **overrides)


def _number_in(value: Any, low: float, high: float, *, low_open: bool = False) -> bool:
    """A finite int/float (not a bool) with ``low <= value < high`` (``low < value`` if ``low_open``)."""
    from nami.checks import in_range

    return in_range(value, low, high, low_open=low_open, high_open=True)
