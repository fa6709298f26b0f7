"""How much the question-match token type marks: on JSQuAD dev windows (the ``standard`` preset's
256 tokens / stride 128, the default tokenizer), the share of context tokens whose MeCab word also
occurs in the question, of gold-answer tokens, and of the tokens just before an answer.

A useful input feature marks the neighbourhood of the answer more often than context at large
(what the lexical heuristic exploits) and the answer itself less (questions rarely contain it).

    python benchmarks/question_match_coverage.py   # → results/question_match_coverage.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def coverage(features, before: int) -> dict:
    """Percentages of flagged tokens: all context tokens, answer tokens, the ``before`` tokens before each answer."""
    context, answer, preceding = [], [], []
    for match, offsets, start, end in zip(features.question_match, features.context_offsets,
                                          features.start_positions, features.end_positions):
        selectable = offsets[:, 0] >= 0
        context.append(match[selectable])
        if start > 0:  # windows holding the answer
            answer.append(match[start : end + 1])
            first_context = int(np.flatnonzero(selectable)[0])
            preceding.append(match[max(first_context, start - before) : start])
    pct = lambda parts: 100 * float(np.concatenate(parts).mean())  # noqa: E731
    return {"windows": len(features), "windows_with_answer": len(answer), "context_tokens_pct": pct(context),
            "answer_tokens_pct": pct(answer), f"tokens_{before}_before_answer_pct": pct(preceding)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="default: JSQuAD dev")
    parser.add_argument("--before", type=int, default=8, help="tokens before the answer to count")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()

    from nami import paths
    from nami.data.features import FeatureConfig, build_features
    from nami.data.squad import load_squad
    from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
    from nami.text import default_tokenizer

    data = args.data or str(paths.default_data(paths.JSQUAD_DEV))
    features = build_features(load_squad(data), default_tokenizer(),
                              FeatureConfig(max_length=256, doc_stride=128, max_question_tokens=64))
    record = {"command": " ".join(["python", *sys.argv]), "commit": git_commit(), "machine": machine_description(),
              "date": now_iso(), "data": data, **coverage(features, args.before)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "question_match_coverage.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    b = args.before
    lines = ["# What the question-match token type marks (JSQuAD dev windows)", "", *provenance_lines(record),
             f"- data: {data}; windows of 256 tokens, stride 128, default tokenizer", "",
             "| tokens | flagged (context word also in the question) |", "| --- | --- |",
             f"| all context tokens ({record['windows']:,} windows) | {record['context_tokens_pct']:.1f} % |",
             f"| gold-answer tokens ({record['windows_with_answer']:,} windows holding the answer) | "
             f"{record['answer_tokens_pct']:.1f} % |",
             f"| the {b} tokens before the answer | {record[f'tokens_{b}_before_answer_pct']:.1f} % |"]
    (out / "question_match_coverage.md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
