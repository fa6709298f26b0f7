"""Causal-LM data: documents → ``[CLS] tokens … [SEP]`` chunks → next-token batches.

``[CLS]`` starts every chunk (a beginning-of-sequence token) and ``[SEP]`` ends only a document's
last chunk, so the model learns to emit ``[SEP]`` — nami's end-of-sequence token, where
generation stops — exactly where a document ends.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nami.data.batching import PAD_MULTIPLE


def pack_causal_sequences(texts: Iterable[str], tokenizer, seq_len: int, *, show_progress: bool = True,
                          desc: str = "sequences") -> list[np.ndarray]:
    """Each document as ``[CLS] chunk`` pieces of at most ``seq_len`` tokens, the last ending in ``[SEP]``."""
    if seq_len < 8:
        raise ValueError(f"max_length={seq_len}: expected >= 8 for causal-LM sequences")
    room = seq_len - 1
    out: list[np.ndarray] = []
    for text in tqdm(texts, desc=desc, disable=not show_progress, unit="doc"):
        ids = [*tokenizer.encode(text).ids, tokenizer.sep_id]
        for start in range(0, len(ids), room):
            chunk = ids[start : start + room]
            if len(chunk) == 1 and start:  # the document's [SEP] alone: after the token it follows, not dropped
                chunk = ids[start - 1 : start + 1]
            if len(chunk) >= 2:  # an empty document ([SEP] alone) teaches nothing
                out.append(np.asarray([tokenizer.cls_id, *chunk], dtype=np.int64))
    if not out:
        raise ValueError("the causal-LM corpus produced no sequence of at least 3 tokens")
    return out


class CLMCollator:
    """Sequence indices → ``input_ids / attention_mask (B, S)``, ``targets (B, S)``: the next token,
    ``-100`` at the last real position and on padding. ``S`` is padded to a multiple of 16."""

    def __init__(self, sequences: Sequence[np.ndarray], *, pad_id: int, pad_multiple: int = PAD_MULTIPLE) -> None:
        self.sequences = sequences
        self.pad_id = pad_id
        self.pad_multiple = pad_multiple

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [self.sequences[i] for i in indices]
        width = -(-max(len(r) for r in rows) // self.pad_multiple) * self.pad_multiple
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), -100, dtype=np.int64)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = row
            targets[b, : len(row) - 1] = row[1:]
        lengths = torch.tensor([len(r) for r in rows])
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.arange(width)[None, :] < lengths[:, None],
                "targets": torch.from_numpy(targets)}
