"""``nami compare``: train a Wave and a Transformer QA model under one budget, side by side.

Each model is trained by its own ``nami train`` subprocess (so a crash or a memory blow-up of
one cannot take the other down, and each gets a clean thread setting). ``--parallel`` runs both
at once with one thread each: on a 2-core machine that uses the cores better than two
sequential 2-thread runs, and both models then share whatever else the machine is doing.
Afterwards every run is re-scored by ``nami predict`` with all threads, which measures inference
questions/s under equal conditions and checks that the run's recorded F1 is reproduced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nami import paths
from nami.evaluation.runner import predict_file
from nami.reports.environment import git_commit, machine_description, now_iso
from nami.reports.plots import plot_training_curves
from nami.training import checkpoint as ckpt
from nami.training.config import TrainConfig
from nami.training.tasks import resolve_eval_data, resolve_train_data

MODELS = ("wave", "transformer")

# Settings shared by both models of a comparison; ``minutes`` is training time per model.
COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds-long end-to-end check of the whole pipeline (used by the tests).
    "smoke": dict(
        minutes=0.3,
        train=dict(preset="tiny", max_length=128, doc_stride=64, batch_size=16, lr=2e-3, eval_subset=50,
                   eval_every_minutes=None, epochs=1.0),
    ),
    # The reported comparison: small models (d=256, 4 layers), <= 60 minutes per model on 2 CPU cores.
    # Trained on JaQuAD train + dev (JSQuAD's own train split is not available here); JSQuAD dev
    # contexts fit one 256-token window, so few answerless windows are kept.
    "standard": dict(
        minutes=55.0,
        data=[paths.JAQUAD_TRAIN, paths.JAQUAD_DEV],
        train=dict(preset="small", max_length=256, doc_stride=128, batch_size=32, lr=1e-3, warmup=0.05,
                   negative_fraction=0.1, segment_embeddings=True, title_prefix=True, max_answer_tokens=16,
                   eval_subset=500, eval_every_minutes=10.0, epochs=20.0),
    ),
}


def model_config(preset: str, arch: str, minutes: float | None, runs_dir: str, stamp: str,
                 train_data: list[str] | None, eval_data: str | None, tokenizer: str | None = None) -> TrainConfig:
    if preset not in COMPARE_PRESETS:
        raise ValueError(f"unknown compare preset {preset!r}: expected one of {', '.join(COMPARE_PRESETS)}")
    spec = COMPARE_PRESETS[preset]
    minutes = minutes if minutes is not None else spec["minutes"]
    if minutes <= 0:
        raise ValueError(f"--minutes={minutes}: expected > 0")
    if train_data is None and "data" in spec:
        train_data = [str(paths.default_data(name)) for name in spec["data"]]
    return TrainConfig(
        arch=arch,
        max_minutes=minutes,
        runs_dir=runs_dir,
        run_name=f"{stamp}-compare-{preset}-{arch}",
        train_data=train_data,
        eval_data=eval_data,
        tokenizer=tokenizer,
        **spec["train"],
    )


def _train_command(config_path: Path, threads: int | None, quiet: bool) -> list[str]:
    cmd = [sys.executable, "-m", "nami", "train", "--config", str(config_path)]
    if threads:
        cmd += ["--threads", str(threads)]
    if quiet:
        cmd.append("--quiet")
    return cmd


def run_compare(
    *,
    preset: str = "standard",
    minutes: float | None = None,
    parallel: bool = False,
    results_path: str | None = None,
    runs_dir: str = "runs",
    train_data: list[str] | None = None,
    eval_data: str | None = None,
    tokenizer: str | None = None,
    quiet: bool = False,
    command: str = "nami compare",
) -> dict[str, Any]:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    commit = git_commit()  # at the start: the code that trains is the code recorded
    configs = {
        arch: model_config(preset, arch, minutes, runs_dir, stamp, train_data, eval_data, tokenizer) for arch in MODELS
    }
    work = Path(runs_dir) / f"{stamp}-compare-{preset}"
    work.mkdir(parents=True, exist_ok=True)
    commands = {}
    for arch, config in configs.items():
        path = work / f"{arch}.train.json"
        path.write_text(json.dumps(config.to_dict(), ensure_ascii=False, indent=2), "utf-8")
        commands[arch] = _train_command(path, 1 if parallel else None, quiet or parallel)

    started = time.perf_counter()
    if parallel:
        logs = {arch: (work / f"{arch}.log").open("w") for arch in MODELS}
        procs = {arch: subprocess.Popen(commands[arch], stdout=logs[arch], stderr=subprocess.STDOUT) for arch in MODELS}
        if not quiet:
            print(f"[nami] training {', '.join(MODELS)} in parallel (1 thread each); logs in {work}", flush=True)
        codes = {arch: proc.wait() for arch, proc in procs.items()}
        for handle in logs.values():
            handle.close()
    else:
        codes = {arch: subprocess.run(commands[arch]).returncode for arch in MODELS}
    failed = [arch for arch, code in codes.items() if code != 0]
    if failed:
        raise RuntimeError(f"training failed for {', '.join(failed)} (see the logs / output above in {work})")

    eval_path = resolve_eval_data(configs["wave"])
    models: dict[str, Any] = {}
    for arch, config in configs.items():
        run_dir = Path(config.runs_dir) / config.run_name
        final = ckpt.read_json(run_dir / ckpt.FINAL_EVAL_FILE)
        check = predict_file(run_dir, eval_path, run_dir / "predictions.rescored.json", quiet=quiet)
        models[arch] = {
            "exact_match": final["exact_match"],
            "f1": final["f1"],
            "params": final["params"]["total"],
            "non_embedding_params": final["params"]["non_embedding"],
            "train_tokens_per_s": final["train_tokens_per_s"],
            "train_minutes": final["train_seconds"] / 60,
            "steps": final["step"],
            "eval_questions_per_s": check["questions_per_s"],
            "rescored_f1": check["f1"],
            "rescored_matches_recorded": check.get("matches_recorded", False),
            "run_dir": str(run_dir),
        }
    result = {
        "command": command,
        "commit": commit,
        "machine": machine_description(),
        "date": now_iso(),
        "preset": preset,
        "parallel": parallel,
        "budget_minutes": configs["wave"].max_minutes,
        "wall_minutes": (time.perf_counter() - started) / 60,
        "train_data": resolve_train_data(configs["wave"]),
        "eval_data": eval_path,
        "models": models,
    }
    table = markdown_table(result)
    print(table)
    if results_path:
        out = Path(results_path)
        plot = plot_training_curves({arch: m["run_dir"] for arch, m in models.items()}, out.with_suffix(".png"),
                                    title=f"nami compare --preset {preset}")
        result["plot"] = str(plot)
        ckpt.write_json(out, result)
        out.with_suffix(".md").write_text(markdown_report(result, table), "utf-8")
        print(f"[nami] wrote {out}, {out.with_suffix('.md')} and {plot}")
    return result


def markdown_table(result: dict[str, Any]) -> str:
    rows = [
        "| model | params (total / non-emb.) | train tok/s | JSQuAD dev EM | JSQuAD dev F1 | inference q/s | steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arch, m in result["models"].items():
        rows.append(
            f"| {arch} | {m['params'] / 1e6:.2f}M / {m['non_embedding_params'] / 1e6:.2f}M | "
            f"{m['train_tokens_per_s']:,.0f} | {m['exact_match']:.2f} | {m['f1']:.2f} | "
            f"{m['eval_questions_per_s']:.0f} | {m['steps']:,} |"
        )
    return "\n".join(rows)


def markdown_report(result: dict[str, Any], table: str) -> str:
    mode = "in parallel, one thread each" if result["parallel"] else "one after the other, all threads"
    return (
        f"# Wave vs Transformer on JSQuAD dev\n\n{table}\n\n"
        f"- command: `{result['command']}`\n- commit: `{result['commit']}`\n- machine: {result['machine']}\n"
        f"- date: {result['date']}\n- training budget: {result['budget_minutes']} minutes per model, {mode}\n"
        f"- train data: {', '.join(result['train_data'])} (JaQuAD; the official JSQuAD train split is not "
        f"available here)\n- eval data: {result['eval_data']} (all questions, JGLUE metric)\n"
        "- inference q/s: measured afterwards by `nami predict` with all threads, bf16, batch 64\n"
        + (f"\n![training curves]({Path(result['plot']).name})\n" if result.get("plot") else "")
    )
