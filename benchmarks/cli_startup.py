"""How long the CLI takes to answer without doing work: ``nami --help``, ``nami --version``, a
sub-command's ``--help`` and an argument error (none of them imports torch).

    python benchmarks/cli_startup.py [--repeats 7] [--out results/cli_startup.json]

Each command runs once to warm the page cache, then ``--repeats`` times; the median wall time of a
fresh ``python -m nami ...`` process is recorded (what a user waits for, interpreter start included).
Target (first-hour issue): ``nami --help`` under 1 s warm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines

COMMANDS = {
    "nami --help": ["--help"],
    "nami --version": ["--version"],
    "nami train --help": ["train", "--help"],
    "nami train --lr -1 (argument error)": ["train", "--lr", "-1"],
}


def time_command(args: list[str], repeats: int) -> dict:
    command = [sys.executable, "-m", "nami", *args]
    subprocess.run(command, capture_output=True)  # warm-up: page cache, .pyc files
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "exit_status": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="results/cli_startup.json")
    args = parser.parse_args()
    commit = git_commit()
    rows = {name: time_command(cli_args, args.repeats) for name, cli_args in COMMANDS.items()}
    baseline = time_command_python(args.repeats)
    result = {"command": "python benchmarks/cli_startup.py " + " ".join(sys.argv[1:]), "commit": commit,
              "machine": machine_description(), "date": now_iso(), "repeats": args.repeats,
              "python_startup_median_s": baseline, "commands": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    lines = ["# CLI start-up time (warm, median of fresh processes)", "",
             "| command | median s | min s | max s | exit status |", "| --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| `{name}` | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
                     f"{row['exit_status']} |")
    lines += ["", f"Bare `python -c pass` on this machine: {baseline:.3f} s (median). Target: `nami --help` "
              "≤ 1 s warm.", "", *provenance_lines(result)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


def time_command_python(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
