"""Provenance recorded with every result: command, git commit, machine, date."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch


def git_commit(cwd: str | Path | None = None) -> str:
    """``HEAD`` of nami's checkout (``-dirty`` when tracked files are modified), or ``"unknown"``: also
    for an installed (non-editable) nami, whose folder may sit inside someone else's repository."""
    package = Path(__file__).resolve().parents[1]  # .../src/nami in a checkout
    own = cwd is None
    cwd = cwd or package.parents[1]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                             check=True)
        if own and Path(top.stdout.strip()).resolve() / "src" / "nami" != package:
            return "unknown"  # the repository around an installed copy is not nami's
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs{gpu}; {platform.system()} {platform.release()}; torch {torch.__version__}"


def host_speed_gflops(n: int = 512, repeats: int = 7, dtype: torch.dtype = torch.float32) -> float:
    """This host's matrix-multiply speed in ``dtype`` (GFLOP/s, median of ``repeats`` products of two
    ``n × n`` matrices, the threads torch uses): a speed stamp for runs whose tokens/s are
    compared later. Hosts with the same CPU name have run the same preset at half the speed of
    each other (``machine_description`` cannot tell them apart); this can. Stamp both fp32 and
    bf16: CPUs without native bf16 (no AMX / AVX512-BF16) run bf16 several times slower than fp32
    while their fp32 speed looks ordinary. About 0.1 s each."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tick)
    return round(2 * n**3 / statistics.median(times) / 1e9, 1)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance_lines(record: Mapping[str, Any], *, machine_note: str = "") -> list[str]:
    """The markdown bullets that say how a result was produced: command, commit, machine, date.

    ``record`` is a results JSON (it must carry ``command``, ``commit``, ``machine`` and ``date``);
    ``machine_note`` is appended to the machine line (e.g. ``"2 threads, alone on the machine"``).
    Every results markdown writes these lines the same way, so readers find them in one form."""
    missing = [key for key in ("command", "commit", "machine", "date") if key not in record]
    if missing:
        raise KeyError(f"provenance_lines: the record lacks {', '.join(missing)}")
    machine = f"{record['machine']}; {machine_note}" if machine_note else str(record["machine"])
    return [f"- command: `{record['command']}`", f"- commit: `{record['commit']}`", f"- machine: {machine}",
            f"- date: {record['date']}"]
