"""Answers on MeCab word boundaries: how often gold answers (and a token-level decoder's answers) are
word-aligned, and what decoding trained runs with ``answer_boundaries="word"`` instead of ``"token"``
does to their JSQuAD dev EM / F1.

1. **Gold alignment.** Every JSQuAD dev context is encoded with the runs' tokenizer; a word spans
   from its first token's start to its last selectable token's end
   (:func:`nami.data.features.context_tokens`). A gold answer is word-aligned when it starts where a
   word starts and ends where one ends.
2. **Re-decoding.** Each run directory given is loaded once, its windows are built once, and
   :func:`nami.evaluation.predict.predict_answers` (what ``nami predict --answer-boundaries`` runs)
   decodes them with both settings: same weights, same windows, only the set of spans decoding may
   choose from differs. The token-level answers' character spans are checked against the words
   too, and their F1 against the run's recorded ``final_eval.json`` (runs trained before the option
   existed decoded on tokens).

    python benchmarks/answer_boundaries.py --runs RUN_DIR [RUN_DIR ...]   # → results/answer_boundaries.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def word_boundaries(examples, tokenizer) -> dict[str, tuple[set[int], set[int]]]:
    """Per distinct context: the character offsets where MeCab words start, and where they end."""
    from nami.data.features import context_tokens

    edges: dict[str, tuple[set[int], set[int]]] = {}
    for ex in examples:
        if ex.context not in edges:
            _, offsets, _, starts, ends = context_tokens(tokenizer.encode(ex.context), tokenizer.sep_id)
            edges[ex.context] = (set(offsets[starts, 0].tolist()), set(offsets[ends, 1].tolist()))
    return edges


def gold_alignment(examples, edges, examples_to_show: int = 12) -> dict:
    first_ok = any_ok = 0
    unaligned = []
    for ex in examples:
        word_starts, word_ends = edges[ex.context]
        aligned = [a.start in word_starts and a.end in word_ends for a in ex.answers]
        first_ok += aligned[0]
        any_ok += any(aligned)
        if not aligned[0] and len(unaligned) < examples_to_show:
            a = ex.answers[0]
            unaligned.append({"id": ex.id, "answer": a.text, "context": ex.context[max(0, a.start - 10) : a.end + 10]})
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
    from nami.data.features import build_features
    from nami.data.squad import load_squad
    from nami.evaluation.metric import evaluate_predictions
    from nami.evaluation.predict import predict_answers
    from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
    from nami.training import checkpoint as ckpt
    from nami.data.features import FeatureConfig

    torch.set_num_threads(args.threads)
    data = args.data or str(paths.default_data(paths.JSQUAD_DEV))
    fingerprints = {ckpt.read_run_config(run)[2] for run in args.runs}
    if len(fingerprints) != 1:
        raise SystemExit(f"--runs: the runs use {len(fingerprints)} different tokenizers; give runs of one tokenizer")
    examples = load_squad(data)
    _, tokenizer, _ = ckpt.load_run(args.runs[0])
    edges = word_boundaries(examples, tokenizer)
    gold = gold_alignment(examples, edges)
    records = []
    for run in args.runs:
        model, tokenizer, config = ckpt.load_run(run)
        features = build_features(examples, tokenizer, FeatureConfig.from_config(config), show_progress=False)
        row = {"run": run, "arch": config.arch, "init_from": config.init_from, "trained_with": config.answer_boundaries}
        for boundaries in ("token", "word"):
            output = predict_answers(model, examples, features, pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id,
                                     batch_size=config.eval_batch_size, max_answer_tokens=config.max_answer_tokens,
                                     answer_boundaries=boundaries, question_match=config.question_match,
                                     precision=config.precision, show_progress=False)
            scores = evaluate_predictions(examples, output.answers)
            aligned = sum(
                bool(spans) and spans[0].char_start in edges[ex.context][0] and spans[0].char_end in edges[ex.context][1]
                for ex in examples for spans in [output.nbest[ex.id]]
            )
            row[boundaries] = {"exact_match": scores["exact_match"], "f1": scores["f1"], "count": scores["count"],
                               "questions_per_s": output.questions_per_second,
                               "answers_word_aligned_pct": 100 * aligned / len(examples)}
            final = ckpt.read_json(Path(run) / ckpt.FINAL_EVAL_FILE)
            if boundaries == config.answer_boundaries and Path(final["data"]).resolve() == Path(data).resolve():
                row[boundaries]["matches_recorded"] = (final["f1"], final["exact_match"]) == (
                    scores["f1"], scores["exact_match"])
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
             "| run | model | pretrained | token: answers on words | EM token | F1 token | EM word | F1 word | Δ EM | Δ F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        t, w = r["token"], r["word"]
        lines.append(f"| `{Path(r['run']).name}` | {r['arch']} | {'yes' if r['init_from'] else 'no'} | "
                     f"{t['answers_word_aligned_pct']:.1f} % | "
                     f"{t['exact_match']:.2f} | {t['f1']:.2f} | {w['exact_match']:.2f} | {w['f1']:.2f} | "
                     f"{w['exact_match'] - t['exact_match']:+.2f} | {w['f1'] - t['f1']:+.2f} |")
    lines += ["", "Gold answers that are not word-aligned (first gold; the first few):", "",
              "| id | answer | context around it |", "| --- | --- | --- |"]
    lines += [f"| {u['id']} | {u['answer']} | {u['context']} |" for u in gold["unaligned_examples"]]
    lines += ["", *provenance_lines(report, machine_note=f"{args.threads} threads"),
              f"- data: {data} (all questions, JGLUE's EM / F1)",
              "- token: answers on words = share of the token-level decoder's answers that begin and end on "
              "MeCab words (word-level decoding: 100 % by construction)",
              "- the decoding a run was trained with reproduces its recorded F1 (`matches_recorded` in the JSON: "
              + ", ".join(f"{Path(r['run']).name} {r[r['trained_with']].get('matches_recorded')}" for r in records) + ")"]
    (out_dir / "answer_boundaries.md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
