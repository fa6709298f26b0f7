"""``nami compare``: train a Wave and a Transformer QA model under one budget, side by side.

Per model, a chain of ``nami`` subprocesses: optional masked-LM pretraining (``nami pretrain``),
then QA fine-tuning (``nami train``, started from the pretrained encoder when there is one). A
crash or a memory blow-up of one model cannot take the other down, each process gets a clean
thread setting, and each process's peak memory is its own. By default the chains run one after the
other, each with all cores (the reported runs: the budget is per model, and each model's speed is
measured with the machine to itself). ``--parallel`` runs the two chains at once with one thread
each: half the wall time, but each model gets half the machine, and both share whatever else it is
doing.

Afterwards every QA run is re-scored by a ``nami predict`` subprocess with all threads (inference
questions/s and peak memory under equal conditions; also checks that the recorded F1 is
reproduced), the lexical-overlap heuristic is scored on the same questions, and the report
directory is written (``results.json``, ``report.md``, plots; see :mod:`nami.reports.report`).

**Continuing a comparison.** Run again with the same ``--out`` (and preset, data and options), a
model whose chain already finished there is not trained again: its runs are reused and its
``trained`` record (commit, machine, date of the invocation that trained it) says so. A
comparison longer than one sitting can be finished model by model (``--models wave`` today,
``--models wave transformer wave_plus`` tomorrow); the report warns when the models were trained
on different machines, whose speeds do not compare. ``--reuse ABLATION.json`` does the same with
runs that ``nami ablate`` trained under the same preset and options (e.g. its seed-0 runs).
A later session on a fresh checkout, without ``runs/``, continues the same ``--out`` from its
committed ``results.json``: models recorded there with the same plan are reported as recorded
(:func:`recorded_models`). Each invocation stamps its host's measured matrix-multiply speed, and
the report says when the models' hosts differ by more than 10 %.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch

from nami import paths
from nami.data.squad import load_squad
from nami.evaluation import lexical
from nami.evaluation.metric import evaluate_predictions
from nami.io import CommandFailed, OutputLock, check_output_dir, check_output_path, read_json, write_json
from nami.reports.environment import git_commit, host_speed_gflops, machine_description, now_iso

# The presets (their recipes) are data in nami.reports.presets, re-exported here.
from nami.reports.presets import (  # noqa: F401
    COMPARE_PRESETS,
    FINAL_STAGE,
    PRESET_SUMMARIES,
    describe_presets,
    family_options,
    speed_options,
)
from nami.reports.report import RESULTS_FILE, write_report
from nami.reports.variants import VARIANTS, Variant, resolve
from nami.resources import resolve_precision
from nami.runs.config import TrainConfig
from nami.runs.tasks import MLM, info
from nami.training import checkpoint as ckpt
from nami.training.tasks import resolve_eval_data, resolve_train_data

MODELS = ("wave", "transformer")  # the models a comparison trains by default, in report order
# Every model `nami compare --models` can train is a variant of the one table (nami.reports.variants),
# the same names as `nami ablate --variants` (``wave_plus`` is an alias of ``wave+conv``, the best
# Wave-family model of the 8-minute screen, results/ablations-screen.md); ``--variant`` defines more.
COMPARE_MODELS = VARIANTS


def stage_configs(
    preset: str,
    arch: str,
    *,
    minutes: float | None,
    pretrain_minutes: float | None,
    runs_dir: str,
    stamp: str,
    train_data: list[str] | None,
    eval_data: str | None,
    tokenizer: str | None = None,
    options: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, TrainConfig]:
    """The training runs of one model, in order, by stage name (``{"pretrain": ..., "finetune": ...}``,
    or only ``"finetune"`` when the preset has no pretraining stage or ``pretrain_minutes`` is 0).

    ``options``: extra training options applied to every stage (model shortcuts included, e.g.
    ``{"branches": ["conv"], "seed": 1}``: ``nami ablate``); ``name`` replaces ``arch`` in run names.
    """
    if preset not in COMPARE_PRESETS:
        raise ValueError(f"unknown compare preset {preset!r}: expected one of {', '.join(COMPARE_PRESETS)}")
    spec = COMPARE_PRESETS[preset]
    names = [stage["name"] for stage in spec["stages"]]
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"--minutes={minutes}: expected a finite number > 0")
    if pretrain_minutes is not None and not (math.isfinite(pretrain_minutes) and pretrain_minutes >= 0):
        raise ValueError(f"--pretrain-minutes={pretrain_minutes}: expected a finite number >= 0")
    if pretrain_minutes and "pretrain" not in names:
        raise ValueError(f"--pretrain-minutes: compare preset {preset!r} has no pretraining stage")
    budgets = {"pretrain": pretrain_minutes, FINAL_STAGE: minutes}
    # Pretraining reads the contexts of the QA training files the user names (by default: of JaQuAD
    # train only, so that JaQuAD dev stays held-out text for its pseudo-perplexity).
    pretrain_data = train_data
    if train_data is None and "data" in spec:
        train_data = [str(paths.default_data(name)) for name in spec["data"]]
    arch_options = speed_options(preset, arch, options)  # compile_wave only where there are Wave layers
    family_recipe = family_options(preset, arch, options)  # the recipe the selection chose for this family
    stages: dict[str, TrainConfig] = {}
    for stage in spec["stages"]:
        budget = budgets.get(stage["name"])
        if budget == 0:
            continue
        init_from = stage.get("init_from")
        init_dir = str(Path(runs_dir) / stages[init_from].run_name) if init_from in stages else None
        final = stage["name"] == FINAL_STAGE
        stages[stage["name"]] = TrainConfig.from_dict({
            "task": stage["task"], "arch": arch, "max_minutes": budget if budget is not None else stage["minutes"],
            "runs_dir": runs_dir,
            "run_name": f"{stamp}-{preset}-{name or arch}" + ("" if final else f"-{stage['name']}"),
            "train_data": train_data if final else pretrain_data,
            "eval_data": eval_data if final else None,
            "tokenizer": None if init_dir else tokenizer, "init_from": init_dir,
            **stage["train"], **family_recipe.get(stage["name"], {}), **arch_options,
            **_stage_options(options, stage["name"], names),
        })
        # "auto" precision is decided here, for every stage and model alike, so the plan (and the
        # recorded results it is matched against later) names the precision the runs train in.
        stages[stage["name"]].precision = resolve_precision(stages[stage["name"]].precision, _train_device_type())
    return stages


def _stage_options(options: dict[str, Any] | None, stage: str, stages: list[str]) -> dict[str, Any]:
    """The options of one stage: plain ones apply to every stage, ``"STAGE.option"`` only to that
    stage (``{"pretrain.lr": 5e-4}``: a pretraining learning rate, the fine-tuning one unchanged)."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        target, dot, option = key.partition(".")
        if not dot:
            out[key] = value
        elif target not in stages:
            raise ValueError(f"option {key!r}: the preset has no stage {target!r} (stages: {', '.join(stages)})")
        elif target == stage:
            out[option] = value
    return out


