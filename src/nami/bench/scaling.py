"""``nami bench scaling``: time and memory of same-size Wave and Transformer encoders against sequence length.

For each S, both models run training (forward + backward) and inference steps at ``batch = tokens // S``
(constant tokens per step, so throughputs compare directly), each case in a fresh subprocess
(:mod:`nami.bench.worker`). A second sweep at batch 1 measures what one sequence of length S costs in
memory, which is where the Transformer's attention and the Wave layer's linear cost show.

Memory cap: the parent polls the child's resident memory and kills it when it passes
``memory_cap_mb``; the case is then listed under ``"skipped"`` with the reason, and longer sequences
of that model and mode are skipped as well (memory only grows with S). A case that runs past
``time_limit_s`` is handled the same way.

Slopes: least squares of log(seconds per sequence) and log(activation MB) against log(S). Wave
should be ~1 (linear); the Transformer's rises towards 2 where attention dominates.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nami.models import ARCHITECTURES  # noqa: E402  (the registry with the built-in mixers)
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.reports.variants import resolve
from nami.resources import resolve_precision

MODELS = tuple(ARCHITECTURES)
# What is measured: (model, compiled). "wave" is the Wave encoder as it trains by default, with the
# hand-written, memory-light backward (nami.models.wave.wave_mixer_recompute); "wave-compiled" with
# --compile-wave (nami.models.speed; same maths, fused element-wise kernels); "wave-autograd" with
# autograd through the plain maths (--no-wave-recompute: the default before the hand-written backward).
VARIANTS = {"wave": ("wave", False), "wave-compiled": ("wave", True), "wave-autograd": ("wave", False),
            "wave_plus": ("wave", False), "transformer": ("transformer", False)}
# Model options of a variant beyond its architecture: the variant table's (wave_plus = wave+conv).
VARIANT_OPTIONS = {"wave_plus": resolve("wave_plus").options}
DEFAULT_SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class CaseFailed(RuntimeError):
    """A benchmark case that could not produce a measurement (the reason is the message)."""


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_isolated(spec: dict[str, Any], *, memory_cap_mb: float, time_limit_s: float) -> dict[str, Any]:
    """Run one case in a fresh process under a memory cap and a time limit. Its output goes to
    temporary files, not pipes: a pipe nobody reads while polling fills at 64 KiB (a compiler's
    log) and would stall the case until its time limit."""
    import tempfile

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "nami.bench.worker", json.dumps(spec)],
                                stdout=stdout, stderr=stderr, text=True)
        started, highest = time.monotonic(), 0.0
        while proc.poll() is None:
            highest = max(highest, _rss_mb(proc.pid))
            if highest > memory_cap_mb:
                proc.kill()
                proc.wait()
                raise CaseFailed(f"killed at {highest:,.0f} MB resident: over the memory cap of "
                                 f"{memory_cap_mb:,.0f} MB")
            if time.monotonic() - started > time_limit_s:
                proc.kill()
                proc.wait()
                raise CaseFailed(f"killed after {time_limit_s:.0f} s: over the time limit per case")
            time.sleep(0.05)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise CaseFailed(f"exit code {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return json.loads(out.strip().splitlines()[-1])


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


def run_scaling(
    *,
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS,
    tokens: int = 16384,
    preset: str = "small",
    precision: str = "auto",
    repeats: int = 3,
    threads: int | None = None,
    memory_cap_mb: float = 16000.0,
    time_limit_s: float = 600.0,
    compile_wave: bool = True,
    autograd_wave: bool = True,
    out: str | None = "results/scaling.json",
    quiet: bool = False,
    command: str = "nami bench scaling",
) -> dict[str, Any]:
    if any(s <= 0 for s in seq_lens) or tokens <= 0 or repeats <= 0:
        raise ValueError("--seq-lens, --tokens and --repeats must be positive")
    max_len = max(seq_lens)  # one position table for every case: parameter counts do not change with S
    commit = git_commit()
    precision = resolve_precision(precision)  # "auto": bf16 only on CPUs with native bf16
    base = dict(preset=preset, precision=precision, repeats=repeats, warmup=1, threads=threads, max_len=max_len)
    variants = [v for v in VARIANTS if (compile_wave or v != "wave-compiled") and (autograd_wave or v != "wave-autograd")]
    cases = [(variant, s, mode, sweep) for sweep in ("tokens", "batch1") for variant in variants
             for s in sorted(seq_lens) for mode in ("train", "infer") if sweep == "tokens" or tokens // s > 1]
    measured: dict[tuple[str, int, str, str], dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []
    blocked: dict[tuple[str, str, str], str] = {}
    bar = tqdm(cases, desc="bench scaling", disable=quiet)
    for model, s, mode, sweep in bar:
        batch = max(1, tokens // s) if sweep == "tokens" else 1
        bar.set_postfix_str(f"{model} S={s} B={batch} {mode}")
        key = (model, mode, sweep)
        if key in blocked:
            skipped.append({"model": VARIANTS[model][0], "variant": model, "seq_len": s, "batch": batch,
                            "mode": mode, "sweep": sweep, "reason": f"not run: {blocked[key]}"})
            continue
        spec = {**base, "model": VARIANTS[model][0], "compile": VARIANTS[model][1],
                "options": VARIANT_OPTIONS.get(model, {}),
                "autograd": model == "wave-autograd", "seq_len": s, "batch": batch,
                "mode": mode, "repeats": 1 if sweep == "batch1" else repeats}
        try:
            measured[(model, s, mode, sweep)] = run_isolated(spec, memory_cap_mb=memory_cap_mb,
                                                             time_limit_s=time_limit_s)
        except CaseFailed as failure:
            skipped.append({"model": VARIANTS[model][0], "variant": model, "seq_len": s, "batch": batch,
                            "mode": mode, "sweep": sweep, "reason": str(failure)})
            blocked[key] = f"a shorter sequence (S={s}) was already {str(failure).split(':')[0]}"
    bar.close()
    for (model, s, mode, sweep), case in list(measured.items()):  # at S >= tokens the token sweep is batch 1
        if sweep == "tokens" and case["batch"] == 1:
            measured.setdefault((model, s, mode, "batch1"), case)

    records, memory_records = [], []
    for model in variants:
        for s in sorted(seq_lens):
            train, infer = measured.get((model, s, "train", "tokens")), measured.get((model, s, "infer", "tokens"))
            if train and infer:
                records.append({
                    "model": VARIANTS[model][0], "variant": model, "compiled": VARIANTS[model][1], "seq_len": s,
                    "batch": train["batch"], "params": train["params"],
                    "train_tokens_per_s": train["tokens_per_s"], "infer_tokens_per_s": infer["tokens_per_s"],
                    "train_peak_mb": train["peak_mb"], "infer_peak_mb": infer["peak_mb"],
                    "train_activation_mb": train["activation_mb"], "infer_activation_mb": infer["activation_mb"],
                    "train_step_times_s": train["step_times"], "infer_step_times_s": infer["step_times"],
                })
            one_train = measured.get((model, s, "train", "batch1"))
            one_infer = measured.get((model, s, "infer", "batch1"))
            if one_train and one_infer:
                memory_records.append({
                    "model": VARIANTS[model][0], "variant": model, "compiled": VARIANTS[model][1], "seq_len": s,
                    "batch": 1,
                    "train_peak_mb": one_train["peak_mb"], "infer_peak_mb": one_infer["peak_mb"],
                    "train_activation_mb": one_train["activation_mb"],
                    "infer_activation_mb": one_infer["activation_mb"],
                })
    result = {
        "records": records,
        "memory_records": memory_records,
        "skipped": skipped,
        "slopes": slopes(records, memory_records),
        "ratios": ratios(records),
        "settings": {"tokens_per_step": tokens, "preset": preset, "precision": precision, "repeats": repeats,
                     "compile_wave": compile_wave, "autograd_wave": autograd_wave,
                     "threads": threads, "memory_cap_mb": memory_cap_mb, "time_limit_s": time_limit_s,
                     "max_len": max_len},
        "command": command, "commit": commit, "machine": machine_description(), "date": now_iso(),
        "method": "fresh subprocess per case; time = median of `repeats` steps after 1 warm-up step; training = "
                  "forward + backward of the QA span loss (no optimizer step); peak_mb = ru_maxrss of the case's "
                  "process; activation_mb = peak minus resident memory just before the first step",
    }
    if out:
        from nami.reports.plots import plot_scaling

        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        result["plot"] = plot_scaling(result, path.with_suffix(".png")).name
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
        path.with_suffix(".md").write_text(markdown(result), "utf-8")
    return result


FIT_MIN_SEQ_LEN = 1024


def slopes(records: list[dict[str, Any]], memory_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Log–log slopes per model: seconds per sequence (train / infer) and batch-1 activation memory.

    Fitted on S >= ``FIT_MIN_SEQ_LEN`` (all points when fewer than two are that long): at short
    sequences fixed costs (allocator caches, per-step overheads) flatten the curves and would pull
    every slope below its asymptotic value.
    """

    def long_enough(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        long = [r for r in rows if r["seq_len"] >= FIT_MIN_SEQ_LEN]
        return long if len(long) >= 2 else rows

    out: dict[str, Any] = {"fit_min_seq_len": FIT_MIN_SEQ_LEN}
    for model in dict.fromkeys(r["variant"] for r in records + memory_records):
        rs = long_enough([r for r in records if r["variant"] == model])
        ms = long_enough([r for r in memory_records if r["variant"] == model])
        out[model] = {
            "train_seconds_per_sequence": loglog_slope([r["seq_len"] for r in rs],
                                                       [r["seq_len"] / r["train_tokens_per_s"] for r in rs]),
            "infer_seconds_per_sequence": loglog_slope([r["seq_len"] for r in rs],
                                                       [r["seq_len"] / r["infer_tokens_per_s"] for r in rs]),
            "train_activation_mb_batch1": loglog_slope([r["seq_len"] for r in ms],
                                                       [r["train_activation_mb"] for r in ms]),
            "infer_activation_mb_batch1": loglog_slope([r["seq_len"] for r in ms],
                                                       [r["infer_activation_mb"] for r in ms]),
        }
    return out


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wave / Transformer throughput and training-activation-memory ratios at every S both models ran."""
    by = {(r["variant"], r["seq_len"]): r for r in records}
    out = []
    for (variant, s), wave in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        other = by.get(("transformer", s))
        if variant != "transformer" and other:
            out.append({"variant": variant, "seq_len": s,
                        "train_speedup": wave["train_tokens_per_s"] / other["train_tokens_per_s"],
                        "infer_speedup": wave["infer_tokens_per_s"] / other["infer_tokens_per_s"],
                        "train_activation_ratio": wave["train_activation_mb"] / other["train_activation_mb"]})
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Scaling with sequence length: Wave vs Transformer", "",
             f"Constant {result['settings']['tokens_per_step']:,} tokens per step (batch = tokens / S), "
             f"preset `{result['settings']['preset']}`, {result['settings']['precision']}.", "",
             "| model | S | batch | train tok/s | infer tok/s | train peak MB | infer peak MB | train act. MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["records"]:
        lines.append(f"| {r['variant']} | {r['seq_len']:,} | {r['batch']} | {r['train_tokens_per_s']:,.0f} | "
                     f"{r['infer_tokens_per_s']:,.0f} | {r['train_peak_mb']:,.0f} | {r['infer_peak_mb']:,.0f} | "
                     f"{r['train_activation_mb']:,.0f} |")
    lines += ["", "Wave / Transformer (same S, same batch): throughput, and training activation memory (< 1: Wave "
              "needs less):", "", "| Wave variant | S | train tok/s | inference tok/s | train act. MB |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['seq_len']:,} | {r['train_speedup']:.2f}× | {r['infer_speedup']:.2f}× | "
              + (f"{r['train_activation_ratio']:.2f}× |" if "train_activation_ratio" in r else "– |")
              for r in result["ratios"]]
    lines += ["", "One sequence (batch 1): memory added by the steps (activation MB):", "",
              "| model | S | train act. MB | infer act. MB | train peak MB |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['seq_len']:,} | {r['train_activation_mb']:,.0f} | "
              f"{r['infer_activation_mb']:,.0f} | {r['train_peak_mb']:,.0f} |" for r in result["memory_records"]]
    lines += ["", f"Log–log slopes fitted on S ≥ {result['slopes']['fit_min_seq_len']:,} (1 = linear in S, "
              "2 = quadratic):", "",
              "| model | train s/sequence | infer s/sequence | train memory (batch 1) | infer memory (batch 1) |",
              "| --- | --- | --- | --- | --- |"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for model, s in result["slopes"].items():
        if model not in VARIANTS:
            continue
        lines.append(f"| {model} | {fmt(s['train_seconds_per_sequence'])} | {fmt(s['infer_seconds_per_sequence'])} | "
                     f"{fmt(s['train_activation_mb_batch1'])} | {fmt(s['infer_activation_mb_batch1'])} |")
    if result["skipped"]:
        lines += ["", "Not measured:", ""]
        lines += [f"- {r['variant']} S={r['seq_len']:,} batch {r['batch']} {r['mode']}: {r['reason']}"
                  for r in result["skipped"]]
    if result.get("plot"):
        lines += ["", f"![scaling]({result['plot']})"]
    lines += ["", *provenance_lines(result), f"- method: {result['method']}"]
    return "\n".join(lines) + "\n"
