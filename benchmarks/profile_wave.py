"""Where a Wave training step spends its time, eager vs ``torch.compile``-d Wave maths.

    python benchmarks/profile_wave.py [--seq-len 512] [--batch 32] [--repeats 5]

For each variant (eager, compiled): the median step time of ``repeats`` forward + backward steps of
the QA span loss (``small`` preset, bf16 autocast) after warm-up, then one step under
``torch.profiler`` whose operators are grouped into matrix products, the Wave layer's element-wise
maths and everything else. Writes results/wave_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nami.models import QAModel, preset_config
from nami.models.speed import compile_wave_layers
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import tune_malloc

MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul", "mkldnn", "onednn")


def step_fn(model: QAModel, batch: int, seq_len: int):
    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len))
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    starts, ends = torch.randint(0, seq_len, (batch,)), torch.randint(0, seq_len, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = QAModel.loss(model(ids, mask), starts, ends)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def measure(variant: str, seq_len: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = QAModel(preset_config("small", "wave", max_len=seq_len))
    mix = compile_wave_layers(model) if variant == "compiled" else None
    step = step_fn(model, batch, seq_len)
    for _ in range(3):  # warm-up (compilation happens here)
        step()
    if mix is not None and mix.failure:
        raise SystemExit(f"torch.compile failed: {mix.failure}")
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in ops)
    groups = {"matrix products": 0.0, "other": 0.0}
    for name, t in ops:
        groups["matrix products" if any(m in name for m in MATMUL_OPS) else "other"] += t
    top = sorted(ops, key=lambda kv: -kv[1])[:12]
    return {
        "variant": variant, "seconds_per_step": statistics.median(times), "step_times": times,
        "tokens_per_s": batch * seq_len / statistics.median(times),
        "profile_share": {k: v / total for k, v in groups.items()},
        "top_ops": [{"op": name, "self_cpu_ms": t / 1000, "share": t / total} for name, t in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/wave_profile.json")
    args = parser.parse_args()
    commit = git_commit()  # at the start: the code measured is the code recorded
    malloc = tune_malloc()  # as every nami command does (nami.resources.tune_malloc)
    runs = [measure(v, args.seq_len, args.batch, args.repeats) for v in ("eager", "compiled")]
    result = {"runs": runs, "speedup_compiled": runs[0]["seconds_per_step"] / runs[1]["seconds_per_step"],
              "settings": vars(args), "command": "python benchmarks/profile_wave.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "commit": commit, "machine": machine_description(), "date": now_iso(),
              "threads": torch.get_num_threads(), "malloc_tuning": malloc}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    lines = [f"# Wave training step profile (small preset, S={args.seq_len}, batch {args.batch}, bf16)", "",
             "| variant | ms / step | tokens/s | matrix products | other ops |", "| --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r['variant']} | {1000 * r['seconds_per_step']:.0f} | {r['tokens_per_s']:,.0f} | "
                     f"{100 * r['profile_share']['matrix products']:.0f}% | {100 * r['profile_share']['other']:.0f}% |")
    lines += ["", f"compiled / eager speed-up: {result['speedup_compiled']:.2f}×", ""]
    for r in runs:
        lines += [f"Top operators ({r['variant']}, self CPU time of one profiled step):", "",
                  "| op | ms | share |", "| --- | --- | --- |"]
        lines += [f"| `{o['op']}` | {o['self_cpu_ms']:.1f} | {100 * o['share']:.1f}% |" for o in r["top_ops"]]
        lines.append("")
    lines += provenance_lines(result, machine_note=f"{result['threads']} threads")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
