"""Streaming generation with a causal model (:class:`~nami.models.clm.CausalLMModel`).

Prompts of different lengths are right-padded and prefilled in one forward that fills a
:class:`~nami.models.inputs.DecodingCache`; then each step feeds one new token per row at that
row's own position. Greedy decoding (``temperature=0``) or sampling with temperature / top-k /
top-p from a seeded generator. A row stops at ``eos_id``; finished rows are fed padding, which
changes no state.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from nami.models.inputs import DecodingCache


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Sampling options as the Python API receives them: NaN, inf, a float top_k, a bool are refused."""
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not number(temperature) or temperature < 0:
        raise ValueError(f"generate: temperature={temperature!r}: expected a finite number >= 0")
    if top_p is not None and (not number(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"generate: top_p={top_p!r}: expected a number 0 < top_p <= 1")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k={top_k!r}: expected an integer >= 1")


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids ``(B,)`` from logits ``(B, V)``: argmax when ``temperature == 0``, else a sample
    from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and to the
    smallest set whose probability reaches ``top_p``."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    # The row maximum first: then nothing overflows however small the temperature (1e-40 made
    # inf / inf = NaN probabilities), and the most likely token keeps logit 0. In float64: a
    # temperature below float32's smallest number (1e-46) would be 0 there, and 0 / 0 = NaN.
    logits = (logits.double() - logits.double().amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        # By index, not by value: a `< k-th value` test keeps every token tied with the k-th.
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:  # 1.0 keeps all (the float cumsum would drop the tail)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # tokens after the set already reaching top_p
        drop[..., 0] = False  # the most likely token always stays (a top_p below the float floor kept none)
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    prefill: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
    static_cache: bool = True,
    allowed: Sequence[Callable[[list[int]], Sequence[int]] | None] | None = None,
) -> tuple[list[list[int]], DecodingCache]:
    """New token ids for every prompt (``eos_id`` included when reached) and the final cache.

    ``prefill=False`` feeds the prompts one token per step instead of in one forward (the same
    result: a test checks it). ``on_token(ids (B,))`` is called after each step (streaming).
    ``static_cache``: attention keys / values in buffers preallocated for ``prompt + max_new_tokens``
    positions and written in place (``False``: grown by ``torch.cat``; the same tokens, tested).
    ``allowed``: per prompt, ``None`` or a function from the tokens generated so far to the ids that
    may come next (constrained decoding, e.g. :func:`nami.data.generative.span_constraint`); the
    others get probability 0.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    _check_sampling(temperature, top_k, top_p)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"generate: seed={seed!r}: expected an integer 0 <= seed < 2**63 (or None)")
    if temperature == 0 and (top_k is not None or top_p is not None):
        raise ValueError("generate: top_k / top_p restrict sampling; with temperature 0 (greedy) they would be "
                         "ignored: give temperature > 0")
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "position_embedding", None) == "learned":
        # Checked before any token is streamed: the last fed token sits at position len + new − 2.
        longest_prompt = max(len(p) for p in prompts)
        if longest_prompt + max_new_tokens - 1 > config.max_len:
            room = config.max_len - longest_prompt + 1
            advice = (f"lower max_new_tokens to {room} or shorten the prompt" if room >= 1 else
                      f"the prompt alone is too long: shorten it to at most {config.max_len} tokens")
            raise ValueError(f"generate: a prompt of {longest_prompt} tokens and max_new_tokens={max_new_tokens} need "
                             f"{longest_prompt + max_new_tokens - 1} positions; the model learned {config.max_len} "
                             f"(max_len): {advice}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    batch, longest = len(prompts), int(lengths.max())
    ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.as_tensor(list(prompt), device=device)
    mask = torch.arange(longest, device=device)[None] < lengths[:, None]
    # Attention keys / values preallocated for every position this call can reach, written in place
    # (static_cache=False: grown by torch.cat, a full copy each step; the older baseline).
    cache = DecodingCache(capacity=longest + max_new_tokens if static_cache else None)
    rows = torch.arange(batch, device=device)
    if prefill:
        positions = torch.arange(longest, device=device).expand(batch, longest)
        hidden = model(ids, mask, positions=positions, cache=cache)
        last = hidden[rows, lengths - 1]
    else:
        last = torch.zeros(batch, model.config.d_model, device=device)
        for t in range(longest):
            real = mask[:, t : t + 1]
            hidden = model(ids[:, t : t + 1], real, positions=torch.full((batch, 1), t, device=device), cache=cache)
            last = torch.where(real, hidden[:, 0], last)
    # Per-step bookkeeping stays in Python lists (one .tolist() per step): at batch 1 a decoding
    # step of the small Wave model takes ~2 ms, and per-row tensor indexing was a visible part of it.
    position = lengths.clone()  # (B,)
    finished = [False] * batch
    live = torch.ones(batch, dtype=torch.bool, device=device)  # (B,): rows still generating
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        logits = model.logits(last)
        if allowed is not None:
            logits = constrain_logits(logits, [None if finished[row] else allowed[row] for row in range(batch)],
                                      out)
        next_ids = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if any(finished):
            next_ids = next_ids.masked_fill(~live, pad_id)
        for row, token in enumerate(next_ids.tolist()):
            if not finished[row]:
                out[row].append(token)
                finished[row] = token == eos_id
        if on_token is not None:
            on_token(next_ids)
        if all(finished) or step == max_new_tokens - 1:
            break  # no forward for a token that will not be sampled
        if any(finished):
            live = torch.tensor(finished, device=device).logical_not_()
        last = _step(model, next_ids, live, position, cache)
        position = position + live  # finished rows stay put (their padding changes no state)
    model.train(was_training)
    return out, cache


def constrain_logits(logits: torch.Tensor, allowed: Sequence[Callable[[list[int]], Sequence[int]] | None],
                     generated: Sequence[list[int]]) -> torch.Tensor:
    """``logits (B, V)`` with ``-inf`` outside the ids ``allowed[row](generated[row])`` (rows whose
    ``allowed`` is None are left as they are)."""
    mask = torch.zeros_like(logits, dtype=torch.bool)
    for row, rule in enumerate(allowed):
        if rule is None:
            mask[row] = True
        else:
            mask[row, torch.as_tensor(list(rule(generated[row])), dtype=torch.long, device=logits.device)] = True
    return logits.masked_fill(~mask, float("-inf"))


def _step(model: torch.nn.Module, ids: torch.Tensor, live: torch.Tensor, positions: torch.Tensor,
          cache: DecodingCache) -> torch.Tensor:
    """Hidden states ``(B, D)`` of one new token per row: the model's ``step`` (its decoding fast
    path) when it has one, else ``forward`` on ``(B, 1)`` inputs (e.g. a ``torch.compile``-d model)."""
    step = None if hasattr(model, "_orig_mod") else getattr(model, "step", None)  # compiled: its forward
    if step is not None:
        return step(ids, live, positions, cache)
    return model(ids[:, None], live[:, None], positions=positions[:, None], cache=cache)[:, 0]


@torch.no_grad()
def beam_search(model: torch.nn.Module, prompt: Sequence[int], *, num_beams: int, max_new_tokens: int,
                eos_id: int, length_penalty: float = 1.0, return_score: bool = False,
                allowed: Callable[[list[int]], Sequence[int]] | None = None):
    """The most likely continuation of one prompt under beam search (ids, ``eos_id`` included if reached).

    ``num_beams`` hypotheses advance together as one batch through a :class:`DecodingCache`, which is
    reordered after each step to follow the surviving beams. A finished hypothesis scores
    ``log p / length ** length_penalty``; the search stops when ``num_beams`` are finished or after
    ``max_new_tokens``. ``num_beams=1`` is greedy decoding. ``return_score``: also return the
    chosen sequence's summed log-probability. ``allowed``: constrained decoding, as in :func:`generate`.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError("beam_search: expected num_beams >= 1 and max_new_tokens >= 1")
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None and num_beams > vocab_size:  # wider than the vocabulary: the whole tree
        raise ValueError(f"beam_search: num_beams={num_beams} exceeds the vocabulary ({vocab_size} tokens)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cache = DecodingCache()
    ids = torch.as_tensor([list(prompt)], device=device)
    hidden = model(ids, torch.ones_like(ids, dtype=torch.bool), positions=torch.arange(len(prompt), device=device)[None],
                   cache=cache)
    last = hidden[:, -1]  # (1, D): one live beam to start with
    scores = torch.zeros(1, device=device)
    beams: list[list[int]] = [[]]
    finished: list[tuple[float, list[int], float]] = []
    for step in range(max_new_tokens):
        logits = model.logits(last)
        if allowed is not None:
            logits = constrain_logits(logits, [allowed] * len(beams), beams)
        logp = torch.log_softmax(logits, dim=-1)  # (beams, V)
        vocab = logp.shape[-1]
        total = (scores[:, None] + logp).view(-1)
        top_scores, top = total.topk(min(2 * num_beams, total.numel()))
        rows, tokens, new_scores, new_beams = [], [], [], []
        for score, flat in zip(top_scores.tolist(), top.tolist()):
            if score == float("-inf"):  # a token the constraint forbids: never a beam, never finished
                break
            row, token = divmod(flat, vocab)
            sequence = beams[row] + [token]
            if token == eos_id:
                finished.append((score / len(sequence) ** length_penalty, sequence, score))
            else:
                rows.append(row)
                tokens.append(token)
                new_scores.append(score)
                new_beams.append(sequence)
            if len(new_beams) == num_beams:
                break
        beams, scores = new_beams, torch.tensor(new_scores, device=device)
        if len(finished) >= num_beams or not beams or step == max_new_tokens - 1:
            break
        cache.reorder(torch.tensor(rows, device=device))
        ids = torch.tensor(tokens, device=device)
        position = torch.full((len(beams),), len(prompt) + step, device=device)
        last = _step(model, ids, torch.ones_like(ids, dtype=torch.bool), position, cache)
    model.train(was_training)
    if len(finished) < num_beams:  # hypotheses still open after max_new_tokens compete too
        finished += [(sc / len(seq) ** length_penalty, seq, sc) for sc, seq in zip(scores.tolist(), beams)]
    _, best, logprob = max(finished, key=lambda item: item[0])
    return (best, logprob) if return_score else best
