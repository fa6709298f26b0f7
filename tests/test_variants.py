"""The fair comparison's pieces: RoPE attention, the one variant table and its controls, ablation files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nami.models import ModelConfig, QAModel, count_parameters
from nami.models.attention import SelfAttention
from nami.models.inputs import MixerInputs
from nami.models.local import LocalAttention
from nami.models.rotary import rotate_heads
from nami.reports.variants import FAIR_SCREEN, VARIANTS, Variant, parse_variant, resolve
from nami.runs.config import TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"


def _scores(q, k, positions):
    """Attention logits q_j·k_l after RoPE at ``positions``."""
    return rotate_heads(q, positions, 10000.0, 1.0) @ rotate_heads(k, positions, 10000.0, 1.0).transpose(-1, -2)


def test_rope_attention_scores_are_invariant_to_shifting_every_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 9, 16, dtype=torch.float64), torch.randn(2, 3, 9, 16, dtype=torch.float64)
    base = _scores(q, k, torch.arange(9))
    for shift in (1, 7, 250):
        torch.testing.assert_close(_scores(q, k, torch.arange(9) + shift), base, rtol=1e-9, atol=1e-9)
    # and they do depend on relative position: reversing the order changes them
    assert not torch.allclose(_scores(q, k, torch.arange(9).flip(0)), base)
    # a rotation keeps norms (it only turns each pair)
    torch.testing.assert_close(rotate_heads(q, None, 10000.0, 1.0).norm(dim=-1), q.norm(dim=-1))


@pytest.mark.parametrize("mixer_cls", [SelfAttention, LocalAttention])
def test_rope_attention_layer_outputs_are_shift_invariant_and_differ_from_no_rope(mixer_cls):
    torch.manual_seed(1)
    config = ModelConfig.from_name("tiny", "transformer", vocab_size=50, max_len=64, attention_rope=True,
                                   local_window=4)
    layer = mixer_cls(config).double().eval()
    x = torch.randn(2, 10, 64, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.bool)
    out = layer(x, MixerInputs(mask, positions=torch.arange(10)))
    shifted = layer(x, MixerInputs(mask, positions=torch.arange(10) + 17))
    torch.testing.assert_close(shifted, out, rtol=1e-9, atol=1e-9)
    layer.rope = None
    assert not torch.allclose(layer(x, MixerInputs(mask, positions=torch.arange(10))), out)


def test_rope_attention_config_is_checked_and_adds_no_weights():
    plain = QAModel(ModelConfig.from_name("tiny", "transformer", vocab_size=50, max_len=64))
    rope = QAModel(ModelConfig.from_name("tiny", "transformer", vocab_size=50, max_len=64, attention_rope=True))
    assert count_parameters(plain) == count_parameters(rope)
    with pytest.raises(ValueError, match="attention_rope"):
        ModelConfig.from_name("tiny", "transformer", vocab_size=50, max_len=64, attention_rope="yes")
    with pytest.raises(ValueError, match="must be even"):
        ModelConfig.from_name("tiny", "transformer", vocab_size=50, max_len=64, d_model=6, n_heads=2,
                              attention_rope=True)


def _model(variant: Variant) -> QAModel:
    config = TrainConfig.from_dict({"arch": variant.arch, "preset": "small", **variant.options}).model
    values = {**config.to_dict(), "vocab_size": 12000, "max_len": 256, "type_vocab_size": 3}
    return QAModel(ModelConfig.from_dict(values))


@pytest.mark.parametrize("name", [*FAIR_SCREEN, "wave+conv+xwave", "wave+conv+xwave-noqm"])
def test_fair_screen_variants_have_the_parameters_of_wave_within_one_percent(name):
    wave = count_parameters(_model(resolve("wave")))["total"]
    ours = count_parameters(_model(resolve(name)))["total"]
    assert abs(ours - wave) / wave < 0.01, (name, ours, wave)


@pytest.mark.parametrize("name", [*VARIANTS, "wave_plus", "conv-only-noqm"])
def test_every_variant_builds_and_takes_a_training_step(name):
    variant = resolve(name)
    config = TrainConfig.from_dict({"arch": variant.arch, "preset": "small", **variant.options})  # 4 layers
    values = {**config.model.to_dict(), "vocab_size": 40, "max_len": 32, "type_vocab_size": 3, "d_model": 32}
    if config.model.uses_hierarchy():
        values["sentence_boundary_ids"] = [7]
    torch.manual_seed(0)
    model = QAModel(ModelConfig.from_dict(values))
    ids = torch.randint(5, 40, (2, 16))
    ids[:, 0], ids[:, 5] = 2, 3  # [CLS] question [SEP] context
    types = (torch.arange(16) > 5).long().expand(2, 16)
    out = model(ids, torch.ones_like(ids, dtype=torch.bool), token_type_ids=types)
    start = out[0] if isinstance(out, tuple) else out
    start.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > len(grads) // 2


def test_families_come_from_the_mixers_not_the_names():
    assert resolve("conv-only").family == "conv" and resolve("wave+conv").family == "wave"
    assert resolve("transformer+rope+conv").family == "transformer"
    assert resolve("wave+qattn").family == "hybrid" and resolve("hybrid-local").family == "hybrid"
    assert resolve("wave_plus").options == VARIANTS["wave+conv"].options
    assert resolve("conv-only-noqm").options == {**VARIANTS["conv-only"].options, "question_match": False}
    with pytest.raises(ValueError, match="unknown variant 'wave\\+lstm'"):
        resolve("wave+lstm")


def test_a_variant_is_given_on_the_command_line_or_in_a_file(tmp_path):
    given = parse_variant('k15=wave:mixers=["conv","conv","conv","conv"],conv_kernel=15,question-match=false')
    assert given["k15"].options == {"mixers": ["conv"] * 4, "conv_kernel": 15, "question_match": False}
    assert given["k15"].family == "conv"
    assert resolve("k15-noqm", given).options["conv_kernel"] == 15
    file = tmp_path / "v.json"
    file.write_text(json.dumps({"xw": {"arch": "wave", "options": {"branches": ["conv", "cross_wave"]}}}))
    assert parse_variant(str(file))["xw"].family == "wave"
    for bad in ("nonsense", "x=wave:branches", "=wave:"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)


def test_compile_wave_reaches_only_models_with_wave_layers():
    from nami.reports.presets import recipe, speed_options

    assert speed_options("standard", "wave") == {"compile_wave": True}
    assert speed_options("standard", "transformer") == {}
    assert speed_options("standard", "wave", {"mixers": ["conv"] * 4}) == {}  # conv-only is not refused
    assert speed_options("standard", "wave", {"mixers": ["conv", "wave", "conv", "conv"]}) == {"compile_wave": True}
    # (a pretraining stage: no data paths, so the test needs no shared data)
    assert "compile_wave" not in recipe("quick", "pretrain", "wave", {"mixers": ["conv"] * 4})
    assert recipe("quick", "pretrain", "wave")["compile_wave"] is True


def _record(command, rows, **extra):
    protocol = {"preset": "scratch", "budget_minutes": 8.0, "stages": {"finetune": {"task": "qa", "minutes": 8.0}},
                "eval_data": "dev.json", "description": "screening", "seeds": [0], "questions": 10}
    run = {"exact_match": 1.0, "params": 5, "train_tokens_per_s": 100.0, "eval_questions_per_s": 9.0,
           "train_peak_mb": 50.0, "steps": 7}
    return {"command": command, "commit": "c" * 40, "machine": "m", "date": "2026-12-07", "protocol": protocol,
            "rows": [{"name": n, "options": {"arch": "wave"}, "runs": [{**run, "seed": s, "f1": f} for s, f in rs]}
                     for n, rs in rows], **extra}


def test_merge_keeps_every_command_of_every_merged_file(tmp_path):
    from nami.reports.ablate import merge_ablations

    a, b, ab, c = (tmp_path / f"{n}.json" for n in ("a", "b", "ab", "c"))
    a.write_text(json.dumps(_record("nami ablate A", [("wave", [(0, 20.0)])], earlier_commands=["nami ablate A0"])))
    b.write_text(json.dumps(_record("nami ablate B", [("conv-only", [(0, 21.0)])])))
    merge_ablations([str(a), str(b)], str(tmp_path / "ab"), command="nami ablate --merge a b")
    c.write_text(json.dumps(_record("nami ablate C", [("wave", [(1, 22.0)])])))
    merged = merge_ablations([str(ab), str(c)], str(tmp_path / "all"), command="nami ablate --merge ab c",
                             notes=["chosen: wave"])
    kept = merged["earlier_commands"]
    for command in ("nami ablate A0", "nami ablate A", "nami ablate B", "nami ablate --merge a b", "nami ablate C"):
        assert command in kept, command
    text = (tmp_path / "all.md").read_text()
    assert "`nami ablate A0`" in text and "`nami ablate B`" in text and "- chosen: wave" in text
    assert [r["command"] for r in merged["rows"][0]["runs"]] == ["nami ablate A", "nami ablate C"]


def test_what_wave_adds_compares_rows_of_the_same_suffix():
    from nami.reports.ablate import what_wave_adds

    def row(name, f1s):
        return {"name": name, "f1": sum(f1s) / len(f1s), "runs": [{"f1": f} for f in f1s]}

    lines = what_wave_adds([row("conv-only", [60, 61, 62]), row("wave+conv", [64, 65, 66]),
                            row("conv-only-noqm", [40, 42, 44]), row("wave+conv-noqm", [41, 43, 45])])
    assert lines[0].startswith("- with the question-match feature: `wave+conv` − `conv-only` = +4.00 F1")
    assert "not overlapping" in lines[0] and lines[1].endswith("overlapping)") and "not" not in lines[1]


def test_ablate_refuses_a_modified_checkout_unless_allowed(monkeypatch, tmp_path):
    import nami.reports.ablate as ablate

    monkeypatch.setattr(ablate, "git_commit", lambda: "abc-dirty")
    with pytest.raises(ValueError, match="uncommitted changes"):
        ablate.run_ablation(variants=["wave"], preset="smoke", out=str(tmp_path / "x"))
    assert not (tmp_path / "x.json").exists()


def test_a_stage_option_reaches_only_its_stage():
    from nami.reports.compare import stage_configs

    data = str(FIXTURES / "tiny_qa.json")
    given = parse_variant("tr-lr=transformer:attention_rope=true,pretrain.lr=0.0005,finetune.warmup=0.1")["tr-lr"]
    stages = stage_configs("smoke-pretrain", given.arch, minutes=None, pretrain_minutes=None, runs_dir="/tmp/x",
                           stamp="s", train_data=[data], eval_data=data, options=given.options, name=given.name)
    assert stages["pretrain"].lr == 0.0005 and stages["finetune"].lr != 0.0005
    assert stages["finetune"].warmup == 0.1 and stages["pretrain"].warmup != 0.1
    assert stages["pretrain"].model.attention_rope and stages["finetune"].model.attention_rope
    with pytest.raises(ValueError, match="no stage 'pretrainn'"):
        stage_configs("smoke-pretrain", "wave", minutes=None, pretrain_minutes=None, runs_dir="/tmp/x", stamp="s",
                      train_data=[data], eval_data=data, options={"pretrainn.lr": 1.0})


def test_a_preset_records_a_recipe_per_family(monkeypatch):
    from nami.reports import presets
    from nami.reports.compare import stage_configs

    spec = dict(presets.COMPARE_PRESETS["smoke-pretrain"])
    spec["family"] = {"transformer": {"pretrain": {"lr": 7e-4}, "finetune": {"warmup": 0.2}}}
    monkeypatch.setitem(presets.COMPARE_PRESETS, "smoke-pretrain", spec)
    data = str(FIXTURES / "tiny_qa.json")
    plan = {name: stage_configs("smoke-pretrain", resolve(name).arch, minutes=None, pretrain_minutes=None,
                                runs_dir="/tmp/x", stamp="s", train_data=[data], eval_data=data,
                                options=resolve(name).options, name=name)
            for name in ("transformer+rope", "wave+conv")}
    assert plan["transformer+rope"]["pretrain"].lr == 7e-4 and plan["transformer+rope"]["finetune"].warmup == 0.2
    assert plan["wave+conv"]["pretrain"].lr != 7e-4 and plan["wave+conv"]["finetune"].warmup != 0.2
    assert presets.recipe("smoke-pretrain", "pretrain", "transformer")["lr"] == 7e-4


def test_arch_takes_a_variant_name_on_the_command_line():
    """`nami train --arch wave_plus` (the best model by name) builds wave + a conv branch; options
    given on the command line still win; a plain architecture is unchanged."""
    from nami.cli import build_parser, train_config_from_args

    parser = build_parser()
    config = train_config_from_args(parser.parse_args(["train", "--arch", "wave_plus", "--preset", "tiny"]))
    assert config.arch == "wave" and config.model.branches == ["conv"] and config.notes["variant"] == "wave_plus"
    config = train_config_from_args(parser.parse_args(["train", "--arch", "conv-only"]))
    assert config.model.layer_mixers() == ["conv"] * 4 and config.model.d_ff == 1536
    config = train_config_from_args(parser.parse_args(["train", "--arch", "wave+conv", "--branches", "fft_gate"]))
    assert config.model.branches == ["fft_gate"]
    config = train_config_from_args(parser.parse_args(["train", "--arch", "transformer"]))
    assert config.arch == "transformer" and "variant" not in config.notes


def test_two_writers_of_one_output_are_refused(tmp_path):
    """Two nami ablate / compare into one --out at once lost a result (both exited 0); the second is refused."""
    from nami.io import CommandFailed, OutputLock
    from nami.reports.ablate import run_ablation

    data = str(FIXTURES / "tiny_qa.json")
    with OutputLock(tmp_path / ".abl.lock"):
        with pytest.raises(CommandFailed, match="another nami process is writing there"):
            run_ablation(variants=["wave"], preset="smoke", minutes=0.03, out=str(tmp_path / "abl"),
                         train_data=[data], eval_data=data, tokenizer=str(FIXTURES / "runs/wave/tokenizer"),
                         quiet=True, allow_dirty=True)
    assert not (tmp_path / "abl.json").exists()
    (tmp_path / "target").write_text("keep")
    (tmp_path / ".planted.lock").symlink_to(tmp_path / "target")
    with pytest.raises(CommandFailed, match="cannot lock"):
        OutputLock(tmp_path / ".planted.lock")
    assert (tmp_path / "target").read_text() == "keep"


def test_a_second_compare_into_the_same_out_is_refused_while_the_first_writes(tmp_path):
    from nami.io import CommandFailed, OutputLock
    from nami.reports.compare import run_compare

    data = str(FIXTURES / "tiny_qa.json")
    out = tmp_path / "cmp"
    (out / "runs").mkdir(parents=True)
    with OutputLock(out / ".compare.lock"):
        with pytest.raises(CommandFailed, match="another nami process is writing there"):
            run_compare(preset="smoke", out_dir=str(out), train_data=[data], eval_data=data,
                        tokenizer=str(FIXTURES / "runs/wave/tokenizer"), lexical_baseline=False, quiet=True)
    assert not (out / "results.json").exists()
