"""Small test doubles shared by the test modules."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CharEncoding:
    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int]  # every character is a word of its own

    def __len__(self) -> int:
        return len(self.ids)


class CharTokenizer:
    """One token per non-space character (ids 5..104); ``[SEP]`` literal -> id 3."""

    pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
    vocab_size = 105

    def encode(self, text: str) -> CharEncoding:
        ids, offsets, i = [], [], 0
        while i < len(text):
            if text.startswith("[SEP]", i):
                ids.append(self.sep_id)
                offsets.append((i, i + 5))
                i += 5
                continue
            if not text[i].isspace():
                ids.append(5 + ord(text[i]) % 100)
                offsets.append((i, i + 1))
            i += 1
        return CharEncoding(ids, offsets, list(range(len(ids))))


def jaquad_context_lines(count: int) -> list[str]:
    """The first ``count`` non-empty context lines of the first JaQuAD train shard; on the fixture data
    (no ../shared/data), the committed hand-written paragraphs instead."""
    import pytest

    from conftest import on_fixture_data
    from nami.paths import JAQUAD_TRAIN, DataNotFoundError, default_data

    if on_fixture_data():  # no shared data: the committed hand-written paragraphs (tests/fixtures/ja_corpus.txt)
        corpus = Path(__file__).parent / "fixtures" / "ja_corpus.txt"
        return [line for line in corpus.read_text("utf-8").splitlines() if line.strip()][:count]
    try:
        shard = min(default_data(JAQUAD_TRAIN).glob("*.json"))
    except (DataNotFoundError, ValueError):
        pytest.skip("JaQuAD train data not available")
    data = json.loads(shard.read_text(encoding="utf-8"))["data"]
    lines = [
        line
        for article in data
        for paragraph in article["paragraphs"]
        for line in paragraph["context"].splitlines()
        if line.strip()
    ]
    return lines[:count]


def saved_bytes(layer, x, inputs) -> int:
    """Bytes a layer keeps for backward (saved-tensor hooks) in one bf16-autocast training step of
    ``layer(x, inputs)``: what the Wave memory tests compare between backward paths."""
    import torch

    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x, inputs).float().sum().backward()
    return total
