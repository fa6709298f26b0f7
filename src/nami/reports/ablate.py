"""``nami ablate``: train a list of model variants under one protocol and tabulate them.

Each variant is an architecture plus model/training options (``VARIANTS``); each (variant, seed)
is one chain of ``nami train --config`` subprocesses built by :func:`nami.reports.compare.stage_configs`
from a compare preset, so every row gets exactly the recipe of that preset and nothing else differs.
Rows are written to ``OUT.json`` / ``OUT.md`` after every run, so a stopped ablation keeps what it
finished. Format of ``OUT.json``::

    {"command", "commit", "machine", "date", "protocol": {...},
     "rows": [{"name", "options", "params", "train_tokens_per_s", "eval_questions_per_s",
               "train_peak_mb", "exact_match", "f1", "runs": [{"seed", "exact_match", "f1", ...}],
               "budget_minutes"}]}

``exact_match`` / ``f1`` of a row are the mean over its seeds (``f1_spread``: max − min).

An existing ``OUT.json`` of the same protocol is *added to*: its runs are kept, (variant, seed) pairs
it already holds are skipped, so the seeds of a long protocol can be trained in several sessions
(each run records its own machine, commit and date). ``OUT.json`` of another protocol is refused,
never overwritten.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nami.io import CommandFailed, check_output_path, read_json, write_json
from nami.reports.compare import COMPARE_PRESETS, FINAL_STAGE, _run_chain, _stage_command, stage_configs
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.training import checkpoint as ckpt
from nami.training.tasks import resolve_eval_data, resolve_train_data

# name -> {"arch": ..., "options": {...}} (options: model shortcuts or training options)
VARIANTS: dict[str, dict[str, Any]] = {
    "wave": dict(arch="wave", options={}),
    "transformer": dict(arch="transformer", options={}),
    "wave+rope": dict(arch="wave", options=dict(wave_rope=True, position_embedding="none")),
    "wave-nopos": dict(arch="wave", options=dict(position_embedding="none")),
    "wave+conv": dict(arch="wave", options=dict(branches=["conv"])),
    "wave+local": dict(arch="wave", options=dict(branches=["local_attention"])),
    "wave+fft": dict(arch="wave", options=dict(branches=["fft_gate"])),
    "wave+crosswave": dict(arch="wave", options=dict(branches=["cross_wave"])),
    "wave+qattn": dict(arch="wave", options=dict(branches=["question_attention"])),
    "wave+proxy": dict(arch="wave", options=dict(proxy_tokens=8)),
    "wave+sentence": dict(arch="wave", options=dict(branches=["sentence_wave"])),
    "wave+hierarchy": dict(arch="wave", options=dict(branches=["sentence_wave", "segment_wave"])),
    "wave+hierarchy-staged": dict(arch="wave", options=dict(branches=["sentence_wave", "segment_wave"],
                                                            branch_schedule={"sentence_wave": 0.33,
                                                                             "segment_wave": 0.66})),
    # Early-exit span heads after blocks 1 and 2 (of 4): trained on the answers only, or also taught
    # by the last layer's span distribution (self-distillation, seed plan 6).
    "wave+exits": dict(arch="wave", options=dict(exit_layers=[1, 2])),
    "wave+selfdistill": dict(arch="wave", options=dict(exit_layers=[1, 2], self_distill=0.5)),
    "hybrid-local": dict(arch="wave", options=dict(mixers=["wave", "local_attention", "wave", "local_attention"])),
    "wave+conv+qattn": dict(arch="wave", options=dict(branches=["conv", "question_attention"])),
    "wave+conv+crosswave": dict(arch="wave", options=dict(branches=["conv", "cross_wave"])),
    # The two strongest single additions of the screens together: local (conv) and hierarchical
    # (sentence / segment wave) mixing.
    "wave+conv+hierarchy": dict(arch="wave", options=dict(branches=["conv", "sentence_wave", "segment_wave"])),
    "wave+rope+conv+qattn": dict(arch="wave", options=dict(wave_rope=True, position_embedding="none",
                                                           branches=["conv", "question_attention"])),
}
# The screening protocol: QA only, from scratch, with the standard preset's QA recipe.
SCREEN = dict(preset="scratch", minutes=8.0)


def _row(name: str, spec: dict[str, Any], runs: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    # Exactly the keys; the architecture, steps and tokens/s of each seed are in "runs".
    return {"name": name, "options": {"arch": spec["arch"], **spec["options"]}, "params": runs[0]["params"],
            "train_tokens_per_s": mean("train_tokens_per_s"), "eval_questions_per_s": mean("eval_questions_per_s"),
            "train_peak_mb": max(r["train_peak_mb"] for r in runs), "exact_match": mean("exact_match"),
            "f1": mean("f1"), "runs": runs, "budget_minutes": budget}


_PROTOCOL_KEYS = ("preset", "budget_minutes", "stages", "eval_data")
# Recorded since a later version: compared where both files have them (older files lack them).
_LATER_PROTOCOL_KEYS = ("train_data", "tokenizer")


def _protocol_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    differs = [k for k in _PROTOCOL_KEYS if theirs.get(k) != ours.get(k)]
    return differs + [k for k in _LATER_PROTOCOL_KEYS if k in theirs and k in ours and theirs[k] != ours[k]]


def with_extension(out: Path, extension: str) -> Path:
    """``OUT.json`` / ``OUT.md`` of ``--out OUT``, whatever dots OUT holds (``abl-1.5min``: not ``abl-1.json``)."""
    return out.parent / f"{out.name}{extension}"


def _earlier_runs(path: Path, protocol: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs of an existing ``OUT.json`` by variant, if it has this protocol; refuse another one."""
    if not path.exists():
        return {}
    earlier = read_json(path)
    theirs = earlier.get("protocol", {}) if isinstance(earlier, dict) else {}
    differs = _protocol_differences(theirs, protocol)
    if differs:
        raise ValueError(f"--out {path}: already holds an ablation of another protocol ({', '.join(differs)} "
                         "differ); choose another --out (it is never overwritten)")
    provenance = {k: earlier.get(k) for k in ("machine", "commit", "date")}
    return {row["name"]: [{**provenance, **run} for run in row["runs"]]  # runs recorded before per-run provenance
            for row in earlier.get("rows", []) if row.get("name") in VARIANTS}


