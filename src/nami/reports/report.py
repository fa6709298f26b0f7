"""The comparison report directory: ``results.json`` (every number), ``report.md`` and its plots.

``report.md`` is rendered from ``results.json`` alone (the curves from the runs' ``metrics.jsonl``,
kept trimmed in ``curves.json`` so that a committed report, without ``runs/``, renders again), so
every number in it traces to that file; ``nami report DIR`` renders it again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nami.io import read_json, write_json
from nami.reports.environment import provenance_lines
from nami.reports.plots import plot_training_curves, read_metrics
from nami.runs.tasks import INFOS, QA

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"

# Published JSQuAD dev scores (JGLUE, Kurihara et al., LREC 2022): pretrained models fine-tuned on the
# official JSQuAD train split on GPUs, and human performance. Shown for scale, not as a like-for-like row.
REFERENCES = [
    {"name": "human (JGLUE paper)", "exact_match": 87.1, "f1": 94.4},
    {"name": "Tohoku BERT base (JGLUE paper; pretrained, GPU, JSQuAD train)", "exact_match": 87.1, "f1": 94.1},
]


CURVES_FILE = "curves.json"  # the log records the plots draw, so a report re-renders without runs/
_CURVE_KEYS = ("type", "step", "train_seconds", "loss", "f1", "exact_match", "masked_accuracy", "perplexity")



DISPLAY_NAMES = {"wave": "Wave", "transformer": "Transformer"}  # other models keep their names (wave_plus, ...)
def _task_label(task: str | None) -> str | None:
    """How reports name a recorded task (its registry label; an unknown name as it is)."""
    return INFOS[task].label if task in INFOS else task


def _causal(task: str | None) -> bool:
    """Whether a recorded task name is one that trains a decoder (unknown names: no)."""
    return task in INFOS and INFOS[task].causal


def display_name(model: str) -> str:
    return DISPLAY_NAMES.get(model, model)


def pretrain_kind(result: dict[str, Any]) -> str:
    """``causal-LM`` or ``masked-LM`` (results written before causal pretraining existed: masked-LM)."""
    tasks = {(m.get("pretrain") or {}).get("task") for m in result["models"].values()}
    return "causal-LM" if any(_causal(t) for t in tasks) else "masked-LM"


def _finetune(model: dict[str, Any]) -> dict[str, Any]:
    """The recorded config of a model's scored stage ({} in results written before stages were kept)."""
    return (model.get("stages") or {}).get("finetune") or {}


def _where(result: dict[str, Any]) -> str:
    """Where the runs trained, from the recorded machine: "on 2 CPU cores", "on a GPU (...)"."""
    machine = str(result.get("machine", ""))
    if "CUDA" in machine:
        return "here on a GPU"
    cpus = re.search(r"(\d+) CPUs", machine)
    return f"here on {cpus.group(1)} CPU cores" if cpus else "on the machine named below"


def _inference_precision(result: dict[str, Any]) -> str:
    """The precision ``nami predict`` ran in (the run's own), per model where they differ; results
    written before it was recorded say so."""
    precisions = {}
    for arch, m in result["models"].items():
        staged = m.get("stages", {}).get("finetune", {}).get("precision")
        precisions[arch] = m.get("infer_precision") or (staged if staged in ("bf16", "fp32") else None)
    if None in precisions.values():
        return "the run's own precision (not recorded in this results file)"
    if len(set(precisions.values())) == 1:
        return next(iter(precisions.values()))
    return ", ".join(f"{p} ({arch})" for arch, p in precisions.items())


