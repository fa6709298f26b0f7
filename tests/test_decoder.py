"""The causal decoders: streaming state equals the full causal forward, generation, CLM training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nami.cli import main
from nami.data.clm import CLMCollator, pack_causal_sequences
from nami.models import ARCHITECTURES, CausalLMModel, DecodingCache, ModelConfig, generate, sample_next

FIXTURES = Path(__file__).parent / "fixtures"
DECODERS = {**{arch: dict(arch=arch) for arch in ARCHITECTURES},
            "wave-rope": dict(arch="wave", wave_rope=True, position_embedding="none"),
            "transformer-rope": dict(arch="transformer", attention_rope=True, position_embedding="none"),
            "hybrid-rope": dict(arch="wave", mixers=["wave", "attention"], attention_rope=True, wave_rope=True),
            # causal local mixing: a conv branch beside the global mixer, and conv layers
            "wave+conv": dict(arch="wave", branches=["conv"]),
            "transformer+rope+conv": dict(arch="transformer", branches=["conv"], attention_rope=True),
            "conv-layers": dict(arch="wave", mixers=["conv", "wave"], conv_kernel=3),
            "wave-interference": dict(arch="wave", wave_mode="interference"),
            "hybrid": dict(arch="wave", mixers=["wave", "attention"])}


def decoder(name: str) -> CausalLMModel:
    torch.manual_seed(0)
    spec = dict(DECODERS[name])
    return CausalLMModel(ModelConfig.from_name("tiny", spec.pop("arch"), vocab_size=60, max_len=64, **spec)).eval()


@pytest.mark.parametrize("name", list(DECODERS))
def test_streaming_steps_equal_the_full_causal_forward(name):
    model = decoder(name)
    torch.manual_seed(1)
    ids = torch.randint(5, 60, (3, 11))
    lengths = torch.tensor([11, 4, 8])  # prompts of different lengths, right-padded
    mask = torch.arange(11)[None] < lengths[:, None]
    with torch.no_grad():
        full = model(ids, mask)
        cache = DecodingCache()
        steps = torch.cat([model(ids[:, t:t + 1], mask[:, t:t + 1], positions=torch.full((3, 1), t), cache=cache)
                           for t in range(11)], dim=1)
        # prefill the first 6 tokens at once, then step: the same again
        cache2 = DecodingCache()
        head = model(ids[:, :6], mask[:, :6], positions=torch.arange(6).expand(3, 6), cache=cache2)
        tail = torch.cat([model(ids[:, t:t + 1], mask[:, t:t + 1], positions=torch.full((3, 1), t), cache=cache2)
                          for t in range(6, 11)], dim=1)
    torch.testing.assert_close(steps[mask], full[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([head, tail], 1)[mask], full[mask], rtol=0, atol=1e-5)
    # causality: changing a later token never changes earlier outputs
    changed = ids.clone()
    changed[:, 7] = 5 if int(ids[0, 7]) != 5 else 6
    with torch.no_grad():
        torch.testing.assert_close(model(changed, mask)[:, :7], full[:, :7], rtol=0, atol=0)


@pytest.mark.parametrize("name", list(DECODERS))
def test_step_fast_path_equals_forward_with_the_same_cache(name):
    """``model.step`` (functional, one token per row) = ``forward`` on ``(B, 1)`` inputs: the same
    hidden states and the same cache, after a padded prefill, with a finished row (mask False)."""
    model = decoder(name)
    assert model.encoder.can_step()
    torch.manual_seed(2)
    ids = torch.randint(5, 60, (3, 9))
    lengths = torch.tensor([9, 3, 6])
    mask = torch.arange(9)[None] < lengths[:, None]
    with torch.no_grad():
        caches = [DecodingCache(), DecodingCache()]
        for cache in caches:
            model(ids, mask, positions=torch.arange(9).expand(3, 9), cache=cache)
        position = lengths.clone()
        for t in range(4):
            new = torch.randint(5, 60, (3,))
            live = torch.tensor([True, t < 2, True])  # row 1 finishes after two steps
            by_forward = model(new[:, None], live[:, None], positions=position[:, None], cache=caches[0])[:, 0]
            by_step = model.step(new, live, position, caches[1])
            torch.testing.assert_close(by_step, by_forward, rtol=0, atol=1e-5)
            position = position + 1
    for layer, state in caches[0].states.items():
        other = caches[1].states[layer]
        pairs = zip(state, other) if isinstance(state, tuple) else [(state, other)]
        for a, b in pairs:
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_step_falls_back_to_forward_where_the_encoder_cannot_step():
    model = decoder("hybrid")
    model.encoder.blocks[1].mixer.step = None  # a causal mixer without a step method (e.g. a user's)
    assert not model.encoder.can_step()
    ids, live, position = torch.tensor([7, 8]), torch.tensor([True, True]), torch.tensor([0, 0])
    with torch.no_grad():
        torch.testing.assert_close(model.step(ids, live, position, DecodingCache()),
                                   model(ids[:, None], live[:, None], positions=position[:, None],
                                         cache=DecodingCache())[:, 0])


@pytest.mark.parametrize("name", list(DECODERS))
def test_generation_is_the_same_with_the_prompt_at_once_or_token_by_token(name):
    model = decoder(name)
    prompts = [[2, 7, 9, 11, 13, 17], [2, 8], [2, 30, 31, 32]]
    at_once, _ = generate(model, prompts, max_new_tokens=7, eos_id=None)
    stepwise, _ = generate(model, prompts, max_new_tokens=7, eos_id=None, prefill=False)
    alone = [generate(model, [p], max_new_tokens=7, eos_id=None)[0][0] for p in prompts]
    assert at_once == stepwise == alone and all(len(o) == 7 for o in at_once)


def test_wave_decoding_state_is_constant_while_attention_grows():
    sizes = {}
    for name in ("wave", "transformer"):
        model = decoder(name)
        sizes[name] = [generate(model, [[2] + [9] * n], max_new_tokens=1, eos_id=None)[1].nbytes() for n in (4, 40)]
    assert sizes["wave"][0] == sizes["wave"][1] == 2 * 1 * 2 * 64 * 4  # layers × batch × 2D floats
    assert sizes["transformer"][1] > 5 * sizes["transformer"][0]


def test_generation_stops_at_eos_and_samples_reproducibly():
    model = decoder("wave")
    greedy, _ = generate(model, [[2, 7]], max_new_tokens=12, eos_id=None)
    eos = greedy[0][3]
    stopped, _ = generate(model, [[2, 7]], max_new_tokens=12, eos_id=eos)
    assert stopped[0] == greedy[0][: greedy[0].index(eos) + 1]
    a, _ = generate(model, [[2, 7]] * 2, max_new_tokens=10, eos_id=None, temperature=1.0, top_k=20, seed=3)
    b, _ = generate(model, [[2, 7]] * 2, max_new_tokens=10, eos_id=None, temperature=1.0, top_k=20, seed=3)
    assert a == b and a[0] != a[1]  # seeded, and rows draw different samples


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_next(logits).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    assert {int(sample_next(logits, temperature=1.0, top_k=1, generator=g)) for _ in range(20)} == {1}
    assert {int(sample_next(logits, temperature=1.0, top_p=0.01, generator=g)) for _ in range(20)} == {1}
    drawn = {int(sample_next(logits, temperature=1.0, top_k=2, generator=g)) for _ in range(200)}
    assert drawn == {1, 3}
    ties = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # top_k=1 keeps one token, not every one tied with the first
    assert len({int(sample_next(ties, temperature=1.0, top_k=1, generator=g)) for _ in range(50)}) == 1
    assert sample_next(logits, temperature=1e-40).tolist() == [1]  # no inf / inf overflow: the argmax


def test_top_p_one_keeps_every_token(monkeypatch):
    seen = []
    real = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, *a, **k: seen.append(probs) or real(probs, *a, **k))
    logits = torch.tensor([[0.0, -20.0, -25.0, 5.0]])  # a tail the float32 cumsum rounds to 1.0 before its end
    sample_next(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert (seen[0] > 0).all()


def test_generation_refuses_prompts_beyond_the_learned_positions_before_streaming():
    streamed = []
    model = decoder("wave")  # learned positions, max_len 64
    with pytest.raises(ValueError, match="max_len"):
        generate(model, [[2] * 60, [2, 7]], max_new_tokens=8, eos_id=None, on_token=streamed.append)
    assert not streamed
    out, _ = generate(model, [[2] * 60, [2, 7]], max_new_tokens=5, eos_id=None)  # 60 + 5 − 1 = 64 positions: fits
    assert [len(o) for o in out] == [5, 5]
    rope = decoder("wave-rope")  # no position table: no limit
    out, _ = generate(rope, [[2] * 60], max_new_tokens=10, eos_id=None)
    assert len(out[0]) == 10


def test_finished_rows_keep_their_position():
    """A row that stopped is fed padding at its own last position, not at ever higher ones."""
    model = decoder("wave")
    long, short = [2] + list(range(5, 59)) + [9, 9, 9], [2, 7]  # 58 tokens: 58 + 7 − 1 = 64 positions
    first = generate(model, [long], max_new_tokens=1, eos_id=None)[0][0][0]
    seen = []
    original = type(model).step

    def step(self, ids, mask, positions, cache):
        seen.append(positions.tolist())
        return original(self, ids, mask, positions, cache)

    type(model).step = step
    try:
        out, _ = generate(model, [long, short], max_new_tokens=7, eos_id=first)
    finally:
        type(model).step = original
    assert out[0] == [first] and seen[-1][0] == len(long)  # stopped at once: stays where its [EOS] went
    assert seen[-1][1] == len(short) + len(seen) - 1


def test_causal_models_refuse_mixers_that_cannot_be_causal():
    with pytest.raises(ValueError, match="cannot run causally"):
        ModelConfig.from_name("tiny", "wave", causal=True, branches=["fft_gate"])
    with pytest.raises(ValueError, match="causal"):
        from nami.models import QAModel

        QAModel(ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=32)).encoder(
            torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), cache=DecodingCache())


def test_clm_sequences_and_targets():
    class Tok:
        cls_id, sep_id, pad_id = 2, 3, 0

        def encode(self, text):
            return type("E", (), {"ids": [10 + i for i in range(len(text))]})()

    seqs = pack_causal_sequences(["abcdefghijklmnopq"], Tok(), 8, show_progress=False)
    assert [s.tolist() for s in seqs] == [[2, 10, 11, 12, 13, 14, 15, 16], [2, 17, 18, 19, 20, 21, 22, 23],
                                          [2, 24, 25, 26, 3]]  # [SEP] only at the document's end
    # 14 tokens + [SEP] in chunks of 7: the [SEP] left alone goes after the token it follows, not dropped
    tail = pack_causal_sequences(["abcdefghijklmn"], Tok(), 8, show_progress=False)
    assert [s.tolist() for s in tail][-1] == [2, 23, 3]
    batch = CLMCollator(seqs, pad_id=0)([2, 0])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["targets"][0, :5].tolist() == [24, 25, 26, 3, -100] and (batch["targets"][0, 4:] == -100).all()
    assert batch["targets"][1, :8].tolist() == [10, 11, 12, 13, 14, 15, 16, -100]


def test_a_tiny_causal_lm_trains_and_generates_from_the_command_line(tmp_path, capsys):
    data = str(FIXTURES / "tiny_qa.json")
    args = ["pretrain", "--objective", "clm", "--preset", "tiny", "--tokenizer", str(FIXTURES / "runs/wave/tokenizer"),
            "--train-data", data, "--eval-data", data, "--max-length", "64", "--batch-size", "4", "--max-steps", "3",
            "--eval-every-minutes", "1000", "--runs-dir", str(tmp_path), "--run-name", "clm", "--quiet"]
    assert main([*args, "--arch", "wave"]) == 0
    run = tmp_path / "clm"
    final = json.loads((run / "final_eval.json").read_text())
    assert final["perplexity"] > 1 and np.isfinite(final["perplexity"])
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "富士山は", "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt"] == "富士山は" and 1 <= len(result["token_ids"]) <= 8
    assert main(["generate", "--checkpoint", str(run), "--prompt", "富士山は", "--max-new-tokens", "8"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.strip() == result["generated_text"].strip()
    from nami.pipelines import pipeline

    gen = pipeline("text-generation", model=run)
    assert gen("富士山は", max_new_tokens=8) == result
    # As Hugging Face's pipeline: the prompt, then the continuation; return_full_text=False: the continuation.
    only = gen("富士山は", max_new_tokens=8, return_full_text=False)
    assert result["generated_text"] == "富士山は" + only["generated_text"]
    assert only["token_ids"] == result["token_ids"]
    with pytest.raises(ValueError, match="return_full_text"):
        gen("富士山は", return_full_text="no")
    with pytest.raises(ValueError, match="question-answering needs a QA run"):
        pipeline("question-answering", model=run)
    with pytest.raises(ValueError, match="text-generation needs a causal-LM run"):
        pipeline("text-generation", model=FIXTURES / "runs" / "wave")


def test_clm_loss_equals_cross_entropy_over_full_logits():
    from nami.training.tasks import CLMTask

    model = decoder("transformer")
    seqs = [np.array([2, 9, 10, 11, 12, 3]), np.array([2, 20, 21])]
    batch = CLMCollator(seqs, pad_id=0)([0, 1])
    task = CLMTask.__new__(CLMTask)
    task.config = type("C", (), {"loss_impl": "blockwise"})()
    with torch.no_grad():
        loss = task.loss(model, batch)
        logits = model.logits(model(batch["input_ids"], batch["attention_mask"]))
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 60), batch["targets"].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_generative_examples_targets_and_answer_location():
    from nami.data.generative import GenerativeCollator, build_generative, locate_answer, locate_span
    from nami.data.squad import load_squad
    from nami.text import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.load(FIXTURES / "runs" / "wave" / "tokenizer")
    examples = load_squad(FIXTURES / "tiny_qa.json")[:3]
    items = build_generative(examples, tokenizer, 64, training=True)
    item, ex = items[0], examples[0]
    assert item.prompt[0] == tokenizer.cls_id and item.target[-1] == tokenizer.sep_id
    assert item.target[:-1] == tokenizer.encode(ex.answers[0].text).ids
    batch = GenerativeCollator(items, pad_id=0)([0])
    p = len(item.prompt)
    assert batch["targets"][0, p - 1 : p - 1 + len(item.target)].tolist() == item.target
    assert (batch["targets"][0, : p - 1] == -100).all() and (batch["targets"][0, p - 1 + len(item.target):] == -100).all()
    # the answer's own tokens are found in the context and give back its original characters
    text, found = locate_answer(item.target[:-1], item, ex.context)
    assert found and text == ex.answers[0].text
    start, end = locate_span(item.target[:-1], item)
    assert ex.context[start:end] == text and start == ex.answers[0].start
    assert locate_answer([9999], item, ex.context) == ("", False)
    short = build_generative(examples, tokenizer, 25, training=False)  # prediction never drops an example
    assert len(short) == len(examples)
    # ... and its prompt leaves room for max_answer_tokens + [SEP], however long the question
    from dataclasses import replace

    long_question = [replace(examples[0], question=examples[0].question * 20)]
    item = build_generative(long_question, tokenizer, 40, training=False)[0]
    assert len(item.prompt) + 16 <= 40 and len(item.context_ids) >= 4
    with pytest.raises(ValueError, match="max_length=24.*max_answer_tokens=16.*>= 25"):
        build_generative(examples, tokenizer, 24, training=False)


def test_generated_answers_are_located_in_their_context_or_decoded(monkeypatch):
    """A decoder that writes the gold answer's tokens gets the context's original characters back
    (located); one that writes a token absent from the context gets the decoded text (not located)."""
    import nami.models.generation as generation
    from nami.data.generative import build_generative
    from nami.data.squad import load_squad
    from nami.text import JapaneseTokenizer
    from nami.training.tasks import generate_answers

    tokenizer = JapaneseTokenizer.load(FIXTURES / "runs" / "wave" / "tokenizer")
    examples = load_squad(FIXTURES / "tiny_qa.json")[:2]
    gold = build_generative(examples, tokenizer, 96, training=True)
    items = build_generative(examples, tokenizer, 96, training=False)
    stranger = next(i for i in range(5, tokenizer.vocab_size) if i not in items[1].context_ids)
    written = {tuple(items[0].prompt): gold[0].target, tuple(items[1].prompt): [stranger, tokenizer.sep_id]}
    monkeypatch.setattr(generation, "generate", lambda model, prompts, **kw: ([written[tuple(p)] for p in prompts], None))
    answers, located = generate_answers(torch.nn.Linear(1, 1), tokenizer, examples, items, max_answer_tokens=16,
                                        batch_size=2, precision="fp32")
    assert answers == {examples[0].id: examples[0].answers[0].text, examples[1].id: tokenizer.decode([stranger])}
    assert located == 1


def test_generative_qa_trains_from_a_causal_lm_and_predict_reproduces_it(tmp_path, capsys, monkeypatch):
    data = str(FIXTURES / "tiny_qa.json")
    common = ["--preset", "tiny", "--train-data", data, "--eval-data", data, "--max-length", "96",
              "--batch-size", "8", "--eval-every-minutes", "1000", "--runs-dir", str(tmp_path), "--quiet",
              "--precision", "fp32"]
    assert main(["pretrain", "--objective", "clm", "--arch", "transformer", "--max-steps", "3", "--run-name", "lm",
                 "--tokenizer", str(FIXTURES / "runs/wave/tokenizer"), *common]) == 0
    assert main(["train", "--task", "generative-qa", "--arch", "transformer", "--init-from", str(tmp_path / "lm"),
                 "--max-steps", "20", "--lr", "3e-3", "--run-name", "gqa", *common]) == 0
    final = json.loads((tmp_path / "gqa" / "final_eval.json").read_text())
    assert final["count"] == 24 and 0.0 <= final["located"] <= 1.0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "gqa"), "--data", data, "--output",
                 str(tmp_path / "pred.json"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["matches_recorded"] is True and summary["f1"] == final["f1"]
    assert json.loads((tmp_path / "pred.json").read_text()) == json.loads(
        (tmp_path / "gqa" / "predictions.json").read_text())
    # nami ask answers with a generative run too: its one written answer, located in the context
    example = json.loads(Path(data).read_text())["data"][0]["paragraphs"][0]
    context, question = example["context"], example["qas"][0]["question"]
    capsys.readouterr()
    assert main(["ask", "--checkpoint", str(tmp_path / "gqa"), "--context", context, "--question", question,
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["generated"] is True and len(answer["candidates"]) == (1 if answer["answer"] else 0)
    # 20 training steps write little: a decoder that writes the gold answer's tokens shows the span
    import nami.models.generation as generation
    from nami.text import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.load(tmp_path / "gqa" / "tokenizer")
    gold = example["qas"][0]["answers"][0]
    target = [*tokenizer.encode(gold["text"]).ids, tokenizer.sep_id]
    monkeypatch.setattr(generation, "generate", lambda model, prompts, **kw: ([target for _ in prompts], None))
    assert main(["ask", "--checkpoint", str(tmp_path / "gqa"), "--context", context, "--question", question,
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    cand = answer["candidates"][0]
    assert answer["found_in_context"] is True and answer["answer"] == gold["text"]
    assert (cand["start"], cand["end"]) == (gold["answer_start"], gold["answer_start"] + len(gold["text"]))


@pytest.mark.parametrize("name", ["wave", "transformer"])
def test_beam_search_follows_its_beams_through_the_cache(name):
    from nami.models import beam_search

    model = decoder(name)
    prompt = [2, 7, 9, 11]
    greedy, _ = generate(model, [prompt], max_new_tokens=6, eos_id=None)
    assert beam_search(model, prompt, num_beams=1, max_new_tokens=6, eos_id=-1) == greedy[0]
    best, score = beam_search(model, prompt, num_beams=4, max_new_tokens=6, eos_id=-1, length_penalty=0.0,
                              return_score=True)
    ids = torch.tensor([prompt + best])
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model(ids, torch.ones_like(ids, dtype=torch.bool))), -1)[0]
    recomputed = sum(float(logp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(best))
    assert len(best) == 6 and recomputed == pytest.approx(score, abs=1e-4)  # the reordered cache is the beam's own
    ids_g = torch.tensor([prompt + greedy[0]])
    with torch.no_grad():
        lg = torch.log_softmax(model.logits(model(ids_g, torch.ones_like(ids_g, dtype=torch.bool))), -1)[0]
    greedy_logp = sum(float(lg[len(prompt) - 1 + i, tok]) for i, tok in enumerate(greedy[0]))
    assert score >= greedy_logp - 1e-4


def test_bf16_decoding_logits_follow_the_weights():
    model = decoder("wave")
    hidden = torch.randn(3, 64)
    with torch.no_grad():
        exact = model.logits(hidden)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.logits(hidden)
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05)
        model.output_weight.mul_(2.0)  # training changed the weights: the cached bf16 copy must follow
        with torch.autocast("cpu", dtype=torch.bfloat16):
            again = model.logits(hidden)
    torch.testing.assert_close(again, 2 * fast, rtol=0.05, atol=0.05)
    model.output_weight.data.mul_(0.5)  # as fused optimizers write: no version bump; eval() drops the copy
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        restored = model.logits(hidden)
    torch.testing.assert_close(restored, fast, rtol=0.05, atol=0.05)


def test_an_epoch_with_a_partial_accumulation_window_trains_on_every_batch(tmp_path):
    from nami.runs.config import TrainConfig
    from nami.training import checkpoint as ckpt
    from nami.training.loop import train

    data = str(FIXTURES / "tiny_qa.json")

    def run(grad_accum):
        config = TrainConfig.from_dict(dict(
            task="clm", arch="transformer", preset="tiny", train_data=[data], eval_data=data, max_length=64,
            tokenizer=str(FIXTURES / "runs/wave/tokenizer"), batch_size=2, epochs=1, grad_accum=grad_accum,
            eval_every_minutes=None, eval_subset=4, runs_dir=str(tmp_path), run_name=f"ga{grad_accum}",
            precision="fp32", checkpoint_every_minutes=None))
        result = train(config, quiet=True)
        state = json.loads((ckpt.checkpoint_dirs(result.run_dir)[-1] / "state.json").read_text())
        return result.steps, state["progress"]["batch_in_epoch"]

    batches, _ = run(1)
    steps, consumed = run(5)
    assert batches % 5 and steps == -(-batches // 5) and consumed == batches


def test_gradient_accumulation_takes_the_mean_over_the_whole_window(tmp_path, monkeypatch):
    """Two accumulated batches of different token counts give the gradient of their tokens' mean (one
    big batch), not the mean of the two batches' means."""
    from nami.data.batching import BucketBatchSampler
    from nami.runs.config import TrainConfig
    from nami.text import JapaneseTokenizer
    from nami.training.loop import param_groups, train
    from nami.training.tasks import TASKS

    data = str(FIXTURES / "tiny_qa.json")
    config = TrainConfig.from_dict(dict(
        task="clm", arch="wave", preset="tiny", train_data=[data], eval_data=data, max_length=64,
        tokenizer=str(FIXTURES / "runs/wave/tokenizer"), batch_size=3, grad_accum=2, max_steps=1,
        max_grad_norm=1e9, eval_every_minutes=None, eval_subset=2, runs_dir=str(tmp_path), run_name="ga",
        precision="fp32", checkpoint_every_minutes=None))
    seen = []
    step = torch.optim.AdamW.step

    def capture(self, *args, **kwargs):  # the weights before the first step and the gradient it takes
        if not seen:
            seen.append([(p.detach().clone(), p.grad.detach().clone()) for g in self.param_groups for p in g["params"]])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", capture)
    train(config, quiet=True)
    task = TASKS["clm"](config)
    task.prepare(JapaneseTokenizer.load(config.tokenizer), False)
    first, second = (task.collate(b) for b in BucketBatchSampler(task.train_lengths, 3, seed=config.seed).batches(0)[:2])
    units = [task.loss_units(b) for b in (first, second)]
    assert units[0] != units[1]  # else both means would agree
    model = task.build_model(task.model_config(task.tokenizer))
    params = [p for g in param_groups(model, config.weight_decay) for p in g["params"]]
    with torch.no_grad():
        for p, (weight, _) in zip(params, seen[0]):
            p.copy_(weight)
    model.train()
    total = sum(task.loss(model, b) * n for b, n in zip((first, second), units)) / sum(units)
    total.backward()
    for p, (_, grad) in zip(params, seen[0]):
        torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=1e-7)


