"""Peak memory and time of one causal-LM pretraining step: ``impl="auto"`` vs ``impl="naive"``.

The causal LM puts a target at every position, so the vocabulary layer is where materialised
logits would be largest: batch 32 × 512 = 16,384 targets × 32,000 classes. Same method as
``benchmarks/pretrain_step_memory.py``: each (decoder, impl) in a fresh subprocess; peak =
``ru_maxrss`` after a warm-up and ``--steps`` measured steps minus the resident set before the first
step (model, AdamW and batch allocated); time = median step. Preset ``small``, bf16 autocast, AdamW.

    python benchmarks/clm_step_memory.py     # → results/clm_step_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(arch: str, impl: str, steps: int, vocab: int, batch: int, seq: int, threads: int) -> dict:
    import numpy as np
    import torch

    from nami.data.clm import CLMCollator
    from nami.losses import linear_cross_entropy, resolve_impl
    from nami.models import CausalLMModel, ModelConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CausalLMModel(ModelConfig.from_name("small", arch, vocab_size=vocab, max_len=seq))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    sequences = [np.concatenate([[2], rng.integers(5, vocab, size=seq - 1)]) for _ in range(batch)]
    data = CLMCollator(sequences, pad_id=0)(list(range(batch)))
    targets = data["targets"].reshape(-1)
    keep = (targets != -100).nonzero().squeeze(1)

    def step() -> float:
        tick = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model(data["input_ids"], data["attention_mask"])
            hidden = hidden.reshape(-1, hidden.shape[-1])[keep]
            loss = linear_cross_entropy(hidden, model.output_weight, targets[keep], impl=impl)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - tick

    baseline = rss_mb()
    step()
    times = [step() for _ in range(steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"arch": arch, "impl": impl, "resolved_impl": resolve_impl(impl, "cpu", compute_dtype=torch.bfloat16),
            "targets": int(len(keep)), "time_ms": 1000 * statistics.median(times),
            "peak_over_baseline_mb": peak - baseline, "baseline_rss_mb": baseline, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("ARCH", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=str(ROOT / "results"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.vocab, args.batch, args.seq, args.threads)))
        return
    from nami.io import write_json
    from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines

    records = []
    for arch in ("wave", "transformer"):
        for impl in ("naive", "auto"):
            cmd = [sys.executable, __file__, "--worker", arch, impl, "--steps", str(args.steps), "--vocab",
                   str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            records.append(json.loads(out))
            print(records[-1], flush=True)
    report = {"command": "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]]),
              "commit": git_commit(), "machine": machine_description(), "date": now_iso(),
              "setting": {"vocab": args.vocab, "batch": args.batch, "seq": args.seq, "preset": "small",
                          "precision": "bf16 autocast", "threads": args.threads}, "records": records}
    out_dir = Path(args.out_dir)
    write_json(out_dir / "clm_step_memory.json", report)
    lines = ["# Memory of one causal-LM pretraining step: auto vs naive", "", *provenance_lines(report),
             f"- setting: vocabulary {args.vocab}, batch {args.batch} × {args.seq} tokens, a target at every position, "
             "preset small, bf16 autocast, AdamW",
             "- method: fresh subprocess per row; peak = ru_maxrss after a warm-up and the measured steps minus the "
             "RSS before the first step (AdamW state included for every row)", "",
             "| decoder | impl (resolved) | targets | step ms | peak over baseline MB |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['arch']} | {r['impl']} ({r['resolved_impl']}) | {r['targets']} | {r['time_ms']:.0f} | "
              f"{r['peak_over_baseline_mb']:.0f} |" for r in records]
    (out_dir / "clm_step_memory.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'clm_step_memory.json'} and .md")


if __name__ == "__main__":
    main()
