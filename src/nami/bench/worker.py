"""One benchmark case in a fresh process: ``python -m nami.bench.worker '<json spec>'`` → one JSON line.

A fresh process per case makes its peak memory its own: ``ru_maxrss`` after the timed steps is
the peak of everything this case needed, and ``activation_mb`` subtracts the resident memory
measured just before the first step (interpreter, torch, weights and inputs), leaving what the
steps themselves added (activations, gradients, autograd buffers, allocator caches).

spec: ``{"model": "wave"|"transformer", "preset", "seq_len", "batch", "mode": "train"|"infer",
"repeats", "warmup", "precision": "bf16"|"fp32", "threads", "max_len", "vocab_size", "compile",
"autograd", "profile"}`` (``autograd``: the Wave maths through autograd instead of the hand-written
backward; ``profile``: one more step under the profiler, split into matrix products and the rest).
Training time is forward + backward of the QA span loss (no optimizer step: its cost depends only on
the parameter count, which both models share).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

from nami.models import QAModel, count_parameters, preset_config
from nami.resources import peak_rss_mb

# Operators that are matrix products (GEMMs) in a CPU profile: ATen's and oneDNN's.
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul", "mkldnn", "onednn")


def profile_split(step) -> dict[str, float]:
    """One more ``step()`` under ``torch.profiler``: milliseconds of operator self time in matrix
    products (:data:`MATMUL_OPS`) and in everything else (element-wise maths, normalisation, copies,
    reductions). On a CPU without native bf16 the matrix products are emulated, but the rest is
    measured for real, so ``other_ms`` compares bf16 element-wise work across variants on any host."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    gemm = other = 0.0
    for event in prof.key_averages():
        if any(name in event.key for name in MATMUL_OPS):
            gemm += event.self_cpu_time_total
        else:
            other += event.self_cpu_time_total
    return {"gemm_ms": gemm / 1000, "other_ms": other / 1000}


def current_rss_mb() -> float:
    """Resident memory now (``/proc/self/statm``; Linux), in MiB."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    import resource

    return resident_pages * resource.getpagesize() / 2**20


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """This process's measured memory read bandwidth (GB/s): the median time to sum a ``megabytes``
    fp32 tensor (larger than the caches), the threads torch uses. A decoding step bound by the
    bytes it reads cannot take less than bytes ÷ this."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()  # warm-up: pages touched
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - tick)
    return round(x.numel() * 4 / statistics.median(times) / 1e9, 2)


def run_generation_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Generation from ``batch`` random prompts of ``prompt_len`` tokens each: prefill time, decoding
    tokens/s (all rows) for ``new_tokens`` greedy tokens per row, the decoding state's size, the bytes
    of weights one decoding step reads, and the process's peak memory."""
    from nami.models import CausalLMModel, ModelConfig, generate

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    prompt_len, new_tokens = spec["prompt_len"], spec["new_tokens"]
    config = ModelConfig.from_name(spec.get("preset", "small"), spec.get("arch", spec["model"]),
                                   vocab_size=spec.get("vocab_size", 32000), max_len=prompt_len + new_tokens + 1,
                                   **spec.get("options", {}))
    model = CausalLMModel(config).eval()
    batch = spec.get("batch", 1)
    prompts = torch.randint(5, config.vocab_size, (batch, prompt_len)).tolist()
    bf16 = spec.get("precision", "bf16") == "bf16"
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    runner = torch.compile(model) if spec.get("compile") else model
    with context:
        # Warm-up (kernel creation; compiled: the prefill and step graphs, several steps so that a
        # growing key/value cache has become a dynamic dimension before the timed steps).
        static = spec.get("static_cache", True)
        generate(runner, [p[:16] for p in prompts], max_new_tokens=8 if spec.get("compile") else 2, eos_id=None,
                 static_cache=static)
        rss_before = current_rss_mb()
        stamps: list[float] = []
        tick = time.perf_counter()
        out, cache = generate(runner, prompts, max_new_tokens=new_tokens, eos_id=None, static_cache=static,
                              on_token=lambda _: stamps.append(time.perf_counter()))
    prefill_s = stamps[0] - tick  # prefill + the first token
    decode_s = max(stamps[-1] - stamps[0], 1e-9)  # the new_tokens − 1 decoding steps after it, timed directly
    # Each step's own time too: its median is not moved by a few steps that another process on a
    # shared host interrupted, which the mean (tokens_per_s) is.
    median_step_s = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    # Bytes of weights a decoding step reads: every matrix once (bf16 copies under autocast, fp32
    # otherwise), whatever the batch; the embedding table only at B rows (not counted), except as
    # the tied output matrix (counted once). Vectors (biases, LayerNorms) are negligible.
    width = 2 if bf16 else 4
    weight_bytes = sum(p.numel() * width for name, p in model.named_parameters() if p.dim() == 2
                       and "position" not in name and "segment" not in name)
    return {**spec, "batch": batch, "params": count_parameters(model)["total"], "prefill_seconds": prefill_s,
            "decode_seconds": decode_s, "tokens_per_s": batch * (len(out[0]) - 1) / decode_s,
            "weights_mb_per_step": round(weight_bytes / 2**20, 3),
            "median_step_ms": 1000 * median_step_s,
            "state_mb": round(cache.nbytes() / 2**20, 3), "peak_mb": round(peak_rss_mb(), 1),
            "bandwidth_gbs": memory_bandwidth_gbs(),
            "added_mb": round(peak_rss_mb() - rss_before, 1), "threads_used": torch.get_num_threads()}


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("mode") == "generate":
        return run_generation_case(spec)
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    config = preset_config(spec.get("preset", "small"), spec["model"], vocab_size=spec.get("vocab_size", 32000),
                           max_len=spec["max_len"], **spec.get("options", {}))  # options: e.g. wave_plus's branches
    model = QAModel(config)
    if spec.get("compile") and spec["model"] == "wave":
        from nami.models.speed import compile_wave_layers

        compile_wave_layers(model)
    if spec.get("autograd") and spec["model"] == "wave":  # the plain maths under autograd (the reference)
        from nami.models.speed import autograd_wave_layers

        autograd_wave_layers(model)
    batch, seq_len = spec["batch"], spec["seq_len"]
    ids = torch.randint(5, config.vocab_size, (batch, seq_len))
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    starts = torch.randint(0, seq_len, (batch,))
    ends = torch.randint(0, seq_len, (batch,))
    bf16 = spec.get("precision", "bf16") == "bf16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    train = spec["mode"] == "train"
    model.train(train)

    def step() -> None:
        if train:
            with autocast():
                loss = QAModel.loss(model(ids, mask), starts, ends)
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast():
                model(ids, mask)

    rss_before = current_rss_mb()
    for _ in range(spec.get("warmup", 1)):
        step()
    times = []
    for _ in range(spec.get("repeats", 3)):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    seconds = statistics.median(times)
    peak = peak_rss_mb()  # before the profiled step: the profiler's own buffers are not the model's
    split = profile_split(step) if spec.get("profile") else {}
    return {
        **split,
        **spec,
        "params": count_parameters(model)["total"],
        "seconds_per_step": seconds,
        "step_times": times,
        "tokens_per_s": batch * seq_len / seconds,
        "peak_mb": round(peak, 1),
        "activation_mb": round(peak - rss_before, 1),
        "threads_used": torch.get_num_threads(),
    }


if __name__ == "__main__":
    from nami.resources import tune_malloc

    malloc = tune_malloc()
    print(json.dumps({**run_case(json.loads(sys.argv[1])), "malloc_tuning": malloc}), flush=True)