def test_causal_conv_state_has_a_fixed_size_and_the_conv_sees_only_the_past():
    """The conv branch's decoding state is its last k-1 inputs per row, whatever the prompt length,
    and a causal conv output never depends on later tokens (it would in the centred encoder conv)."""
    model = decoder("wave+conv")
    sizes = []
    for length in (3, 12, 40):
        cache = DecodingCache()
        ids = torch.randint(5, 60, (2, length))
        with torch.no_grad():
            model(ids, torch.ones_like(ids, dtype=torch.bool), positions=torch.arange(length).expand(2, length),
                  cache=cache)
        sizes.append(sum(v.numel() for key, v in cache.states.items() if isinstance(key, tuple)))
    k = model.config.conv_kernel
    assert sizes == [2 * (k - 1) * model.config.d_model * model.config.n_layers] * 3
    assert model.encoder.can_step()


def test_causal_conv_refuses_a_real_token_after_padding_in_a_cached_chunk():
    model = decoder("wave+conv")
    ids = torch.randint(5, 60, (1, 5))
    mask = torch.tensor([[True, False, True, True, True]])
    with torch.no_grad(), pytest.raises(ValueError, match="right-padded"):
        model(ids, mask, positions=torch.arange(5)[None], cache=DecodingCache())


@pytest.mark.parametrize("name", ["transformer", "transformer-rope", "hybrid"])
def test_static_kv_cache_equals_the_growing_cache_and_the_full_forward(name):
    """Keys / values written in place into preallocated buffers give the same hidden states as the
    torch.cat cache and the full causal forward, through forward and step, and the same generation."""
    model = decoder(name)
    torch.manual_seed(2)
    ids = torch.randint(5, 60, (3, 11))
    lengths = torch.tensor([11, 4, 8])
    mask = torch.arange(11)[None] < lengths[:, None]
    with torch.no_grad():
        full = model(ids, mask)
        cache = DecodingCache(capacity=11)
        head = model(ids[:, :6], mask[:, :6], positions=torch.arange(6).expand(3, 6), cache=cache)
        tail = [model.step(ids[:, t], mask[:, t], torch.full((3,), t), cache) for t in range(6, 11)]
        with pytest.raises(ValueError, match="capacity=11 is full"):
            model.step(ids[:, 0], mask[:, 0], torch.full((3,), 11), cache)
    out = torch.cat([head, torch.stack(tail, 1)], 1)
    torch.testing.assert_close(out[mask], full[mask], rtol=0, atol=1e-5)
    prompts = [[7, 8, 9, 10, 11], [12, 13]]
    static, cache = generate(model, prompts, max_new_tokens=6, eos_id=None)
    grown, _ = generate(model, prompts, max_new_tokens=6, eos_id=None, static_cache=False)
    assert static == grown and cache.capacity == 5 + 6