def _curve_records(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The records of a run's ``metrics.jsonl`` the plots use (trimmed), or None without the run."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return None
    return [{k: r[k] for k in _CURVE_KEYS if k in r} for r in read_metrics(run_dir)
            if r.get("type") in ("train", "eval", "final_eval")]


def _curves(result: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    """Per stage (``finetune`` / ``pretrain``) and model: the records to draw, from the runs when they
    exist, else from the report directory's ``curves.json`` (committed reports have no ``runs/``)."""
    stored = read_json(out / CURVES_FILE) if (out / CURVES_FILE).is_file() else {}
    curves: dict[str, dict[str, Any]] = {"finetune": {}, "pretrain": {}}
    for arch, m in result["models"].items():
        dirs = {"finetune": m["run_dir"], "pretrain": m["pretrain"]["run_dir"] if m.get("pretrain") else None}
        for stage, run_dir in dirs.items():
            if run_dir is None:
                continue
            records = _curve_records(run_dir)
            curves[stage][arch] = records if records is not None else stored.get(stage, {}).get(arch)
    return curves


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``results.json``, ``curves.json``, the plots and ``report.md`` into ``out_dir``; returns
    the report path. A plot whose records are neither in the runs nor in ``curves.json`` (a report
    written before ``curves.json`` existed, without its ``runs/``) is kept as it is."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = result["models"]
    curves = _curves(result, out)
    complete = {stage: all(v is not None for v in c.values()) and bool(c) for stage, c in curves.items()}
    if any(complete.values()):
        write_json(out / CURVES_FILE, {stage: c for stage, c in curves.items() if complete[stage]})
    offsets = {arch: (m["pretrain"]["train_minutes"] if m.get("pretrain") else 0.0) for arch, m in models.items()}
    plots: dict[str, str] = {}
    if complete["finetune"]:
        plots["curves"] = str(plot_training_curves(
            curves["finetune"], out / "curves.png", offsets=offsets,
            title=f"nami compare --preset {result['preset']}: QA fine-tuning",
            reference_f1=result.get("baselines", {}).get("lexical", {}).get("f1"),
        ).name)
    elif (out / "curves.png").is_file():
        plots["curves"] = "curves.png"  # kept: its records are not available any more
    pretrained = curves["pretrain"]
    causal = any(_causal(m["pretrain"].get("task")) for m in models.values() if m.get("pretrain"))
    if pretrained and complete["pretrain"]:
        if causal:
            plots["pretrain"] = str(plot_training_curves(
                pretrained, out / "pretrain.png", title="causal-LM pretraining (JaQuAD train contexts)",
                loss_label="causal-LM loss", score_key="perplexity", score_label="held-out perplexity",
            ).name)
        else:
            plots["pretrain"] = str(plot_training_curves(
                pretrained, out / "pretrain.png", title="masked-LM pretraining (JaQuAD train contexts)",
                loss_label="masked-LM loss", score_key="masked_accuracy", score_label="masked-token accuracy %",
            ).name)
    elif pretrained and (out / "pretrain.png").is_file():
        plots["pretrain"] = "pretrain.png"
    result = {**result, "plots": plots, "references": REFERENCES}
    write_json(out / RESULTS_FILE, result)
    path = out / REPORT_FILE
    path.write_text(render_markdown(result), "utf-8")
    return path


def rerender(out_dir: str | Path) -> Path:
    """Render ``report.md`` (and plots) again from an existing ``results.json``."""
    out = Path(out_dir)
    result = read_json(out / RESULTS_FILE)
    models = result.get("models") if isinstance(result, dict) else None
    if not isinstance(models, dict) or not models or not all(isinstance(m, dict) for m in models.values()):
        raise ValueError(f"{out / RESULTS_FILE}: not a `nami compare` results record (expected an object whose "
                         "\"models\" maps model names to their results)")
    _check_numbers(result, out / RESULTS_FILE)
    try:
        return write_report({k: v for k, v in result.items() if k not in ("plots", "references")}, out)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{out / RESULTS_FILE}: incomplete `nami compare` results record (missing or malformed "
                         f"field {err})") from err


# Numbers a report prints: each must be a finite number where present (an edited results.json with
# "x" or NaN there gave "Unknown format code" naming nothing, or a table of nan with the headline
# silently leaving that model out).
_MODEL_NUMBERS = ("exact_match", "f1", "params", "train_tokens_per_s", "train_minutes", "steps",
                  "eval_questions_per_s", "train_peak_mb", "infer_peak_mb", "minutes_to_final_f1")


def _check_numbers(result: dict[str, Any], path: Path) -> None:
    import math

    def check(value: Any, where: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{path}: {where}={value!r}: expected a finite number")

    check(result.get("wall_minutes"), "wall_minutes")
    check(result.get("training_wall_minutes"), "training_wall_minutes")
    for key, value in (result.get("budget_minutes") or {}).items():
        check(value, f"budget_minutes.{key}")
    for name, model in result["models"].items():
        for key in _MODEL_NUMBERS:
            if key in model:
                check(model[key], f"models.{name}.{key}")
    for name, baseline in (result.get("baselines") or {}).items():
        for key in ("exact_match", "f1"):
            if isinstance(baseline, dict) and key in baseline:
                check(baseline[key], f"baselines.{name}.{key}")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def eval_label(result: dict[str, Any]) -> str:
    """``JSQuAD dev`` when the evaluation file is JSQuAD's dev split, else the file's name."""
    path = str(result.get("eval_data") or "")
    return "JSQuAD dev" if path.endswith("jsquad/valid-v1.3.json") or not path else Path(path).name


def trained_lines(result: dict[str, Any]) -> list[str]:
    """Which invocation trained each model, when a continued comparison reused earlier runs."""
    trained = {arch: m.get("trained") for arch, m in result["models"].items()}
    if not any(t and t.get("reused") for t in trained.values()):
        return []
    lines = ["- models trained by separate invocations into this directory (the others' runs were reused): "
             + "; ".join(f"{arch}: commit `{str(t['commit'])[:7]}`, {t['date']}"
                         + (f" (adopted from {t['adopted_from']})" if t.get("adopted_from") else "")
                         + (" (its recorded results: an earlier session's runs are not here)"
                            if t.get("from_results") else "")
                         for arch, t in trained.items() if t)]
    if len({t["machine"] for t in trained.values() if t}) > 1:
        lines.append("- **the models were trained on different machines: their speeds (tok/s, q/s) do not compare**: "
                     + "; ".join(f"{arch}: {t['machine']}" for arch, t in trained.items() if t))
    for key, kind in (("host_gflops", "fp32"), ("host_gflops_bf16", "bf16")):  # bf16: stamped since 2026-12-01
        speeds = {arch: t[key] for arch, t in trained.items() if t and t.get(key)}
        if len(speeds) > 1 and max(speeds.values()) > 1.1 * min(speeds.values()):
            lines.append(f"- **the hosts' measured speeds differ by more than 10 % ({kind} GEMM GFLOP/s at the start "
                         "of each invocation): tokens/s do not compare across these models**: "
                         + "; ".join(f"{arch}: {g:,.1f}" for arch, g in speeds.items()))
        elif len(speeds) > 1:
            lines.append(f"- hosts' measured speeds ({kind} GEMM GFLOP/s at the start of each invocation) agree "
                         "within 10 %: " + "; ".join(f"{arch}: {g:,.1f}" for arch, g in speeds.items()))
    return lines


def accuracy_table(result: dict[str, Any]) -> str:
    lexical = result.get("baselines", {}).get("lexical")
    label = eval_label(result)
    rows = [_row(["model", f"{label} EM", f"{label} F1", "F1 − lexical heuristic"]), _row(["---"] * 4)]
    for arch, m in result["models"].items():
        gap = f"{m['f1'] - lexical['f1']:+.2f}" if lexical else "–"
        rows.append(_row([f"**{arch}**", f"{m['exact_match']:.2f}", f"{m['f1']:.2f}", gap]))
    if lexical:
        rows.append(_row(["lexical-overlap heuristic (no learning)", f"{lexical['exact_match']:.2f}",
                          f"{lexical['f1']:.2f}", "0"]))
    for ref in result.get("references", REFERENCES) if label == "JSQuAD dev" else ():  # published JSQuAD dev scores
        rows.append(_row([f"*reference:* {ref['name']}", f"{ref['exact_match']:.1f}", f"{ref['f1']:.1f}", "–"]))
    return "\n".join(rows)


def cost_table(result: dict[str, Any]) -> str:
    rows = [
        _row(["model", "params (total / non-emb.)", "train tok/s", "inference q/s", "train peak MB",
              "inference peak MB", "training min. to final F1", "QA steps"]),
        _row(["---"] * 8),
    ]
    for arch, m in result["models"].items():
        rows.append(_row([
            arch, f"{m['params'] / 1e6:.2f}M / {m['non_embedding_params'] / 1e6:.2f}M",
            f"{m['train_tokens_per_s']:,.0f}",
            f"{m['eval_questions_per_s']:.0f}", f"{m['train_peak_mb']:,.0f}", f"{m['infer_peak_mb']:,.0f}",
            f"{m['minutes_to_final_f1']:.1f}", f"{m['steps']:,}",
        ]))
    return "\n".join(rows)


def pretrain_table(result: dict[str, Any]) -> str | None:
    pretrained = {arch: m["pretrain"] for arch, m in result["models"].items() if m.get("pretrain")}
    if not pretrained:
        return None
    if any(_causal(p.get("task")) for p in pretrained.values()):
        rows = [_row(["model", "pretraining minutes", "steps", "train tok/s", "held-out loss", "held-out perplexity",
                      "peak MB"]), _row(["---"] * 7)]
        for arch, p in pretrained.items():
            rows.append(_row([arch, f"{p['train_minutes']:.1f}", f"{p['steps']:,}", f"{p['train_tokens_per_s']:,.0f}",
                              f"{p['loss']:.3f}", f"{p['perplexity']:,.1f}",
                              f"{p['peak_mb']:,.0f}" if p.get("peak_mb") is not None else "–"]))
        return "\n".join(rows)
    rows = [_row(["model", "pretraining minutes", "steps", "train tok/s", "masked-token acc. (%)", "masked-LM loss",
                  "pseudo-perplexity", "peak MB"]), _row(["---"] * 8)]
    for arch, p in pretrained.items():
        pppl = f"{p['pseudo_perplexity']:,.1f}" if p.get("pseudo_perplexity") is not None else "–"
        rows.append(_row([arch, f"{p['train_minutes']:.1f}", f"{p['steps']:,}", f"{p['train_tokens_per_s']:,.0f}",
                          f"{p['masked_accuracy']:.2f}", f"{p['masked_loss']:.3f}", pppl,
                          f"{p['peak_mb']:,.0f}" if p.get("peak_mb") is not None else "–"]))
    return "\n".join(rows)


def render_markdown(result: dict[str, Any]) -> str:
    budget = result["budget_minutes"]
    if not isinstance(budget, dict):  # results written before pretraining stages existed
        budget = {"pretrain": 0.0, "finetune": budget, "total": budget}
    mode = "in parallel, one thread each" if result["parallel"] else "one after the other, all threads"
    lexical = result.get("baselines", {}).get("lexical")
    lines = [f"# {' vs '.join(map(display_name, result['models']))} on {eval_label(result)} "
             f"(`{result['preset']}` preset)", "",
             "## Accuracy", "",
             accuracy_table(result), ""]
    if lexical:
        below = [arch for arch, m in result["models"].items() if m["f1"] <= lexical["f1"]]
        if below:
            lines += [f"**{' and '.join(below)} {'is' if len(below) == 1 else 'are'} below the lexical-overlap "
                      "heuristic**: character-level F1 is generous, and a model that does not beat word matching "
                      "has learned little beyond it.", ""]
    lines += ["The references are pretrained BERT-size models fine-tuned on JSQuAD's own train split on GPUs "
              f"(and humans); nami's rows are small models trained {_where(result)} within the budget below.", "",
              "## Cost", "", cost_table(result), ""]
    pretrain = pretrain_table(result)
    if pretrain:
        kind = "Causal-LM" if "held-out perplexity" in pretrain.splitlines()[0] else "Masked-LM"
        lines += [f"## {kind} pretraining", "", pretrain, "",
                  f"Held-out text: {next(iter(result['models'].values()))['pretrain'].get('eval_data')}.", ""]
    plots = result.get("plots", {})
    if plots:
        lines += ["## Curves", ""]
        if "curves" in plots:
            lines += [f"![QA training loss and dev F1]({plots['curves']})", ""]
        if "pretrain" in plots:
            lines += [f"![{pretrain_kind(result)} pretraining]({plots['pretrain']})", ""]
    per_model = next(iter(result["models"].values()))
    lines += [
        "## How this was measured", "",
        *provenance_lines(result),
        *trained_lines(result),
        f"- training budget per model: {budget['total']:g} minutes ({budget['pretrain']:g} {pretrain_kind(result)} "
        f"pretraining + {budget['finetune']:g} {_task_label(per_model.get('task') or QA)} "
        f"fine-tuning), {mode}; "
        + ("every model reused from an earlier invocation (nothing trained by this one)"
           if all((m.get("trained") or {}).get("reused") for m in result["models"].values())
           else (f"wall clock {result['wall_minutes']:.1f} minutes for the whole command "
                 f"({result['training_wall_minutes']:.1f} of them training)"
                 if result.get("training_wall_minutes") is not None  # written before 2026-12-08: chains only
                 else f"training wall clock {result['wall_minutes']:.1f} minutes (evaluation and report not timed)")),
        f"- QA train data: {', '.join(result['train_data'])}"
        + (" (JaQuAD; the official JSQuAD train split is not available here)"
           if result["train_data"] and all("jaquad" in str(p).lower() for p in result["train_data"]) else ""),
        f"- eval data: {result['eval_data']} (all {per_model['count']:,} questions, JGLUE's EM / F1)",
        "- train tok/s: non-padding tokens per second of training step time (QA fine-tuning stage)",
        "- inference q/s and inference peak MB: a separate `nami predict` process with all threads, "
        f"{_inference_precision(result)}, batch {_finetune(per_model).get('eval_batch_size', 64)}; it reproduced "
        "the recorded F1: "
        + ", ".join(f"{a} {'yes' if m['rescored_matches_recorded'] else 'NO'}" for a, m in result["models"].items()),
        "- peak MB: peak resident set size (`ru_maxrss`) of the training / inference process (model, data, "
        "activations and allocator caches together); training = max over the pretraining and fine-tuning processes",
        "- training min. to final F1: training-step time of all stages (evaluation pauses excluded)",
    ]
    # Reports of runs made before the option existed have no field: those decoded on token boundaries.
    if any(m.get("task") in INFOS and INFOS[m["task"]].answers == "generate" for m in result["models"].values()):
        stage = _finetune(per_model)
        beams = stage.get("num_beams", 1)
        decoding = "greedy" if beams == 1 else f"beam search, {beams} beams"
        lines.append(f"- answers are generated ({decoding}, up to {stage.get('max_answer_tokens', 16)} tokens + [SEP]) "
                     "and mapped back to the context's original characters where the generated tokens occur in it "
                     "(otherwise the normalised text)")
    else:
        boundaries = {a: m.get("answer_boundaries", "token") for a, m in result["models"].items()}
        lines.append("- answers begin and end on: " + ", ".join(
            f"{a} {'MeCab word boundaries' if b == 'word' else 'any token (no word-boundary constraint)'}"
            for a, b in boundaries.items()))
    # Recorded since the option existed; older results say nothing (their runs did not use it).
    if any("question_match" in m for m in result["models"].values()):
        lines.append("- question-match token type (context words found in the question get segment id 2): " + ", ".join(
            f"{a} {'on' if m.get('question_match') else 'off'}" for a, m in result["models"].items()))
    compiled = [a for a, m in result["models"].items() if m.get("compile_wave")]
    if compiled:
        failed = [a for a in compiled if result["models"][a].get("compile_wave_failure")]
        lines.append(f"- `compile_wave` (torch.compile of the Wave layer's element-wise maths, same maths) for "
                     f"{', '.join(compiled)}: " + (f"FAILED, fell back to eager for {', '.join(failed)}"
                                                   if failed else "ran compiled throughout"))
    if lexical:
        lines.append(f"- lexical heuristic: `nami baseline lexical` logic (window {lexical['window']}) on the same "
                     f"{lexical['count']} questions")
    return "\n".join(lines) + "\n"
