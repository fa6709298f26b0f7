"""Training step time before and after a code change, measured in one run: the mixer-registry
restructure (one ``Block`` around registered mixers) must not slow either model; also any later
change (``--precision``, ``--profile``: each case's activation memory and time outside matrix products).

Each case is one fresh ``python -m nami.bench.worker`` process (the ``nami bench`` worker: forward +
backward of the QA span loss, preset ``small``, S = 512, 32 × 512 = 16,384 tokens per step, bf16
autocast, all threads) run with ``PYTHONPATH`` pointing at the old or the new source tree. Old and
new alternate within every repeat (their order flips each repeat), so drift on the machine hits both;
the reported figure per (tree, variant) is the median over repeats of each case's median step time,
and the ratio new / old is taken from those medians.

    git worktree add /tmp/nami-old d069830
    python benchmarks/restructure_speed.py --old-src /tmp/nami-old/src --repeats 5

The same protocol checks any later change that must not slow plain Wave (the Wave extensions,
every option off: ``--old-src`` at b7bf22a, ``--out results/extensions_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from nami.io import write_json
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"wave": ("wave", False), "wave-compiled": ("wave", True), "transformer": ("transformer", False)}


def run_case(src: Path, variant: str, steps: int, threads: int | None, precision: str = "bf16",
             profile: bool = False) -> dict:
    model, compiled = VARIANTS[variant]
    spec = {"model": model, "preset": "small", "seq_len": 512, "batch": 32, "mode": "train", "repeats": steps,
            "warmup": 2, "precision": precision, "max_len": 512, "compile": compiled, "threads": threads,
            "profile": profile}
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-m", "nami.bench.worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} with {src} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-src", required=True, help="src/ of the code before the change (a git worktree)")
    parser.add_argument("--old-commit", default=None, help="its commit (default: read from the worktree)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per case (median taken)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--profile", action="store_true",
                        help="one more profiled step per case: time outside matrix products (other ms)")
    parser.add_argument("--out", default="results/restructure_speed.json")
    parser.add_argument("--title", default="Training step time before and after the mixer-registry restructure",
                        help="heading of the markdown table (what the change was)")
    args = parser.parse_args()
    trees = {"old": Path(args.old_src).resolve(), "new": ROOT / "src"}
    old_commit = args.old_commit or git_commit(trees["old"].parent)
    cases: list[dict] = []
    for repeat in range(args.repeats):
        order = ["old", "new"] if repeat % 2 == 0 else ["new", "old"]
        for variant in args.variants:
            for tree in order:
                result = run_case(trees[tree], variant, args.steps, args.threads, args.precision, args.profile)
                cases.append({"repeat": repeat, "tree": tree, "variant": variant,
                              "seconds_per_step": result["seconds_per_step"], "tokens_per_s": result["tokens_per_s"],
                              "activation_mb": result.get("activation_mb"), "other_ms": result.get("other_ms")})
                print(f"repeat {repeat} {variant:14s} {tree}: {result['seconds_per_step']:.4f} s/step", flush=True)
    summary = []
    for variant in args.variants:
        med = {tree: statistics.median(c["seconds_per_step"] for c in cases if c["tree"] == tree
                                       and c["variant"] == variant) for tree in trees}
        def median_of(key: str, tree: str) -> float | None:
            values = [c[key] for c in cases if c["tree"] == tree and c["variant"] == variant and c[key] is not None]
            return statistics.median(values) if values else None

        summary.append({"variant": variant, "old_seconds_per_step": med["old"], "new_seconds_per_step": med["new"],
                        "new_over_old": med["new"] / med["old"],
                        "old_tokens_per_s": 16384 / med["old"], "new_tokens_per_s": 16384 / med["new"],
                        **{f"{tree}_{key}": median_of(key, tree) for tree in trees
                           for key in ("activation_mb", "other_ms")}})
    record = {"command": "python " + shlex.join([str(Path(sys.argv[0]))] + sys.argv[1:]), "title": args.title,
              "commit": git_commit(ROOT),
              "old_commit": old_commit, "machine": machine_description(), "date": now_iso(),
              "protocol": {"preset": "small", "seq_len": 512, "batch": 32, "precision": args.precision,
                           "steps_per_case": args.steps, "repeats": args.repeats, "warmup": 2},
              "summary": summary, "cases": cases}
    out = Path(args.out)
    write_json(out, record)
    lines = [f"# {args.title}", "",
             f"Old code: commit `{old_commit}`; new code: the commit below. Preset `small`, S = 512, 32 × 512 tokens "
             f"per step, {args.precision}, forward + backward; one fresh process per case, old and new alternating, "
             f"{args.repeats} repeats × {args.steps} timed steps; medians. Activation MB: the worker's resident "
             "peak minus resident memory before the first step (compilation included); other ms: one profiled "
             "step's time outside matrix products (with --profile).", "",
             "| variant | old s/step | new s/step | new / old | old tok/s | new tok/s | old act. MB | new act. MB "
             "| old other ms | new other ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def num(value) -> str:
        return f"{value:,.0f}" if value is not None else "–"

    for row in summary:
        lines.append(f"| {row['variant']} | {row['old_seconds_per_step']:.4f} | {row['new_seconds_per_step']:.4f} | "
                     f"{row['new_over_old']:.3f} | {row['old_tokens_per_s']:,.0f} | {row['new_tokens_per_s']:,.0f} | "
                     f"{num(row['old_activation_mb'])} | {num(row['new_activation_mb'])} | "
                     f"{num(row['old_other_ms'])} | {num(row['new_other_ms'])} |")
    lines += [""] + provenance_lines(record, machine_note="alone on the machine")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
