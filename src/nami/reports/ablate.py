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
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nami import paths
from nami.io import CommandFailed, OutputLock, check_output_path, read_json, write_json
from nami.reports.compare import COMPARE_PRESETS, FINAL_STAGE, _run_chain, _stage_command, stage_configs
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.reports.variants import VARIANTS, Variant, resolve  # noqa: F401 (VARIANTS re-exported)
from nami.training import checkpoint as ckpt
from nami.training.tasks import resolve_eval_data, resolve_train_data

# The screening protocol: QA only, from scratch, with the standard preset's QA recipe, chosen on the
# *selection split*: trained on JaQuAD train alone and scored on JaQuAD dev (held out of training), so
# that JSQuAD dev, the reported set, plays no part in choosing variants or recipes.
SCREEN = dict(preset="scratch", minutes=8.0, train_data=[paths.JAQUAD_TRAIN], eval_data=paths.JAQUAD_DEV)
SELECTION_SPLIT = ("selection split: trained on JaQuAD train only, scored on JaQuAD dev (3,939 questions, "
                   "held out of training); JSQuAD dev, the reported set, is not used to choose variants or recipes")


def _row(name: str, spec: Variant, runs: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    # The architecture, steps and tokens/s of each seed are in "runs"; "family" from the mixers.
    return {"name": name, "family": spec.family, "options": {"arch": spec.arch, **spec.options},
            "params": runs[0]["params"],
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


def _earlier_rows(path: Path, protocol: dict[str, Any]) -> dict[str, tuple[Variant, list[dict[str, Any]]]]:
    """The rows of an existing ``OUT.json`` by name, each with the variant its runs were trained as (from
    the recorded options) and its runs; refuse a file of another protocol. Rows of variants nami no
    longer defines are kept as recorded."""
    if not path.exists():
        return {}
    earlier = read_json(path)
    theirs = earlier.get("protocol", {}) if isinstance(earlier, dict) else {}
    differs = _protocol_differences(theirs, protocol)
    if differs:
        raise ValueError(f"--out {path}: already holds an ablation of another protocol ({', '.join(differs)} "
                         "differ); choose another --out (it is never overwritten)")
    provenance = {k: earlier[k] for k in ("machine", "commit", "date", "command") if k in earlier}
    rows = {}
    for row in earlier.get("rows", []):
        options = dict(row.get("options", {}))
        spec = Variant(row["name"], options.pop("arch", "wave"), options)
        # runs recorded before per-run provenance take the file's
        rows[row["name"]] = (spec, [{**provenance, **run} for run in row["runs"]])
    return rows


def _earlier_runs(path: Path, protocol: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs of an existing ``OUT.json`` by variant name (:func:`_earlier_rows` without the specs)."""
    return {name: runs for name, (_, runs) in _earlier_rows(path, protocol).items()}


def _commands(record: dict[str, Any]) -> list[str]:
    """Every command that added runs to ``record``: its own, those it recorded as earlier ones, and
    those of the files it was merged from (recursively), in order, without repeats."""
    found = [*record.get("earlier_commands", []), *(m.get("command") for m in record.get("merged_from", [])),
             record.get("command")]
    for row in record.get("rows", []):
        found += [run.get("command") for run in row.get("runs", [])]
    out: list[str] = []
    for command in found:
        if command and command not in out:
            out.append(command)
    return out


def what_wave_adds(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences comparing every ``wave…`` row with the ``conv-only…`` row of the same suffix
    (``wave+conv-noqm`` vs ``conv-only-noqm``): mean F1 difference and the seed ranges."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for row in rows:
        name = row["name"]
        if not name.startswith("wave"):
            continue
        suffix = next((s for s in ("-noqm",) if name.endswith(s)), "")
        control = by_name.get(f"conv-only{suffix}")
        if control is None or len(row["runs"]) < 2 or len(control["runs"]) < 2:
            continue
        ours, theirs = [r["f1"] for r in row["runs"]], [r["f1"] for r in control["runs"]]
        overlap = min(ours) <= max(theirs) and min(theirs) <= max(ours)
        setting = "without the question-match feature" if suffix else "with the question-match feature"
        lines.append(f"- {setting}: `{name}` − `conv-only{suffix}` = {row['f1'] - control['f1']:+.2f} F1 (means of "
                     f"{len(ours)} and {len(theirs)} seeds; ranges {min(ours):.2f}–{max(ours):.2f} vs "
                     f"{min(theirs):.2f}–{max(theirs):.2f}: {'overlapping' if overlap else 'not overlapping'})")
    return lines


def markdown(record: dict[str, Any]) -> str:
    protocol = record["protocol"]
    title = record.get("title") or "Ablations: model variants under one protocol"
    dirty = [c for c in {str(r.get("commit", "")) for row in record["rows"] for r in row["runs"]} if c.endswith("-dirty")]
    lines = [f"# {title}", ""]
    if dirty:
        lines += [f"**Some runs were trained from a modified checkout ({', '.join(sorted(dirty))}): their code is not "
                  "a commit.**", ""]
    lines += [f"Protocol: compare preset `{protocol['preset']}` ({protocol['description']}), "
              f"{protocol['budget_minutes']:g} training minutes per run, seeds {protocol['seeds']}; EM / F1 on all "
              f"{protocol.get('questions', '')} questions of {protocol['eval_data']} (official metric). "
              "Speeds are from each run's own training / final evaluation, on the machine recorded with it "
              "(compare speeds only between runs of one machine).", ""]
    if protocol.get("split"):
        lines += [f"Data: {protocol['split']}.", ""]
    for note in record.get("notes", []):
        lines.append(f"- {note}")
    if record.get("notes"):
        lines.append("")
    lines += ["| variant | family | options | params | train tok/s | steps | eval q/s | train peak MB | EM | F1 | "
              "F1 range (spread) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in record["rows"]:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items() if k != "arch") or "–"
        f1s = [r["f1"] for r in row["runs"]]
        spread = f"{min(f1s):.2f}–{max(f1s):.2f} ({max(f1s) - min(f1s):.2f})" if len(f1s) > 1 else "–"
        steps = sum(r["steps"] for r in row["runs"]) / len(row["runs"])
        family = row.get("family") or Variant(row["name"], row["options"].get("arch", "wave"),
                                              {k: v for k, v in row["options"].items() if k != "arch"}).family
        lines.append(f"| {row['name']} | {family} | {options} | {row['params']:,} | {row['train_tokens_per_s']:,.0f} | "
                     f"{steps:,.0f} | {row['eval_questions_per_s']:,.0f} | {row['train_peak_mb']:,.0f} | "
                     f"{row['exact_match']:.2f} | {row['f1']:.2f} | {spread} |")
    adds = what_wave_adds(record["rows"])
    if adds:
        lines += ["", "What the Wave layer adds over `conv-only` (same parameters ±1 %, same training minutes):", "",
                  *adds]
    if any(len(row["runs"]) > 1 for row in record["rows"]) or record.get("earlier_commands"):
        # Every run on its own line, with where and when it ran: seeds may come from several sessions.
        lines += ["", "Runs:", "", "| variant | seed | EM | F1 | train tok/s | steps | machine | commit | date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in record["rows"]:
            for r in row["runs"]:
                lines.append(f"| {row['name']} | {r['seed']} | {r['exact_match']:.2f} | {r['f1']:.2f} | "
                             f"{r['train_tokens_per_s']:,.0f} | {r['steps']:,} | {r.get('machine', '?')} | "
                             f"{str(r.get('commit', '?'))[:7]}{'-dirty' if str(r.get('commit', '')).endswith('-dirty') else ''} | "
                             f"{str(r.get('date', '?'))[:10]} |")
    lines += [""] + provenance_lines(record)
    for command in _commands(record):
        if command != record.get("command"):
            lines.append(f"- earlier command adding to this table: `{command}`")
    return "\n".join(lines) + "\n"


def _check_clean(commit: str, allow_dirty: bool) -> None:
    if commit.endswith("-dirty") and not allow_dirty:
        raise ValueError(f"the nami checkout has uncommitted changes ({commit}): results trained from it could not be "
                         "traced to a commit. Commit first (or run from a clean worktree: git worktree add), or pass "
                         "--allow-dirty (every run and the markdown then say -dirty)")


def run_ablation(*, variants: list[str], preset: str | None = None, minutes: float | None = None,
                 pretrain_minutes: float | None = None, seeds: list[int] = (0,), out: str = "results/ablations",
                 train_data: list[str] | None = None, eval_data: str | None = None, tokenizer: str | None = None,
                 quiet: bool = False, command: str = "nami ablate", custom: dict[str, Variant] | None = None,
                 allow_dirty: bool = False, title: str | None = None) -> dict[str, Any]:
    """Train every (variant, seed) one after the other with all threads; write ``out``.json/.md.

    Runs go seed by seed (every variant's seed 0, then every variant's seed 1, ...), so a table cut
    short by a session's end holds comparable rows. ``custom``: variants given with ``--variant``.
    The screening protocol (no ``preset``) trains and scores on the selection split (:data:`SCREEN`)
    unless ``train_data`` / ``eval_data`` say otherwise."""
    specs = {name: resolve(name, custom) for name in variants}  # unknown names: one error naming the table
    screening = preset is None
    preset = preset or SCREEN["preset"]
    minutes = minutes if minutes is not None else (SCREEN["minutes"] if screening else None)
    if preset not in COMPARE_PRESETS:
        raise ValueError(f"unknown compare preset {preset!r}: expected one of {', '.join(COMPARE_PRESETS)}")
    selection = screening and train_data is None and eval_data is None
    if selection:
        train_data = [str(paths.default_data(name)) for name in SCREEN["train_data"]]
        eval_data = str(paths.default_data(SCREEN["eval_data"]))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(out)
    given = [*(train_data or ()), *([eval_data] if eval_data else []), *([tokenizer] if tokenizer else [])]
    for suffix in (".json", ".md"):
        check_output_path(with_extension(out_path, suffix), "--out", inputs=given)
    runs_dir = out_path.parent / f"{out_path.name}-runs"
    commit = git_commit()
    _check_clean(commit, allow_dirty)  # after the argument checks: a wrong --out is named first
    plans = {(name, seed): stage_configs(preset, specs[name].arch, minutes=minutes,
                                         pretrain_minutes=pretrain_minutes, runs_dir=str(runs_dir),
                                         stamp=stamp, train_data=train_data, eval_data=eval_data,
                                         tokenizer=tokenizer, options={**specs[name].options, "seed": seed},
                                         name=f"{name}-s{seed}")
             for seed in seeds for name in variants}
    first = next(iter(plans.values()))
    budget = sum(c.max_minutes or 0.0 for c in first.values())  # step-limited runs (max_minutes null) add 0
    record = _new_record(command, commit, preset, first, seeds, screening=screening, selection=selection, title=title)
    json_path = with_extension(out_path, ".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_path.parent / f".{out_path.name}.lock"):  # one nami ablate adds to an OUT at a time
        earlier = _earlier_rows(json_path, record["protocol"])
        for name, spec in specs.items():
            if name in earlier and (earlier[name][0].arch, earlier[name][0].options) != (spec.arch, spec.options):
                raise ValueError(f"--out {json_path}: its row {name!r} was trained with other options "
                                 f"({earlier[name][0].to_dict()}) than {name} has now ({spec.to_dict()}); give the new "
                                 "definition another name")
        table = {name: spec for name, (spec, _) in earlier.items()} | specs
        results = {name: runs for name, (_, runs) in earlier.items()}
        if json_path.exists():
            before = read_json(json_path)
            record["earlier_commands"] = [c for c in _commands(before)]
            record["title"] = record.get("title") or before.get("title")
            record["notes"] = before.get("notes", [])
        runs_dir.mkdir(parents=True, exist_ok=True)
        for (name, seed), stages in plans.items():
            if any(run["seed"] == seed for run in results.get(name, [])):
                if not quiet:
                    print(f"[nami] ablate {name} seed {seed}: already in {json_path}", flush=True)
                continue
            if not quiet:
                print(f"[nami] ablate {name} seed {seed}: {budget:g} training minutes", flush=True)
            run = _train_one(name, seed, stages, runs_dir, json_path)
            run.update(machine=record["machine"], commit=commit, date=now_iso(), command=command)
            results.setdefault(name, []).append(run)
            record["protocol"]["questions"] = run["count"]
            record["protocol"]["seeds"] = sorted({r["seed"] for rs in results.values() for r in rs})
            record["rows"] = [_row(n, table[n], rs, budget) for n, rs in results.items()]
            write_json(json_path, record)
            with_extension(out_path, ".md").write_text(markdown(record), "utf-8")
            if not quiet:
                print(f"[nami] {name} seed {seed}: EM {run['exact_match']:.2f} F1 {run['f1']:.2f} "
                      f"({run['train_tokens_per_s']:,.0f} train tok/s, {run['steps']} steps)", flush=True)
        if not record["rows"]:  # every variant and seed was already recorded: the file is left as it was
            record["rows"] = [_row(n, table[n], rs, budget) for n, rs in results.items()]
            record["nothing_trained"] = True
        return record


def _new_record(command: str, commit: str, preset: str, first: dict[str, Any], seeds, *, screening: bool,
                selection: bool, title: str | None) -> dict[str, Any]:
    """The results record of an ablation, before any row: provenance and the protocol."""
    record: dict[str, Any] = {
        "command": command, "commit": commit, "machine": machine_description(), "date": now_iso(),
        "protocol": {"preset": preset, "budget_minutes": sum(c.max_minutes or 0.0 for c in first.values()),
                     "seeds": list(seeds),
                     # max_steps only where set: tables of time-budgeted runs keep the protocol they had
                     "stages": {k: {"task": c.task, "minutes": c.max_minutes,
                                    **({"max_steps": c.max_steps} if c.max_steps else {})} for k, c in first.items()},
                     "description": ("screening: QA from scratch with the standard QA recipe, a short budget"
                                     if screening else "the compare preset's full recipe"),
                     "eval_data": resolve_eval_data(first[FINAL_STAGE]),
                     "train_data": resolve_train_data(first[FINAL_STAGE]),
                     "tokenizer": first[FINAL_STAGE].tokenizer},
        "rows": [],
    }
    if selection:
        record["protocol"]["split"] = SELECTION_SPLIT
    if title:
        record["title"] = title
    return record


def _train_one(name: str, seed: int, stages: dict[str, Any], runs_dir: Path, json_path: Path) -> dict[str, Any]:
    """Train one (variant, seed) chain in subprocesses; its run record (scores, speed, memory, steps)."""
    chain = []
    for stage, config in stages.items():
        path = runs_dir / f"{name}-s{seed}.{stage}.json"
        path.write_text(json.dumps(config.to_dict(), ensure_ascii=False, indent=2), "utf-8")
        chain.append(_stage_command(path, None, True))
    started = time.perf_counter()
    code, _ = _run_chain(chain, runs_dir / f"{name}-s{seed}.log")
    if code != 0:
        raise CommandFailed(f"variant {name} seed {seed} failed (exit {code}); see {runs_dir / f'{name}-s{seed}.log'}; "
                            f"the finished rows are in {json_path}")
    final_config = stages[FINAL_STAGE]
    final = read_json(Path(final_config.runs_dir) / final_config.run_name / ckpt.FINAL_EVAL_FILE)
    peaks = [read_json(Path(c.runs_dir) / c.run_name / ckpt.FINAL_EVAL_FILE)["peak_rss_mb"] for c in stages.values()]
    return {"seed": seed, "exact_match": final["exact_match"], "f1": final["f1"], "count": final["count"],
            "params": final["params"]["total"], "train_tokens_per_s": final["train_tokens_per_s"],
            "eval_questions_per_s": final["questions_per_s"], "train_peak_mb": max(peaks), "steps": final["step"],
            "precision": final_config.precision, "wall_minutes": (time.perf_counter() - started) / 60,
            "run_dir": str(Path(final_config.runs_dir) / final_config.run_name)}


def merge_ablations(paths: list[str], out: str, *, command: str = "nami ablate --merge",
                    notes: list[str] | None = None, title: str | None = None) -> dict[str, Any]:
    """One table from several ablation files of the same protocol (e.g. screens run in different
    sessions): rows of the same variant pool their runs; each run keeps the machine, commit, date
    and command it was measured with, ``merged_from`` lists the files, and every command of every
    merged file (its own, its earlier ones, those of files it was merged from) is kept. A (variant,
    seed) pair found in two files is refused (it would count twice), and so is one name trained
    with different options in two files."""
    records = [(path, read_json(Path(path))) for path in paths]
    if not records:
        raise ValueError("--merge: expected ablation JSON files")
    protocol = dict(records[0][1]["protocol"])
    runs: dict[str, list[dict[str, Any]]] = {}
    specs: dict[str, Variant] = {}
    for path, record in records:
        differs = _protocol_differences(record["protocol"], protocol)
        if differs:
            raise ValueError(f"--merge {path}: another protocol than {paths[0]} ({', '.join(differs)} differ)")
        provenance = {k: record.get(k) for k in ("machine", "commit", "date", "command")}
        for row in record["rows"]:
            options = dict(row["options"])
            spec = Variant(row["name"], options.pop("arch", row.get("arch", "wave")), options)
            if row["name"] in specs and (specs[row["name"]].arch, specs[row["name"]].options) != (spec.arch, options):
                raise ValueError(f"--merge {path}: {row['name']} was trained with other options than in an earlier "
                                 "file")
            specs[row["name"]] = spec
            for run in row["runs"]:
                if any(r["seed"] == run["seed"] for r in runs.get(row["name"], [])):
                    raise ValueError(f"--merge {path}: {row['name']} seed {run['seed']} is already in an earlier "
                                     "file (it would count twice)")
                runs.setdefault(row["name"], []).append({**provenance, **run})
    protocol["seeds"] = sorted({r["seed"] for rs in runs.values() for r in rs})
    budget = protocol["budget_minutes"]
    earlier: list[str] = []
    for _, r in records:
        earlier += [c for c in _commands(r) if c not in earlier]
    merged = {"command": command, "commit": git_commit(), "machine": "per run (see rows[].runs[].machine)",
              "date": now_iso(), "protocol": protocol,
              "rows": [_row(name, specs[name], rs, budget) for name, rs in runs.items()],
              "merged_from": [{"file": path, "command": r.get("command"), "commit": r.get("commit"),
                               "machine": r.get("machine"), "date": r.get("date")} for path, r in records],
              "earlier_commands": earlier}
    title = title or next((r.get("title") for _, r in records if r.get("title")), None)
    if title:
        merged["title"] = title
    merged_notes = [n for _, r in records for n in r.get("notes", [])] + list(notes or [])
    if merged_notes:
        merged["notes"] = list(dict.fromkeys(merged_notes))
    out_path = Path(out)
    for suffix in (".json", ".md"):
        check_output_path(with_extension(out_path, suffix), "--out", inputs=paths)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_path.parent / f".{out_path.name}.lock"):  # not while an ablate writes the same --out
        write_json(with_extension(out_path, ".json"), merged)
        with_extension(out_path, ".md").write_text(markdown(merged), "utf-8")
    return merged
