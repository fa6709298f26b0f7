"""Training curves of runs from their ``metrics.jsonl``: loss and dev F1 against training time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from nami.io import read_jsonl  # noqa: E402
from nami.training import checkpoint as ckpt  # noqa: E402


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's log records; a torn line (a crash mid-write) is left out, not fatal."""
    records, _ = read_jsonl(Path(run_dir) / ckpt.METRICS_FILE)
    return records


# One colour per model in every plot (matplotlib's default cycle would depend on the order drawn).
MODEL_COLOURS = {"wave": "tab:blue", "transformer": "tab:orange", "wave_plus": "tab:green", "lexical": "grey"}
_EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def colour_of(label: str) -> str:
    """The colour of model ``label`` (a stable pick for names outside :data:`MODEL_COLOURS`)."""
    if label in MODEL_COLOURS:
        return MODEL_COLOURS[label]
    return _EXTRA_COLOURS[sum(label.encode()) % len(_EXTRA_COLOURS)]


def smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training_curves(
    runs: dict[str, str | Path | list[dict]],
    out_png: str | Path,
    *,
    title: str = "",
    offsets: dict[str, float] | None = None,
    reference_f1: float | None = None,
    loss_label: str = "training loss (start/end cross-entropy)",
    score_key: str = "f1",
    score_label: str = "JSQuAD dev F1",
) -> Path:
    """One figure, two panels: training loss and the evaluation score (subset during training, full
    evaluation set at the end) against training minutes, one line per run.

    ``offsets`` shifts a run's time axis (minutes spent in an earlier stage such as pretraining, so
    both models are drawn against their whole training budget); ``reference_f1`` draws a horizontal
    line (the lexical heuristic) on the score panel.
    """
    offsets = offsets or {}
    # A run directory, or its log records already read (a report's curves.json).
    metrics = {label: run if isinstance(run, list) else read_metrics(run) for label, run in runs.items()}
    if all(sum(r["type"] == "eval" and score_key in r for r in records) == 0 for records in metrics.values()):
        return _plot_loss_only(metrics, out_png, title=title, loss_label=loss_label, score_key=score_key,
                               score_label=score_label)
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    top = reference_f1 or 0.0
    for label, records in metrics.items():
        shift = offsets.get(label, 0.0)
        train = [r for r in records if r["type"] == "train"]
        evals = [r for r in records if r["type"] == "eval" and score_key in r]
        final = [r for r in records if r["type"] == "final_eval" and score_key in r]
        line, = ax_loss.plot([shift + r["train_seconds"] / 60 for r in train], smooth([r["loss"] for r in train]),
                             label=label, linewidth=1, color=colour_of(label))
        xs = [shift + r["train_seconds"] / 60 for r in evals + final]
        ys = [r[score_key] for r in evals + final]
        top = max([top, *ys])
        ax_score.plot(xs, ys, marker="o", color=line.get_color(), label=label)
        if final:  # the final score, written left of the last point so it stays inside the axes
            ax_score.annotate(f"{final[-1][score_key]:.1f}", (xs[-1], ys[-1]), textcoords="offset points",
                              xytext=(-6, 6), ha="right", color=line.get_color())
        if shift:
            for ax in (ax_loss, ax_score):
                ax.axvline(shift, color=line.get_color(), linestyle=":", linewidth=1)
    if reference_f1 is not None:
        ax_score.axhline(reference_f1, color="grey", linestyle="--", linewidth=1,
                         label=f"lexical heuristic ({reference_f1:.1f})")
    xlabel = "training minutes" + (" (from the start of pretraining; dotted: fine-tuning starts)"
                                   if any(offsets.values()) else "")
    ax_loss.set(xlabel=xlabel, ylabel=loss_label, title="training loss (moving average of 5 log points)")
    ax_score.set_ylim(0, top * 1.18 if top > 0 else 1.0)  # headroom: lines and labels never sit on the border
    ax_score.set(xlabel=xlabel, ylabel=score_label, title=f"{score_label} (subset during training; last: all)")
    return _save(fig, (ax_loss, ax_score), out_png, title)


