"""n-best span decoding: start/end logits -> the best answer substrings of the context.

All candidate spans of a window are scored at once as ``start[i] + end[j]`` on an ``(S, S)``
grid restricted to ``i <= j < i + max_answer_tokens`` with ``i`` a token that may start an answer and
``j`` one that may end it (context tokens; with word boundaries, word-initial / word-final ones), and to spans
that contain no *barrier* token (JSQuAD's ``title [SEP] paragraph`` separator: an answer never
crosses it, yet both of its neighbours are selectable); this is exact (no top-k pruning of starts
and ends) and vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Span:
    """A candidate answer: token indices in its window, score, and character span in the context."""

    score: float
    window: int
    start_token: int
    end_token: int
    char_start: int
    char_end: int


def best_token_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    can_start: torch.Tensor,
    can_end: torch.Tensor | None = None,
    *,
    max_answer_tokens: int = 30,
    n_best: int = 1,
    barrier: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``n_best`` spans per window.

    Args:
        start_logits, end_logits: ``(B, S)`` float.
        can_start: ``(B, S)`` bool, True for tokens that may begin an answer.
        can_end: ``(B, S)`` bool, True for tokens that may end one; None = ``can_start``.
        barrier: ``(B, S)`` bool or None, True for tokens no answer may contain (the context's
            literal ``[SEP]``).
    Returns:
        ``scores, starts, ends``, each ``(B, n)`` with ``n = min(n_best, S*S)``; a window with
        no valid span gets score ``-inf``.
    """
    if max_answer_tokens < 1:
        raise ValueError(f"max_answer_tokens={max_answer_tokens}: expected >= 1")
    batch, seq = start_logits.shape
    idx = torch.arange(seq, device=start_logits.device)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_answer_tokens)  # (S, S)
    can_end = can_start if can_end is None else can_end
    valid = band[None] & can_start.bool()[:, :, None] & can_end.bool()[:, None, :]
    if barrier is not None:
        # Span (i, j) contains a barrier iff the running count of barriers up to j differs from
        # the count strictly before i.
        upto = barrier.long().cumsum(dim=-1)  # (B, S)
        before = upto - barrier.long()
        valid = valid & (before[:, :, None] == upto[:, None, :])
    scores = (start_logits.float()[:, :, None] + end_logits.float()[:, None, :]).masked_fill(~valid, float("-inf"))
    top_scores, flat = scores.view(batch, -1).topk(min(n_best, seq * seq), dim=-1)
    return top_scores, flat // seq, flat % seq


def decode_example_spans(
    window_ids: list[int],
    window_scores: np.ndarray,
    window_starts: np.ndarray,
    window_ends: np.ndarray,
    context_offsets: list[np.ndarray],
    n_best: int = 1,
) -> list[Span]:
    """Merge the candidates of one example's windows into its n best distinct character spans."""
    candidates: dict[tuple[int, int], Span] = {}
    for w, scores, starts, ends in zip(window_ids, window_scores, window_starts, window_ends):
        offsets = context_offsets[w]
        for score, s, e in zip(scores, starts, ends):
            if not np.isfinite(score):
                continue
            char_span = (int(offsets[s, 0]), int(offsets[e, 1]))
            best = candidates.get(char_span)
            if best is None or score > best.score:
                candidates[char_span] = Span(float(score), w, int(s), int(e), *char_span)
    return sorted(candidates.values(), key=lambda span: -span.score)[:n_best]
