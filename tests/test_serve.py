"""`nami serve`: every endpoint through Starlette's test client, every error path, micro-batching."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from nami.pipelines import pipeline  # noqa: E402
from nami.serve import create_app, load_runs  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
WAVE = FIXTURES / "runs" / "wave"
CONTEXT = "富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。"
QUESTION = "富士山の標高は何メートル?"


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory) -> Path:
    """A tiny random decoder saved as a causal-LM run (what `nami pretrain --objective clm` leaves)."""
    import torch

    from nami.models import CausalLMModel, ModelConfig
    from nami.text import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.load(WAVE / "tokenizer")
    torch.manual_seed(0)
    model = CausalLMModel(ModelConfig.from_name("tiny", "wave", vocab_size=tokenizer.vocab_size, max_len=128,
                                                pad_id=tokenizer.pad_id, causal=True))
    out = tmp_path_factory.mktemp("runs") / "decoder"
    model.save_pretrained(out, tokenizer=tokenizer, train_config={"task": "clm", "max_length": 64})
    return out


@pytest.fixture(scope="module")
def client(decoder_run):
    app = create_app(load_runs([str(WAVE), str(decoder_run)]), max_context_chars=2_000, batch_window_ms=20)
    with TestClient(app) as test_client:
        yield test_client


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "models": ["wave", "decoder"]}
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["wave"]["task"] == "question-answering" and cards["decoder"]["task"] == "text-generation"
    assert cards["wave"]["params"] > 0 and cards["wave"]["arch"] == "wave"


def test_question_answering_equals_the_pipeline(client):
    answers = client.post("/v1/question-answering", json={"question": QUESTION, "context": CONTEXT,
                                                           "top_k": 3}).json()
    expected = pipeline("question-answering", WAVE)(question=QUESTION, context=CONTEXT, top_k=3)
    assert answers == json.loads(json.dumps(expected))
    for a in answers:
        assert CONTEXT[a["start"]:a["end"]] == a["answer"]
    page = client.get("/").text
    assert "<mark>" in page and "質問" in page and "https://" not in page and "http://" not in page  # no CDN


def test_completions_plain_and_streamed(client):
    body = {"model": "decoder", "prompt": "富士山は", "max_tokens": 5}
    plain = client.post("/v1/completions", json=body).json()
    assert plain["object"] == "text_completion" and plain["choices"][0]["finish_reason"] in ("stop", "length")
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert streamed == plain["choices"][0]["text"]  # greedy: the same text, piece by piece


BAD = [
    ("/v1/question-answering", {"context": CONTEXT}, 422, "question"),
    ("/v1/question-answering", {"question": QUESTION}, 422, "context"),
    ("/v1/question-answering", {"question": 5, "context": CONTEXT}, 422, "question"),
    ("/v1/question-answering", {"question": QUESTION, "context": ["a"]}, 422, "context"),
    ("/v1/question-answering", {"question": "", "context": CONTEXT}, 422, "question"),
    ("/v1/question-answering", {"question": "   ", "context": CONTEXT}, 422, "question"),
    ("/v1/question-answering", {"question": QUESTION, "context": "\u200b\u200b"}, 422, "context"),
    ("/v1/question-answering", {"question": QUESTION, "context": "あ" * 2_001}, 413, "context"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "top_k": 0}, 422, "top_k"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "top_k": "3"}, 422, "top_k"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "top_k": True}, 422, "top_k"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "model": "nope"}, 404, "model"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "model": "decoder"}, 422, "model"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "model": ["wave"]}, 422, "model"),
    ("/v1/question-answering", {"question": QUESTION, "context": CONTEXT, "model": "../../etc/passwd"}, 404,
     "model"),
    ("/v1/completions", {"prompt": ""}, 422, "prompt"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 10**6}, 422, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "temperature": -1}, 422, "temperature"),
    ("/v1/completions", {"prompt": "a", "temperature": 1.0, "top_p": 2}, 422, "top_p"),
    ("/v1/completions", {"prompt": "a", "top_p": 0.5}, 422, "top_p"),
    ("/v1/completions", {"prompt": "a", "seed": -1}, 422, "seed"),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, 422, "stream"),
    ("/v1/completions", {"prompt": "a", "model": "wave"}, 422, "model"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 1000}, 422, "max_tokens"),  # beyond the 128 positions
    ("/v1/completions", {"prompt": "富士山" * 200, "max_tokens": 2}, 422, "prompt"),
]


@pytest.mark.parametrize("path, body, status, field", BAD)
def test_a_bad_request_is_a_4xx_naming_the_field_and_the_server_keeps_serving(client, path, body, status, field):
    response = client.post(path, json=body)
    assert response.status_code == status and response.json()["error"]["field"] == field, response.text
    assert client.post("/v1/question-answering", json={"question": QUESTION, "context": CONTEXT}).status_code == 200


@pytest.mark.parametrize("raw, headers, status", [(b"{", {"content-type": "application/json"}, 400),
                                                  (b"[1]", {"content-type": "application/json"}, 400),
                                                  (b"q=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
                                                  (b"\xff\xfe", {"content-type": "application/json"}, 400)])
def test_a_body_that_is_not_a_json_object_is_refused(client, raw, headers, status):
    response = client.post("/v1/question-answering", content=raw, headers=headers)
    assert response.status_code == status and "error" in response.json()
    assert client.get("/v1/nothing").status_code == 404


@pytest.mark.parametrize("window_ms", [0.0, 50.0])  # 0 (the default): the questions queued meanwhile
def test_concurrent_questions_share_forward_passes_and_get_their_own_answers(window_ms):
    app = create_app(load_runs([str(WAVE)]), batch_window_ms=window_ms, max_batch=8)
    questions = [QUESTION, "富士山はどこにある?", "いつ登録された?", "何で知られる?"] * 2
    context = CONTEXT + "日本で最も高い山として知られ、2013年に世界文化遺産に登録された。"
    alone = pipeline("question-answering", WAVE)

    async def ask_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nami") as http:
            responses = await asyncio.gather(*(http.post("/v1/question-answering",
                                                         json={"question": q, "context": context}) for q in questions))
        return [r.json()[0] for r in responses]

    answers = asyncio.run(ask_all())
    assert [a["answer"] for a in answers] == [alone(question=q, context=context)["answer"] for q in questions]
    batcher = app.state.served["wave"].batcher
    assert max(batcher.batches) > 1 and sum(batcher.batches) == len(questions)


@pytest.mark.slow
def test_the_load_benchmark_serves_and_measures_both_modes(tmp_path):
    """`nami bench serve`, shortened: a real server process on a loopback port per mode, no errors."""
    from nami.bench.serve import run_serve_bench

    result = run_serve_bench(str(WAVE), levels=(1, 4), seconds=1.0, out=str(tmp_path / "serve.json"), quiet=True,
                             warmup=0.3, soak_seconds=1.0)
    assert {(r["batching"], r["concurrency"]) for r in result["records"]} == {
        (b, c) for b in ("micro-batched", "batch-1") for c in (1, 4)}
    assert all(set(r) == {"batching", "concurrency", "requests_per_s", "p50_ms", "p99_ms", "errors", "rss_mb_start",
                          "rss_mb_end"} for r in result["records"])
    assert all(r["errors"] == 0 and r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in result["records"])
    assert (tmp_path / "serve.md").read_text().count("| micro-batched |") == 2
    soak = result["soak"]
    assert soak["errors"] == 0 and soak["requests"] > 0 and soak["rss_mb_after_warmup"] > 50
    assert abs(soak["rss_change"]) < 1.0 and "Soak (micro-batched" in (tmp_path / "serve.md").read_text()


def test_look_inside_reports_every_layer_and_context_token(client):
    response = client.post("/v1/inspect", json={"question": QUESTION, "context": CONTEXT})
    assert response.status_code == 200, response.text
    inside = response.json()
    n = len(inside["tokens"])
    assert len(inside["layers"]) == 2 and n == len(inside["offsets"]) == len(inside["start_scores"])
    for layer in inside["layers"]:
        assert len(layer["mixer_share"]) == n and all(0.0 <= v <= 1.0 for v in layer["mixer_share"])
        assert all(v == 1.0 for v in layer["mixer_share"])  # the fixture model has no branches
        assert len(layer["alignment"]) == n and all(-1.0 <= v <= 1.0 for v in layer["alignment"])
    spans = [o for o in inside["offsets"] if o]
    assert spans and all(0 <= s < e <= len(CONTEXT) for s, e in spans)
    assert client.post("/v1/inspect", json={"model": "decoder", "question": QUESTION,
                                            "context": CONTEXT}).status_code == 422
