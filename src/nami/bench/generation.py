"""``nami bench generation``: generation speed and memory of the two decoders against prompt length.

Each (model, prompt length) is one fresh process (:func:`nami.bench.scaling.run_isolated`, the
``nami bench`` worker): a random prompt of ``prompt_len`` tokens, batch 1, greedy decoding of
``new_tokens`` tokens with a :class:`~nami.models.inputs.DecodingCache`. Reported per case:
decoding tokens/s (steps after the prefill), prefill seconds, the decoding state's size (Wave:
a running sum per layer, constant; Transformer: keys and values, linear in the prompt) and the
process's peak resident memory (which includes the prefill's own activations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nami.io import write_json
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.bench.scaling import CaseFailed, run_isolated

DEFAULT_PROMPT_LENS = (256, 1024, 4096, 16384)
MODELS = ("wave", "transformer")


def run_generation_bench(*, prompt_lens=DEFAULT_PROMPT_LENS, new_tokens: int = 64, preset: str = "small",
                         precision: str = "bf16", threads: int | None = None, memory_cap_mb: float = 16000.0,
                         time_limit_s: float = 600.0, out: str = "results/generation.json", quiet: bool = False,
                         compile_step: bool = False, command: str = "nami bench generation") -> dict[str, Any]:
    if new_tokens < 2:
        raise ValueError(f"--new-tokens={new_tokens}: expected >= 2")
    if any(p < 1 for p in prompt_lens):
        raise ValueError(f"--prompt-lens {list(prompt_lens)}: expected positive lengths")
    commit = git_commit()
    records, skipped = [], []
    cases = [(model, p) for p in prompt_lens for model in MODELS]
    for model, prompt_len in tqdm(cases, desc="bench generation", disable=quiet):
        spec = {"mode": "generate", "model": model, "preset": preset, "prompt_len": prompt_len,
                "new_tokens": new_tokens, "precision": precision, "threads": threads, "compile": compile_step}
        try:
            result = run_isolated(spec, memory_cap_mb=memory_cap_mb, time_limit_s=time_limit_s)
        except CaseFailed as err:
            skipped.append({"model": model, "prompt_len": prompt_len, "reason": str(err)})
            continue
        records.append({"model": model, "prompt_len": prompt_len, "new_tokens": new_tokens,
                        "tokens_per_s": result["tokens_per_s"], "median_step_ms": result["median_step_ms"],
                        "peak_mb": result["peak_mb"],
                        "state_mb": result["state_mb"], "prefill_seconds": result["prefill_seconds"],
                        "params": result["params"], "threads": result["threads_used"]})
    ratios = []
    for prompt_len in prompt_lens:
        by = {r["model"]: r for r in records if r["prompt_len"] == prompt_len}
        if len(by) == 2:
            ratios.append({"prompt_len": prompt_len,
                           "wave_over_transformer_tokens_per_s": by["wave"]["tokens_per_s"]
                           / by["transformer"]["tokens_per_s"],
                           "wave_over_transformer_median_step": by["transformer"]["median_step_ms"]
                           / by["wave"]["median_step_ms"]})
    result = {"command": command, "commit": commit, "machine": machine_description(), "date": now_iso(),
              "settings": {"preset": preset, "precision": precision, "batch": 1, "new_tokens": new_tokens,
                           "compiled": compile_step},
              "records": records, "ratios": ratios, "skipped": skipped}
    path = Path(out)
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result), "utf-8")
    from nami.reports.plots import plot_generation

    plot_generation(result, path.with_suffix(".png"))
    return result


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["# Generation: Wave decoder vs Transformer decoder against prompt length", "",
             f"Preset `{s['preset']}`, {s['precision']}, batch 1, {s['new_tokens']} greedy new tokens per case"
             f"{', both decoders through torch.compile' if s.get('compiled') else ''}, one "
             "fresh process per case. tokens/s counts decoding steps after the prefill; state = the decoding "
             "cache (Wave: running sums; Transformer: keys and values); peak = the process's resident peak "
             "(prefill activations included).", "",
             "| model | prompt tokens | decode tokens/s | median step ms | prefill s | state MB | peak MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["records"]:
        median = f"{r['median_step_ms']:.2f}" if "median_step_ms" in r else "–"
        lines.append(f"| {r['model']} | {r['prompt_len']:,} | {r['tokens_per_s']:,.1f} | {median} | "
                     f"{r['prefill_seconds']:.2f} | {r['state_mb']:,.3f} | {r['peak_mb']:,.0f} |")
    lines += ["", "| prompt tokens | Wave ÷ Transformer decode tokens/s | same, from median step times |",
              "| --- | --- | --- |"]
    lines += [f"| {r['prompt_len']:,} | {r['wave_over_transformer_tokens_per_s']:.2f}× | "
              + (f"{r['wave_over_transformer_median_step']:.2f}× |" if "wave_over_transformer_median_step" in r
                 else "– |") for r in result["ratios"]]
    if result["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{r['model']} at {r['prompt_len']} ({r['reason']})"
                                                   for r in result["skipped"])]
    lines += [""] + provenance_lines(result, machine_note=f"threads: {result['records'][0]['threads']}"
                                     if result["records"] else "")
    return "\n".join(lines) + "\n"
