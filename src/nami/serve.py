"""``nami serve``: trained runs behind an HTTP API and a web page (``pip install 'nami[serve]'``).

Starlette + uvicorn; each run is loaded once, through the same pipelines as ``nami ask`` / ``pipeline()``:

* ``POST /v1/question-answering`` — ``{"model"?, "question", "context", "top_k"?}`` →
  ``[{"answer", "score", "start", "end"}]`` with ``context[start:end] == answer`` (a generative-QA run:
  its written answer, ``score`` null, ``start`` / ``end`` null when it is not in the context);
* ``POST /v1/completions`` — decoder runs, OpenAI's completion shape (``prompt``, ``max_tokens``,
  ``temperature``, ``top_p``, ``seed``, ``stream``: server-sent events, one per token);
* ``POST /v1/inspect`` — a look inside an extractive QA model for one question: per layer and token, the
  main mixer's share of the block's mixing (global wave vs conv branch), the Wave layer's alignment,
  the block's update, and the span scores (:mod:`nami.evaluation.inspect`);
* ``GET /v1/models`` (name, task, architecture, parameters, the run's recorded scores), ``GET /health``;
* ``GET /`` — a page to paste a context, ask and see the answer highlighted (several runs side by side),
  or stream a generation (no build step, no CDN).

Concurrent question-answering requests are *micro-batched*: the requests that queued while the previous
batch ran (plus, with ``batch_window_ms`` > 0, those arriving within that window; at most ``max_batch``)
run as one forward pass on the one inference thread (torch's own threads inside it), so throughput under
load grows with the batch while a lone request starts at once. Bad requests get a 4xx JSON error naming the field
(``{"error": {"field", "message"}}``); nothing a request sends names a file; the server binds to
127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nami.checks import in_range
from nami.io import read_json
from nami.pipelines import GenerativeQAPipeline, QuestionAnsweringPipeline, check_text, pipeline
from nami.serve_page import PAGE

MAX_BODY_BYTES = 4 * 2**20


class _Cancelled(Exception):
    """Raised inside a generation whose client has disconnected."""


class RequestError(Exception):
    """A bad request: the HTTP status, the field at fault and what is wrong with it."""

    def __init__(self, status: int, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field_name, message


@dataclass
class _Pending:
    payload: Any
    future: asyncio.Future


class MicroBatcher:
    """Runs ``fn(list_of_payloads) -> list_of_results`` on batches gathered over ``window_s``."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], executor: ThreadPoolExecutor, *, window_s: float,
                 max_batch: int) -> None:
        self.fn, self.executor, self.window_s, self.max_batch = fn, executor, window_s, max_batch
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the batches run (the load test reads them)

    async def submit(self, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.queue is None or self.worker is None or self.worker.done() or self.worker.get_loop() is not loop:
            self.queue = asyncio.Queue()  # first use, or another event loop (a restarted server, a test client)
            self.worker = loop.create_task(self._work())
        future = loop.create_future()
        await self.queue.put(_Pending(payload, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            # Requests that arrive while a batch runs wait in the queue and form the next batch (so under load
            # batches grow by themselves, and a lone request starts at once); a window > 0 also waits for the
            # ones that arrive together with the first. Draining with get_nowait costs no task per request.
            await asyncio.sleep(self.window_s)
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self.batches.append(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [p.payload for p in batch])
            except Exception as err:  # the whole batch fails alike; the server keeps serving
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)
                continue
            for pending, result in zip(batch, results):
                if not pending.future.done():
                    pending.future.set_result(result)


@dataclass
class Served:
    """One loaded run: its name (the run folder's), pipeline and what ``/v1/models`` says of it."""

    name: str
    run_dir: Path
    pipe: Any
    card: dict[str, Any] = field(default_factory=dict)
    batcher: MicroBatcher | None = None

    @property
    def kind(self) -> str:
        if isinstance(self.pipe, GenerativeQAPipeline):
            return "written-answers"  # question answering by a decoder that writes its answers
        return "question-answering" if isinstance(self.pipe, QuestionAnsweringPipeline) else "text-generation"


def _card(run_dir: Path, pipe: Any, kind: str) -> dict[str, Any]:
    from nami.models import count_parameters

    card = {"id": run_dir.name, "object": "model", "task": kind, "arch": pipe.config.arch,
            "params": count_parameters(pipe.model)["total"]}
    final = run_dir / "final_eval.json"
    try:
        recorded = read_json(final) if final.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    if isinstance(recorded, dict):
        card["scores"] = {k: v for k, v in recorded.items()
                          if k in ("exact_match", "f1", "perplexity", "count", "data")
                          and isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return card


def load_runs(runs: list[str], *, device: str = "cpu") -> dict[str, Served]:
    """Each run folder through its pipeline (question answering, or text generation for causal-LM runs)."""
    from nami.runs.load import read_run_config
    from nami.runs.tasks import info

    served: dict[str, Served] = {}
    for run in runs:
        run_dir = Path(run)
        config = read_run_config(run_dir)[0]
        entry = info(config.task)
        if entry.pipeline is None:
            raise ValueError(f"{run_dir}: a {config.task!r} run answers nothing over HTTP (serve QA or causal-LM runs)")
        pipe = pipeline(entry.pipeline, run_dir, device=device)
        name = run_dir.name
        if name in served:
            raise ValueError(f"two runs named {name!r}: serve runs whose folders have different names")
        item = Served(name, run_dir, pipe)
        item.card = _card(run_dir, pipe, item.kind)
        served[name] = item
    if not served:
        raise ValueError("nami serve: expected at least one run directory")
    return served


def _text(body: dict[str, Any], name: str, limit: int, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(422, name, f"expected text, got {type(value).__name__ if value is not None else 'nothing'}")
    if not value.strip():
        raise RequestError(422, name, "is empty")
    if len(value) > limit:
        raise RequestError(413, name, f"{len(value):,} characters: more than this server takes ({limit:,})")
    return value


def _number(body: dict[str, Any], name: str, default: Any, low: float, high: float, *, integer: bool) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not in_range(value, low, high, integer=integer):
        what = "an integer" if integer else "a number"
        raise RequestError(422, name, f"expected {what} from {low:g} to {high:g}, got {value!r}")
    return value


class _Api:
    """The handlers of :func:`create_app` over the served runs, their limits and the inference thread."""

    def __init__(self, served: dict[str, Served], executor: ThreadPoolExecutor, max_context_chars: int) -> None:
        self.served, self.executor, self.max_context_chars = served, executor, max_context_chars

    async def body_of(self, request) -> dict[str, Any]:
        if "application/json" not in request.headers.get("content-type", ""):
            raise RequestError(415, None, "send a JSON body (Content-Type: application/json)")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise RequestError(413, None, f"the body is over {MAX_BODY_BYTES >> 20} MB")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, None, f"not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise RequestError(400, None, "expected a JSON object")
        return body

    def model_of(self, body: dict[str, Any], kinds: tuple[str, ...]) -> Served:
        name = body.get("model")
        if name is None:
            candidates = [s for s in self.served.values() if s.kind in kinds]
            if not candidates:
                raise RequestError(404, "model", f"no {' or '.join(kinds)} model is served here")
            return candidates[0]
        if not isinstance(name, str):
            raise RequestError(422, "model", f"expected a model name, got {type(name).__name__}")
        if name not in self.served:
            raise RequestError(404, "model", f"no model {name!r} here (served: {', '.join(self.served)})")
        if self.served[name].kind not in kinds:
            raise RequestError(422, "model", f"{name!r} is a {self.served[name].kind} model, not {' or '.join(kinds)}")
        return self.served[name]

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "models": list(self.served)})

    async def models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [s.card for s in self.served.values()]})

    async def page(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(PAGE)

    async def question_answering(self, request):
        from starlette.responses import JSONResponse

        body = await self.body_of(request)
        item = self.model_of(body, ("question-answering", "written-answers"))
        question = _text(body, "question", 10_000)
        context = _text(body, "context", self.max_context_chars)
        top_k = _number(body, "top_k", 1, 1, 20, integer=True)
        for name, text in (("question", question), ("context", context)):
            try:  # text the pipeline cannot use (no visible character, lone surrogates): the request's fault
                check_text(name, text)
            except ValueError as err:
                raise RequestError(422, name, str(err)) from None
        if item.batcher is not None:
            return JSONResponse(await item.batcher.submit((question, context, top_k)))
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.executor, lambda: item.pipe(question=question, context=context))
        return JSONResponse([{"answer": answer["answer"], "score": None, "start": answer["start"],
                              "end": answer["end"]}])

    async def inspect(self, request):
        """``POST /v1/inspect``: a look inside an extractive QA model for one question (per layer, per token)."""
        from starlette.responses import JSONResponse

        from nami.evaluation.inspect import inspect_qa

        body = await self.body_of(request)
        item = self.model_of(body, ("question-answering",))
        question = _text(body, "question", 10_000)
        context = _text(body, "context", self.max_context_chars)
        for name, text in (("question", question), ("context", context)):
            try:
                check_text(name, text)
            except ValueError as err:
                raise RequestError(422, name, str(err)) from None
        pipe = item.pipe
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, lambda: inspect_qa(
            pipe.model, pipe.tokenizer, pipe.feature_config, question=question, context=context,
            question_match=pipe.config.question_match, device=pipe.device))
        return JSONResponse(result)

    async def completions(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        body = await self.body_of(request)
        item = self.model_of(body, ("text-generation",))
        prompt = _text(body, "prompt", self.max_context_chars)
        options = dict(max_new_tokens=_number(body, "max_tokens", 16, 1, 1024, integer=True),
                       temperature=_number(body, "temperature", 0.0, 0.0, 100.0, integer=False),
                       top_p=_number(body, "top_p", None, 1e-9, 1.0, integer=False),
                       seed=_number(body, "seed", 0, 0, 2**63 - 1, integer=True))
        if options["temperature"] == 0 and options["top_p"] is not None:
            raise RequestError(422, "top_p", "applies when sampling (temperature > 0)")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(422, "stream", f"expected true or false, got {stream!r}")
        config = item.pipe.model.config
        if config.position_embedding == "learned":  # the model's positions bound prompt + new tokens
            prompt_tokens = 1 + len(item.pipe.tokenizer.encode(prompt).ids)
            if prompt_tokens + options["max_new_tokens"] - 1 > config.max_len:
                field_name = "prompt" if prompt_tokens > config.max_len else "max_tokens"
                raise RequestError(422, field_name, f"{prompt_tokens} prompt tokens + max_tokens "
                                   f"{options['max_new_tokens']} exceed the model's {config.max_len} positions")
        loop = asyncio.get_running_loop()
        head = {"object": "text_completion", "created": int(time.time()), "model": item.name}
        if not stream:
            out = await loop.run_in_executor(  # OpenAI's completions return the continuation only
                self.executor, lambda: item.pipe(prompt, return_full_text=False, **options))
            reason = "stop" if out["stopped"] == "eos" else "length"
            return JSONResponse({"id": f"cmpl-{head['created']}", **head,
                                 "choices": [{"index": 0, "text": out["generated_text"], "finish_reason": reason}],
                                 "usage": {"completion_tokens": len(out["token_ids"])}})
        return StreamingResponse(self._stream(item, prompt, options, head), media_type="text/event-stream")

    async def _stream(self, item: Served, prompt: str, options: dict[str, Any], head: dict[str, Any]):
        """Server-sent events: one chunk per new piece of text, a last chunk with the finish reason, [DONE]."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = False

        def on_text(piece: str) -> None:
            if cancelled:  # the client went away: stop generating, free the inference thread
                raise _Cancelled
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def produce() -> None:
            try:
                out = item.pipe(prompt, on_text=on_text, **options)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", out))
            except _Cancelled:
                pass
            except Exception as err:  # reported in the stream: the response has started
                loop.call_soon_threadsafe(queue.put_nowait, ("error", str(err)))

        loop.run_in_executor(self.executor, produce)
        try:
            async for event in self._events(queue, head):
                yield event
        finally:  # the response ended, or the client disconnected (the generator is closed)
            cancelled = True

    @staticmethod
    async def _events(queue: asyncio.Queue, head: dict[str, Any]):
        while True:
            piece = await queue.get()
            if isinstance(piece, tuple):
                kind, value = piece
                if kind == "error":
                    yield f"data: {json.dumps({'error': {'message': value}}, ensure_ascii=False)}\n\n"
                else:
                    reason = "stop" if value["stopped"] == "eos" else "length"
                    chunk = {**head, "choices": [{"index": 0, "text": "", "finish_reason": reason}]}
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
                return
            chunk = {**head, "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def create_app(served: dict[str, Served], *, max_context_chars: int = 100_000, batch_window_ms: float = 0.0,
               max_batch: int = 32, threads: int = 1):
    """The Starlette application serving ``served`` (:func:`load_runs`)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nami-infer")
    for item in served.values():
        if isinstance(item.pipe, QuestionAnsweringPipeline):
            item.batcher = MicroBatcher(_qa_batch(item.pipe), executor, window_s=batch_window_ms / 1000,
                                        max_batch=max_batch)
    api = _Api(served, executor, max_context_chars)

    def handled(handler):
        async def run(request):
            try:
                return await handler(request)
            except RequestError as err:
                return JSONResponse({"error": {"field": err.field, "message": err.message}}, status_code=err.status)
        return run

    routes = [Route("/", api.page), Route("/health", api.health), Route("/v1/models", api.models),
              Route("/v1/question-answering", handled(api.question_answering), methods=["POST"]),
              Route("/v1/completions", handled(api.completions), methods=["POST"]),
              Route("/v1/inspect", handled(api.inspect), methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.served = served
    return app


def _qa_batch(pipe: QuestionAnsweringPipeline) -> Callable[[list[Any]], list[Any]]:
    """One forward pass for a batch of ``(question, context, top_k)`` requests."""

    def run(payloads: list[tuple[str, str, int]]) -> list[Any]:  # texts already checked by the handler
        k = max(top_k for _, _, top_k in payloads)
        candidates, _ = pipe.answer_spans([{"question": q, "context": c} for q, c, _ in payloads], top_k=k)
        return [cands[:top_k] for cands, (_, _, top_k) in zip(candidates, payloads)]

    return run


def default_threads() -> int:
    """torch threads for serving on CPU: one fewer than the usable CPUs (at least 1), leaving a core to the
    event loop that parses requests and writes answers. On 2 cores (AMD EPYC, 2026-12-08, the shipped
    reader), ``OMP_NUM_THREADS=1`` against ``=2`` with ``nami bench serve --concurrency 1 16 --seconds 10
    --warmup 5 --soak-seconds 0`` (its httpx client then, a 5-ms window): 1.34x (micro-batched) and 1.43x
    (batch-1) the requests/s at 16 clients, 1.06x / 1.76x at 1 client: the HTTP side and torch's second
    thread fought over the cores."""
    from nami.resources import usable_cpus

    return max(1, usable_cpus() - 1)


def serve(runs: list[str], *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_context_chars: int = 100_000, batch_window_ms: float = 0.0, max_batch: int = 32,
          threads: int | None = None) -> None:
    """Load the runs and serve them until interrupted; ``threads``: torch's threads for inference
    (default :func:`default_threads`)."""
    import torch
    import uvicorn

    torch.set_num_threads(threads or default_threads())
    app = create_app(load_runs(runs, device=device), max_context_chars=max_context_chars,
                     batch_window_ms=batch_window_ms, max_batch=max_batch)
    print(f"[nami] serving {', '.join(app.state.served)} on http://{host}:{port}/ ({torch.get_num_threads()} torch "
          "thread(s); Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

