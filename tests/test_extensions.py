"""The Wave extensions (issue: position, locality, a view of the question): each mixer's maths,
padding invariance, finite gradients, and plain Wave unchanged when every option is off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nami.models import MixerInputs, ModelConfig, QAModel
from nami.models.fourier import FFTGate
from nami.models.local import LocalAttention
from nami.models.wave import rope_angles, rotate_waves

BRANCHES = ["conv", "local_attention", "fft_gate", "cross_wave", "question_attention", "sentence_wave", "segment_wave"]
VARIANTS = {
    **{f"branch-{b}": dict(branches=[b]) for b in BRANCHES},
    "rope": dict(wave_rope=True, position_embedding="none"),
    "rope+learned": dict(wave_rope=True),
    "no-positions": dict(position_embedding="none"),
    "hybrid-local": dict(mixers=["wave", "local_attention"]),
    "hybrid-fft": dict(mixers=["fft_gate", "wave"]),
    "proxy": dict(proxy_tokens=3),
    "proxy+qattn+sentence": dict(proxy_tokens=2, branches=["question_attention", "sentence_wave"]),
    "proxy+fft": dict(proxy_tokens=2, branches=["fft_gate"]),
}


def config(**overrides) -> ModelConfig:
    return ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64, type_vocab_size=2,
                                 local_window=4, conv_kernel=5, sentence_boundary_ids=[8], **overrides)


def window(length: int, question: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(length)
    ids = torch.randint(5, 50, (1, length))
    types = (torch.arange(length) >= question).long()[None]
    return ids, types


@pytest.mark.parametrize("name", list(VARIANTS))
def test_padding_never_changes_real_tokens(name):
    torch.manual_seed(0)
    model = QAModel(config(**VARIANTS[name])).double().eval()
    ids, types = window(13)
    mask = torch.ones_like(ids, dtype=torch.bool)
    short = model(ids, mask, types)
    pad = 19  # more padding than a local window and an FFT length change
    padded = model(F.pad(ids, (0, pad)), F.pad(mask, (0, pad)), F.pad(types, (0, pad)))
    torch.testing.assert_close(padded.start[:, :13], short.start, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(padded.end[:, :13], short.end, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_full_length_batch_runs(name):
    """Training batches are often exactly max_len long; the mixers then also see the proxy tokens
    (fft_gate once refused K + max_len positions)."""
    model = QAModel(config(**VARIANTS[name])).eval()
    ids, types = window(64)
    out = model(ids, torch.ones_like(ids, dtype=torch.bool), types)
    assert out.start.shape == (1, 64) and torch.isfinite(out.start).all()


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("case", ["one_token", "all_equal", "padded"])
def test_gradients_are_finite_on_edge_cases(name, case):
    torch.manual_seed(1)
    model = QAModel(config(**VARIANTS[name]))
    if case == "one_token":
        ids, types = torch.tensor([[7]]), torch.zeros(1, 1, dtype=torch.long)
        mask = torch.ones_like(ids, dtype=torch.bool)
    elif case == "all_equal":
        ids, types = torch.full((2, 9), 7), (torch.arange(9) >= 3).long()[None].repeat(2, 1)
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        ids, types = window(16)
        ids, types = ids.repeat(2, 1), types.repeat(2, 1)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[0, 3:] = False
    logits = model(ids, mask, types)
    QAModel.loss(logits, torch.zeros(len(ids), dtype=torch.long), torch.zeros(len(ids), dtype=torch.long)).backward()
    for pname, p in model.named_parameters():  # every parameter takes part (a branch switched off would not)
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("branch", BRANCHES)
def test_every_branch_changes_the_output(branch):
    """A branch's parameters reach the logits (its mixer runs and is added to the residual stream)."""
    torch.manual_seed(3)
    model = QAModel(config(branches=[branch])).eval()
    ids, types = window(16)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        before = model(ids, mask, types).start
        for block in model.encoder.blocks:
            for p in block.branches.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        after = model(ids, mask, types).start
    assert not torch.allclose(before, after), branch


