"""Shared fixtures: a tiny real-text QA set and a tokenizer trained on it (built once per session)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


def _data_root() -> Path:
    from nami.paths import DataNotFoundError, data_root

    try:
        return data_root()
    except DataNotFoundError:
        pytest.skip("the shared data directory is not available")


@pytest.fixture(scope="session")
def tiny_squad(tmp_path_factory) -> Path:
    """16 JaQuAD train questions with contexts cut to ~80 characters around the answer (the tests that
    use it skip without the shared data: several check properties of these very questions)."""
    from nami.data.squad import load_squad

    examples = load_squad(_data_root() / "jaquad" / "train" / "jaquad_train_0000.json")
    paragraphs = []
    for ex in examples[:: max(1, len(examples) // 16)][:16]:
        answer = ex.answers[0]
        left = max(0, answer.start - 40)
        context = ex.context[left : answer.start + len(answer.text) + 40]
        paragraphs.append(
            {
                "context": context,
                "qas": [{"id": ex.id, "question": ex.question,
                         "answers": [{"text": answer.text, "answer_start": answer.start - left}]}],
            }
        )
    path = tmp_path_factory.mktemp("data") / "tiny.json"
    path.write_text(json.dumps({"data": [{"title": "tiny", "paragraphs": paragraphs}]}, ensure_ascii=False), "utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_squad, tmp_path_factory) -> Path:
    from nami.data.corpus import read_corpus
    from nami.text import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(read_corpus([tiny_squad]), out, vocab_size=800, show_progress=False)
    return out
