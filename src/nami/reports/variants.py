"""The one table of model variants: every model ``nami compare --models`` and ``nami ablate --variants`` train.

A *variant* is an architecture plus the model / training options that make it (``wave+conv`` = the
``wave`` architecture with a depthwise-convolution branch in every block). Both commands read this
table, their ``--help`` is generated from it, and a new combination needs no code:

- ``--variant 'NAME=ARCH:key=value,key=value'`` on the command line (values are JSON where they
  parse as JSON: ``branches=["conv","cross_wave"]``, ``d_ff=1536``, ``question_match=false``), or
- ``--variant FILE.json`` holding ``{"NAME": {"arch": ..., "options": {...}}, ...}``.

An option ``STAGE.name`` applies to one stage of a preset only (``pretrain.lr=0.0005``: the
masked-LM learning rate of a recipe sweep, the QA one unchanged).

A suffix names the same setting on any variant: ``-noqm`` turns the question-match token type off
(``conv-only-noqm``, ``wave+conv-noqm``), so a model must relate question and context itself.

Every variant has a *family* read from its mixers (not from its name or ``arch``): ``wave`` (Wave
layers, no attention), ``transformer`` (attention, no Wave), ``hybrid`` (both: a model whose gain may
come from its attention layers is reported as a hybrid, not as Wave-family), ``conv`` (neither: local
or frequency-domain mixing only). Torch-free: the CLI builds its help without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The mixer of every layer of the built-in architectures (nami.models.registry.ARCHITECTURES without
# importing torch); other architectures are looked up in the registry.
_BUILTIN_ARCH_MIXERS = {"wave": "wave", "transformer": "attention"}
_WAVE_MIXERS = {"wave", "cross_wave", "sentence_wave", "segment_wave", "slot_wave", "window_wave"}
_ATTENTION_MIXERS = {"attention", "local_attention", "question_attention"}
FAMILIES = ("wave", "transformer", "hybrid", "conv")


@dataclass(frozen=True)
class Variant:
    """One model of the table: ``arch`` + ``options`` (model shortcuts and training options)."""

    name: str
    arch: str
    options: dict[str, Any] = field(default_factory=dict)
    about: str = ""

    def layer_mixers(self) -> list[str]:
        """The mixers of the layers (``options["mixers"]``: a list, or one name for every layer; or the
        architecture's mixer)."""
        mixers = self.options.get("mixers")
        return [mixers] if isinstance(mixers, str) else list(mixers or [arch_mixer(self.arch)])

    def mixers(self) -> set[str]:
        """Every mixer the model uses: layers and parallel branches."""
        return set(self.layer_mixers()) | set(self.options.get("branches") or ())

    @property
    def family(self) -> str:
        uses = self.mixers()
        wave, attention = bool(uses & _WAVE_MIXERS), bool(uses & _ATTENTION_MIXERS)
        return "hybrid" if wave and attention else "wave" if wave else "transformer" if attention else "conv"

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "options": dict(self.options), "family": self.family}


def arch_mixer(arch: str) -> str:
    """The mixer of every layer of architecture ``arch``."""
    if arch in _BUILTIN_ARCH_MIXERS:
        return _BUILTIN_ARCH_MIXERS[arch]
    from nami.models.registry import ARCHITECTURES, load_builtin_mixers

    load_builtin_mixers()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def _v(name: str, arch: str, about: str = "", **options: Any) -> Variant:
    return Variant(name, arch, options, about)


_HIERARCHY = ["sentence_wave", "segment_wave"]
# Width of the conv-only model's feed-forward layer: a conv mixer has D·k + D weights where a Wave
# layer has ~4·D² + 5·D, so at D = 256 (the small preset the comparisons use) the FFN grows 1024 →
# 1536 (2·D + 1 weights per unit) to keep the parameter count within 1 % of wave's (tested); at other
# widths the variant trains but is not size-matched (give d_ff = d_ff + 2·D there).
CONV_ONLY_D_FF = 1536
# A lever that brings its own weights pays for them with a narrower FFN, so that its row has the size of
# every other row (±1 %, at D = 256): the cross-wave branch (to_wave D→D, out 2D→D, a 2D LayerNorm:
# 3·D² + 6·D per block) leaves 1024 − 389 units.
XWAVE_D_FF = 635

