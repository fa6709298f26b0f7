"""``nami export``: a trained QA run as a compact model directory with a model card.

What ships with nami (``nami ask`` / ``pipeline("question-answering")`` without a model) is made this
way: the run's weights in bf16 (half the size; loading casts them back to float32), its tokenizer,
only the input settings the pipeline applies (no paths of the machine that trained it), a sha256
manifest, and a card — ``card.json`` (machine-readable) and ``README.md`` (rendered from it) — with
the recipe, the provenance of the training run, and the exported directory's own EM / F1 on an
evaluation file, measured here through the same pipeline ``nami predict`` uses.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nami.io import check_output_dir, read_json, sha256_file, write_json
from nami.reports.environment import git_commit, machine_description, now_iso
from nami.resources import resolve_precision

CARD_FILE = "card.json"
README_FILE = "README.md"
# The training settings that shape a QA model's inputs (what the pipeline applies), nothing else.
INPUT_SETTINGS = ("task", "max_length", "doc_stride", "max_question_tokens", "segment_embeddings", "question_match",
                  "title_prefix", "answer_boundaries", "max_answer_tokens", "precision")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LICENCES = {
    "jaquad": "JaQuAD (SkelterLabs): CC BY-SA 3.0 — the model and its tokenizer are trained on it",
    "jsquad": "JSQuAD (JGLUE, Yahoo Japan): CC BY-SA 4.0 — evaluation only",
}


def _provenance(run_dir: Path, results: str | None) -> dict[str, Any]:
    """The training run's record in a results file written by ``nami ablate`` / ``nami compare``
    (command, commit, machine, date, selection score), found by its run directory's name."""
    if results is None:
        return {}
    record = read_json(results)
    rows = record.get("rows") if isinstance(record, dict) else None
    for row in rows or []:
        for run in row.get("runs", []) if isinstance(row, dict) else []:
            if isinstance(run, dict) and Path(str(run.get("run_dir", ""))).name == run_dir.name:
                keep = ("command", "commit", "machine", "date", "seed", "f1", "exact_match", "steps",
                        "train_tokens_per_s", "precision")
                return {"variant": row.get("name"), "source": Path(results).name,
                        "protocol": _without_paths(record.get("protocol")), **{k: run[k] for k in keep if k in run}}
    raise ValueError(f"--results {results}: no run named {run_dir.name} in it")