def test_every_option_off_is_the_plain_wave_model_bit_for_bit():
    torch.manual_seed(2)
    plain = QAModel(ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64))
    torch.manual_seed(2)
    off = QAModel(ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64, branches=None, wave_rope=False,
                                        position_embedding="learned", mixers=None))
    assert list(plain.state_dict()) == list(off.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))
    ids = torch.randint(5, 50, (2, 11))
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert torch.equal(plain(ids, mask).start, off(ids, mask).start)


def test_fft_gate_equals_the_direct_convolution():
    torch.manual_seed(3)
    gate = FFTGate(ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=8)).double()
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    y = gate(x, MixerInputs(mask))
    xm = x * mask[..., None]
    centre = 8 - 1
    direct = torch.stack([sum(xm[:, i] * gate.kernel[centre + j - i] for i in range(6)) for j in range(6)], dim=1)
    torch.testing.assert_close(y, direct, rtol=1e-10, atol=1e-10)


def test_local_attention_equals_banded_full_attention():
    torch.manual_seed(4)
    cfg = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=64, local_window=3)
    layer = LocalAttention(cfg).double()
    x = torch.randn(2, 11, 64, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    y = layer(x, MixerInputs(mask))
    q, k, v = layer.qkv(x).view(2, 11, 3, 2, 32).permute(2, 0, 3, 1, 4)
    i = torch.arange(11)
    allowed = ((i[None, :] - i[:, None]).abs() <= 3)[None] & mask[:, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    ref = layer.out(ref.transpose(1, 2).reshape(2, 11, 64))
    torch.testing.assert_close(y[mask], ref[mask], rtol=1e-9, atol=1e-9)


def test_rope_rotation_depends_on_relative_position_only():
    torch.manual_seed(5)
    z = torch.randn(1, 1, 16, dtype=torch.float64)  # one token's [Re, Im] over 8 complex dims
    w = torch.randn(1, 1, 16, dtype=torch.float64)

    def rotated(vec, pos):
        return rotate_waves(vec, rope_angles(torch.tensor([pos]), 8, 10000.0, 1.0).double())

    def inner(a, b):  # Σ_k a_k · conj(b_k) as a complex number
        ca, cb = torch.complex(*a.chunk(2, -1)), torch.complex(*b.chunk(2, -1))
        return (ca * cb.conj()).sum()

    torch.testing.assert_close(inner(rotated(z, 7), rotated(w, 4)), inner(rotated(z, 13), rotated(w, 10)))
    assert not torch.allclose(inner(rotated(z, 7), rotated(w, 4)), inner(rotated(z, 7), rotated(w, 5)))
    # a rotation keeps each complex magnitude
    r = rotated(z, 3)
    torch.testing.assert_close(torch.complex(*r.chunk(2, -1)).abs(), torch.complex(*z.chunk(2, -1)).abs())


@pytest.mark.parametrize("name", ["cross_wave", "question_attention"])
def test_cross_segment_mixers_read_the_other_segment(name):
    torch.manual_seed(6)
    model = QAModel(config(mixers=[name, name])).double().eval()
    ids, types = window(12, question=5)
    mask = torch.ones_like(ids, dtype=torch.bool)
    base = model(ids, mask, types).start
    changed_q = ids.clone()
    changed_q[0, 2] = 9 if ids[0, 2] != 9 else 10  # a question token
    after = model(changed_q, mask, types).start
    assert not torch.allclose(after[0, 5:], base[0, 5:])  # context outputs see the question
    with pytest.raises(ValueError, match="needs token types"):
        model(ids, mask)


def test_question_attention_keys_are_question_tokens_only():
    torch.manual_seed(7)
    model = QAModel(config(mixers=["question_attention", "question_attention"])).double().eval()
    ids, types = window(12, question=5)
    mask = torch.ones_like(ids, dtype=torch.bool)
    base = model(ids, mask, types).start
    changed = ids.clone()
    changed[0, 9] = 9 if ids[0, 9] != 9 else 10  # a context token: only its own output may move
    after = model(changed, mask, types).start
    moved = (after - base).abs()[0] > 1e-12
    assert moved.tolist() == [i == 9 for i in range(12)]


def test_bad_extension_options_are_refused():
    for field, value in [("branches", ["rnn"]), ("position_embedding", "sinusoid"), ("conv_kernel", 4),
                         ("local_window", 0), ("rope_base", 1.0), ("wave_rope", "yes")]:
        with pytest.raises(ValueError, match=field):
            ModelConfig.from_name("tiny", "wave", **{field: value})


def test_hierarchy_groups_and_grouped_waves():
    from nami.models.hierarchy import group_ids, grouped_wave_mix
    from nami.models.wave import wave_mix

    ids = torch.tensor([[2, 10, 11, 3, 12, 8, 13, 14, 8, 3, 0]])  # [CLS] q q [SEP] a 。 b c 。 [SEP] pad
    sentence, segment = group_ids(ids, [8])
    assert segment.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2]]
    assert sentence.tolist() == [[0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4]]
    # one group for every token = the plain Wave maths
    torch.manual_seed(8)
    w = torch.randn(2, 7, 8, dtype=torch.float64)
    mask = torch.ones(2, 7, 1, dtype=torch.float64)
    torch.testing.assert_close(grouped_wave_mix(w, mask, torch.zeros(2, 7, dtype=torch.long), 1e-6, "modulation"),
                               wave_mix(w, mask, 1e-6, "modulation"))
    # two groups = the plain maths on each group alone
    groups = torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2)
    out = grouped_wave_mix(w, mask, groups, 1e-6, "interference")
    torch.testing.assert_close(out[:, 3:], wave_mix(w[:, 3:], mask[:, 3:], 1e-6, "interference"))