VARIANTS: dict[str, Variant] = {v.name: v for v in [
    _v("wave", "wave", "the plain Wave Network (learned absolute positions)"),
    _v("transformer", "transformer", "pre-LN Transformer, learned absolute positions"),
    # The controls of the fair comparison: each row adds one named component.
    _v("transformer+rope", "transformer", "+ RoPE on queries and keys (relative positions)", attention_rope=True),
    _v("transformer+conv", "transformer", "+ a depthwise-conv branch in every block (QANet-style)",
       branches=["conv"]),
    _v("transformer+rope+conv", "transformer", "both", attention_rope=True, branches=["conv"]),
    _v("conv-only", "wave", "depthwise conv + FFN in every block, no Wave layer (FFN widened to equal size)",
       mixers="conv", d_ff=CONV_ONLY_D_FF),
    _v("wave+conv", "wave", "Wave + a depthwise-conv branch in every block", branches=["conv"]),
    # Earlier screens' Wave extensions (results/ablations-screen.md).
    _v("wave+rope", "wave", "RoPE as phase rotation, no position table", wave_rope=True, position_embedding="none"),
    _v("wave-nopos", "wave", "no positions at all", position_embedding="none"),
    _v("wave+local", "wave", "+ windowed attention branch (a hybrid)", branches=["local_attention"]),
    _v("wave+fft", "wave", "+ frequency-domain gate branch", branches=["fft_gate"]),
    _v("wave+crosswave", "wave", "+ question-conditioned wave branch", branches=["cross_wave"]),
    _v("wave+qattn", "wave", "+ question-attention branch (a hybrid)", branches=["question_attention"]),
    _v("wave+proxy", "wave", "+ 8 proxy tokens", proxy_tokens=8),
    _v("wave+sentence", "wave", "+ sentence-level wave branch", branches=["sentence_wave"]),
    _v("wave+hierarchy", "wave", "+ sentence and segment wave branches", branches=_HIERARCHY),
    _v("wave+hierarchy-staged", "wave", "hierarchy branches switched on in stages", branches=_HIERARCHY,
       branch_schedule={"sentence_wave": 0.33, "segment_wave": 0.66}),
    # Early-exit span heads after blocks 1 and 2 (of 4): trained on the answers only, or also taught
    # by the last layer's span distribution (self-distillation, seed plan 6).
    _v("wave+exits", "wave", "early-exit span heads after blocks 1, 2", exit_layers=[1, 2]),
    _v("wave+selfdistill", "wave", "early exits taught by the last layer", exit_layers=[1, 2], self_distill=0.5),
    _v("hybrid-local", "wave", "Wave and windowed-attention layers alternating",
       mixers=["wave", "local_attention", "wave", "local_attention"]),
    _v("wave+conv+qattn", "wave", "", branches=["conv", "question_attention"]),
    _v("wave+conv+crosswave", "wave", "", branches=["conv", "cross_wave"]),
    _v("wave+conv+hierarchy", "wave", "", branches=["conv", *_HIERARCHY]),
    _v("wave+rope+conv+qattn", "wave", "", wave_rope=True, position_embedding="none",
       branches=["conv", "question_attention"]),
    # Levers of the Wave-earns-its-place research (results/wave_earns.md): richer global state.
    _v("slotwave", "wave", "Wave layers with n_heads soft slots of global state (slot_wave)", mixers="slot_wave"),
    _v("slotwave+conv", "wave", "slot_wave layers + a depthwise-conv branch", mixers="slot_wave", branches=["conv"]),
    _v("wave+conv+window", "wave", "+ a window-norm wave branch (±local_window tokens)",
       branches=["conv", "window_wave"]),
    _v("wave+conv+xwave", "wave", "wave+conv + the cross-wave branch (each segment's wave modulates the other's), "
       "FFN narrowed to the common size", branches=["conv", "cross_wave"], d_ff=XWAVE_D_FF),
    # Readers of any length (whole articles in one pass, the long-context issue): no position table.
    _v("wave+rope+conv", "wave", "wave+conv with RoPE phase rotation instead of a position table", wave_rope=True,
       position_embedding="none", branches=["conv"]),
    _v("wave+conv-nopos", "wave", "wave+conv without positions (the conv branch gives local order)",
       position_embedding="none", branches=["conv"]),
]}
# Other names of table entries (``nami compare --models wave_plus`` before the table existed).
ALIASES: dict[str, str] = {"wave_plus": "wave+conv"}
# Suffixes that name one setting on any variant.
SUFFIXES: dict[str, dict[str, Any]] = {"-noqm": {"question_match": False}}
# The rows of the fair comparison (results/fair_comparison.md), in table order.
FAIR_SCREEN = ("transformer", "transformer+rope", "transformer+conv", "transformer+rope+conv", "conv-only", "wave",
               "wave+conv", "conv-only-noqm", "wave+conv-noqm")