def _save(fig, axes, out_png: str | Path, title: str) -> Path:
    """Grid + legend on every panel, the figure title, PNG at 120 dpi."""
    for ax in axes:
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


def _plot_loss_only(metrics: dict[str, list[dict]], out_png: str | Path, *, title: str, loss_label: str,
                    score_key: str, score_label: str) -> Path:
    """Runs evaluated only at the end: one loss panel, the final score in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, records in metrics.items():
        train = [r for r in records if r["type"] == "train"]
        final = [r for r in records if r["type"] == "final_eval" and score_key in r]
        if final:
            label = f"{label} (final {score_label}: {final[-1][score_key]:.2f})"
        ax.plot([r["train_seconds"] / 60 for r in train], smooth([r["loss"] for r in train]), label=label, linewidth=1,
                color=colour_of(label.split(" (")[0]))
    ax.set(xlabel="training minutes", ylabel=loss_label, title="training loss (moving average of 5 log points)")
    return _save(fig, (ax,), out_png, title)


def plot_scaling(result: dict, out_png: str | Path) -> Path:
    """Three log–log panels against sequence length: training and inference throughput at constant
    tokens per step, and the memory one sequence adds (batch 1); legends carry the fitted slopes."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        (axes[0], result["records"], "train_tokens_per_s", "training tokens/s", "train_seconds_per_sequence"),
        (axes[1], result["records"], "infer_tokens_per_s", "inference tokens/s", "infer_seconds_per_sequence"),
        (axes[2], result["memory_records"], "train_activation_mb", "training memory of one sequence (MB)",
         "train_activation_mb_batch1"),
    ]
    for ax, records, key, ylabel, slope_key in panels:
        for model in dict.fromkeys(r.get("variant", r["model"]) for r in records):
            rs = [r for r in records if r.get("variant", r["model"]) == model]
            if not rs:
                continue
            slope = result["slopes"][model][slope_key]
            what = "s/sequence" if "seconds" in slope_key else "MB"
            label = f"{model} ({what} slope {slope:.2f})" if slope is not None else model
            ax.plot([r["seq_len"] for r in rs], [r[key] for r in rs], marker="o", label=label,
                    linestyle="--" if rs[0].get("compiled") else "-")
        skipped = [r for r in result["skipped"] if r["mode"] == ("infer" if "infer" in key else "train")]
        for r in skipped:
            ax.axvline(r["seq_len"], color="grey", alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="sequence length S", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title(f"training, {result['settings']['tokens_per_step']:,} tokens per step")
    axes[1].set_title("inference, same batches")
    axes[2].set_title("batch 1: memory added by a training step")
    fig.suptitle(f"Wave vs Transformer ({result['settings']['preset']}, {result['settings']['precision']}); "
                 "grey: a case not measured (cap or limit)")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_generation(result: dict, out_png: str | Path) -> Path:
    """Two log–log panels against prompt length: decoding tokens/s, and memory (decoding state and
    process peak) for both decoders."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = MODEL_COLOURS
    for model in dict.fromkeys(r["model"] for r in result["records"]):
        rs = [r for r in result["records"] if r["model"] == model]
        if not rs:
            continue
        xs = [r["prompt_len"] for r in rs]
        colour = colours.get(model) or colour_of(model)
        axes[0].plot(xs, [r["tokens_per_s"] for r in rs], marker="o", color=colour, label=model)
        axes[1].plot(xs, [r["peak_mb"] for r in rs], marker="o", color=colour, label=f"{model}: process peak")
        axes[1].plot(xs, [max(r["state_mb"], 1e-3) for r in rs], marker="s", linestyle="--", color=colour,
                     label=f"{model}: decoding state")
    batch = result["settings"].get("batch", 1)
    for ax, ylabel in zip(axes, (f"decoding tokens/s (batch {batch})", "MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="prompt tokens", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title("generation speed")
    axes[1].set_title("memory while generating")
    fig.suptitle(f"Wave vs Transformer decoders ({result['settings']['preset']}, {result['settings']['precision']})")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
