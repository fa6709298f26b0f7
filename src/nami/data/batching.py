"""Batches of QA windows or pretraining sequences: length-bucketed sampling, padding to a multiple of 16.

Padding every batch to a multiple of 16 keeps the set of tensor shapes small: bf16 oneDNN
kernels on CPU are rebuilt for every new shape (calibration.md measured ~6x from this and
dropout-off together). Bucketing similar lengths into a batch wastes fewer padding tokens.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from nami.data.features import QAFeatures

PAD_MULTIPLE = 16


class WindowDataset(Dataset):
    """Item ``i`` is just ``i``: the task's collator turns a batch of indices into tensors."""

    def __init__(self, features: QAFeatures | Sequence) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> int:
        return index


def token_type_count(question_match: bool) -> int:
    """Segment embeddings a QA model needs: question / context (/ context word found in the question)."""
    return 3 if question_match else 2


class QACollator:
    """Window indices -> padded ``input_ids / attention_mask / token_type_ids (B, S)``, labels ``(B,)``.

    ``token_type_ids`` is 0 for ``[CLS] question [SEP]`` and 1 from the context on (and 0 on
    padding); it is only produced when ``sep_id`` is given. With ``question_match`` a context token
    whose word also occurs in the question gets type 2 (``features.question_match``), so the model
    needs :func:`token_type_count` ``(True) = 3`` segment embeddings.
    """

    def __init__(self, features: QAFeatures, pad_id: int, pad_multiple: int = PAD_MULTIPLE,
                 sep_id: int | None = None, question_match: bool = False) -> None:
        if question_match and sep_id is None:
            raise ValueError("question_match needs token types (pass sep_id)")
        self.features = features
        self.pad_id = pad_id
        self.pad_multiple = pad_multiple
        self.sep_id = sep_id
        self.question_match = question_match

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [self.features.input_ids[i] for i in indices]
        longest = max(len(r) for r in rows)
        width = -(-longest // self.pad_multiple) * self.pad_multiple
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = row
        lengths = torch.tensor([len(r) for r in rows])
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.arange(width)[None, :] < lengths[:, None],
            "start_positions": torch.tensor([self.features.start_positions[i] for i in indices]),
            "end_positions": torch.tensor([self.features.end_positions[i] for i in indices]),
        }
        if self.sep_id is not None:
            token_types = np.zeros_like(input_ids)
            for b, row in enumerate(rows):
                token_types[b, self.features.context_starts[indices[b]] : len(row)] = 1
                if self.question_match:
                    token_types[b, : len(row)] += self.features.question_match[indices[b]]
            batch["token_type_ids"] = torch.from_numpy(token_types)
        return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length windows; deterministic for a given (seed, epoch).

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort each
    pool by length, cut the pool into batches, then shuffle the batch order.
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, *, seed: int, pool_batches: int = 50
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool_batches * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        for p in range(0, len(order), self.pool):
            pool = order[p : p + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            for b in range(0, len(pool), self.batch_size):
                batches.append(pool[b : b + self.batch_size].tolist())
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.pool)  # pools are cut into batches separately
        return full * -(-self.pool // self.batch_size) + -(-rest // self.batch_size)


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Deterministic inference batches: windows sorted by length, then cut."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