def _without_paths(value: Any) -> Any:
    """A record with each absolute path shortened to its last two parts (``/x/y/jaquad/dev`` → ``jaquad/dev``)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return "/".join(Path(value).parts[-2:])
    return value


def export_model(run: str | Path, out: str | Path, *, eval_data: str, dtype: str = "bf16",
                 results: str | None = None, name: str | None = None, note: str | None = None,
                 command: str = "nami export", quiet: bool = False) -> dict[str, Any]:
    """Write ``out`` from the QA run ``run``, score it on ``eval_data`` and write its card; returns the card."""
    from nami.data.squad import load_squad
    from nami.pipelines import pipeline
    from nami.runs.load import load_run
    from nami.runs.tasks import info

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if not Path(eval_data).is_file():  # checked before anything is built or scored
        raise ValueError(f"--eval-data {eval_data}: expected one SQuAD-format file (the card names it by its sha256)")
    load_squad(eval_data)  # every question must have an answer (the card states EM / F1): refused by name if not
    run_dir = Path(run)
    model, tokenizer, config = load_run(run_dir)
    if info(config.task).answers != "extract":
        raise ValueError(f"{run_dir}: a {config.task!r} run; nami export writes extractive QA models")
    provenance = _provenance(run_dir, results)
    target = check_output_dir(str(out), "--out")
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"--out {out}: already exists and is not empty (an earlier export is never overwritten)")
    settings = {k: v for k, v in config.to_dict().items() if k in INPUT_SETTINGS}
    # Inference follows the host (bf16 only where it is native), not the precision the run trained in:
    # a shipped model must not force emulated bf16 (about 4x slower) on a CPU without it.
    settings["precision"] = "auto"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        staging = Path(tmp) / "model"  # built and scored here, renamed into place when complete
        model.save_pretrained(staging, tokenizer=tokenizer, train_config=settings, dtype=DTYPES[dtype])
        qa = pipeline("question-answering", staging)
        started = time.perf_counter()
        scores = qa.predict_file(eval_data, Path(tmp) / "predictions.json", quiet=quiet)
        seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        card = _card(target.name if name is None else name, config, model, settings, provenance, run_dir, dtype,
                     size, eval_data, scores, seconds, resolve_precision(qa.config.precision, "cpu"), command)
        if note:
            card["note"] = note
        # no path of the machine that exported it: the run by its folder's name
        card["export_command"] = command.replace(str(run), run_dir.name)
        write_json(staging / CARD_FILE, card)
        (staging / README_FILE).write_text(render_card(card), "utf-8")
        if target.exists():
            target.rmdir()  # empty (checked above)
        staging.rename(target)
    return card


def _card(name: str, config: Any, model: Any, settings: dict[str, Any], provenance: dict[str, Any], run_dir: Path,
          dtype: str, size: int, eval_data: str, scores: dict[str, Any], seconds: float, precision: str,
          command: str) -> dict[str, Any]:
    card = {
        "name": name,
        "task": "extractive question answering (Japanese)",
        "architecture": {"arch": config.arch, "variant": (config.notes or {}).get("variant") or provenance.get("variant"),
                         "mixers": model.config.layer_mixers(),
                         "branches": list(model.config.branches or []), "d_model": model.config.d_model,
                         "n_layers": model.config.n_layers, "vocab_size": model.config.vocab_size,
                         "parameters": sum(p.numel() for p in model.parameters())},
        "weights": {"dtype": dtype, "bytes_on_disk": size},
        "inputs": settings,
        "training": {"data": ["/".join(Path(p).parts[-2:]) for p in (config.train_data or [])]
                     or "the default (JaQuAD train)",
                     "max_minutes": config.max_minutes, "max_steps": config.max_steps, "lr": config.lr,
                     "batch_size": config.batch_size, "seed": config.seed, "run": run_dir.name, **provenance},
        "evaluation": {"data": Path(eval_data).name, "data_sha256": sha256_file(Path(eval_data)),
                       "exact_match": round(scores["exact_match"], 2), "f1": round(scores["f1"], 2),
                       "count": scores["count"], "questions_per_s": round(scores["count"] / seconds, 1),
                       "precision": precision,
                       "machine": machine_description(), "date": now_iso(), "commit": git_commit()},
        "export_command": command,
        "licences": [text for key, text in LICENCES.items()
                     if key in " ".join(str(p).lower() for p in [*(config.train_data or ["jaquad"]), eval_data])],
    }
    return card


def render_card(card: dict[str, Any]) -> str:
    """The model card's README.md (English with Japanese headings), from ``card.json``."""
    arch, train, ev = card["architecture"], card["training"], card["evaluation"]
    lines = [
        f"# {card['name']} — nami model card / モデルカード", "",
        f"{card['task']}: give a question and a context, get the answer span "
        "(質問と文脈から答えの範囲を返します).", "",
        *([f"**Note:** {card['note']}", ""] if card.get("note") else []),
        "```python",
        "from nami import pipeline",
        'qa = pipeline("question-answering")   # this model',
        'qa(question="富士山の標高は何メートル?", context="富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。")',
        "```", "",
        "## Model / モデル", "",
        f"- {arch['variant'] or arch['arch']}: {arch['n_layers']} layers, d={arch['d_model']}, "
        f"branches {', '.join(arch['branches']) or 'none'}, vocabulary {arch['vocab_size']:,}, "
        f"{arch['parameters']:,} parameters; weights in {card['weights']['dtype']} "
        f"({card['weights']['bytes_on_disk'] / 1e6:.1f} MB with the tokenizer)",
        f"- inputs: windows of {card['inputs'].get('max_length')} tokens (stride {card['inputs'].get('doc_stride')}), "
        f"question-match token type {'on' if card['inputs'].get('question_match') else 'off'}, answers on "
        f"{card['inputs'].get('answer_boundaries')} boundaries", "",
        "## Training / 学習", "",
        f"- data: {', '.join(train['data']) if isinstance(train['data'], list) else train['data']}",
        "- budget: " + (f"{train['max_minutes']:g} training minutes" if train.get("max_minutes") is not None
                        else f"{train.get('max_steps')} steps")
        + (f" ({train['steps']:,} steps)" if train.get("steps") else "")
        + f", lr {train['lr']}, batch {train['batch_size']}, seed {train['seed']}",
    ]
    if train.get("command"):
        lines += [f"- command: `{train['command']}`", f"- commit {train.get('commit')}, {train.get('machine')}, "
                  f"{train.get('date')}"]
    if train.get("f1") is not None:
        lines.append(f"- selection score (the training protocol's held-out split): F1 {train['f1']:.2f}")
    lines += [
        "", "## Evaluation / 評価", "",
        "| data | EM | F1 | questions |", "| --- | --- | --- | --- |",
        f"| {ev['data']} | {ev['exact_match']:.2f} | {ev['f1']:.2f} | {ev['count']:,} |", "",
        f"Measured on this directory (the {card['weights']['dtype']} weights) through `nami predict`'s pipeline, "
        f"{ev['precision']} inference, {ev['questions_per_s']} questions/s on {ev['machine']}, {ev['date']} "
        f"(commit {ev['commit']}); data sha256 {ev['data_sha256'][:16]}…", "",
        "## Limits / 制約", "",
        "- A small model trained briefly: expect wrong answers on long or paraphrased questions; it always "
        "returns a span of the context (no \"no answer\").",
        "- Japanese only; contexts longer than one window are read in overlapping windows.", "",
        "## Licence of the data / データのライセンス", "",
        *[f"- {text}" for text in card["licences"]],
        "", f"Exported with `{card['export_command']}`.", "",
    ]
    return "\n".join(lines)
