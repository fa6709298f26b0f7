"""What dropout costs a QA training step on CPU: none vs hidden-state dropout vs hidden + attention.

Setting: the ``standard`` compare preset's QA step — ``small`` preset (d=256, 4 layers), batch
32 × 256 tokens (the last 56 padding), bf16 autocast, span loss, backward, AdamW step; Wave with its
element-wise maths compiled (``compile_wave``, as the preset trains it). For each architecture the
dropout variants are built with identical weights and timed round-robin (one step of each in
turn), so machine drift hits all of them alike; the figure is the median over ``--steps`` steps
after ``--warmup`` untimed ones, and the ratio is against the no-dropout variant of the same run.

Why it matters: ``scaled_dot_product_attention`` with ``dropout_p > 0`` draws one random number
per (head, query, key) — B·H·S² per layer — while hidden-state dropout draws B·S·D per call.

    python benchmarks/dropout_cost.py     # → results/dropout_cost.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (dropout, attention_dropout)
    "none": (0.0, 0.0),
    "hidden 0.1": (0.1, 0.0),
    "hidden + attention 0.1": (0.1, 0.1),
}


def measure(arch: str, steps: int, warmup: int, batch: int, seq: int, real: int) -> list[dict]:
    import torch

    from nami.models import preset_config
    from nami.models.qa import QAModel
    from nami.models.speed import compile_wave_layers

    torch.manual_seed(0)
    ids = torch.randint(5, 32000, (batch, seq))
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[:, :real] = True
    starts, ends = torch.randint(1, real // 2, (batch,)), torch.randint(real // 2, real, (batch,))
    models, optimizers = {}, {}
    reference = None
    for name, (dropout, attention_dropout) in VARIANTS.items():
        if arch == "wave" and attention_dropout != dropout:
            continue  # no attention in the Wave encoder: "hidden" is all of its dropout
        config = preset_config("small", arch, vocab_size=32000, max_len=seq, dropout=dropout,
                               attention_dropout=attention_dropout, type_vocab_size=2)
        model = QAModel(config).train()
        if reference is None:
            reference = model.state_dict()
        model.load_state_dict(reference)
        if arch == "wave":
            compile_wave_layers(model)
        models[name] = model
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        tick = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, mask, torch.zeros_like(ids))
            loss = model.loss(logits, starts, ends)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - tick

    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + steps):
        for name in models:
            elapsed = step(name)
            if i >= warmup:
                times[name].append(elapsed)
    base = statistics.median(times["none"])
    rows = []
    for name, values in times.items():
        dropout, attention_dropout = VARIANTS[name]
        median = statistics.median(values)
        rows.append({"arch": arch, "variant": name if arch == "transformer" else name.replace("hidden + attention",
                                                                                                 "all"),
                     "dropout": dropout, "attention_dropout": attention_dropout if arch == "transformer" else None,
                     "step_ms": 1000 * median, "ratio_to_none": median / base,
                     "tokens_per_s": batch * real / median})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--real", type=int, default=200, help="non-padding tokens per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "results"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines

    torch.set_num_threads(args.threads)
    records = []
    for arch in ("transformer", "wave"):
        for row in measure(arch, args.steps, args.warmup, args.batch, args.seq, args.real):
            records.append(row)
            print(row, flush=True)
    report = {"command": "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]]),
              "commit": git_commit(), "machine": machine_description(), "date": now_iso(),
              "setting": {"preset": "small", "batch": args.batch, "seq": args.seq, "real_tokens": args.real,
                          "precision": "bf16 autocast", "threads": args.threads, "steps": args.steps,
                          "warmup": args.warmup, "wave": "compile_wave"},
              "records": records}
    out_dir = Path(args.out_dir)
    (out_dir / "dropout_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# What dropout costs a QA training step on CPU", "",
             *provenance_lines(report, machine_note=f"{args.threads} threads, alone on the machine"),
             f"- setting: preset small, batch {args.batch} × {args.seq} ({args.real} real tokens per row), bf16 "
             "autocast, span loss + backward + AdamW; Wave compiled (`compile_wave`); variants timed round-robin, "
             f"median of {args.steps} steps after {args.warmup} warm-up", "",
             "| encoder | dropout | step ms | × no dropout | real tokens/s |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['arch']} | {r['variant']} | {r['step_ms']:.0f} | {r['ratio_to_none']:.2f} | "
              f"{r['tokens_per_s']:,.0f} |" for r in records]
    (out_dir / "dropout_cost.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'dropout_cost.json'} and .md")


if __name__ == "__main__":
    main()
