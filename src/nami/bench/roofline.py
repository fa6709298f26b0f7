"""``nami bench roofline``: this machine's GEMM throughput, and how much of it model training uses.

The roof is the median TFLOP/s of square matrix products (``n × n @ n × n`` = 2·n³ FLOPs) in fp32
and in bf16 (on CPU: AMX / AVX-512-BF16 through oneDNN), with all threads.

Model FLOPs are counted analytically — matrix products only (element-wise work, normalisation and
softmax are not counted, so utilisation is a lower bound on how busy the cores are). Per token and
layer, forward, with width D, feed-forward width F and sequence length S:

- Wave layer: ``to_waves`` D→2D and ``out`` 2D→D: 2·(2D²) + 2·(2D²) = 8·D²
- attention: ``qkv`` D→3D and ``out`` D→D: 8·D²; scores QKᵀ and weighted values: 2·S·D + 2·S·D = 4·S·D
- feed-forward: D→F→D: 4·D·F
- span head: D→2: 4·D

Training (forward + backward) = 3 × forward: the backward pass computes two products of each
forward one (input and weight gradients). The measured step is the scaling benchmark's
training case (forward + backward of the QA loss, no optimizer step), in a fresh process; one more
step under ``torch.profiler`` splits its time into matrix products and the rest (``other ms``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nami.bench.scaling import VARIANT_OPTIONS, VARIANTS, CaseFailed, run_isolated
from nami.models import preset_config
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import native_bf16


def gemm_tflops(n: int, dtype: torch.dtype, repeats: int = 10) -> dict[str, Any]:
    """Median TFLOP/s of ``a @ b`` for ``n × n`` matrices of ``dtype`` (one warm-up product first)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - tick)
    seconds = statistics.median(times)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
            "tflops": 2 * n**3 / seconds / 1e12}


def forward_flops_per_token(arch: str, d_model: int, d_ff: int, n_layers: int, seq_len: int) -> float:
    """Matrix-product FLOPs of one token's forward pass (formulas in the module docstring)."""
    mixing = 8 * d_model**2 + (4 * seq_len * d_model if arch == "transformer" else 0)
    return n_layers * (mixing + 4 * d_model * d_ff) + 4 * d_model


def training_flops_per_token(arch: str, d_model: int, d_ff: int, n_layers: int, seq_len: int) -> float:
    return 3 * forward_flops_per_token(arch, d_model, d_ff, n_layers, seq_len)