def test_span_constraint_allows_only_continuations_of_the_context():
    from nami.data.generative import GenerativeExample, span_constraint

    context = [10, 11, 12, 10, 13]
    example = GenerativeExample(prompt=[2, *context, 3, 20, 3], target=[], context_ids=context,
                                context_offsets=[(i, i + 1) for i in range(5)])
    allowed = span_constraint(example, eos_id=3)
    assert allowed([]) == [10, 11, 12, 13]  # any context token starts an answer, the end does not
    assert allowed([10]) == [3, 11, 13]  # 10 occurs twice: either continuation, or stop
    assert allowed([10, 11]) == [3, 12]
    assert allowed([13]) == [3]  # the context's last token: only the end


@pytest.mark.parametrize("num_beams", [1, 3])
def test_constrained_decoding_writes_spans_of_the_context_only(num_beams):
    """A random decoder writes anything; constrained to the context, every answer is found there."""
    from nami.data.generative import GenerativeExample, locate_span, span_constraint
    from nami.models.generation import beam_search

    model = decoder("wave+conv")
    torch.manual_seed(4)
    examples = []
    for _ in range(3):
        context = torch.randint(5, 60, (12,)).tolist()
        examples.append(GenerativeExample(prompt=[2, *context, 3, 7, 8, 3], target=[], context_ids=context,
                                          context_offsets=[(i, i + 1) for i in range(12)]))
    rules = [span_constraint(e, eos_id=3) for e in examples]
    if num_beams == 1:
        outputs, _ = generate(model, [e.prompt for e in examples], max_new_tokens=6, eos_id=3, allowed=rules)
        free, _ = generate(model, [e.prompt for e in examples], max_new_tokens=6, eos_id=3)
        assert any(locate_span([t for t in ids if t != 3], e) is None for ids, e in zip(free, examples))
    else:
        outputs = [beam_search(model, e.prompt, num_beams=num_beams, max_new_tokens=6, eos_id=3, allowed=rule)
                   for e, rule in zip(examples, rules)]
    for ids, example in zip(outputs, examples):
        answer = ids[:-1] if ids and ids[-1] == 3 else ids
        assert answer and locate_span(answer, example) is not None, (ids, example.context_ids)


