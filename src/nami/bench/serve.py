"""``nami bench serve``: requests/s and latency of ``nami serve`` under concurrent clients on 127.0.0.1.

For each batching mode (micro-batched: ``--max-batch 32``; batch-1: ``--max-batch 1``) a fresh server
process serves the run on a free loopback port; then, for each concurrency level, that many clients
send question-answering requests back to back for ``seconds`` (bounded in count and time, loopback only).
Recorded per (batching, concurrency): requests/s, p50 / p99 latency, errors (anything but HTTP 200 with
an answer), and the server's resident memory at the start and end of the level (it must stay flat).
``batching_gain_c16``: micro-batched ÷ batch-1 requests/s at concurrency 16.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from nami.io import write_json
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines

DEFAULT_LEVELS = (1, 4, 16, 64)
QUESTIONS = ["富士山の標高は何メートル?", "富士山はどこにある?", "いつ世界文化遺産に登録された?", "日本で最も高い山は?"]
CONTEXT = ("富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。日本で最も高い山として知られ、"
           "2013年に世界文化遺産に登録された。")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON: a load generator that costs the shared cores little.
    (httpx spent about a core at 64 concurrent clients on 2 cores, which capped what the server was measured
    at and lengthened the tail latency it was charged with.) Responses need a Content-Length (uvicorn's)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body))
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is None:
            raise ValueError("a response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _load(url: str, concurrency: int, seconds: float, max_requests: int, warmup: float = 0.0,
                on_warm: Callable[[], None] | None = None) -> dict[str, Any]:
    """``concurrency`` clients, each on its own keep-alive connection, for ``warmup + seconds``; only requests
    sent after the warm-up count (the first batches of a new size build their kernels: seconds of latency
    that steady serving never sees). ``on_warm()`` is called once when the measured part begins."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    bodies = [json.dumps({"question": q, "context": CONTEXT}, ensure_ascii=False).encode() for q in QUESTIONS]
    latencies: list[float] = []
    errors = 0
    warm_at = time.perf_counter() + warmup
    stop_at = warm_at + seconds
    sent = 0

    async def mark_warm() -> None:
        await asyncio.sleep(warmup)
        if on_warm is not None:
            on_warm()

    async def client(index: int) -> None:
        nonlocal errors, sent
        connection = _Connection(host, int(port))
        try:
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                tick = time.perf_counter()
                try:
                    async with asyncio.timeout(60.0):
                        status, body = await connection.post("/v1/question-answering",
                                                             bodies[(index + sent) % len(bodies)])
                    ok = status == 200 and isinstance(json.loads(body), list)
                except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
                    connection.close()  # a new connection for the next request
                    ok = False
                if tick >= warm_at:
                    latencies.append(time.perf_counter() - tick)
                    errors += not ok
                elif not ok:
                    errors += 1  # an error counts whenever it happens
        finally:
            connection.close()

    await asyncio.gather(mark_warm(), *(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - warm_at
    ordered = sorted(latencies)
    return {"requests": len(latencies), "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "errors": errors}


def run_serve_bench(run: str, *, levels=DEFAULT_LEVELS, seconds: float = 15.0, max_requests: int = 100_000,
                    out: str = "results/serve.json", quiet: bool = False, command: str = "nami bench serve",
                    warmup: float = 2.0, soak_seconds: float = 60.0, soak_concurrency: int = 16, repeats: int = 1,
                    threads: int | None = None) -> dict[str, Any]:
    """Each level: ``warmup`` s not counted, then ``seconds`` measured; ``repeats`` times, a fresh server per
    mode and repeat, the two modes' order alternating between repeats (drift on the machine hits both); a
    record holds the medians over repeats (``repeats`` in the result: every repeat's figures). Then,
    micro-batched only, a steady soak at ``soak_concurrency`` for ``soak_seconds``: the server's memory
    after its warm-up and at the end (flat = no leak; across levels it grows with the batch size, as the
    allocator keeps its high-water mark). ``threads``: the server's torch threads (default: its own)."""
    from nami.serve import default_threads

    if seconds <= 0 or not levels or any(c < 1 for c in levels) or warmup < 0 or soak_seconds < 0 or repeats < 1 \
            or (threads is not None and threads < 1):
        raise ValueError("nami bench serve: expected --seconds > 0, concurrency levels >= 1, warm-up and soak >= 0, "
                         "--repeats and --threads >= 1")
    threads = threads or default_threads()
    modes = [("micro-batched", 32), ("batch-1", 1)]
    each: list[dict[str, Any]] = []  # one per (repeat, mode, level)
    rss: dict[tuple[str, int], list[float]] = {}  # the server's RSS at a level's start and end
    soak: dict[str, Any] | None = None
    for repeat in range(repeats):
        for batching, max_batch in (modes if repeat % 2 == 0 else modes[::-1]):
            with _server(run, max_batch, threads) as (url, pid):
                for concurrency in levels:
                    start_mb = _rss_mb(pid)
                    result = asyncio.run(_load(url, concurrency, seconds, max_requests, warmup))
                    each.append({"repeat": repeat, "batching": batching, "concurrency": concurrency, **result})
                    rss[(batching, concurrency)] = [start_mb, _rss_mb(pid)]  # the last repeat's server
                    if not quiet:
                        print(f"[nami] repeat {repeat + 1}/{repeats} {batching} c={concurrency}: "
                              f"{result['requests_per_s']:.1f} req/s, p50 {result['p50_ms']:.0f} ms, p99 "
                              f"{result['p99_ms']:.0f} ms, errors {result['errors']}", flush=True)
                if batching == "micro-batched" and soak_seconds > 0 and repeat == repeats - 1:
                    soak = _soak(url, pid, soak_concurrency, soak_seconds, max_requests, warmup=10.0)
                    if not quiet:
                        print(f"[nami] soak c={soak_concurrency}, {soak_seconds:g} s: RSS "
                              f"{soak['rss_mb_after_warmup']:.0f} → {soak['rss_mb_end']:.0f} MB "
                              f"({soak['rss_change']:+.1%}), errors {soak['errors']}", flush=True)
    records = []
    for batching, _ in modes:  # the record keys: medians over repeats, errors summed
        for concurrency in levels:
            mine = [e for e in each if e["batching"] == batching and e["concurrency"] == concurrency]
            memory = rss[(batching, concurrency)]
            records.append({"batching": batching, "concurrency": concurrency,
                            **{k: statistics.median(e[k] for e in mine) for k in ("requests_per_s", "p50_ms", "p99_ms")},
                            "errors": sum(e["errors"] for e in mine),
                            "rss_mb_start": round(memory[0], 1), "rss_mb_end": round(memory[-1], 1)})
    by = {(r["batching"], r["concurrency"]): r for r in records}
    gain = (by[("micro-batched", 16)]["requests_per_s"] / by[("batch-1", 16)]["requests_per_s"]
            if ("micro-batched", 16) in by and ("batch-1", 16) in by else None)
    gains = [m["requests_per_s"] / b["requests_per_s"] for m in each for b in each
             if m["repeat"] == b["repeat"] and m["concurrency"] == b["concurrency"] == 16
             and (m["batching"], b["batching"]) == ("micro-batched", "batch-1")]
    result = {"command": command, "commit": git_commit(), "machine": machine_description(), "date": now_iso(),
              "run": run, "seconds_per_level": seconds, "warmup_seconds": warmup, "server_threads": threads,
              "records": records, "batching_gain_c16": gain, "batching_gain_c16_each_repeat": gains,
              "soak": soak, "repeats": each}
    path = Path(out)
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result), "utf-8")
    return result


@contextlib.contextmanager
def _server(run: str, max_batch: int, threads: int):
    """A fresh ``nami serve`` process on a free loopback port: yields ``(url, pid)``; stopped afterwards."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "nami", "serve", run, "--host", "127.0.0.1", "--port", str(port),
                               "--max-batch", str(max_batch), "--threads", str(threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _soak(url: str, pid: int, concurrency: int, seconds: float, max_requests: int, *, warmup: float) -> dict[str, Any]:
    """Steady load for ``warmup + seconds``: the server's RSS when the measured part begins and at its end."""
    marks: dict[str, float] = {}
    result = asyncio.run(_load(url, concurrency, seconds, max_requests, warmup,
                               on_warm=lambda: marks.setdefault("warm", _rss_mb(pid))))
    end = _rss_mb(pid)
    warm = marks.get("warm", float("nan"))
    return {"concurrency": concurrency, "seconds": seconds, "warmup_seconds": warmup, **result,
            "rss_mb_after_warmup": round(warm, 1), "rss_mb_end": round(end, 1), "rss_change": (end - warm) / warm}


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"nami serve exited ({server.returncode}): {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"nami serve did not answer on {url} within {timeout:.0f} s")


def markdown(result: dict[str, Any]) -> str:
    lines = ["# nami serve under load", "",
             f"Run `{result['run']}`; {result['seconds_per_level']:g} s measured per level after "
             f"{result.get('warmup_seconds', 0):g} s of warm-up (not counted: the first batches of a new size build "
             "their kernels); clients on 127.0.0.1 send question-answering requests back to back. micro-batched: "
             f"`--max-batch 32`; batch-1: `--max-batch 1`; the server with {result.get('server_threads', '?')} torch "
             f"thread(s). Figures are medians over {len({e['repeat'] for e in result.get('repeats', [])}) or 1} "
             "repeat(s), each a fresh server per mode, the modes' order alternating; errors are summed. RSS (the last "
             "repeat's server) grows across levels with the largest batch so far (the allocator keeps its "
             "high-water mark); the soak below checks that steady serving does not grow.",
             "", "| batching | concurrency | requests/s | p50 ms | p99 ms | errors | server RSS MB (start → end) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["records"]:
        lines.append(f"| {r['batching']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['errors']} | {r['rss_mb_start']:.0f} → {r['rss_mb_end']:.0f} |")
    if result.get("batching_gain_c16") is not None:
        each = ", ".join(f"{g:.2f}×" for g in result.get("batching_gain_c16_each_repeat", []))
        lines += ["", f"Micro-batching gain at concurrency 16: **{result['batching_gain_c16']:.2f}×** requests/s "
                  f"(medians' ratio; per repeat: {each})."]
    soak = result.get("soak")
    if soak:
        lines += ["", f"Soak (micro-batched, concurrency {soak['concurrency']}, {soak['seconds']:g} s after "
                  f"{soak['warmup_seconds']:g} s of warm-up): {soak['requests_per_s']:.1f} requests/s, p50 "
                  f"{soak['p50_ms']:.0f} ms, p99 {soak['p99_ms']:.0f} ms, errors {soak['errors']}; server RSS "
                  f"{soak['rss_mb_after_warmup']:.0f} → {soak['rss_mb_end']:.0f} MB (**{soak['rss_change']:+.1%}**)."]
    return "\n".join(lines + [""] + provenance_lines(result)) + "\n"