def run_roofline(
    *,
    seq_len: int = 512,
    tokens: int = 16384,
    preset: str = "small",
    sizes: tuple[int, ...] = (1024, 2048, 4096),
    repeats: int = 5,
    threads: int | None = None,
    out: str | None = "results/roofline.json",
    command: str = "nami bench roofline",
    quiet: bool = False,
) -> dict[str, Any]:
    if min(seq_len, tokens, repeats, *sizes) <= 0 or (threads is not None and threads <= 0):
        raise ValueError("--seq-len, --tokens, --repeats and --threads must be positive")
    if threads:
        torch.set_num_threads(threads)
    commit = git_commit()
    shapes = [(dtype, n) for dtype in (torch.float32, torch.bfloat16) for n in sizes]
    gemms = [gemm_tflops(n, dtype) for dtype, n in tqdm(shapes, desc="GEMM roof", disable=quiet, unit="shape")]
    roof = {dtype: max(g["tflops"] for g in gemms if g["dtype"] == dtype) for dtype in ("float32", "bfloat16")}
    shape = preset_config(preset, "wave")
    models = []
    # wave: the default (hand-written backward); wave-autograd: autograd through the plain maths
    variants = [(precision, name) for precision in ("bf16", "fp32")
                for name in ("wave", "wave-compiled", "wave-autograd", "wave_plus", "transformer")]
    bar = tqdm(variants, desc="training steps", disable=quiet, unit="model")
    for precision, name in bar:
        bar.set_postfix_str(f"{name} {precision}")
        dtype = "bfloat16" if precision == "bf16" else "float32"
        arch, compiled = VARIANTS[name]
        spec = dict(model=arch, options=VARIANT_OPTIONS.get(name, {}), preset=preset, seq_len=seq_len,
                    batch=max(1, tokens // seq_len), mode="train",
                    repeats=repeats, warmup=2, precision=precision, threads=threads, max_len=seq_len, compile=compiled,
                    autograd=name == "wave-autograd", profile=True)
        try:
            case = run_isolated(spec, memory_cap_mb=16000, time_limit_s=900)
        except CaseFailed as failure:
            models.append({"model": arch, "variant": name, "precision": precision, "skipped": str(failure)})
            continue
        flops = training_flops_per_token(arch, shape.d_model, shape.d_ff, shape.n_layers, seq_len)
        achieved = flops * case["tokens_per_s"] / 1e12
        models.append({
            "model": arch, "variant": name, "compiled": compiled, "precision": precision, "seq_len": seq_len,
            "batch": spec["batch"], "train_tokens_per_s": case["tokens_per_s"], "training_flops_per_token": flops,
            "achieved_tflops": achieved, "roof_tflops": roof[dtype], "utilisation": achieved / roof[dtype],
            "gemm_ms": case.get("gemm_ms"), "other_ms": case.get("other_ms"),
        })
    result = {
        "gemm": gemms, "roof_tflops": roof, "models": models, "native_bf16": native_bf16(torch.device("cpu")),
        "settings": {"preset": preset, "seq_len": seq_len, "tokens_per_step": tokens, "repeats": repeats,
                     "threads": torch.get_num_threads()},
        "flop_formula": "per token and layer, forward: Wave 8·D² ; attention 8·D² + 4·S·D ; FFN 4·D·F ; "
                        "+ span head 4·D ; training = 3 × forward; matrix products only",
        "command": command, "commit": commit, "machine": machine_description(), "date": now_iso(),
    }
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
        path.with_suffix(".md").write_text(markdown(result), "utf-8")
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Roofline: GEMM throughput and training FLOP utilisation", "",
             "| GEMM n | dtype | TFLOP/s |", "| --- | --- | --- |"]
    lines += [f"| {g['n']} | {g['dtype']} | {g['tflops']:.3f} |" for g in result["gemm"]]
    s = result["settings"]
    lines += ["", f"Training step (forward + backward), preset `{s['preset']}`, S = {s['seq_len']}, "
              f"{s['tokens_per_step']:,} tokens per step, {s['threads']} threads:", "",
              "| model | precision | train tok/s | GFLOP per token | achieved TFLOP/s | roof TFLOP/s | utilisation "
              "| matrix products ms | other ms |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def ms(value) -> str:
        return f"{value:,.0f}" if value is not None else "–"

    for m in result["models"]:
        if "skipped" in m:
            lines.append(f"| {m['variant']} | {m['precision']} | not measured: {m['skipped']} | | | | | | |")
            continue
        lines.append(f"| {m['variant']} | {m['precision']} | {m['train_tokens_per_s']:,.0f} | "
                     f"{m['training_flops_per_token'] / 1e9:.4f} | {m['achieved_tflops']:.3f} | "
                     f"{m['roof_tflops']:.3f} | {100 * m['utilisation']:.1f}% | {ms(m.get('gemm_ms'))} | "
                     f"{ms(m.get('other_ms'))} |")
    lines += ["", "matrix products ms / other ms: operator self time of one more step under `torch.profiler`, in "
              "matrix products and in everything else (element-wise maths, normalisation, copies, reductions). The "
              "Transformer's attention kernel (`scaled_dot_product_*_attention`) does its own matrix products inside "
              "and counts as other."]
    if result.get("native_bf16") is False:
        lines += ["", "This CPU has no native bf16 (no AMX / AVX512-BF16): its bf16 GEMMs are emulated, so the bf16 "
                  "rows measure the emulation, not a bf16 roof; the fp32 rows are this host's comparison. The bf16 "
                  "rows' other ms is measured for real (only the matrix products are emulated): the time a bf16 "
                  "step spends outside them."]
    lines += ["", f"- FLOPs: {result['flop_formula']}", *provenance_lines(result)]
    return "\n".join(lines) + "\n"
