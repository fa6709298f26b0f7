"""Training curves of runs from their ``metrics.jsonl``: loss and dev F1 against training time."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from nami.training import checkpoint as ckpt  # noqa: E402


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / ckpt.METRICS_FILE
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training_curves(runs: dict[str, str | Path], out_png: str | Path, *, title: str = "") -> Path:
    """One figure, two panels: training loss and evaluation F1 (subset during training, full
    dev set at the end) against training minutes, one line per run."""
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run_dir in runs.items():
        records = read_metrics(run_dir)
        train = [r for r in records if r["type"] == "train"]
        evals = [r for r in records if r["type"] == "eval" and "f1" in r]
        final = [r for r in records if r["type"] == "final_eval" and "f1" in r]
        line, = ax_loss.plot([r["train_seconds"] / 60 for r in train], smooth([r["loss"] for r in train]),
                             label=label, linewidth=1)
        xs = [r["train_seconds"] / 60 for r in evals] + [r["train_seconds"] / 60 for r in final]
        ys = [r["f1"] for r in evals] + [r["f1"] for r in final]
        ax_f1.plot(xs, ys, marker="o", color=line.get_color(), label=label)
        if final:
            ax_f1.annotate(f"{final[-1]['f1']:.1f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4))
    ax_loss.set(xlabel="training minutes", ylabel="training loss (start/end cross-entropy)",
                title="training loss (moving average of 5 log points)")
    ax_f1.set_ylim(bottom=0)
    ax_f1.set(xlabel="training minutes", ylabel="JSQuAD dev F1",
              title="dev F1 (500-question subset; last point: all questions)")
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
