"""Is bf16 autocast faster than fp32 on this machine? The evidence behind ``--precision auto``.

    python benchmarks/precision_check.py [--repeats 3] [--out results/precision.json]

Measures, on this host: the GEMM speed (2048² products, median of 7) in fp32 and bf16, and one
``small``-preset QA training step (8 × 512 tokens, forward + backward, one fresh process per case
through the ``nami bench`` worker) of Wave and the Transformer in both precisions; records whether
the CPU has native bf16 (:func:`nami.resources.native_bf16`) and what ``auto`` chooses. On CPUs
without AMX / AVX512-BF16, PyTorch emulates bf16 and the bf16 step is several times slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nami.io import write_json
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import native_bf16, resolve_precision


def gemm_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tick)
    return 2 * n**3 / statistics.median(times) / 1e9


def training_step(model: str, precision: str, repeats: int) -> dict:
    spec = {"model": model, "preset": "small", "seq_len": 512, "batch": 8, "mode": "train", "repeats": repeats,
            "warmup": 1, "precision": precision, "max_len": 512}
    out = subprocess.run([sys.executable, "-m", "nami.bench.worker", json.dumps(spec)], capture_output=True,
                         text=True, check=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return {"model": model, "precision": precision, "tokens_per_s": record["tokens_per_s"],
            "seconds_per_step": record["seconds_per_step"], "activation_mb": record["activation_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/precision.json")
    args = parser.parse_args()
    gemm = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    steps = [training_step(model, precision, args.repeats) for model in ("wave", "transformer")
             for precision in ("fp32", "bf16")]
    result = {"command": " ".join(["python", *sys.argv]), "commit": git_commit(), "machine": machine_description(),
              "date": now_iso(), "native_bf16": native_bf16("cpu"), "auto_chooses": resolve_precision("auto"),
              "gemm_gflops": gemm, "training_steps": steps}
    out = Path(args.out)
    write_json(out, result)
    lines = ["# bf16 autocast vs fp32 on this machine", "",
             f"Native bf16 (AMX / AVX512-BF16): **{'yes' if result['native_bf16'] else 'no'}**; "
             f"`--precision auto` chooses **{result['auto_chooses']}**.", "",
             "| measurement | fp32 | bf16 | bf16 ÷ fp32 |", "| --- | --- | --- | --- |",
             f"| GEMM 2048², GFLOP/s | {gemm['fp32']:,.1f} | {gemm['bf16']:,.1f} | {gemm['bf16'] / gemm['fp32']:.2f}× |"]
    for model in ("wave", "transformer"):
        by = {s["precision"]: s for s in steps if s["model"] == model}
        lines.append(f"| {model} training step (small, 8 × 512), tokens/s | {by['fp32']['tokens_per_s']:,.0f} | "
                     f"{by['bf16']['tokens_per_s']:,.0f} | "
                     f"{by['bf16']['tokens_per_s'] / by['fp32']['tokens_per_s']:.2f}× |")
    lines += ["", "Training steps: median of the repeats, one fresh process per case (`nami.bench.worker`).", "",
              *provenance_lines(result, machine_note=f"{torch.get_num_threads()} threads, alone on the machine")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
