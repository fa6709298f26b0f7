"""README's first results table, rendered from results/fair_comparison.json (never typed by hand).

    python benchmarks/fair_readme_table.py            # rewrites the block between the fair-table markers

One row per variant: family, seeds, F1 mean and range over the seeds, EM, train tokens/s and steps
(one machine), parameters; then the differences the comparison is about, each with both rows' seed
ranges, so a reader sees at once whether a gain is larger than the spread.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (what is compared, row with the component, row without it)
CONTRASTS = [
    ("RoPE in attention", "transformer+rope", "transformer"),
    ("a conv branch in attention blocks", "transformer+conv", "transformer"),
    ("a conv branch in RoPE attention blocks", "transformer+rope+conv", "transformer+rope"),
    ("a conv branch in Wave blocks", "wave+conv", "wave"),
    ("the Wave layer over conv-only (question-match on)", "wave+conv", "conv-only"),
    ("the Wave layer over conv-only (question-match off)", "wave+conv-noqm", "conv-only-noqm"),
    ("attention over Wave, both with conv", "transformer+rope+conv", "wave+conv"),
    ("the question-match feature, conv-only", "conv-only", "conv-only-noqm"),
    ("the question-match feature, wave+conv", "wave+conv", "wave+conv-noqm"),
]


def table(record: dict) -> str:
    rows = {row["name"]: row for row in record["rows"]}
    lines = ["| variant | family | seeds | F1 (JaQuAD dev) | F1 range | EM | train tok/s | steps | params |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["f1"]):
        f1s = [r["f1"] for r in row["runs"]]
        steps = sum(r["steps"] for r in row["runs"]) / len(row["runs"])
        lines.append(f"| `{name}` | {row.get('family', '')} | {len(f1s)} | **{row['f1']:.2f}** | "
                     f"{min(f1s):.2f}–{max(f1s):.2f} | {row['exact_match']:.2f} | {row['train_tokens_per_s']:,.0f} | "
                     f"{steps:,.0f} | {row['params'] / 1e6:.2f}M |")
    lines += ["", "Differences (F1 points, mean over seeds; ranges overlap = not yet separated):", ""]
    for what, with_it, without in CONTRASTS:
        if with_it in rows and without in rows:
            a, b = rows[with_it], rows[without]
            fa, fb = [r["f1"] for r in a["runs"]], [r["f1"] for r in b["runs"]]
            overlap = min(fa) <= max(fb) and min(fb) <= max(fa)
            separated = "" if len(fa) > 1 and len(fb) > 1 and not overlap else " (ranges overlap or 1 seed)"
            lines.append(f"- {what}: `{with_it}` − `{without}` = {a['f1'] - b['f1']:+.2f}{separated}")
    machines = sorted({r.get("machine", "?") for row in rows.values() for r in row["runs"]})
    commits = sorted({str(r.get("commit", "?"))[:7] for row in rows.values() for r in row["runs"]})
    lines += ["", f"Runs at commit {', '.join(commits)} on {'; '.join(machines)}."]
    return "\n".join(lines)


def main() -> None:
    record = json.loads((ROOT / "results" / "fair_comparison.json").read_text("utf-8"))
    readme = ROOT / "README.md"
    text = readme.read_text("utf-8")
    block = f"<!-- fair-table:start -->\n{table(record)}\n<!-- fair-table:end -->"
    new = re.sub(r"<!-- fair-table:start -->.*?<!-- fair-table:end -->", lambda _: block, text, flags=re.S)
    readme.write_text(new, "utf-8")
    print(table(record))


if __name__ == "__main__":
    main()
