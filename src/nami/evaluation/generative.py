"""Answers written by a decoder (generative QA), mapped back to their contexts' characters."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nami.data.batching import sorted_batches
from nami.data.generative import locate_answer, span_constraint
from nami.evaluation.predict import autocast_context

CONSTRAINTS = ("none", "context")


def _rule(item, tokenizer, constrain: str):
    return span_constraint(item, tokenizer.sep_id) if constrain == "context" else None


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / Accelerate wrapper (``.module``), or the model itself."""
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def generate_token_answers(model: nn.Module, tokenizer, items: list, *, max_answer_tokens: int, batch_size: int,
                           precision: str, device: torch.device | str = "cpu", show: bool = False,
                           num_beams: int = 1, constrain: str = "none") -> list[list[int]]:
    """The answer token ids written for each prompt of ``items`` (in their order; the closing ``[SEP]``
    dropped): greedy in batches by length, or beam search one prompt at a time. ``constrain="context"``:
    every answer is a span of its context (:func:`nami.data.generative.span_constraint`); ``"none"``:
    free generation."""
    if constrain not in CONSTRAINTS:
        raise ValueError(f"constrain={constrain!r}: expected one of {', '.join(CONSTRAINTS)}")
    from nami.models.generation import beam_search, generate

    device = torch.device(device)
    answers: list[list[int]] = [[] for _ in items]
    lengths = np.array([len(item.prompt) for item in items])
    for batch in tqdm(sorted_batches(lengths, batch_size), desc="generate answers", disable=not show):
        with autocast_context(device, precision):
            if num_beams > 1:
                outputs = [beam_search(_unwrap(model), items[b].prompt, num_beams=num_beams,
                                       max_new_tokens=max_answer_tokens + 1, eos_id=tokenizer.sep_id,
                                       allowed=_rule(items[b], tokenizer, constrain)) for b in batch]
            else:
                outputs, _ = generate(_unwrap(model), [items[b].prompt for b in batch],
                                      max_new_tokens=max_answer_tokens + 1, eos_id=tokenizer.sep_id,
                                      pad_id=tokenizer.pad_id,
                                      allowed=None if constrain == "none"
                                      else [_rule(items[b], tokenizer, constrain) for b in batch])
        for b, ids in zip(batch, outputs):
            answers[b] = ids[:-1] if ids and ids[-1] == tokenizer.sep_id else ids
    return answers


def generate_answers(model: nn.Module, tokenizer, examples: list, items: list, *, max_answer_tokens: int,
                     batch_size: int, precision: str, device: torch.device | str = "cpu",
                     show: bool = False, num_beams: int = 1, constrain: str = "none") -> tuple[dict[str, str], int]:
    """Generated answers ``{id: text}`` of ``examples`` (their prompts ``items``;
    :func:`generate_token_answers`) and how many were found verbatim in their context (those are the
    context's own characters; the rest: detokenised text)."""
    token_answers = generate_token_answers(model, tokenizer, items, max_answer_tokens=max_answer_tokens,
                                           batch_size=batch_size, precision=precision, device=device, show=show,
                                           num_beams=num_beams, constrain=constrain)
    answers: dict[str, str] = {}
    located = 0
    for example, item, ids in zip(examples, items, token_answers):
        text, found = locate_answer(ids, item, example.context)
        located += found
        answers[example.id] = text if found else tokenizer.decode(ids)
    return answers, located