def test_sampling_options_at_the_edges_are_handled_or_refused():
    """Temperatures and top-p below float32's smallest number sample the most likely token (they made
    NaN probabilities); NaN, inf, fractional or boolean options are refused by name; beams wider than
    the vocabulary are refused before the search grows."""
    from nami.models.generation import beam_search

    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    generator = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=1e-46, generator=generator).tolist() == [1, 0]
    assert sample_next(logits, temperature=1.0, top_p=1e-46, generator=generator).tolist() == [1, 0]
    model = decoder("wave")
    for bad in (dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature=1.0, top_k=2.5),
                dict(temperature=1.0, top_k=True), dict(temperature=1.0, top_p=float("nan"))):
        name = next(k for k in bad if k != "temperature") if len(bad) > 1 else "temperature"
        with pytest.raises(ValueError, match=name):
            generate(model, [[5, 6]], max_new_tokens=2, eos_id=None, **bad)
    for seed in (-1, 2**64, 1.5):
        with pytest.raises(ValueError, match="seed"):
            generate(model, [[5, 6]], max_new_tokens=2, eos_id=None, temperature=1.0, seed=seed)
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        beam_search(model, [5, 6], num_beams=61, max_new_tokens=2, eos_id=3)


def test_constrained_beam_search_never_keeps_a_forbidden_candidate():
    """With fewer allowed continuations than 2 × beams, the top-k held -inf candidates: a forbidden token
    became a beam, or a forbidden end filled `finished` and stopped the search early."""
    from nami.data.generative import GenerativeExample, locate_span, span_constraint
    from nami.models.generation import beam_search

    model = decoder("wave")
    example = GenerativeExample(prompt=[2, 9, 10, 3, 7, 3], target=[], context_ids=[9, 10],
                                context_offsets=[(0, 1), (1, 2)])
    ids = beam_search(model, example.prompt, num_beams=4, max_new_tokens=5, eos_id=3,
                      allowed=span_constraint(example, eos_id=3))
    answer = ids[:-1] if ids and ids[-1] == 3 else ids
    assert answer and locate_span(answer, example) is not None, ids


def test_the_text_generation_pipeline_and_nami_generate_work_with_a_conv_decoder(tmp_path, capsys):
    """A wave+conv decoder (causal conv branch) saved as a causal-LM run generates through the pipeline
    and the command line, streaming through its conv state."""
    from nami.cli import main
    from nami.pipelines import pipeline
    from nami.text import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.load(FIXTURES / "runs" / "wave" / "tokenizer")
    torch.manual_seed(5)
    model = CausalLMModel(ModelConfig.from_name("tiny", "wave", vocab_size=tokenizer.vocab_size, max_len=64,
                                                pad_id=tokenizer.pad_id, causal=True, branches=["conv"]))
    run = tmp_path / "conv-decoder"
    model.save_pretrained(run, tokenizer=tokenizer, train_config={"task": "clm", "max_length": 64})
    out = pipeline("text-generation", run)("富士山は", max_new_tokens=6)
    assert out["token_ids"] and out["prompt"] == "富士山は"
    assert main(["generate", "--checkpoint", str(run), "--prompt", "富士山は", "--max-new-tokens", "6"]) == 0
    assert out["generated_text"] in capsys.readouterr().out
