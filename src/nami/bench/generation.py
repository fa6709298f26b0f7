"""``nami bench generation``: generation speed and memory of the two decoders against prompt length.

Each (model, prompt length) is one fresh process (:func:`nami.bench.scaling.run_isolated`, the
``nami bench`` worker): ``batch`` random prompts of ``prompt_len`` tokens, greedy decoding of
``new_tokens`` tokens per row with a :class:`~nami.models.inputs.DecodingCache`. Reported per case:
decoding tokens/s (all rows, steps after the prefill), prefill seconds, the decoding state's size
(Wave: a running sum per layer, constant; Transformer: keys and values, linear in the prompt and
the batch), the weights one step reads, and the process's peak resident memory (which includes the
prefill's own activations).

Why the ratio depends on the batch: at small batches a decoding step is bound by the bytes it
reads. Both decoders read their weights once per step (the ``(V, D)`` output matrix is most of
them); the Transformer also reads (and, through ``torch.cat``, rewrites) its key/value cache, which
grows with prompt and batch. ``bytes_ratio = (weights + T state) / (weights + Wave state)`` is the
Wave ÷ Transformer speed a purely memory-bound step would show; the markdown prints it next to the
measured ratio.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nami.bench.scaling import CaseFailed, run_isolated
from nami.io import write_json
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import resolve_precision

DEFAULT_PROMPT_LENS = (256, 1024, 4096, 16384)
# The decoders measured: Wave (with and without its causal conv branch) against the Transformer with
# keys / values preallocated and written in place (the fair baseline: Hugging Face's StaticCache idea)
# and the same Transformer growing them with torch.cat (a full copy every step; the older baseline).
DECODERS: dict[str, dict] = {
    "wave": dict(arch="wave", options={}, static_cache=True),
    "wave+conv": dict(arch="wave", options={"branches": ["conv"]}, static_cache=True),
    "transformer-static": dict(arch="transformer", options={}, static_cache=True),
    "transformer": dict(arch="transformer", options={}, static_cache=False),
}
MODELS = tuple(DECODERS)


def run_generation_bench(*, prompt_lens=DEFAULT_PROMPT_LENS, new_tokens: int = 64, preset: str = "small",
                         batch: int = 1,
                         precision: str = "auto", threads: int | None = None, memory_cap_mb: float = 16000.0,
                         time_limit_s: float = 600.0, out: str = "results/generation.json", quiet: bool = False,
                         compile_step: bool = False, repeats: int = 1, models: tuple[str, ...] = MODELS,
                         command: str = "nami bench generation") -> dict[str, Any]:
    if new_tokens < 2:
        raise ValueError(f"--new-tokens={new_tokens}: expected >= 2")
    if any(p < 1 for p in prompt_lens):
        raise ValueError(f"--prompt-lens {list(prompt_lens)}: expected positive lengths")
    if batch < 1:
        raise ValueError(f"--batch={batch}: expected >= 1")
    if repeats < 1:
        raise ValueError(f"--repeats={repeats}: expected >= 1")
    unknown = [m for m in models if m not in DECODERS]
    if unknown:
        raise ValueError(f"--models: unknown decoder(s) {', '.join(unknown)}; expected some of {', '.join(DECODERS)}")
    precision = resolve_precision(precision)  # "auto": bf16 only on CPUs with native bf16
    commit = git_commit()
    records, skipped = [], []
    # Each repeat runs every case once, the two decoders alternating, so that a slow spell of a
    # shared host falls on both; a case's numbers are the medians over its repeats.
    cases = [(model, p) for p in prompt_lens for model in models]
    runs: dict[tuple[str, int], list[dict]] = {case: [] for case in cases}
    failed: dict[tuple[str, int], str] = {}
    for _, (model, prompt_len) in tqdm([(r, c) for r in range(repeats) for c in cases], desc="bench generation",
                                       disable=quiet):
        if (model, prompt_len) in failed:
            continue
        spec = {"mode": "generate", "model": model, **DECODERS[model], "preset": preset, "prompt_len": prompt_len,
                "new_tokens": new_tokens, "batch": batch, "precision": precision, "threads": threads,
                "compile": compile_step}
        try:
            runs[model, prompt_len].append(run_isolated(spec, memory_cap_mb=memory_cap_mb, time_limit_s=time_limit_s))
        except CaseFailed as err:
            failed[model, prompt_len] = str(err)
    for (model, prompt_len), results in runs.items():
        if (model, prompt_len) in failed:
            skipped.append({"model": model, "prompt_len": prompt_len, "reason": failed[model, prompt_len]})
            continue
        first = results[0]
        records.append({"model": model, "prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch,
                        "weights_mb_per_step": first["weights_mb_per_step"],
                        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
                        "median_step_ms": statistics.median(r["median_step_ms"] for r in results),
                        "repeats_tokens_per_s": [r["tokens_per_s"] for r in results],
                        "peak_mb": max(r["peak_mb"] for r in results), "state_mb": first["state_mb"],
                        "prefill_seconds": statistics.median(r["prefill_seconds"] for r in results),
                        "params": first["params"], "threads": first["threads_used"],
                        "bandwidth_gbs": statistics.median(r["bandwidth_gbs"] for r in results)})
        # The memory-bound limit of one step: the bytes it reads (weights + decoding state) at the
        # bandwidth this process measured; the measured step's distance from it is overhead.
        r = records[-1]
        r["bound_step_ms"] = (r["weights_mb_per_step"] + r["state_mb"]) * 2**20 / (r["bandwidth_gbs"] * 1e9) * 1e3
    ratios = [_ratios(prompt_len, {r["model"]: r for r in records if r["prompt_len"] == prompt_len})
              for prompt_len in prompt_lens]
    ratios = [r for r in ratios if len(r) > 1]
    result = {"command": command, "commit": commit, "machine": machine_description(), "date": now_iso(),
              "settings": {"preset": preset, "precision": precision, "batch": batch, "new_tokens": new_tokens,
                           "repeats": repeats, "models": list(models),
                           "compiled": compile_step},
              "records": records, "ratios": ratios, "skipped": skipped}
    path = Path(out)
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result), "utf-8")
    from nami.reports.plots import plot_generation

    plot_generation(result, path.with_suffix(".png"))
    return result


def _ratios(prompt_len: int, by: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Wave ÷ each Transformer decoder (tokens/s, median steps, bytes), and the conv branch's cost."""
    out: dict[str, Any] = {"prompt_len": prompt_len}
    wave = by.get("wave")
    for name, key in (("transformer-static", "static"), ("transformer", None)):
        other = by.get(name)
        if wave is None or other is None:
            continue
        suffix = f"_{key}" if key else ""
        out[f"wave_over_transformer{suffix}_tokens_per_s"] = wave["tokens_per_s"] / other["tokens_per_s"]
        out[f"wave_over_transformer{suffix}_median_step"] = other["median_step_ms"] / wave["median_step_ms"]
        out[f"bytes_ratio{suffix}"] = ((other["weights_mb_per_step"] + other["state_mb"])
                                       / (wave["weights_mb_per_step"] + wave["state_mb"]))
    if wave is not None and "wave+conv" in by:
        out["conv_step_cost"] = by["wave+conv"]["median_step_ms"] / wave["median_step_ms"] - 1.0
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["# Generation: Wave decoders vs Transformer decoders against prompt length", "",
             f"Preset `{s['preset']}`, {s['precision']}, batch {s.get('batch', 1)}, {s['new_tokens']} greedy new "
             f"tokens per row, {s.get('repeats', 1)} repeat(s) per case (medians)"
             f"{', both decoders through torch.compile' if s.get('compiled') else ''}, one "
             "fresh process per case. tokens/s counts decoding steps after the prefill (all rows); state = the "
             "decoding cache (Wave: running sums; Transformer: keys and values); weights = the matrices one "
             "step reads; peak = the process's resident peak (prefill activations included); bound = the "
             "memory-bound limit of a step, (weights + state) ÷ the bandwidth measured in the same process. "
             "`transformer-static`: keys / values preallocated and written in place; `transformer`: grown by "
             "torch.cat (a full copy of the cache every step).", "",
             "| model | prompt tokens | decode tokens/s | median step ms | bound ms | prefill s | state MB | peak MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["records"]:
        median = f"{r['median_step_ms']:.2f}" if "median_step_ms" in r else "–"
        bound = f"{r['bound_step_ms']:.2f}" if "bound_step_ms" in r else "–"
        lines.append(f"| {r['model']} | {r['prompt_len']:,} | {r['tokens_per_s']:,.1f} | {median} | {bound} | "
                     f"{r['prefill_seconds']:.2f} | {r['state_mb']:,.3f} | {r['peak_mb']:,.0f} |")
    lines += ["", "| prompt tokens | Wave ÷ static Transformer tokens/s | same, median steps | bytes ratio (static) | "
                  "Wave ÷ cat Transformer tokens/s | same, median steps | bytes ratio (cat) | conv branch cost per step |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def ratio(r: dict, key: str) -> str:
        return f"{r[key]:.2f}×" if key in r else "–"

    lines += [f"| {r['prompt_len']:,} | {ratio(r, 'wave_over_transformer_static_tokens_per_s')} | "
              f"{ratio(r, 'wave_over_transformer_static_median_step')} | {ratio(r, 'bytes_ratio_static')} | "
              f"{ratio(r, 'wave_over_transformer_tokens_per_s')} | "
              f"{ratio(r, 'wave_over_transformer_median_step')} | {ratio(r, 'bytes_ratio')} | "
              + (f"{100 * r['conv_step_cost']:+.1f} %" if "conv_step_cost" in r else "–") + " |"
              for r in result["ratios"]]
    if any("bytes_ratio" in r for r in result["ratios"]):
        weights = result["records"][0]["weights_mb_per_step"]
        lines += ["", f"Bytes ratio = (weights + Transformer state) ÷ (weights + Wave state), the Wave ÷ Transformer "
                      f"speed-up of a step bound by the bytes it reads; weights read per step: {weights:,.1f} MB "
                      "(the tied output matrix is most of them). A step also has fixed per-operation costs, and "
                      "the Transformer's `torch.cat` rewrites its cache each step, so measured ratios can exceed it."]
    if result["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{r['model']} at {r['prompt_len']} ({r['reason']})"
                                                   for r in result["skipped"])]
    lines += [""] + provenance_lines(result, machine_note=f"threads: {result['records'][0]['threads']}"
                                     if result["records"] else "")
    return "\n".join(lines) + "\n"
