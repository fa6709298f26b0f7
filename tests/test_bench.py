"""Benchmark machinery: FLOP formulas against torch's counter, slopes, the memory cap."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nami.bench.roofline import forward_flops_per_token, training_flops_per_token
from nami.bench.scaling import CaseFailed, loglog_slope, run_isolated, slopes
from nami.models import ARCHITECTURES, ModelConfig, QAModel, preset_config
from nami.reports.environment import provenance_lines


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_analytic_flops_match_torch_flop_counter(arch):
    config = preset_config("tiny", arch, vocab_size=50, max_len=64)
    model = QAModel(config)
    batch, seq_len = 2, 32
    ids, mask = torch.randint(5, 50, (batch, seq_len)), torch.ones(batch, seq_len, dtype=torch.bool)
    # The math backend spells attention out as matrix products the counter sees (it does not count
    # the fused CPU attention kernel); the FLOPs are the same.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        model(ids, mask)
    expected = forward_flops_per_token(arch, config.d_model, config.d_ff, config.n_layers, seq_len) * batch * seq_len
    assert forward.get_total_flops() == expected
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as train:
        QAModel.loss(model(ids, mask), torch.tensor([1, 2]), torch.tensor([3, 4])).backward()
    total = training_flops_per_token(arch, config.d_model, config.d_ff, config.n_layers, seq_len) * batch * seq_len
    # backward = 2 x forward, except that the first layer's input gradient (into the embeddings) is not needed
    assert 0.95 * total <= train.get_total_flops() <= total


def test_loglog_slope_recovers_powers():
    xs = [128, 256, 512, 1024]
    assert loglog_slope(xs, [3 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [x**2 / 7 for x in xs]) == pytest.approx(2.0)
    assert loglog_slope([5], [1]) is None


def test_slopes_use_long_sequences_only():
    rows = [{"model": "wave", "variant": "wave", "seq_len": s, "train_tokens_per_s": 1000.0,
             "infer_tokens_per_s": 1000.0} for s in (128, 1024, 2048, 4096)]
    rows[0]["train_tokens_per_s"] = 1.0  # a distorted short-sequence point must not bend the fit
    memory = [{"model": "wave", "variant": "wave", "seq_len": s, "train_activation_mb": s / 10,
               "infer_activation_mb": math.sqrt(s)} for s in (1024, 2048, 4096)]
    fitted = slopes(rows, memory)["wave"]
    assert fitted["train_seconds_per_sequence"] == pytest.approx(1.0)
    assert fitted["train_activation_mb_batch1"] == pytest.approx(1.0)
    assert fitted["infer_activation_mb_batch1"] == pytest.approx(0.5)


def test_a_case_over_the_memory_cap_is_stopped_and_reported():
    spec = dict(model="wave", preset="tiny", seq_len=64, batch=2, mode="infer", repeats=1, warmup=1,
                precision="fp32", threads=1, max_len=64, vocab_size=50)
    with pytest.raises(CaseFailed, match="over the memory cap of 50 MB"):
        run_isolated(spec, memory_cap_mb=50, time_limit_s=120)
    case = run_isolated(spec, memory_cap_mb=8000, time_limit_s=120)
    assert case["tokens_per_s"] > 0 and case["peak_mb"] > 50 and case["batch"] == 2


def test_a_profiled_case_splits_its_step_into_matrix_products_and_the_rest():
    """The roofline's ``profile`` spec: one more step under the profiler, its operator self time split
    into GEMMs and the rest; a case without it has no split."""
    from nami.bench.worker import profile_split, run_case

    a = torch.randn(256, 256)
    products = profile_split(lambda: torch.mm(a, a) @ a)
    elementwise = profile_split(lambda: torch.exp(a).mul_(2).sum())
    assert products["gemm_ms"] > 0 and products["gemm_ms"] > products["other_ms"]
    assert elementwise["gemm_ms"] == 0 and elementwise["other_ms"] > 0
    spec = dict(model="wave", preset="tiny", seq_len=32, batch=2, mode="train", repeats=1, warmup=1,
                precision="fp32", threads=1, max_len=32, vocab_size=50)
    assert "gemm_ms" not in run_case(spec)
    case = run_case({**spec, "profile": True})
    assert case["gemm_ms"] > 0 and case["other_ms"] > 0


def test_wave_plus_is_measured_with_its_conv_branch():
    """roofline / scaling measure ``wave_plus`` as the variant table defines it: the Wave model plus a
    depthwise conv branch in every block (k·D + D more parameters per layer than plain Wave)."""
    from nami.bench.scaling import VARIANT_OPTIONS, VARIANTS
    from nami.bench.worker import run_case
    from nami.models import ModelConfig

    assert VARIANTS["wave_plus"] == ("wave", False) and VARIANT_OPTIONS["wave_plus"] == {"branches": ["conv"]}
    spec = dict(model="wave", preset="tiny", seq_len=32, batch=2, mode="train", repeats=1, warmup=1,
                precision="fp32", threads=1, max_len=32, vocab_size=50)
    plain, plus = run_case(spec), run_case({**spec, "options": VARIANT_OPTIONS["wave_plus"]})
    config = ModelConfig.from_name("tiny", "wave")
    assert plus["params"] - plain["params"] == config.n_layers * (config.conv_kernel + 1) * config.d_model


def test_malloc_tuning_applies_on_linux_and_can_be_turned_off(monkeypatch):
    import sys

    from nami.resources import tune_malloc

    monkeypatch.setenv("NAMI_MALLOC_TUNING", "0")
    assert tune_malloc().startswith("off")
    monkeypatch.delenv("NAMI_MALLOC_TUNING")
    applied = tune_malloc()
    if sys.platform.startswith("linux"):
        assert applied == {"M_MMAP_THRESHOLD": 32 * 2**20, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 256 * 2**20}
    else:
        assert applied.startswith("not applied")


@pytest.mark.parametrize("command", [["scaling", "--seq-lens", "0"], ["roofline", "--seq-len", "0"],
                                     ["roofline", "--repeats", "-1"]])
def test_bad_bench_options_are_one_clear_error_and_write_nothing(command, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "nami", "bench", *command, "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "expected a finite integer >= 1" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_provenance_lines_name_command_commit_machine_and_date_in_one_form():
    record = {"command": "nami bench x --y 1", "commit": "abc123", "machine": "CPU, 2 CPUs", "date": "2026-11-30"}
    assert provenance_lines(record) == ["- command: `nami bench x --y 1`", "- commit: `abc123`",
                                        "- machine: CPU, 2 CPUs", "- date: 2026-11-30"]
    assert provenance_lines(record, machine_note="2 threads")[2] == "- machine: CPU, 2 CPUs; 2 threads"
    with pytest.raises(KeyError, match="lacks commit, date"):
        provenance_lines({"command": "c", "machine": "m"})


@pytest.mark.slow
def test_generation_bench_measures_the_decoders(tmp_path):
    from nami.bench.generation import MODELS, run_generation_bench

    result = run_generation_bench(prompt_lens=(16, 48), new_tokens=4, preset="tiny", precision="fp32", threads=1,
                                  batch=2, repeats=2, out=str(tmp_path / "generation.json"), quiet=True,
                                  time_limit_s=120)
    assert not result["skipped"]
    by = {(r["model"], r["prompt_len"]): r for r in result["records"]}
    assert set(by) == {(m, p) for m in MODELS for p in (16, 48)}
    for wave in ("wave", "wave+conv"):
        assert by[wave, 16]["state_mb"] == by[wave, 48]["state_mb"]  # a constant decoding state
    for transformer in ("transformer", "transformer-static"):
        assert by[transformer, 48]["state_mb"] > by[transformer, 16]["state_mb"]
    assert all(r["tokens_per_s"] > 0 and r["bandwidth_gbs"] > 0 and r["bound_step_ms"] > 0 for r in result["records"])
    assert len(result["ratios"]) == 2
    for r in result["records"]:  # the median step lies within the timed steps: at most their total (2 rows a step)
        assert r["batch"] == 2 and len(r["repeats_tokens_per_s"]) == 2  # one fresh process per repeat, median kept
        assert r["tokens_per_s"] == pytest.approx(sum(r["repeats_tokens_per_s"]) / 2)  # the median of two
        assert 0 < r["median_step_ms"] <= 1000 * (4 - 1) * 2 / min(r["repeats_tokens_per_s"])
        bytes_mb = r["weights_mb_per_step"] + r["state_mb"]
        assert r["bound_step_ms"] == pytest.approx(bytes_mb * 2**20 / (r["bandwidth_gbs"] * 1e9) * 1e3)
    # Same-size decoders read the same weights per step: 4·D² per mixer, the FFN, the tied (V, D) matrix, fp32.
    config = ModelConfig.from_name("tiny", "wave", vocab_size=32000)
    expected_mb = 4 * (config.n_layers * (4 * config.d_model**2 + 2 * config.d_model * config.d_ff)
                       + config.vocab_size * config.d_model) / 2**20
    assert by["wave", 16]["weights_mb_per_step"] == by["transformer", 16]["weights_mb_per_step"] \
        == pytest.approx(expected_mb, abs=1e-3)
    for ratio in result["ratios"]:
        a, b = by["wave", ratio["prompt_len"]], by["transformer", ratio["prompt_len"]]
        static = by["transformer-static", ratio["prompt_len"]]
        assert ratio["wave_over_transformer_median_step"] == pytest.approx(b["median_step_ms"] / a["median_step_ms"])
        assert ratio["wave_over_transformer_static_median_step"] == pytest.approx(static["median_step_ms"]
                                                                                 / a["median_step_ms"])
        assert ratio["bytes_ratio"] == pytest.approx((b["weights_mb_per_step"] + b["state_mb"])
                                                     / (a["weights_mb_per_step"] + a["state_mb"]))
        conv = by["wave+conv", ratio["prompt_len"]]
        assert ratio["conv_step_cost"] == pytest.approx(conv["median_step_ms"] / a["median_step_ms"] - 1)
    # The Transformer's cache grows with the prompt, Wave's state does not.
    assert result["ratios"][1]["bytes_ratio"] > result["ratios"][0]["bytes_ratio"] > 1
    assert "transformer-static" in (tmp_path / "generation.md").read_text()
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / f"generation{suffix}").stat().st_size > 0


def test_a_case_that_prints_a_lot_is_not_stalled_by_its_pipes(tmp_path, monkeypatch):
    """Output over a pipe's 64 KiB (a compiler log) once blocked the worker until its time limit."""
    import sys

    from nami.bench.scaling import run_isolated

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\000' x >&2\necho '{\"ok\": 1}'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    assert run_isolated({}, memory_cap_mb=16000, time_limit_s=20) == {"ok": 1}