def test_proxy_tokens_take_part_but_never_reach_the_head():
    torch.manual_seed(9)
    model = QAModel(config(proxy_tokens=3)).eval()
    ids, types = window(10)
    mask = torch.ones_like(ids, dtype=torch.bool)
    out = model(ids, mask, types)
    assert out.start.shape == (1, 10)  # stripped before the span head
    with torch.no_grad():
        model.encoder.proxies.add_(torch.randn_like(model.encoder.proxies))  # (a constant shift LayerNorm would remove)
    assert not torch.allclose(model(ids, mask, types).start, out.start)  # they take part in the mixing
    with pytest.raises(ValueError, match="proxy_tokens"):
        ModelConfig.from_name("tiny", "wave", proxy_tokens=2, causal=True)


def test_stage_wise_training_switches_branches_on_in_order():
    from nami.models.block import set_branches

    model = QAModel(config(branches=["sentence_wave", "segment_wave"]))
    schedule = {"sentence_wave": 0.33, "segment_wave": 0.66}
    states = []
    for progress in (0.0, 0.4, 0.7):
        set_branches(model, progress, schedule)
        states.append(model.encoder.blocks[0].branch_on)
    assert states == [[False, False], [True, False], [True, True]]
    from nami.runs.config import TrainConfig

    with pytest.raises(ValueError, match="branch_schedule"):
        TrainConfig.from_dict({"preset": "tiny", "branches": ["conv"], "branch_schedule": {"segment_wave": 0.5}})


# --- self-distillation: early-exit heads taught by the last layer (seed plan 6) ---------------------------