def resolve(name: str, custom: dict[str, Variant] | None = None) -> Variant:
    """The variant called ``name``: a custom one, a table entry, an alias, or any of those + a suffix."""
    table = {**VARIANTS, **(custom or {})}
    if name in table:
        return table[name]
    if name in ALIASES:
        base = table[ALIASES[name]]
        return Variant(name, base.arch, dict(base.options), base.about)
    for suffix, options in SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            base = resolve(name[: -len(suffix)], custom)
            return Variant(name, base.arch, {**base.options, **options}, f"{base.about} {suffix[1:]}".strip())
    raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(VARIANTS)} (aliases: "
                     f"{', '.join(ALIASES)}; suffixes: {', '.join(SUFFIXES)}), or define it with --variant "
                     "'NAME=ARCH:key=value,...'")


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets / quotes (``a=1,b=["x","y"]`` → two items)."""
    items, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in (s.strip() for s in items) if item]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a string option value (position_embedding=none)


def parse_variant(spec: str) -> dict[str, Variant]:
    """Custom variants from ``--variant``: ``NAME=ARCH:key=value,...`` or a JSON file of them."""
    path = Path(spec)
    if spec.endswith(".json") or (path.suffix and path.is_file()):
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--variant {spec}: cannot read a JSON object of variants ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--variant {spec}: expected a JSON object {{NAME: {{\"arch\": ..., \"options\": {{...}}}}}}")
        out = {}
        for name, entry in data.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("arch"), str) \
                    or not isinstance(entry.get("options", {}), dict):
                raise ValueError(f"--variant {spec}: variant {name!r} needs \"arch\" (a string) and \"options\" "
                                 "(an object)")
            out[name] = Variant(name, entry["arch"], dict(entry.get("options", {})), str(entry.get("about", "")))
        return out
    name, sep, rest = spec.partition("=")
    arch, _, option_text = rest.partition(":")
    if not sep or not name.strip() or not arch.strip():
        raise ValueError(f"--variant {spec!r}: expected NAME=ARCH:key=value,... (e.g. "
                         "'conv-k15=wave:mixers=[\"conv\",\"conv\",\"conv\",\"conv\"],conv_kernel=15') or a JSON file")
    options = {}
    for item in _split_top_level(option_text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--variant {spec!r}: option {item!r} is not key=value")
        options[key.strip().replace("-", "_")] = _value(value.strip())  # "pretrain.lr" keeps its dot
    return {name.strip(): Variant(name.strip(), arch.strip(), options, "given on the command line")}


def describe(names: list[str] | None = None) -> str:
    """One phrase per variant (for ``--help``)."""
    return "; ".join(f"{v.name} [{v.family}]" for v in VARIANTS.values() if names is None or v.name in names)
