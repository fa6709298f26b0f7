"""Every registered mixer keeps the mixer contract (nami.models.registry.Mixer): shapes, padding,
independent rows, finite gradients, and for causal ones: no look-ahead and step == forward."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from nami.models import ModelConfig
from nami.models.hierarchy import group_ids
from nami.models.inputs import DecodingCache, MixerInputs
from nami.models.registry import BUILTIN_MIXER_MODULES, MIXERS, Mixer, load_builtin_mixers

load_builtin_mixers()
NAMES = list(MIXERS)
B, S, D = 2, 12, 64


def _inputs(mask: torch.Tensor) -> MixerInputs:
    ids = torch.randint(5, 40, (B, S))
    ids[:, 4] = 3  # [SEP] after a 4-token question
    ids[:, 7] = 9  # a sentence end
    types = (torch.arange(S) > 4).long().expand(B, S).clone()
    sentence, segment = group_ids(ids, [9])
    return MixerInputs(mask, token_type_ids=types, positions=torch.arange(S), sentence_ids=sentence,
                       segment_ids=segment)


def _mixer(name: str, **overrides):
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64, local_window=4, **overrides)
    return MIXERS[name](config)


@pytest.mark.parametrize("name", NAMES)
def test_mixer_shapes_padding_rows_and_gradients(name):
    mixer = _mixer(name)
    assert isinstance(mixer, Mixer)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 9:] = False
    inputs = _inputs(mask)
    x = torch.randn(B, S, D, requires_grad=True)
    out = mixer(x, inputs)
    assert out.shape == (B, S, D) and torch.isfinite(out).all()
    out[mask].square().mean().backward()
    grads = [p.grad for p in mixer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        changed = x.detach().clone()
        changed[1, 9:] = torch.randn(S - 9, D) * 5  # new padding content
        changed[0] = torch.randn(S, D)  # another row
        again = mixer(changed, inputs)
    torch.testing.assert_close(again[1, :9], out[1, :9].detach(), rtol=1e-4, atol=1e-5)


CAUSAL = [n for n in NAMES if getattr(MIXERS[n], "supports_causal", False)]


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_mixer_never_looks_ahead_and_steps_like_forward(name):
    mixer = _mixer(name, causal=True).eval()
    mask = torch.ones(B, S, dtype=torch.bool)
    x = torch.randn(B, S, D)
    with torch.no_grad():
        full = mixer(x, MixerInputs(mask, positions=torch.arange(S)))
        later = x.clone()
        later[:, 7:] = torch.randn(B, S - 7, D)
        torch.testing.assert_close(mixer(later, MixerInputs(mask, positions=torch.arange(S)))[:, :7], full[:, :7],
                                   rtol=0, atol=1e-6)
        if not callable(getattr(mixer, "step", None)):
            return
        cache = DecodingCache()
        steps = torch.stack([mixer.step(x[:, t], mask[:, t], torch.full((B,), t), cache) for t in range(S)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=5e-5)  # fp32; the first token sits at sqrt(eps)


def test_every_module_that_registers_a_mixer_is_imported_by_the_registry():
    src = Path(importlib.import_module("nami.models").__file__).parent
    registering = {p.stem for p in src.glob("*.py") if p.stem != "registry" and "@register_mixer(" in p.read_text("utf-8")}
    assert registering == set(BUILTIN_MIXER_MODULES)


def test_slot_wave_with_one_slot_is_the_wave_layer_and_its_state_is_the_slots_energy():
    """The reference for the new maths: one slot (every membership 1) gives the Wave layer's
    sqrt(G² − w²) exactly; with several, a token only reads the energy of the slots it belongs to."""
    from nami.models.slots import causal_slot_wave_mix, slot_wave_mix
    from nami.models.wave import causal_wave_mix, wave_mix

    torch.manual_seed(3)
    w = torch.randn(2, 7, 8, dtype=torch.float64)
    mask = torch.ones(2, 7, 1, dtype=torch.float64)
    one = torch.ones(2, 7, 1, dtype=torch.float64)
    for mode in ("modulation", "interference"):
        torch.testing.assert_close(slot_wave_mix(w, one, 1e-6, mode), wave_mix(w, mask, 1e-6, mode))
        causal, state = causal_slot_wave_mix(w, one, 1e-6, mode)
        reference, running = causal_wave_mix(w, mask, 1e-6, mode)
        torch.testing.assert_close(causal, reference)
        torch.testing.assert_close(state, running)
    # two hard slots: tokens 0-2 and 3-6; a token's imaginary part is the energy of its own slot's others
    hard = torch.zeros(2, 7, 2, dtype=torch.float64)
    hard[:, :3, 0] = 1
    hard[:, 3:, 1] = 1
    imag = slot_wave_mix(w, hard, 0.0, "interference")[..., 4:]  # [Re, Im] of Z1 + Z2: Im = im1 + im2
    im = lambda group, j: torch.sqrt((group ** 2).sum(1) - w[:, j] ** 2)  # noqa: E731
    first, second = w[:, :3], w[:, 3:]
    expect = im(first, 1)[:, :4] + im(first, 1)[:, 4:]
    torch.testing.assert_close(imag[:, 1], expect)
    expect = im(second, 5)[:, :4] + im(second, 5)[:, 4:]
    torch.testing.assert_close(imag[:, 5], expect)


def test_window_energy_is_the_sum_over_each_window():
    from nami.models.slots import window_energy

    squares = torch.rand(2, 9, 3, dtype=torch.float64)
    for causal in (False, True):
        got = window_energy(squares, 2, causal)
        for j in range(9):
            lo, hi = max(0, j - 2), (j + 1 if causal else min(9, j + 3))
            torch.testing.assert_close(got[:, j], squares[:, lo:hi].sum(1))
