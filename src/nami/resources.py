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


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> dict[str, int] | str:
    """Keep freed tensor memory in the process instead of returning it to the OS after every step.

    glibc serves large blocks (above ``M_MMAP_THRESHOLD``) with fresh ``mmap`` calls and returns
    them on ``free``; a CPU training step allocates and frees its activations every step, so each
    step pays the page faults of zero-filling them again (``nami bench roofline`` at commit 28a4141, before
    this, vs after: a bf16 Wave training step at S=512 +46 %, compiled Wave +26 %, Transformer +11 %). Raising the
    mmap threshold to its maximum (32 MiB) and never trimming the heap makes steps reuse the same
    pages. Called by the commands that train, predict and benchmark (``nami.cli``, the benchmark
    worker); ``NAMI_MALLOC_TUNING=0`` turns it off. Returns the settings applied, or why none were.
    """
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("NAMI_MALLOC_TUNING", "1") == "0":
        return "off (NAMI_MALLOC_TUNING=0)"
    if not sys.platform.startswith("linux"):
        return f"not applied: glibc only (platform {sys.platform})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        return f"not applied: no glibc mallopt ({err})"
    settings = {"M_MMAP_THRESHOLD": 32 * 2**20, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 256 * 2**20}
    codes = {"M_MMAP_THRESHOLD": _M_MMAP_THRESHOLD, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD, "M_TOP_PAD": _M_TOP_PAD}
    failed = [name for name, value in settings.items() if mallopt(codes[name], value) != 1]
    if failed:
        return f"not applied: mallopt refused {', '.join(failed)}"
    global MALLOC_TUNING
    MALLOC_TUNING = settings
    return settings


MALLOC_TUNING: dict[str, int] | None = None  # what tune_malloc() applied in this process, if anything
