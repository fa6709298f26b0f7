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
    step pays the page faults of zero-filling them again (``nami bench roofline`` on an AMD EPYC host in bf16,
    at 6b48ffb before this vs 28a4141 after: a Wave training step at S=512 +46 %, compiled Wave +26 %,
    Transformer +11 %). Raising the
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


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` computes bf16 matrix products in hardware.

    CPU: AMX tiles or AVX512-BF16 (x86; oneDNN's bf16 kernels), or the ``bf16`` feature of an
    ARMv8.6+ core. Without them PyTorch emulates bf16 through fp32 conversions and bf16 autocast
    is *slower* than fp32: on an AVX-512 Xeon without either, a 2048² GEMM ran at 64 vs 339 GFLOP/s
    and a small Wave training step at 2,915 vs 10,526 tokens/s (2 threads, 2026-12-01,
    ``results/precision.md``). CUDA: GPUs
    with native bf16 (Ampere and later). Other devices: False (fp32 is the safe choice).
    """
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo") as handle:
                return any(line.startswith("Features") and " bf16" in line for line in handle)
        except OSError:
            return False
    return False


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``"auto"`` → ``"bf16"`` where :func:`native_bf16` holds for ``device_type``, else ``"fp32"``;
    ``"bf16"`` / ``"fp32"`` are returned unchanged (an explicit choice is always honoured)."""
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    return precision


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