def test_exit_heads_off_is_the_plain_model_and_on_adds_only_heads():
    torch.manual_seed(0)
    plain = QAModel(config(n_layers=4))
    torch.manual_seed(0)
    exits = QAModel(config(n_layers=4, exit_layers=[2, 1]))
    assert plain.exit_heads is None and exits.config.exit_layers == [1, 2]
    extra = set(exits.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("exit_heads.") for k in extra)
    ids = torch.randint(5, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    for model in (plain, exits):
        model.eval()
    assert torch.equal(plain(ids, mask).start, exits(ids, mask).start)  # same initialisation, same last layer
    final, heads = exits(ids, mask, with_exits=True)
    assert torch.equal(final.start, plain(ids, mask).start) and len(heads) == 2
    assert heads[0].start.shape == (2, 12) and torch.isinf(heads[0].start[1, 8:]).all()
    # each head reads its own layer: changing block 3 moves the final logits, not the exits after blocks 1, 2
    with torch.no_grad():
        for p in exits.encoder.blocks[3].parameters():
            p.add_(torch.randn_like(p))
        final2, heads2 = exits(ids, mask, with_exits=True)
        assert all(torch.equal(a.start, b.start) for a, b in zip(heads, heads2))
        assert not torch.allclose(final.start[0], final2.start[0])
        for p in exits.encoder.blocks[2].parameters():
            p.add_(torch.randn_like(p))
        _, heads3 = exits(ids, mask, with_exits=True)
        assert torch.equal(heads3[0].start, heads[0].start) and not torch.allclose(heads3[1].start[0], heads[1].start[0])


def test_distillation_loss_is_zero_for_equal_distributions_and_teaches_only_the_student():
    torch.manual_seed(0)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 6:] = False
    teacher_start = torch.randn(3, 10).masked_fill(~mask, float("-inf")).requires_grad_()
    teacher_end = torch.randn(3, 10).masked_fill(~mask, float("-inf")).requires_grad_()
    from nami.models.qa import SpanLogits

    teacher = SpanLogits(teacher_start, teacher_end)
    same = QAModel.distillation_loss(SpanLogits(teacher_start.detach(), teacher_end.detach()), teacher)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    student_start = torch.randn(3, 10).masked_fill(~mask, float("-inf")).requires_grad_()
    student = SpanLogits(student_start, teacher_end.detach().clone().requires_grad_())
    loss = QAModel.distillation_loss(student, teacher, temperature=2.0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert teacher_start.grad is None  # the teacher only teaches
    assert torch.isfinite(student_start.grad).all() and student_start.grad[2, 6:].abs().sum() == 0
    # The reference: T² · mean over the batch of Σ p_t (log p_t − log p_s), start and end averaged.
    p_t = F.softmax(teacher_start.detach().masked_fill(~mask, -1e4) / 2, dim=-1)
    log_s = F.log_softmax(student_start.detach().masked_fill(~mask, -1e4) / 2, dim=-1)
    ref_start = (p_t * (p_t.clamp_min(1e-30).log() - log_s)).sum(-1).mean()
    assert loss.item() == pytest.approx(4 * 0.5 * ref_start.item(), rel=1e-5)


def test_self_distillation_training_loss_reaches_every_exit_head():
    from nami.runs.config import TrainConfig
    from nami.training.tasks import QATask

    model = QAModel(config(n_layers=3, exit_layers=[0, 1]))
    train_config = TrainConfig.from_dict({"preset": "tiny", "n_layers": 3, "exit_layers": [0, 1],
                                          "self_distill": 0.5, "distill_temperature": 2.0})
    task = QATask.__new__(QATask)
    task.config = train_config
    batch = {"input_ids": torch.randint(5, 50, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.bool),
             "token_type_ids": torch.zeros(2, 16, dtype=torch.long), "start_positions": torch.tensor([3, 5]),
             "end_positions": torch.tensor([4, 7])}
    loss = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    for head in model.exit_heads:
        assert head.head.proj.weight.grad is not None and head.head.proj.weight.grad.abs().sum() > 0
    # its value: the last layer's loss + the exits' mean of (1 − α)·CE + α·T²·KL(last ‖ exit)
    model.eval()  # (no dropout: one forward gives the same logits as task.loss's)
    with torch.no_grad():
        final, exits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], with_exits=True)
        answers = (batch["start_positions"], batch["end_positions"])
        expected = QAModel.loss(final, *answers) + sum(
            0.5 * QAModel.loss(e, *answers) + 0.5 * QAModel.distillation_loss(e, final, 2.0) for e in exits) / 2
        torch.testing.assert_close(task.loss(model, batch), expected)
        task.config = TrainConfig.from_dict({"preset": "tiny", "n_layers": 3, "exit_layers": [0, 1]})  # α = 0
        assert not torch.allclose(task.loss(model, batch), expected)


