"""``--compile-wave``'s whole-block graph at several AOTAutograd activation memory budgets: training
step time, time outside matrix products and bytes kept for backward, measured in one process.

    python benchmarks/compile_budget.py [--precision fp32] [--budgets 0.5 0.7 0.85 1.0] [--repeats 8]

Each budget gets its own Wave model (preset ``small``, S = 512, 32 × 512 tokens per step, QA span
loss, forward + backward, 2 threads) whose blocks run :func:`nami.models.speed.wave_block` compiled
under that budget (a copy of the function per budget, so that no budget reuses another's graph).
After two warm-up steps, one step under saved-tensor hooks counts the bytes of the distinct
storages autograd keeps (weights included; the eager default's figure is measured the same way);
then ``repeats`` rounds time one step of every budget, their order flipping each round (drift hits
all), and with ``--profile`` one more profiled step per round splits the time into matrix products
and other. Medians. The eager default (hand-written Wave node, no compile) is measured alongside
as the memory reference. Writes results/compile_budget[-<precision>].{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from nami.bench.worker import profile_split
from nami.io import write_json
from nami.models import QAModel, preset_config
from nami.models import speed
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import tune_malloc

DEFAULT_BUDGET = speed.BLOCK_MEMORY_BUDGET  # the library's setting (this script changes the module's value)


def saved_mb(step) -> float:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.7, 0.85, 1.0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also one profiled step per round (other ms)")
    parser.add_argument("--out", default=None, help="default: results/compile_budget-<precision>.json")
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)
    commit = git_commit()
    seq_len, bf16 = 512, args.precision == "bf16"
    ids = torch.randint(5, 32000, (args.batch, seq_len))
    mask = torch.ones(args.batch, seq_len, dtype=torch.bool)
    starts, ends = torch.randint(0, seq_len, (args.batch,)), torch.randint(0, seq_len, (args.batch,))

    def make_step(model: QAModel, budget: float | None):
        def step() -> None:
            if budget is not None:
                speed.BLOCK_MEMORY_BUDGET = budget  # read when the graph compiles (warm-up)
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = QAModel.loss(model(ids, mask), starts, ends)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return step

    cases: dict[str, dict] = {}
    steps = {}
    for budget in [None, *args.budgets]:
        name = "eager (no compile)" if budget is None else \
            f"compiled, budget {budget:g}" + (" (the default)" if budget == DEFAULT_BUDGET else "")
        torch.manual_seed(0)
        model = QAModel(preset_config("small", "wave", max_len=seq_len))
        if budget is not None:
            mix = speed.compile_wave_layers(model)
            code = speed.wave_block.__code__.replace(co_name=f"wave_block_{round(budget * 100)}")
            mix.compiled_block = torch.compile(types.FunctionType(code, speed.wave_block.__globals__), dynamic=True)
        step = make_step(model, budget)
        step(), step()
        if budget is not None and mix.failure:
            raise SystemExit(f"torch.compile failed: {mix.failure}")
        cases[name] = {"budget": budget, "saved_mb": saved_mb(step), "step_s": [], "other_ms": []}
        steps[name] = step
        print(name, f"saved {cases[name]['saved_mb']:.0f} MB", flush=True)
    names = list(steps)
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            tick = time.perf_counter()
            steps[name]()
            cases[name]["step_s"].append(time.perf_counter() - tick)
            if args.profile:
                cases[name]["other_ms"].append(profile_split(steps[name])["other_ms"])
        print(f"round {repeat}", {n: round(c["step_s"][-1], 3) for n, c in cases.items()}, flush=True)
    for case in cases.values():
        case["median_step_s"] = statistics.median(case["step_s"])
        case["median_other_ms"] = statistics.median(case["other_ms"]) if case["other_ms"] else None
        case["tokens_per_s"] = args.batch * seq_len / case["median_step_s"]
    result = {"command": "python benchmarks/compile_budget.py " + " ".join(sys.argv[1:]), "commit": commit,
              "machine": machine_description(), "date": now_iso(), "precision": args.precision,
              "threads": args.threads, "batch": args.batch, "seq_len": seq_len, "repeats": args.repeats,
              "default_budget": DEFAULT_BUDGET, "cases": cases}
    out = Path(args.out or f"results/compile_budget-{args.precision}.json")
    write_json(out, result)
    lines = [f"# --compile-wave: the whole-block graph's activation memory budget ({args.precision})", "",
             f"Preset `small`, S = {seq_len}, {args.batch} × {seq_len} tokens per step, {args.precision}, forward + "
             f"backward, {args.threads} threads, one process; {args.repeats} rounds, order flipping; medians. "
             "Saved MB: distinct storages autograd keeps for backward in one step (weights included).", "",
             "| case | saved MB | s / step | tok/s | other ms |", "| --- | --- | --- | --- | --- |"]
    for name, case in cases.items():
        other = "—" if case["median_other_ms"] is None else f"{case['median_other_ms']:.0f}"
        lines.append(f"| {name} | {case['saved_mb']:,.0f} | {case['median_step_s']:.3f} | "
                     f"{case['tokens_per_s']:,.0f} | {other} |")
    lines += ["", *provenance_lines(result)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