def _train_device_type() -> str:
    """The device a ``nami train`` subprocess will train on (Accelerate's choice: CUDA when present)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


_VOLATILE = ("run_name", "init_from", "runs_dir")  # differ between invocations of the same plan


def _same_plan(saved: dict[str, Any], planned: TrainConfig) -> bool:
    """Whether a stage config saved by an earlier invocation trains what ``planned`` would (fields
    added since then take their defaults, as the run itself would read them)."""
    try:
        theirs = TrainConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        return False
    ours = planned.to_dict()
    return {k: v for k, v in theirs.items() if k not in _VOLATILE} == {k: v for k, v in ours.items()
                                                                        if k not in _VOLATILE}


def finished_chain(runs_dir: Path, name: str, stages: dict[str, TrainConfig]) -> dict[str, TrainConfig] | None:
    """The stage configs of model ``name`` as an earlier invocation into ``runs_dir`` trained them, if
    that chain finished with the same plan (every stage's config equal up to run names, and the final
    run has its final evaluation); otherwise None (the model is trained)."""
    saved: dict[str, TrainConfig] = {}
    for stage, planned in stages.items():
        path = runs_dir / f"{name}.{stage}.json"
        if not path.is_file():
            return None
        data = read_json(path)
        if not isinstance(data, dict) or not _same_plan(data, planned):
            return None
        saved[stage] = TrainConfig.from_dict(data)
    final = saved[FINAL_STAGE]
    if not (Path(final.runs_dir) / final.run_name / ckpt.FINAL_EVAL_FILE).is_file():
        return None
    return saved


def _check_ablation_record(record: Any, source: str) -> None:
    """The shape ``--reuse`` reads, checked up front: an error names the file and the field, never a
    KeyError or TypeError from deep inside."""
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ValueError(f"--reuse {source}: not an ablation results file (no \"rows\" list)")
    for i, row in enumerate(record["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ValueError(f"--reuse {source}: rows[{i}] is not a row with a \"name\"")
        if not isinstance(row.get("runs", []), list):
            raise ValueError(f"--reuse {source}: rows[{i}].runs is not a list")
        for j, run in enumerate(row.get("runs", [])):
            where = f"--reuse {source}: rows[{i}].runs[{j}]"
            if not isinstance(run, dict):
                raise ValueError(f"{where} is not a run record")
            if isinstance(run.get("seed"), bool) or not isinstance(run.get("seed"), int):
                raise ValueError(f"{where}.seed: expected an integer, got {run.get('seed')!r}")
            if "run_dir" in run and not isinstance(run["run_dir"], str):
                raise ValueError(f"{where}.run_dir: expected a path, got {run['run_dir']!r}")


def adopt_ablation_runs(sources: list[str], runs_dir: Path, plans: dict[str, dict[str, TrainConfig]],
                        *, quiet: bool = False) -> dict[str, str]:
    """Let models of this comparison reuse runs that ``nami ablate`` already trained with exactly
    their plan (``--reuse results/ablations-standard.json``: the standard preset's seed-0 runs of
    ``wave+conv`` and ``transformer`` are ``wave_plus`` and ``transformer`` of a standard compare).

    For every model without a finished chain in ``runs_dir``, the runs of every ablation file are
    searched (rows in file order, seeds ascending) for one whose stage configs equal the model's
    plan up to run names and whose final evaluation exists; its stage configs and provenance
    (commit, machine, date of that ablation run, and where it came from) are written into
    ``runs_dir`` as if this comparison had trained it, so the usual reuse picks it up. Returns
    ``{model: "FILE: VARIANT seed N"}`` for the models adopted.
    """
    adopted: dict[str, str] = {}
    for source in sources:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"--reuse {source}: no such file (expected a results JSON written by `nami ablate`)")
        record = read_json(path)
        _check_ablation_record(record, source)
        for arch, stages in plans.items():
            if arch in adopted or finished_chain(runs_dir, arch, stages) is not None:
                continue
            for row in record["rows"]:
                for run in sorted(row.get("runs", []), key=lambda r: r.get("seed", 0)):
                    if "run_dir" not in run:
                        continue
                    base = Path(run["run_dir"]).parent / f"{row['name']}-s{run['seed']}"
                    configs = {stage: base.parent / f"{base.name}.{stage}.json" for stage in stages}
                    if not all(c.is_file() for c in configs.values()):
                        continue
                    saved = {stage: read_json(c) for stage, c in configs.items()}
                    if not all(_same_plan(saved[stage], planned) for stage, planned in stages.items()):
                        continue
                    final = TrainConfig.from_dict(saved[FINAL_STAGE])
                    if not (Path(final.runs_dir) / final.run_name / ckpt.FINAL_EVAL_FILE).is_file():
                        continue
                    runs_dir.mkdir(parents=True, exist_ok=True)
                    for stage, data in saved.items():
                        write_json(runs_dir / f"{arch}.{stage}.json", data)
                    origin = f"{source}: {row['name']} seed {run['seed']}"
                    write_json(runs_dir / f"{arch}.trained.json",
                               {"commit": run.get("commit", record.get("commit", "unknown")),
                                "machine": run.get("machine", record.get("machine", "unknown")),
                                "date": run.get("date", record.get("date", "unknown")), "adopted_from": origin})
                    adopted[arch] = origin
                    if not quiet:
                        print(f"[nami] {arch}: adopting the finished runs of {origin}", flush=True)
                    break
                if arch in adopted:
                    break
    return adopted


def recorded_models(results_file: Path, plans: dict[str, dict[str, TrainConfig]]) -> dict[str, dict[str, Any]]:
    """Models that an earlier invocation into the same ``--out`` trained and scored with exactly
    their plan, read from its ``results.json``: ``{model: its entry}``.

    A comparison longer than one sitting continues in a later session on a fresh checkout, where
    ``runs/`` (ignored by git) is gone but the committed ``results.json`` (every stage's config and
    every number) and ``curves.json`` (the plotted records) remain. Such a model is reported from
    its recorded entry (scores, speeds, memory; not re-scored), marked ``from_results`` in its
    ``trained`` record.
    """
    if not results_file.is_file():
        return {}
    record = read_json(results_file)
    found: dict[str, dict[str, Any]] = {}
    for arch, stages in plans.items():
        entry = record.get("models", {}).get(arch) if isinstance(record, dict) else None
        saved = entry.get("stages") if isinstance(entry, dict) else None
        if not isinstance(saved, dict) or set(saved) != set(stages):
            continue
        if all(_same_plan(saved[stage], planned) for stage, planned in stages.items()):
            found[arch] = entry
    return found


def _stage_command(config_path: Path, threads: int | None, quiet: bool) -> list[str]:
    cmd = [sys.executable, "-m", "nami", "train", "--config", str(config_path)]
    if threads:
        cmd += ["--threads", str(threads)]
    if quiet:
        cmd.append("--quiet")
    return cmd


def _run_chain(commands: list[list[str]], log: Path | None) -> tuple[int, float]:
    """Run the commands one after the other (stopping at the first failure); exit code and wall minutes."""
    started = time.perf_counter()
    for cmd in commands:
        if log is None:
            code = subprocess.run(cmd).returncode
        else:
            with log.open("a") as handle:
                handle.write(f"$ {' '.join(cmd)}\n")
                handle.flush()
                code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
        if code != 0:
            return code, (time.perf_counter() - started) / 60
    return 0, (time.perf_counter() - started) / 60


def _rescore(run_dir: Path, eval_path: str, *, show: bool = False) -> dict[str, Any]:
    """``nami predict`` in a fresh process with all threads: inference speed, peak memory, F1 check.
    ``show``: its progress bars reach the terminal (its stderr is not captured)."""
    cmd = [sys.executable, "-m", "nami", "predict", "--checkpoint", str(run_dir), "--data", eval_path,
           "--output", str(run_dir.parent / f"{run_dir.name}.predictions.rescored.json")]
    if not show:
        cmd.append("--quiet")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if show else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = "see its output above" if show else (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CommandFailed(f"re-scoring {run_dir} failed (exit {proc.returncode}: {last}); command: {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pretrain_summary(run_dir: Path, task: str = MLM) -> dict[str, Any]:
    final = read_json(run_dir / ckpt.FINAL_EVAL_FILE)
    summary = {
        "task": task, "run_dir": str(run_dir), "train_minutes": final["train_seconds"] / 60, "steps": final["step"],
        "train_tokens_per_s": final["train_tokens_per_s"], "peak_mb": final.get("peak_rss_mb"),
        "eval_data": final.get("data"),
    }
    if info(task).causal:
        return {**summary, "loss": final["loss"], "perplexity": final["perplexity"]}
    return {**summary, "masked_accuracy": final["masked_accuracy"], "masked_loss": final["masked_loss"],
            "pseudo_perplexity": final.get("pseudo_perplexity")}


def check_results_path(results_path: str | Path, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse a ``--results`` path that cannot become a JSON file or would overwrite an input, before any
    slow work starts."""
    check_output_path(results_path, "--results", inputs=inputs)


