"""Masked-LM pretraining curves with CCE gradient filtering off / paper threshold / bounded mass.

    python benchmarks/filtering_study.py [--steps 300] [--arch transformer] [--out results/filtering_study.json]
    python benchmarks/filtering_study.py --replot results/filtering_study.json   (redraw the plot, no training)

Three ``nami pretrain`` runs that differ only in ``--loss-filter`` (same seed, so the same batches and
masks): ``none`` (exact gradient), ``paper`` (skip vocabulary blocks whose softmax values are all
below 2^-12, Wijmans et al. 2024) and ``bounded_mass`` (nami's: skip blocks only while the row's
skipped softmax mass stays ≤ 1e-3, so the dropped gradient is bounded). They run at once, one thread
each; the comparison is loss against *step*, which does not depend on how the runs share the cores.
Writes the curves, the share of skipped vocabulary blocks, and the final held-out masked-LM loss to
results/filtering_study.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines  # noqa: E402

POLICIES = ("none", "paper", "bounded_mass")


STYLES = {"none": dict(color="black", linewidth=2.2), "paper": dict(color="tab:red", linewidth=1.2),
          "bounded_mass": dict(color="tab:green", linewidth=1.2, linestyle="--")}


def plot(result: dict, png: Path) -> None:
    """Training loss and skipped blocks against step, and the held-out loss that README quotes.

    A policy whose curve equals the exact one (bounded_mass skipping nothing) is drawn dashed on
    top of it and says so in the legend, so no line hides another unannounced."""
    runs = result["runs"]
    fig, (ax_loss, ax_skip, ax_final) = plt.subplots(1, 3, figsize=(15, 4.2),
                                                     gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    for policy, run in runs.items():
        same = policy != "none" and run["loss"] == runs["none"]["loss"]
        label = f"{policy} (identical to none: skipped no block)" if same else policy
        ax_loss.plot(run["steps"], run["loss"], label=label, **STYLES.get(policy, {}))
        ax_skip.plot(run["steps"], [100 * f for f in run["skipped_fraction"]], label=label, **STYLES.get(policy, {}))
    ax_loss.set(xlabel="step", ylabel="masked-LM training loss",
                title=f"{result['arch']} ({result['preset']}) pretraining: training loss")
    ax_skip.set(xlabel="step", ylabel="% of vocabulary blocks skipped in backward", ylim=(-5, 105),
                title="gradient filtering at work")
    names = list(runs)
    finals = [runs[p]["final_masked_loss"] for p in names]
    bars = ax_final.bar(names, finals, color=[STYLES.get(p, {}).get("color", "grey") for p in names])
    for bar, value, policy in zip(bars, finals, names):
        gap = result["final_loss_gap_vs_exact"][policy]
        ax_final.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}\n({gap:+.3f})", ha="center",
                      va="bottom", fontsize=9)
    low = min(finals)
    ax_final.set(ylabel="held-out masked-LM loss after training", ylim=(low - 0.3, max(finals) + 0.25),
                 title="held-out loss (vs none)")
    for ax in (ax_loss, ax_skip):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_final.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--arch", default="transformer", choices=["wave", "transformer"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--runs-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--out", default="results/filtering_study.json")
    parser.add_argument("--replot", metavar="JSON", help="redraw the plot of a saved result (no training)")
    args = parser.parse_args()
    if args.replot:
        path = Path(args.replot)
        plot(json.loads(path.read_text("utf-8")), path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")
        return
    commit = git_commit()  # at the start: the code that trains is the code recorded
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="nami-filtering-"))
    common = ["--arch", args.arch, "--preset", args.preset, "--max-length", "256", "--batch-size", "32",
              "--lr", "1e-3", "--warmup", "0.05", "--max-steps", str(args.steps), "--loss-impl", "blockwise",
              "--eval-every-minutes", "1000", "--eval-subset", "200", "--pppl-sequences", "8", "--log-every", "10",
              "--threads", "1", "--quiet", "--runs-dir", str(runs_dir), "--checkpoint-every-minutes", "1000"]
    commands = {p: [sys.executable, "-m", "nami", "pretrain", *common, "--loss-filter", p, "--run-name",
                    f"filter-{p}"] for p in POLICIES}
    procs = {p: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p, cmd in commands.items()}
    for policy, proc in procs.items():
        output, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"pretraining with --loss-filter {policy} failed:\n{output[-3000:]}")

    runs = {}
    for policy in POLICIES:
        records = [json.loads(line) for line in (runs_dir / f"filter-{policy}" / "metrics.jsonl").read_text()
                   .splitlines() if line.strip()]
        train = [r for r in records if r["type"] == "train"]
        final = next(r for r in records if r["type"] == "final_eval")
        runs[policy] = {
            "steps": [r["step"] for r in train], "loss": [r["loss"] for r in train],
            "skipped_fraction": [r.get("filter_skipped_fraction", 0.0) for r in train],
            "dropped_mass_mean": [r.get("filter_dropped_mass_mean", 0.0) for r in train],
            "final_masked_loss": final["masked_loss"], "final_masked_accuracy": final["masked_accuracy"],
            "train_seconds": final["train_seconds"],
        }
    exact = runs["none"]["final_masked_loss"]
    result = {
        "arch": args.arch, "preset": args.preset, "steps": args.steps, "runs": runs,
        "final_loss_gap_vs_exact": {p: runs[p]["final_masked_loss"] - exact for p in POLICIES},
        "command": "python benchmarks/filtering_study.py " + " ".join(sys.argv[1:]),
        "train_command": " ".join(["nami pretrain", *common, "--loss-filter POLICY"]),
        "commit": commit, "machine": machine_description(), "date": now_iso(),
    }
    out = Path(args.out)
    plot(result, out.with_suffix(".png"))
    result["plot"] = out.with_suffix(".png").name
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    lines = [f"# CCE gradient filtering during masked-LM pretraining ({args.arch}, {args.preset}, {args.steps} steps)",
             "", "| filter | final held-out masked-LM loss | vs exact | masked acc. (%) | "
             "blocks skipped (mean over logs) | training s |", "| --- | --- | --- | --- | --- | --- |"]
    for policy, run in runs.items():
        skipped = sum(run["skipped_fraction"]) / max(1, len(run["skipped_fraction"]))
        lines.append(f"| {policy} | {run['final_masked_loss']:.4f} | "
                     f"{result['final_loss_gap_vs_exact'][policy]:+.4f} | {run['final_masked_accuracy']:.2f} | "
                     f"{100 * skipped:.1f}% | {run['train_seconds']:.0f} |")
    lines += ["", f"![loss and skipped blocks against step]({result['plot']})", "",
              *provenance_lines(result), f"- each run: `{result['train_command']}`",
              "- training s: the three runs shared 2 cores, so time is not comparable between them"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
