"""``nami bench long-context``: QA readers on whole articles against the same readers on paragraphs.

Every question of a SQuAD file is asked twice: about its paragraph (the usual view) and about its
whole article (:func:`nami.data.articles.article_view`, the official metric unchanged). A reader is
a run directory and a way to read: ``windows`` (the run's own sliding windows, best span over all
of them, as Hugging Face's ``run_qa`` does for long contexts) or ``whole`` (each article in one
window: models without a learned position table, linear in length for Wave-family mixers). Recorded
per reader: EM / F1 and questions/s at both levels, the process's peak memory, and per article-length
bucket the article-level EM / F1 and seconds — where a fixed-state reader's recall would fail, it
shows as F1 falling with length. Results: ``OUT.json`` / ``.md`` / ``.png``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from nami.data.articles import article_view
from nami.data.squad import load_squad
from nami.evaluation.metric import evaluate_predictions
from nami.io import write_json
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines
from nami.resources import peak_rss_mb

DEFAULT_BUCKETS = (1_000, 2_000, 4_000, 8_000, math.inf)  # article characters


def _family(run_dir: str) -> str:
    from nami.reports.variants import Variant
    from nami.training import checkpoint as ckpt

    model = ckpt.read_run_config(run_dir)[1]
    options = {"mixers": model.mixers} if model.mixers else {}
    options.update({"branches": model.branches} if model.branches else {})
    family = Variant("reader", model.arch, options).family
    return "attention" if family == "transformer" else family


def _read(qa, examples, whole: bool) -> tuple[dict[str, str], float]:
    """Answers of ``examples`` and the seconds they took: one window per context (``whole``) or the
    pipeline's windows."""
    started = time.perf_counter()
    if not whole:
        answers = qa.predict_examples(examples, show_progress=False).answers
        return answers, time.perf_counter() - started
    answers: dict[str, str] = {}
    by_context: dict[str, list] = defaultdict(list)
    for example in examples:
        by_context[example.context].append(example)
    base = qa.feature_config
    try:
        for context, group in by_context.items():
            needed = len(qa.tokenizer.encode(context).ids) + base.max_question_tokens + 3
            qa.feature_config = qa._window(-(-needed // 16) * 16)
            answers.update(qa.predict_examples(group, show_progress=False).answers)
    finally:
        qa.feature_config = base
    return answers, time.perf_counter() - started


def _scores(examples, answers, seconds: float) -> dict[str, Any]:
    scores = evaluate_predictions(examples, answers)
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "count": scores["count"],
            "questions_per_s": len(examples) / seconds if seconds > 0 else float("nan")}


def run_long_context(readers: dict[str, tuple[str, str]], *, data: str, out: str = "results/long_context.json",
                     buckets=DEFAULT_BUCKETS, quiet: bool = False,
                     command: str = "nami bench long-context") -> dict[str, Any]:
    """``readers``: ``{name: (run_dir, "windows" | "whole")}``."""
    from nami.pipelines import QuestionAnsweringPipeline

    for name, (_, mode) in readers.items():
        if mode not in ("windows", "whole"):
            raise ValueError(f"--readers {name}: read mode {mode!r}: expected windows or whole")
    paragraphs = load_squad(data)
    articles = article_view(paragraphs)
    lengths = {ex.id: len(ex.context) for ex in articles}
    results: dict[str, Any] = {}
    for name, (run_dir, mode) in readers.items():
        qa = QuestionAnsweringPipeline(run_dir)
        answers, seconds = _read(qa, paragraphs, whole=False)
        paragraph = _scores(paragraphs, answers, seconds)
        answers, seconds = _read(qa, articles, whole=mode == "whole")
        article = {**_scores(articles, answers, seconds), "peak_mb": round(peak_rss_mb(), 1)}
        rows, low = [], 0
        for high in buckets:
            group = [ex for ex in articles if low < lengths[ex.id] <= high]
            if group:
                scores = evaluate_predictions(group, {ex.id: answers.get(ex.id, "") for ex in group})
                rows.append({"max_chars": None if high == math.inf else high, "questions": len(group),
                             "exact_match": scores["exact_match"], "f1": scores["f1"],
                             "seconds_share": seconds * len(group) / len(articles)})
            low = high
        results[name] = {"family": _family(run_dir), "run": str(run_dir), "mode": mode, "article": article,
                         "paragraph": paragraph, "buckets": rows}
        if not quiet:
            print(f"[nami] {name}: article F1 {article['f1']:.2f} ({article['questions_per_s']:.1f} q/s), paragraph "
                  f"F1 {paragraph['f1']:.2f}", flush=True)
    record = {"command": command, "commit": git_commit(), "machine": machine_description(), "date": now_iso(),
              "data": data, "articles": len({ex.context for ex in articles}), "readers": results}
    path = Path(out)
    write_json(path, record)
    path.with_suffix(".md").write_text(markdown(record), "utf-8")
    _plot(record, path.with_suffix(".png"))
    return record


def markdown(record: dict[str, Any]) -> str:
    lines = ["# Questions over whole articles", "",
             f"{record['data']}: every question asked about its paragraph and about its whole article "
             f"({record['articles']} articles; the official metric).", "",
             "| reader | family | reads | article EM | article F1 | article q/s | paragraph F1 | paragraph q/s | "
             "article ÷ paragraph F1 | peak MB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in record["readers"].items():
        a, p = r["article"], r["paragraph"]
        ratio = a["f1"] / p["f1"] if p["f1"] else float("nan")
        lines.append(f"| {name} | {r['family']} | {r['mode']} | {a['exact_match']:.2f} | {a['f1']:.2f} | "
                     f"{a['questions_per_s']:.1f} | {p['f1']:.2f} | {p['questions_per_s']:.1f} | {ratio:.2f} | "
                     f"{a['peak_mb']:,.0f} |")
    lines += ["", "Article-level F1 by article length (characters):", "",
              "| reader | " + " | ".join(f"≤ {b['max_chars']:,}" if b["max_chars"] else "longer"
                                        for b in next(iter(record["readers"].values()))["buckets"]) + " |"]
    lines.append("| --- |" + " --- |" * len(next(iter(record["readers"].values()))["buckets"]))
    for name, r in record["readers"].items():
        lines.append(f"| {name} | " + " | ".join(f"{b['f1']:.1f} ({b['questions']})" for b in r["buckets"]) + " |")
    return "\n".join(lines + [""] + provenance_lines(record)) + "\n"


def _plot(record: dict[str, Any], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in record["readers"].items():
        labels = [f"≤{b['max_chars'] // 1000}k" if b["max_chars"] else "longer" for b in r["buckets"]]
        ax.plot(labels, [b["f1"] for b in r["buckets"]], marker="o", label=f"{name} ({r['mode']})")
    ax.set(xlabel="article length (characters)", ylabel="article-level F1", title="F1 against article length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