def copy_results(out_dir: str | Path, results_path: str | Path) -> Path:
    """Write a compare directory's ``results.json`` to ``results_path`` (run paths stay as recorded)."""
    path = Path(results_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, read_json(Path(out_dir) / "results.json"))
    return path


def run_compare(
    *,
    preset: str = "standard",
    minutes: float | None = None,
    pretrain_minutes: float | None = None,
    parallel: bool = False,
    out_dir: str | None = None,
    train_data: list[str] | None = None,
    eval_data: str | None = None,
    tokenizer: str | None = None,
    lexical_baseline: bool = True,
    quiet: bool = False,
    command: str = "nami compare",
    results_path: str | None = None,
    models: tuple[str, ...] = MODELS,
    reuse: tuple[str, ...] = (),
    custom: dict[str, Variant] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Train the models, score them, write ``out_dir`` (default ``reports/<date-time>-compare-<preset>``).

    ``results_path``: also write the results JSON there (``--results results/compare.json``).
    ``models``: variant names (:mod:`nami.reports.variants`; default: Wave and the Transformer);
    ``custom``: variants defined with ``--variant``. ``reuse``: ablation results files whose runs
    trained with a model's exact plan are reused (:func:`adopt_ablation_runs`). ``started``: when the
    command began (``time.time()``; default: now): the reported wall clock is the whole command's.
    """
    started = time.time() if started is None else started
    if not models:
        raise ValueError("--models: expected at least one model")
    try:
        specs = {name: resolve(name, custom) for name in models}
    except ValueError as error:
        raise ValueError(f"--models: {error}") from None
    MODELS = tuple(models)  # noqa: N806  (this comparison's models, in report order)
    _check_inputs(results_path, reuse, train_data, eval_data, tokenizer)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    commit = git_commit()  # at the start: the code that trains is the code recorded
    out = check_output_dir(out_dir, "--out") if out_dir else Path("reports") / f"{stamp}-compare-{preset}"
    runs_dir = out / "runs"
    plans = {
        name: stage_configs(preset, specs[name].arch, minutes=minutes, pretrain_minutes=pretrain_minutes,
                            runs_dir=str(runs_dir), stamp=stamp, train_data=train_data, eval_data=eval_data,
                            tokenizer=tokenizer, options=specs[name].options or None,
                            name=None if name == specs[name].arch else name)
        for name in MODELS
    }
    first = plans[MODELS[0]]
    eval_path = resolve_eval_data(first["finetune"])
    resolved_train = resolve_train_data(first["finetune"])
    if results_path is not None:  # now that the data paths are known (the defaults too)
        check_results_path(results_path, [*resolved_train, eval_path, *([tokenizer] if tokenizer else [])])
    runs_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(out / ".compare.lock"):  # one nami compare writes into an --out at a time
        if reuse:
            adopt_ablation_runs(list(reuse), runs_dir, plans, quiet=quiet)
        recorded = recorded_models(out / RESULTS_FILE, plans)
        this_invocation = {"commit": commit, "machine": machine_description(), "host_gflops": host_speed_gflops(),
                           "host_gflops_bf16": host_speed_gflops(dtype=torch.bfloat16),
                           "date": now_iso(), "reused": False}
        trained, chains = _plan_chains(plans, recorded, runs_dir, out, this_invocation, parallel=parallel, quiet=quiet)
        outcomes, training_wall_minutes = _train_chains(chains, runs_dir, MODELS, parallel=parallel, quiet=quiet)
        for arch in MODELS:
            if not trained[arch]["reused"]:
                write_json(runs_dir / f"{arch}.trained.json", {k: v for k, v in this_invocation.items() if k != "reused"})
        models: dict[str, Any] = {}
        for arch, stages in plans.items():
            if trained[arch].get("from_results"):
                models[arch] = {**recorded[arch], "trained": trained[arch]}
            else:
                models[arch] = _model_result(stages, trained[arch], outcomes[arch], eval_path, arch=arch, quiet=quiet)
        baselines = _baselines(eval_path, quiet=quiet) if lexical_baseline else {}
        result = {
            "command": command,
            "commit": commit,
            "machine": machine_description(),
            "date": now_iso(),
            "preset": preset,
            "parallel": parallel,
            "budget_minutes": {
                "pretrain": first["pretrain"].max_minutes if "pretrain" in first else 0.0,
                "finetune": first["finetune"].max_minutes,
            },
            "wall_minutes": None,  # set below: the whole command, evaluation and baseline included
            "training_wall_minutes": training_wall_minutes,
            "train_data": resolved_train,
            "eval_data": eval_path,
            "models": models,
            "baselines": baselines,
        }
        result["budget_minutes"]["total"] = result["budget_minutes"]["pretrain"] + result["budget_minutes"]["finetune"]
        result["wall_minutes"] = (time.time() - started) / 60
        write_report(result, out)  # plots and all (matplotlib's import is most of it), then the true total:
        result["wall_minutes"] = (time.time() - started) / 60
        write_report(result, out)
        if results_path is not None:
            copy_results(out, results_path)
        _print_done(result, out, results_path, preset, quiet)
        return result


def _baselines(eval_path: str, *, quiet: bool) -> dict[str, Any]:
    """The no-learning reference on the evaluation data (the lexical-overlap heuristic, window 8)."""
    examples = load_squad(eval_path)
    scores = evaluate_predictions(examples, lexical.predict(examples, show_progress=not quiet))
    return {"lexical": {k: scores[k] for k in ("exact_match", "f1", "count")} | {"window": 8}}


def _check_inputs(results_path: str | None, reuse: tuple[str, ...], train_data: list[str] | None,
                  eval_data: str | None, tokenizer: str | None) -> None:
    """Given paths are checked before anything is created or trained (each child run would fail alone)."""
    if results_path is not None:
        check_results_path(results_path)
    for source in reuse:
        if not Path(source).is_file():
            raise ValueError(f"--reuse {source}: no such file (expected a results JSON written by `nami ablate`)")
    for option, given in (("--train-data", train_data or ()), ("--eval-data", [eval_data] if eval_data else ())):
        for path in given:
            if not Path(path).exists():
                raise ValueError(f"{option} {path}: no such file or directory")
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise ValueError(f"--tokenizer {tokenizer}: no such tokenizer directory")


def _plan_chains(plans: dict[str, dict[str, TrainConfig]], recorded: dict[str, Any], runs_dir: Path, out: Path,
                 this_invocation: dict[str, Any], *, parallel: bool, quiet: bool):
    """Per model: which invocation trained it (earlier ones are reused) and the commands still to run."""
    trained: dict[str, dict[str, Any]] = {}
    chains: dict[str, list[list[str]]] = {}
    for arch, stages in plans.items():
        chains[arch] = []
        earlier = finished_chain(runs_dir, arch, stages)
        if earlier is None and arch in recorded:  # scored by an earlier session; its runs are gone
            trained[arch] = {**recorded[arch].get("trained", {}), "reused": True, "from_results": True}
            if not quiet:
                print(f"[nami] {arch}: taking its recorded results from {out / RESULTS_FILE} (trained "
                      f"{trained[arch].get('date', 'unknown')}; its runs are not here, so it is not re-scored)",
                      flush=True)
            continue
        if earlier is not None:  # trained by an earlier invocation into this --out: reuse it
            plans[arch] = earlier
            provenance = runs_dir / f"{arch}.trained.json"
            trained[arch] = {**(read_json(provenance) if provenance.is_file() else
                                {"commit": "unknown", "machine": "unknown", "date": "unknown"}), "reused": True}
            if not quiet:
                print(f"[nami] {arch}: reusing the finished runs under {runs_dir} (trained {trained[arch]['date']})",
                      flush=True)
            continue
        trained[arch] = this_invocation
        for stage, config in stages.items():
            path = runs_dir / f"{arch}.{stage}.json"
            path.write_text(json.dumps(config.to_dict(), ensure_ascii=False, indent=2), "utf-8")
            chains[arch].append(_stage_command(path, 1 if parallel else None, quiet or parallel))
    return trained, chains


def _train_chains(chains: dict[str, list[list[str]]], runs_dir: Path, order: tuple[str, ...], *, parallel: bool,
                  quiet: bool) -> tuple[dict[str, tuple[int, float]], float]:
    """Run every model's chain (one after the other with all threads, or at once with one each)."""
    MODELS = order  # noqa: N806
    started = time.perf_counter()
    if parallel:
        logs = {arch: runs_dir / f"{arch}.log" for arch in MODELS}
        if not quiet:
            print(f"[nami] training {', '.join(MODELS)} in parallel (1 thread each); logs: "
                  f"{', '.join(str(p) for p in logs.values())}", flush=True)
        with ThreadPoolExecutor(max_workers=len(MODELS)) as pool:
            futures = {arch: pool.submit(_run_chain, chains[arch], logs[arch]) for arch in MODELS}
            outcomes = {arch: future.result() for arch, future in futures.items()}
    else:
        outcomes = {arch: _run_chain(chains[arch], None) for arch in MODELS}
    failed = [f"{arch} (exit {code})" for arch, (code, _) in outcomes.items() if code != 0]
    if failed:
        where = f"the logs {runs_dir}/<model>.log" if parallel else "the output above"
        raise CommandFailed(f"training failed for {', '.join(failed)}: see {where}; the runs it wrote are kept "
                            f"under {runs_dir}")
    return outcomes, (time.perf_counter() - started) / 60


def _model_result(stages: dict[str, TrainConfig], trained: dict[str, Any], outcome: tuple[int, float],
                  eval_path: str, *, arch: str, quiet: bool) -> dict[str, Any]:
    """One model's entry of results.json: its recorded scores, re-scored by ``nami predict``."""
    config = stages["finetune"]
    run_dir = Path(config.runs_dir) / config.run_name
    final = read_json(run_dir / ckpt.FINAL_EVAL_FILE)
    if not quiet:
        print(f"[nami] re-scoring {arch} with `nami predict` (all threads)", flush=True)
    check = _rescore(run_dir, eval_path, show=not quiet)
    pretrain = _pretrain_summary(Path(stages["pretrain"].runs_dir) / stages["pretrain"].run_name,
                                 stages["pretrain"].task) if "pretrain" in stages else None
    train_minutes = final["train_seconds"] / 60
    return {
        "exact_match": final["exact_match"],
        "f1": final["f1"],
        "count": final["count"],
        "params": final["params"]["total"],
        "non_embedding_params": final["params"]["non_embedding"],
        "train_tokens_per_s": final["train_tokens_per_s"],
        "train_minutes": train_minutes,
        "steps": final["step"],
        "eval_questions_per_s": check["questions_per_s"],
        "infer_precision": ckpt.read_run_config(run_dir)[0].precision,  # what `nami predict` used
        "rescored_f1": check["f1"],
        "rescored_matches_recorded": check.get("matches_recorded", False),
        "train_peak_mb": max(final["peak_rss_mb"], pretrain["peak_mb"] if pretrain else 0.0),
        "finetune_peak_mb": final["peak_rss_mb"],
        "infer_peak_mb": check["peak_rss_mb"],
        # Training time (pretraining included) until the reported F1; evaluations excluded.
        "minutes_to_final_f1": train_minutes + (pretrain["train_minutes"] if pretrain else 0.0),
        "chain_wall_minutes": None if trained["reused"] else outcome[1],
        "compile_wave": config.compile_wave,
        "compile_wave_failure": final.get("compile_wave_failure"),
        "task": config.task,
        "answer_boundaries": config.answer_boundaries if info(config.task).answers == "extract" else None,
        "question_match": config.question_match,
        "pretrain": pretrain,
        "run_dir": str(run_dir),
        # Every stage's full training config: the recipe is in the results, not only in the code.
        "stages": {name: stage.to_dict() for name, stage in stages.items()},
        "trained": trained,  # which invocation trained it (continued comparisons reuse runs)
    }


def _print_done(result: dict[str, Any], out: Path, results_path: str | None, preset: str, quiet: bool) -> None:
    models = result["models"]
    if not quiet:
        print((out / "report.md").read_text("utf-8"))
        print(f"[nami] wrote {out / 'results.json'} and {out / 'report.md'}", flush=True)
        if results_path is not None:
            print(f"[nami] wrote {results_path}", flush=True)
    else:  # one line even with --quiet: the scores and where the report is
        scores = "; ".join(f"{arch} EM {m['exact_match']:.1f} / F1 {m['f1']:.1f}" for arch, m in models.items())
        print(f"[nami] compare {preset}: {scores} -> {out / 'report.md'}", flush=True)
