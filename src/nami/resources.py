"""Process resource figures recorded with results (peak memory)."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS).

    Used for "peak memory" on CPU: it counts everything the process ever held (weights, data, activations,
    allocator caches), so it is measured in a process that does one job (a ``nami train`` / ``nami predict``
    subprocess), never in a process that did other work before.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
