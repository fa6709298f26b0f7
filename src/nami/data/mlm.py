"""Masked-LM data: documents → ``[CLS] tokens [SEP]`` sequences → dynamically masked batches.

Masking follows BERT: 15% of the non-special tokens are chosen; of those 80% become ``[MASK]``,
10% a random token, 10% stay. Training batches are masked in the training step
(:meth:`MLMCollator.mask`, called through ``Task.ready``), not at collation, with torch's global RNG:
every epoch sees new masks, and a resumed run, which restores that RNG, sees the same ones. Drawn at
collation they would not be: the data loader collates the next batch before a checkpoint saves
the RNG, so a resumed run's masks would come one batch late (tested). Evaluation masks at
collation with its own seeded generator.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nami.data.batching import PAD_MULTIPLE

FIRST_REGULAR_ID = 5  # ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]


def pack_sequences(texts: Iterable[str], tokenizer, seq_len: int, *, show_progress: bool = True,
                   desc: str = "sequences") -> list[np.ndarray]:
    """Each document cut into ``[CLS] ≤seq_len−2 tokens [SEP]`` sequences (no cross-document packing)."""
    if seq_len < 8:
        raise ValueError(f"max_length={seq_len}: expected >= 8 for masked-LM sequences")
    room = seq_len - 2
    out: list[np.ndarray] = []
    for text in tqdm(texts, desc=desc, disable=not show_progress, unit="doc"):
        ids = tokenizer.encode(text).ids
        for start in range(0, len(ids), room):
            chunk = ids[start : start + room]
            if len(chunk) >= 4:
                out.append(np.asarray([tokenizer.cls_id, *chunk, tokenizer.sep_id], dtype=np.int64))
    if not out:
        raise ValueError("the masked-LM corpus produced no sequence of at least 4 tokens")
    return out


class MLMCollator:
    """Sequence indices → ``input_ids / attention_mask (B, S)``, ``targets (B, S)`` (-100 = not masked)."""

    def __init__(self, sequences: Sequence[np.ndarray], *, pad_id: int, mask_id: int, vocab_size: int,
                 probability: float = 0.15, generator: torch.Generator | None = None) -> None:
        if not 0.0 < probability < 1.0:
            raise ValueError(f"mlm_probability={probability}: expected 0 < p < 1")
        self.sequences = sequences
        self.pad_id, self.mask_id, self.vocab_size = pad_id, mask_id, vocab_size
        self.probability = probability
        self.generator = generator  # None: torch's global RNG (training); a seeded one for evaluation

    def pad(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Sequence indices → ``input_ids / attention_mask (B, S)``, unmasked."""
        rows = [self.sequences[i] for i in indices]
        width = -(-max(len(r) for r in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.from_numpy(row)
        return {"input_ids": ids, "attention_mask": ids != self.pad_id}

    def mask(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A padded batch → masked ``input_ids``, ``attention_mask`` and ``targets (B, S)`` (-100 = not
        masked), drawn on the batch's device from ``generator`` (None: torch's global RNG)."""
        ids = batch["input_ids"]
        maskable = ids >= FIRST_REGULAR_ID
        g = self.generator
        chosen = (torch.rand(ids.shape, generator=g, device=ids.device) < self.probability) & maskable
        # Guarantee at least one target per batch so the loss is always defined.
        if not chosen.any():
            first = maskable.flatten().nonzero()[0]
            chosen.view(-1)[first] = True
        targets = torch.where(chosen, ids, torch.full_like(ids, -100))
        action = torch.rand(ids.shape, generator=g, device=ids.device)
        inputs = ids.clone()
        inputs[chosen & (action < 0.8)] = self.mask_id
        randomise = chosen & (action >= 0.8) & (action < 0.9)
        inputs[randomise] = torch.randint(FIRST_REGULAR_ID, self.vocab_size, (int(randomise.sum()),), generator=g,
                                          device=ids.device)
        return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "targets": targets}

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Sequence indices → a padded, masked batch (:meth:`pad`, then :meth:`mask`)."""
        return self.mask(self.pad(indices))
