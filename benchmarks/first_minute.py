"""README's first minute, timed: the commands of its "The first minute" block, each in a fresh process.

    python benchmarks/first_minute.py [--repeats 3] [--out results/first_minute.json]

- ``nami ask`` with the shipped reader (no model named): wall seconds per call, median of the repeats;
- the pipeline snippet (``pipeline("question-answering")``): the same;
- ``nami train --arch wave+conv --preset tiny`` on FIRST use: an empty ``$NAMI_CACHE`` (the 4k tokenizer
  is trained, the data tokenized) — once, with its final line (EM / F1 on JSQuAD dev).

Writes JSON + markdown with the command, commit, machine and date. Run it alone (it times wall clocks).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nami.io import write_json  # noqa: E402
from nami.reports.environment import git_commit, machine_description, now_iso  # noqa: E402

QUESTION = "富士山の標高は何メートル?"
CONTEXT = "富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。"
ASK = ["nami", "ask", "--question", QUESTION, "--context", CONTEXT]
PIPELINE = ("from nami import pipeline\n"
            "qa = pipeline('question-answering')\n"
            f"print(qa(question={QUESTION!r}, context={CONTEXT!r}))\n")
TINY = ["nami", "train", "--arch", "wave+conv", "--preset", "tiny"]


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed (exit {proc.returncode}): {proc.stderr[-1000:]}")
    return seconds, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "first_minute.json"))
    args = parser.parse_args()
    python = sys.executable
    ask = [_timed([python, "-m", "nami", *ASK[1:]]) for _ in range(args.repeats)]
    pipe = [_timed([python, "-c", PIPELINE]) for _ in range(args.repeats)]
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
        env = {**os.environ, "NAMI_CACHE": cache}
        tiny_seconds, tiny_out = _timed([python, "-m", "nami", *TINY[1:], "--runs-dir", runs, "--quiet"], env)
    result = {
        "command": shlex.join(["python", "benchmarks/first_minute.py", *sys.argv[1:]]),
        "commit": git_commit(), "machine": machine_description(), "date": now_iso(), "repeats": args.repeats,
        "records": [
            {"what": shlex.join(ASK), "seconds_median": statistics.median(s for s, _ in ask),
             "seconds": [s for s, _ in ask], "output": ask[0][1]},
            {"what": "pipeline('question-answering') snippet", "seconds_median": statistics.median(s for s, _ in pipe),
             "seconds": [s for s, _ in pipe], "output": pipe[0][1]},
            {"what": shlex.join(TINY) + " (first use: empty cache)", "seconds_median": tiny_seconds,
             "seconds": [tiny_seconds], "output": tiny_out.splitlines()[-1]},
        ],
    }
    out = Path(args.out)
    write_json(out, result)
    lines = ["# README's first minute, timed", "",
             f"`{result['command']}` at commit {result['commit']} on {result['machine']}, {result['date']}; "
             "each command in a fresh process, wall seconds (median of the repeats; the tiny run once, first use).", "",
             "| command | seconds | output (first / last line) |", "| --- | --- | --- |"]
    for r in result["records"]:
        lines.append(f"| `{r['what']}` | {r['seconds_median']:.1f} | {r['output'].splitlines()[0]} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
