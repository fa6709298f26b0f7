"""Time and peak memory of ``nami.losses.linear_cross_entropy`` implementations, forward + backward.

Grid: N ∈ {2048, 8192, 32768} rows, V ∈ {8192, 32768, 131072} vocabulary, D ∈ {256, 512}, dtypes
fp32 and bf16 (``torch.autocast``), implementations naive / torch_chunked / blockwise / cce (cce on
CUDA only). Inputs: hidden ~ N(0, 1), weight ~ N(0, 1/D) (so logits ~ N(0, 1): a near-uniform
softmax, as at the start of training), uniform random targets, no ignored positions.

Method (each case runs in a FRESH Python subprocess, so no allocator state or peak carries over):

- time: one warm-up call (forward + ``backward()``, gradients set to ``None`` before every call, as
  ``zero_grad(set_to_none=True)`` would), then ``--repeats`` measured calls; ``time_ms`` is their
  median. A case whose warm-up took longer than ``--long-call-s`` gets one measured call.
- memory on CPU: ``peak_mb`` = ``ru_maxrss`` after all calls (warm-up included) minus the resident
  set size right after the inputs were allocated. It counts everything the loss allocates —
  logits or tiles, saved activations, and the gradients of hidden and weight (N·D + V·D floats,
  the same for every implementation). ``ru_maxrss`` is the process' lifetime peak; the peak before
  the first call is recorded too (``rss_peak_before_mb``), and when no call raised it,
  ``peak_mb`` is an upper bound (flagged ``peak_is_upper_bound``).
- memory on CUDA: ``torch.cuda.max_memory_allocated()`` after the calls minus
  ``memory_allocated()`` after the inputs (the caching allocator's view, not ``nvidia-smi``).
- cases whose estimated peak exceeds ``--mem-cap-gb`` are skipped with the reason (naive needs
  ≈ 12 bytes per logit in fp32 — logits, their log-softmax and its gradient — and ≈ 14 under bf16
  autocast); a subprocess that dies or
  times out is recorded as skipped with its exit status.

    python benchmarks/linear_cross_entropy.py                      # full grid → results/
    python benchmarks/linear_cross_entropy.py --quick              # one small case → /tmp
    python benchmarks/linear_cross_entropy.py --cases 8192x32768x256 --impls naive,blockwise --dtypes fp32

Writes ``<out-dir>/linear_cross_entropy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

GRID_N = (2048, 8192, 32768)
GRID_V = (8192, 32768, 131072)
GRID_D = (256, 512)
QUICK_CASE = (2048, 8192, 256)
DEFAULT_IMPLS = ("naive", "torch_chunked", "blockwise", "cce")
# Extra variants one may ask for with --impls: blockwise with gradient filtering on.
VARIANTS = ("blockwise:paper", "blockwise:bounded_mass")
NAIVE_BYTES_PER_LOGIT = {"fp32": 12, "bf16": 14}  # measured: 2048×8192 case, 12.9 / 13.8 incl. gradients
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
QUICK_OUT = Path("/tmp/nami-lce-quick")


# ------------------------------------------------------------------------------------ worker


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(spec: dict) -> dict:
    import resource

    import torch

    from nami.losses import linear_cross_entropy

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    n, v, d = spec["N"], spec["V"], spec["D"]
    impl, _, policy = spec["impl"].partition(":")
    torch.manual_seed(0)
    hidden = torch.randn(n, d, device=device)
    weight = torch.randn(v, d, device=device) / math.sqrt(d)
    targets = torch.randint(0, v, (n,), device=device)
    if spec.get("peaked"):  # target logit ≈ 20 ≫ log V: softmax ≈ one-hot, as late in training
        hidden = hidden * 0.5 + 20.0 * weight[targets]
    hidden.requires_grad_()
    weight.requires_grad_()
    kwargs = {"impl": impl}
    if policy:
        kwargs["filter_policy"] = policy
    if spec.get("block_size"):
        kwargs["block_size"] = tuple(spec["block_size"])
    autocast = spec["dtype"] == "bf16"
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    times, losses, stats = [], [], {}
    calls = 1 + spec["repeats"]
    i = 0
    while i < calls:
        hidden.grad = None
        weight.grad = None
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = linear_cross_entropy(hidden, weight, targets, stats=stats if policy else None, **kwargs)
        loss.backward()
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        del loss
        if i == 0 and times[0] > spec["long_call_s"]:
            calls = 2
        i += 1
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
        upper = False
        method = "cuda max_memory_allocated delta"
    else:
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = peak_after - base_rss
        upper = peak_after <= peak_before
        method = "ru_maxrss delta"
    measured = times[1:]
    record = {
        "impl": spec["impl"], "N": n, "V": v, "D": d, "dtype": spec["dtype"],
        "time_ms": round(statistics.median(measured) * 1e3, 2),
        "peak_mb": round(peak / 2**20, 1),
        "device": device.type, "threads": torch.get_num_threads(),
        "times_ms": [round(t * 1e3, 2) for t in measured], "warmup_ms": round(times[0] * 1e3, 2),
        "loss": losses[-1], "peak_method": method, "peak_is_upper_bound": upper,
        "rss_peak_before_mb": round(peak_before / 2**20, 1), "rss_base_mb": round(base_rss / 2**20, 1),
    }
    if policy and "skipped_fraction" in stats:
        record["skipped_fraction"] = stats["skipped_fraction"]
        record["max_dropped_mass"] = float(stats["dropped_mass"].max())
    return record


# ------------------------------------------------------------------------------------ driver


def parse_cases(text: str | None, quick: bool) -> list[tuple[int, int, int]]:
    if text:
        cases = []
        for item in text.split(","):
            parts = item.lower().split("x")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise SystemExit(f"--cases: expected NxVxD items like 2048x8192x256, got {item!r}")
            cases.append(tuple(int(p) for p in parts))
        return cases
    if quick:
        return [QUICK_CASE]
    return [(n, v, d) for n in GRID_N for v in GRID_V for d in GRID_D]


def estimate_bytes(impl: str, dtype: str, n: int, v: int, d: int) -> int:
    inputs_grads = 4 * 2 * (n * d + v * d)
    if impl == "naive":
        return NAIVE_BYTES_PER_LOGIT[dtype] * n * v + inputs_grads
    return inputs_grads + 4 * 2 * (n * d + v * d)


def mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def skip_reason(impl: str, dtype: str, device: str, n: int, v: int, d: int, cap: float) -> str | None:
    base = impl.partition(":")[0]
    if base == "cce":
        import importlib.util

        if device != "cuda":
            return "cce needs CUDA (Triton kernel)"
        if importlib.util.find_spec("cut_cross_entropy") is None:
            return "cut-cross-entropy is not installed (pip install 'nami[cce]')"
    est = estimate_bytes(base, dtype, n, v, d)
    if est > cap:
        return f"estimated peak {est / 2**30:.1f} GiB > memory cap {cap / 2**30:.1f} GiB"
    return None


def run_case(spec: dict, timeout: float, in_process: bool = False) -> tuple[dict | None, str | None]:
    if in_process:  # CUDA only: allocator statistics are reset per case
        import gc

        import torch

        try:
            return worker(spec), None
        except Exception as error:  # noqa: BLE001 - recorded as a skipped case
            return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        finally:
            gc.collect()
            torch.cuda.empty_cache()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, f"worker exited with {proc.returncode}: {' | '.join(tail)}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def markdown(report: dict) -> str:
    from nami.reports.environment import provenance_lines

    recs = report["records"]
    lines = [
        "# linear_cross_entropy: forward + backward time and peak memory",
        "",
        *provenance_lines(report),
        *([] if report.get("complete") else ["- **incomplete**: the run was interrupted or is still going"]),
        f"- method: {report['method']}",
        "",
        ("`time` is the median over the measured calls (ms), `peak` the peak memory delta (MB); ratios are "
         "this implementation ÷ naive and ÷ torch_chunked on the same case (< 1: faster / smaller)."),
        "",
        "| N | V | D | dtype | impl | time ms | peak MB | time ÷ naive | time ÷ chunked | mem ÷ naive | mem ÷ chunked |",
        "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_case = {}
    for r in recs:
        by_case.setdefault((r["dtype"], r["N"], r["V"], r["D"]), {})[r["impl"]] = r
    for (dtype, n, v, d), impls in sorted(by_case.items()):
        naive, chunked = impls.get("naive"), impls.get("torch_chunked")
        for name, r in impls.items():
            upper = " ≤" if r.get("peak_is_upper_bound") else ""
            lines.append(
                f"| {n} | {v} | {d} | {dtype} | {name} | {r['time_ms']:.1f} | {upper}{r['peak_mb']:.0f} | "
                f"{ratio(r['time_ms'], naive and naive['time_ms'])} | "
                f"{ratio(r['time_ms'], chunked and chunked['time_ms'])} | "
                f"{ratio(r['peak_mb'], naive and naive['peak_mb'])} | "
                f"{ratio(r['peak_mb'], chunked and chunked['peak_mb'])} |")
    summary = summarise(recs)
    if summary:
        lines += ["", "## blockwise vs torch_chunked (geometric mean of time ratios over the cases both ran)", ""]
        lines += [f"- {dtype}: blockwise ÷ torch_chunked = {g:.2f}× over {k} cases" for dtype, (g, k) in summary.items()]
    if report["skipped"]:
        lines += ["", "## skipped", ""]
        lines += [f"- {s['impl']} N={s['N']} V={s['V']} D={s['D']} {s['dtype']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def summarise(recs: list[dict]) -> dict[str, tuple[float, int]]:
    out = {}
    index = {(r["impl"], r["dtype"], r["N"], r["V"], r["D"]): r for r in recs}
    for dtype in sorted({r["dtype"] for r in recs}):
        logs = [math.log(r["time_ms"] / index[("torch_chunked", *k[1:])]["time_ms"])
                for k, r in index.items() if k[0] == "blockwise" and k[1] == dtype and ("torch_chunked", *k[1:]) in index]
        if logs:
            out[dtype] = (math.exp(sum(logs) / len(logs)), len(logs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"one small case {QUICK_CASE}, results to {QUICK_OUT}")
    p.add_argument("--cases", help="comma-separated NxVxD, e.g. 2048x8192x256 (overrides the grid)")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated; also {', '.join(VARIANTS)}")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--long-call-s", type=float, default=20.0,
                   help="a warm-up call longer than this gets only one measured call")
    p.add_argument("--case-timeout-s", type=float, default=1800.0)
    p.add_argument("--mem-cap-gb", type=float, default=None, help="default: half of MemTotal (CPU), 100 (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    p.add_argument("--block-size", default=None, help="blockwise tile ROWSxVOCAB (default: the library's)")
    p.add_argument("--peaked", action="store_true", help="peaked softmax inputs (a trained model's regime)")
    p.add_argument("--in-process", action="store_true",
                   help="CUDA only: run the cases in this process (peak via allocator stats; saves start-up time)")
    p.add_argument("--out-dir", type=Path, default=None, help=f"default: {RESULTS} ({QUICK_OUT} with --quick)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    from nami.reports.environment import git_commit, machine_description, now_iso

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cap = (args.mem_cap_gb * 2**30 if args.mem_cap_gb is not None
           else (100 * 2**30 if device == "cuda" else mem_total_bytes() / 2))
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for impl in impls:
        if impl not in DEFAULT_IMPLS + VARIANTS:
            raise SystemExit(f"--impls: unknown {impl!r}; choose from {DEFAULT_IMPLS + VARIANTS}")
    dtypes = [t.strip() for t in args.dtypes.split(",") if t.strip()]
    if any(t not in ("fp32", "bf16") for t in dtypes):
        raise SystemExit("--dtypes: fp32 and/or bf16")
    if args.in_process and device != "cuda":
        raise SystemExit("--in-process is for CUDA only: CPU peak memory needs a fresh process per case")
    block = [int(x) for x in args.block_size.lower().split("x")] if args.block_size else None
    out_dir = args.out_dir or (QUICK_OUT if args.quick else RESULTS)
    cases = parse_cases(args.cases, args.quick)

    records, skipped = [], []
    report = {
        "records": records,
        "skipped": skipped,
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()),
                                         *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(REPO),
        "machine": machine_description(),
        "date": now_iso(),
        "complete": False,
        "method": (("each case in this process (CUDA)" if args.in_process else "each case in a fresh subprocess")
                   + "; time = median of measured forward+backward calls after one warm-up; peak = ru_maxrss "
                   "after all calls − RSS after allocating inputs (CPU) or CUDA max_memory_allocated delta; "
                   "gradients of hidden and weight included"),
        "settings": {"repeats": args.repeats, "long_call_s": args.long_call_s, "mem_cap_gb": round(cap / 2**30, 1),
                     "threads": args.threads, "block_size": block, "peaked": args.peaked, "device": device,
                     "in_process": args.in_process},
    }
    out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every case, so an interrupted run keeps what it measured
        (out_dir / "linear_cross_entropy.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "linear_cross_entropy.md").write_text(markdown(report))

    for n, v, d in cases:
        for dtype in dtypes:
            for impl in impls:
                tag = f"{impl:24s} N={n:6d} V={v:6d} D={d:4d} {dtype}"
                reason = skip_reason(impl, dtype, device, n, v, d, cap)
                if reason is None:
                    spec = {"impl": impl, "N": n, "V": v, "D": d, "dtype": dtype, "device": device,
                            "repeats": args.repeats, "long_call_s": args.long_call_s, "threads": args.threads,
                            "block_size": block, "peaked": args.peaked}
                    record, reason = run_case(spec, args.case_timeout_s, args.in_process)
                if reason is not None:
                    skipped.append({"impl": impl, "N": n, "V": v, "D": d, "dtype": dtype, "reason": reason})
                    print(f"{tag}  skipped: {reason}", flush=True)
                else:
                    records.append(record)
                    print(f"{tag}  {record['time_ms']:10.1f} ms  {record['peak_mb']:9.1f} MB  "
                          f"loss {record['loss']:.4f}", flush=True)
                write()
    report["complete"] = True
    write()
    for dtype, (g, k) in summarise(records).items():
        print(f"{dtype}: blockwise ÷ torch_chunked time = {g:.2f}× (geometric mean, {k} cases)")
    print(f"wrote {out_dir / 'linear_cross_entropy.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
