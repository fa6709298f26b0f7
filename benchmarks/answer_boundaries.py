"""Answers on MeCab word boundaries: how often gold answers are word-aligned, and what decoding
trained runs with ``answer_boundaries="word"`` instead of ``"token"`` does to their JSQuAD dev EM / F1.

1. **Gold alignment.** Every JSQuAD dev context is encoded with the runs' tokenizer; a word spans
   from its first token's start to its last selectable token's end (:func:`nami.data.features.word_edges`).
   A gold answer is word-aligned when it starts where a word starts and ends where one ends.
2. **Re-decoding.** Each run directory given is scored on all questions with both settings through
   :func:`nami.evaluation.runner.predict_file` (the same code as ``nami predict --answer-boundaries``):
   same weights, same windows, only the set of spans decoding may choose from differs.

    python benchmarks/answer_boundaries.py --runs RUN_DIR [RUN_DIR ...]   # → results/answer_boundaries.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gold_alignment(data: str, tokenizer, examples_to_show: int = 12) -> dict:
    import numpy as np

    from nami.data.features import word_edges
    from nami.data.squad import load_squad

    examples = load_squad(data)
    edges: dict[str, tuple[set[int], set[int]]] = {}
    first_ok = any_ok = 0
    unaligned = []
    for ex in examples:
        if ex.context not in edges:
            enc = tokenizer.encode(ex.context)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            selectable = (np.asarray(enc.ids) != tokenizer.sep_id) & (offsets[:, 0] < offsets[:, 1])
            starts, ends = word_edges(enc.word_ids, selectable)
            edges[ex.context] = (set(offsets[starts, 0].tolist()), set(offsets[ends, 1].tolist()))
        word_starts, word_ends = edges[ex.context]
        aligned = [a.start in word_starts and a.start + len(a.text) in word_ends for a in ex.answers]
        first_ok += aligned[0]
        any_ok += any(aligned)
        if not aligned[0] and len(unaligned) < examples_to_show:
            a = ex.answers[0]
            unaligned.append({"id": ex.id, "answer": a.text,
                              "context": ex.context[max(0, a.start - 10) : a.start + len(a.text) + 10]})
    n = len(examples)
    return {"questions": n, "first_gold_aligned_pct": 100 * first_ok / n, "any_gold_aligned_pct": 100 * any_ok / n,
            "unaligned_examples": unaligned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="trained QA run directories")
    parser.add_argument("--data", default=None, help="default: JSQuAD dev")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "results"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from nami import paths
    from nami.evaluation.runner import predict_file
    from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
    from nami.training import checkpoint as ckpt

    torch.set_num_threads(args.threads)
    data = args.data or str(paths.default_data(paths.JSQUAD_DEV))
    _, tokenizer, _ = ckpt.load_run(args.runs[0])
    fingerprints = {ckpt.read_run_config(run)[2] for run in args.runs}
    if len(fingerprints) != 1:
        raise SystemExit(f"--runs: the runs use {len(fingerprints)} different tokenizers; give runs of one tokenizer")
    gold = gold_alignment(data, tokenizer)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            train_config = ckpt.read_run_config(run)[0]
            row = {"run": run, "arch": train_config.arch, "init_from": train_config.init_from,
                   "trained_with": train_config.answer_boundaries}
            for boundaries in ("token", "word"):
                summary = predict_file(run, data, Path(tmp) / "pred.json", threads=args.threads,
                                       answer_boundaries=boundaries, quiet=True)
                row[boundaries] = {key: summary[key] for key in ("exact_match", "f1", "count", "questions_per_s")}
                if "matches_recorded" in summary:
                    row[boundaries]["matches_recorded"] = summary["matches_recorded"]
                print(json.dumps({"run": run, "answer_boundaries": boundaries, **row[boundaries]}), flush=True)
            records.append(row)
    report = {"command": "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]]),
              "commit": git_commit(), "machine": machine_description(), "date": now_iso(), "data": data,
              "threads": args.threads, "gold": gold, "records": records}
    out_dir = Path(args.out_dir)
    (out_dir / "answer_boundaries.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = ["# Answers on MeCab word boundaries", "",
             f"Gold answers of {gold['questions']:,} JSQuAD dev questions on word boundaries: first gold "
             f"{gold['first_gold_aligned_pct']:.2f} %, any gold {gold['any_gold_aligned_pct']:.2f} %.", "",
             "Re-decoding trained runs (same weights; only where an answer may begin and end differs):", "",
             "| run | model | pretrained | EM token | F1 token | EM word | F1 word | Δ EM | Δ F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        t, w = r["token"], r["word"]
        lines.append(f"| `{Path(r['run']).name}` | {r['arch']} | {'yes' if r['init_from'] else 'no'} | "
                     f"{t['exact_match']:.2f} | {t['f1']:.2f} | {w['exact_match']:.2f} | {w['f1']:.2f} | "
                     f"{w['exact_match'] - t['exact_match']:+.2f} | {w['f1'] - t['f1']:+.2f} |")
    lines += ["", "Gold answers that are not word-aligned (first gold; the first few):", "",
              "| id | answer | context around it |", "| --- | --- | --- |"]
    lines += [f"| {u['id']} | {u['answer']} | {u['context']} |" for u in gold["unaligned_examples"]]
    lines += ["", *provenance_lines(report, machine_note=f"{args.threads} threads"),
              f"- data: {data} (all questions, JGLUE's EM / F1)",
              "- `token` reproduces each run's recorded F1 where the run was trained with token boundaries "
              "(`matches_recorded` in the JSON)"]
    (out_dir / "answer_boundaries.md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
