"""The Wave layer's hand-written backward (the default) against autograd through the plain maths, and
the Transformer: training tokens/s and activation memory, measured alternately in fresh processes.

    python benchmarks/wave_backward_ab.py [--seq-lens 512 4096 16384] [--rounds 5] [--precision auto]

``nami bench scaling`` runs each case once; on a shared 2-core host one run's tokens/s moves by several
per cent, more than the difference measured here. This script runs the variants in turn (wave,
wave-autograd, transformer, wave, …) ``--rounds`` times per S at a constant 16,384 tokens per step,
each case in a fresh process (``nami.bench.worker``: median of ``--repeats`` steps after 2 warm-up
steps), and reports medians and the median of the per-round ratios → results/wave_backward_ab.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tqdm.auto import tqdm

from nami.bench.scaling import run_isolated
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import resolve_precision

VARIANTS = {"wave": {"model": "wave"}, "wave-autograd": {"model": "wave", "autograd": True},
            "transformer": {"model": "transformer"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--out", default="results/wave_backward_ab.json")
    args = parser.parse_args()
    if min(args.seq_lens + [args.tokens, args.rounds, args.repeats]) <= 0:
        parser.error("--seq-lens, --tokens, --rounds and --repeats must be positive")
    commit = git_commit()
    precision = resolve_precision(args.precision)
    runs: dict[int, dict[str, list[dict]]] = {s: {v: [] for v in VARIANTS} for s in args.seq_lens}
    cases = [(s, r, v) for s in args.seq_lens for r in range(args.rounds) for v in VARIANTS]
    for s, _, variant in tqdm(cases, desc="wave backward A/B"):
        spec = {**VARIANTS[variant], "preset": args.preset, "seq_len": s, "batch": max(1, args.tokens // s),
                "mode": "train", "repeats": args.repeats, "warmup": 2, "precision": precision, "max_len": s}
        case = run_isolated(spec, memory_cap_mb=16000, time_limit_s=900)
        runs[s][variant].append({"tokens_per_s": case["tokens_per_s"], "activation_mb": case["activation_mb"]})
    rows = []
    for s, by in runs.items():
        med = {v: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "activation_mb")}
               for v, rs in by.items()}

        def ratio(a: str, b: str, key: str) -> float:
            return statistics.median(x[key] / y[key] for x, y in zip(by[a], by[b]))

        rows.append({"seq_len": s, "batch": max(1, args.tokens // s), "medians": med, "runs": by,
                     "speed_vs_autograd": ratio("wave", "wave-autograd", "tokens_per_s"),
                     "speed_vs_transformer": ratio("wave", "transformer", "tokens_per_s"),
                     "memory_vs_autograd": ratio("wave", "wave-autograd", "activation_mb"),
                     "memory_vs_transformer": ratio("wave", "transformer", "activation_mb")})
    result = {"command": "python benchmarks/wave_backward_ab.py " + " ".join(sys.argv[1:]), "commit": commit,
              "machine": machine_description(), "date": now_iso(), "precision": precision, "preset": args.preset,
              "tokens_per_step": args.tokens, "rounds": args.rounds, "repeats": args.repeats, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    lines = [f"# Wave's hand-written backward vs autograd, and vs the Transformer (preset {args.preset}, "
             f"{precision}, {args.tokens:,} tokens per step, training)", "",
             f"Medians of {args.rounds} rounds (variants alternating, a fresh process each); ratios are medians of "
             "the per-round ratios.", "",
             "| S | batch | wave tok/s | wave-autograd tok/s | transformer tok/s | speed ÷ autograd | "
             "wave act. MB | autograd act. MB | transformer act. MB | memory ÷ transformer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m = r["medians"]
        lines.append(f"| {r['seq_len']:,} | {r['batch']} | {m['wave']['tokens_per_s']:,.0f} | "
                     f"{m['wave-autograd']['tokens_per_s']:,.0f} | {m['transformer']['tokens_per_s']:,.0f} | "
                     f"{r['speed_vs_autograd']:.3f}× | {m['wave']['activation_mb']:,.0f} | "
                     f"{m['wave-autograd']['activation_mb']:,.0f} | {m['transformer']['activation_mb']:,.0f} | "
                     f"{r['memory_vs_transformer']:.2f}× |")
    lines += ["", "activation MB = peak resident memory minus resident memory before the first step (weights, "
              "inputs and the interpreter excluded).", "", *provenance_lines(result)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