@pytest.mark.parametrize("options, fragment", [
    ({"self_distill": 0.5}, "needs early-exit heads"),
    ({"exit_layers": [3]}, "exit_layers=[3]"),
    ({"exit_layers": [0], "task": "mlm"}, "for extractive QA"),
    ({"exit_layers": [0], "self_distill": 1.5}, "self_distill=1.5"),
])
def test_self_distillation_options_are_checked(options, fragment):
    from nami.runs.config import TrainConfig

    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_dict({"preset": "tiny", "n_layers": 4, **options})


def reference_cross_wave_mix(w, question, context, eps):
    """cross_wave's maths written segment by segment (the form it was first written in)."""
    re, im, globals_ = torch.zeros_like(w), torch.zeros_like(w), []
    for seg in (question, context):
        m = seg.unsqueeze(-1).to(w.dtype)
        ws = w * m
        g2 = (ws * ws).sum(1, keepdim=True) + eps
        mean = ws.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0).sqrt()
        globals_.append((mean, torch.sqrt((g2 - mean * mean).clamp_min(0.0) + eps)))
        re = re + ws
        im = im + torch.sqrt((g2 - ws * ws).clamp_min(0.0) + eps) * m
    (q_re, q_im), (c_re, c_im) = globals_
    is_q = question.unsqueeze(-1)
    o_re, o_im = torch.where(is_q, c_re, q_re), torch.where(is_q, c_im, q_im)
    return torch.cat([re * o_re - im * o_im, re * o_im + im * o_re], dim=-1)


def test_cross_wave_maths_equal_the_segment_by_segment_reference_in_values_and_gradients():
    from nami.models.cross import cross_wave_mix

    torch.manual_seed(11)
    types = torch.tensor([[-1, 0, 0, 0, 1, 2, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
    real = torch.tensor([[True] * 9 + [False], [True] * 10, [True] * 6 + [False] * 4])  # row 3: no question
    question, context = real & (types == 0), real & (types >= 1)
    w = torch.randn(3, 10, 6, dtype=torch.float64, requires_grad=True)
    got, want = cross_wave_mix(w, question, context, 1e-6), reference_cross_wave_mix(w, question, context, 1e-6)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got[0, 0].abs().sum() == 0 and got[0, 9].abs().sum() == 0  # a proxy token and padding: nothing
    upstream = torch.randn_like(got)
    (g_got,) = torch.autograd.grad(got, w, upstream)
    (g_want,) = torch.autograd.grad(want, w, upstream)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10)


def test_proxy_tokens_are_on_neither_side_of_the_question_context_boundary():
    from nami.models.cross import _segments

    types = torch.tensor([[-1, -1, 0, 0, 1, 2, 1, 0]])
    mask = torch.tensor([[True] * 7 + [False]])
    question, context = _segments(MixerInputs(padding_mask=mask, token_type_ids=types), "cross_wave")
    assert question.tolist() == [[False, False, True, True, False, False, False, False]]
    assert context.tolist() == [[False, False, False, False, True, True, True, False]]


def test_stage_wise_training_switches_branches_on_at_their_progress(tmp_path):
    """branch_schedule: a scheduled branch is skipped before its progress and used after; in training
    the loop applies it (the first steps train without the branch: it gets no gradient)."""
    from nami.models.block import set_branches

    torch.manual_seed(4)
    model = QAModel(config(branches=["conv", "fft_gate"])).eval()
    ids, types = window(16)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        set_branches(model, 0.2, {"fft_gate": 0.5})
        early = model(ids, mask, types).start
        for block in model.encoder.blocks:
            block.branches[1].kernel.add_(1.0)  # fft_gate is off: no effect
        assert torch.equal(model(ids, mask, types).start, early)
        set_branches(model, 0.5, {"fft_gate": 0.5})
        assert not torch.allclose(model(ids, mask, types).start, early)
    assert all(block.branch_on == [True, True] for block in model.encoder.blocks)