def _retired_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing ``OUT.json`` whose variant nami no longer defines: kept as recorded."""
    if not path.exists():
        return []
    earlier = read_json(path)
    return [row for row in earlier.get("rows", []) if row.get("name") not in VARIANTS]


def markdown(record: dict[str, Any]) -> str:
    protocol = record["protocol"]
    lines = ["# Ablations: Wave extensions against plain Wave and the Transformer", "",
             f"Protocol: compare preset `{protocol['preset']}` ({protocol['description']}), "
             f"{protocol['budget_minutes']:g} training minutes per run, seeds {protocol['seeds']}; EM / F1 on all "
             f"{protocol.get('questions', '')} questions of {protocol['eval_data']} (official metric). "
             "Speeds are from each run's own training / final evaluation, on the machine recorded with it "
             "(compare speeds only between runs of one machine).", "",
             "| variant | options | params | train tok/s | steps | eval q/s | train peak MB | EM | F1 | F1 spread |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in record["rows"]:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items() if k != "arch") or "–"
        f1s = [r["f1"] for r in row["runs"]]
        spread = f"{max(f1s) - min(f1s):.2f}" if len(f1s) > 1 else "–"
        steps = sum(r["steps"] for r in row["runs"]) / len(row["runs"])
        lines.append(f"| {row['name']} | {options} | {row['params']:,} | {row['train_tokens_per_s']:,.0f} | "
                     f"{steps:,.0f} | {row['eval_questions_per_s']:,.0f} | {row['train_peak_mb']:,.0f} | "
                     f"{row['exact_match']:.2f} | {row['f1']:.2f} | {spread} |")
    if any(len(row["runs"]) > 1 for row in record["rows"]) or record.get("earlier_commands"):
        # Every run on its own line, with where and when it ran: seeds may come from several sessions.
        lines += ["", "Runs:", "", "| variant | seed | EM | F1 | train tok/s | steps | machine | commit | date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in record["rows"]:
            for r in row["runs"]:
                lines.append(f"| {row['name']} | {r['seed']} | {r['exact_match']:.2f} | {r['f1']:.2f} | "
                             f"{r['train_tokens_per_s']:,.0f} | {r['steps']:,} | {r.get('machine', '?')} | "
                             f"{str(r.get('commit', '?'))[:7]} | {str(r.get('date', '?'))[:10]} |")
    lines += [""] + provenance_lines(record)
    for command in record.get("earlier_commands", []):
        lines.append(f"- earlier command adding to this table: `{command}`")
    return "\n".join(lines) + "\n"


def run_ablation(*, variants: list[str], preset: str | None = None, minutes: float | None = None,
                 pretrain_minutes: float | None = None, seeds: list[int] = (0,), out: str = "results/ablations",
                 train_data: list[str] | None = None, eval_data: str | None = None, tokenizer: str | None = None,
                 quiet: bool = False, command: str = "nami ablate") -> dict[str, Any]:
    """Train every (variant, seed) one after the other with all threads; write ``out``.json/.md."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}: expected some of {', '.join(VARIANTS)}")
    screening = preset is None
    preset = preset or SCREEN["preset"]
    minutes = minutes if minutes is not None else (SCREEN["minutes"] if screening else None)
    if preset not in COMPARE_PRESETS:
        raise ValueError(f"unknown compare preset {preset!r}: expected one of {', '.join(COMPARE_PRESETS)}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(out)
    given = [*(train_data or ()), *([eval_data] if eval_data else []), *([tokenizer] if tokenizer else [])]
    for suffix in (".json", ".md"):
        check_output_path(with_extension(out_path, suffix), "--out", inputs=given)
    runs_dir = out_path.parent / f"{out_path.name}-runs"
    commit = git_commit()
    plans = {(name, seed): stage_configs(preset, VARIANTS[name]["arch"], minutes=minutes,
                                         pretrain_minutes=pretrain_minutes, runs_dir=str(runs_dir),
                                         stamp=stamp, train_data=train_data, eval_data=eval_data,
                                         tokenizer=tokenizer, options={**VARIANTS[name]["options"], "seed": seed},
                                         name=f"{name}-s{seed}")
             for name in variants for seed in seeds}
    first = next(iter(plans.values()))
    budget = sum(c.max_minutes for c in first.values())
    record: dict[str, Any] = {
        "command": command, "commit": commit, "machine": machine_description(), "date": now_iso(),
        "protocol": {"preset": preset, "budget_minutes": budget, "seeds": list(seeds),
                     "stages": {k: {"task": c.task, "minutes": c.max_minutes} for k, c in first.items()},
                     "description": ("screening: QA from scratch with the standard QA recipe, a short budget"
                                     if screening else "the compare preset's full recipe"),
                     "eval_data": resolve_eval_data(first[FINAL_STAGE]),
                     "train_data": resolve_train_data(first[FINAL_STAGE]),
                     "tokenizer": first[FINAL_STAGE].tokenizer},
        "rows": [],
    }
    results = _earlier_runs(with_extension(out_path, ".json"), record["protocol"])
    retired = _retired_rows(with_extension(out_path, ".json"))
    if results:
        earlier = read_json(with_extension(out_path, ".json"))
        record["earlier_commands"] = [*earlier.get("earlier_commands", []), earlier.get("command")]
    runs_dir.mkdir(parents=True, exist_ok=True)
    for (name, seed), stages in plans.items():
        if any(run["seed"] == seed for run in results.get(name, [])):
            if not quiet:
                print(f"[nami] ablate {name} seed {seed}: already in {with_extension(out_path, '.json')}", flush=True)
            continue
        chain = []
        for stage, config in stages.items():
            path = runs_dir / f"{name}-s{seed}.{stage}.json"
            path.write_text(json.dumps(config.to_dict(), ensure_ascii=False, indent=2), "utf-8")
            chain.append(_stage_command(path, None, True))
        if not quiet:
            print(f"[nami] ablate {name} seed {seed}: {budget:g} training minutes", flush=True)
        started = time.perf_counter()
        code, _ = _run_chain(chain, runs_dir / f"{name}-s{seed}.log")
        if code != 0:
            raise CommandFailed(f"variant {name} seed {seed} failed (exit {code}); see {runs_dir / f'{name}-s{seed}.log'}; "
                                f"the finished rows are in {with_extension(out_path, '.json')}")
        final_config = stages[FINAL_STAGE]
        final = read_json(Path(final_config.runs_dir) / final_config.run_name / ckpt.FINAL_EVAL_FILE)
        peaks = [read_json(Path(c.runs_dir) / c.run_name / ckpt.FINAL_EVAL_FILE)["peak_rss_mb"] for c in stages.values()]
        run = {"seed": seed, "exact_match": final["exact_match"], "f1": final["f1"], "count": final["count"],
               "params": final["params"]["total"], "train_tokens_per_s": final["train_tokens_per_s"],
               "eval_questions_per_s": final["questions_per_s"], "train_peak_mb": max(peaks), "steps": final["step"],
               "wall_minutes": (time.perf_counter() - started) / 60,
               "run_dir": str(Path(final_config.runs_dir) / final_config.run_name),
               "machine": record["machine"], "commit": commit, "date": now_iso()}
        results.setdefault(name, []).append(run)
        record["protocol"]["questions"] = final["count"]
        record["protocol"]["seeds"] = sorted({r["seed"] for rs in results.values() for r in rs})
        record["rows"] = [_row(n, VARIANTS[n], rs, budget) for n, rs in results.items()] + retired
        write_json(with_extension(out_path, ".json"), record)
        with_extension(out_path, ".md").write_text(markdown(record), "utf-8")
        if not quiet:
            print(f"[nami] {name} seed {seed}: EM {run['exact_match']:.2f} F1 {run['f1']:.2f} "
                  f"({run['train_tokens_per_s']:,.0f} train tok/s, {run['steps']} steps)", flush=True)
    if not record["rows"]:  # every variant and seed was already recorded: the file is left as it was
        record["rows"] = [_row(n, VARIANTS[n], rs, budget) for n, rs in results.items()] + retired
        record["nothing_trained"] = True
    return record


def merge_ablations(paths: list[str], out: str, *, command: str = "nami ablate --merge") -> dict[str, Any]:
    """One table from several ablation files of the same protocol (e.g. screens run in different
    sessions): rows of the same variant pool their runs; each run keeps the machine, commit and
    date it was measured with, and ``merged_from`` lists the files. A (variant, seed) pair found in
    two files is refused (it would count twice)."""
    records = [(path, read_json(Path(path))) for path in paths]
    if not records:
        raise ValueError("--merge: expected ablation JSON files")
    protocol = dict(records[0][1]["protocol"])
    runs: dict[str, list[dict[str, Any]]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for path, record in records:
        differs = _protocol_differences(record["protocol"], protocol)
        if differs:
            raise ValueError(f"--merge {path}: another protocol than {paths[0]} ({', '.join(differs)} differ)")
        provenance = {k: record.get(k) for k in ("machine", "commit", "date")}
        for row in record["rows"]:
            options = dict(row["options"])
            specs[row["name"]] = {"arch": options.pop("arch", row.get("arch", "wave")), "options": options}
            for run in row["runs"]:
                if any(r["seed"] == run["seed"] for r in runs.get(row["name"], [])):
                    raise ValueError(f"--merge {path}: {row['name']} seed {run['seed']} is already in an earlier "
                                     "file (it would count twice)")
                runs.setdefault(row["name"], []).append({**provenance, **run})
    protocol["seeds"] = sorted({r["seed"] for rs in runs.values() for r in rs})
    budget = protocol["budget_minutes"]
    merged = {"command": command, "commit": git_commit(), "machine": "per run (see rows[].runs[].machine)",
              "date": now_iso(), "protocol": protocol,
              "rows": [_row(name, specs[name], rs, budget) for name, rs in runs.items()],
              "merged_from": [{"file": path, "command": r.get("command"), "commit": r.get("commit"),
                               "machine": r.get("machine"), "date": r.get("date")} for path, r in records],
              "earlier_commands": [r.get("command") for _, r in records]}
    out_path = Path(out)
    for suffix in (".json", ".md"):
        check_output_path(with_extension(out_path, suffix), "--out", inputs=paths)
    write_json(with_extension(out_path, ".json"), merged)
    with_extension(out_path, ".md").write_text(markdown(merged), "utf-8")
    return merged
