"""Shared fixtures: a tiny real-text QA set and a tokenizer trained on it (built once per session)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


FIXTURE_QA = Path(__file__).parent / "fixtures" / "tiny_qa.json"  # hand-written: 12 articles, 24 questions
# Set when the shared data is missing and the tests run on a data root built from FIXTURE_QA.
FIXTURE_DATA_FLAG = "NAMI_TESTS_ON_FIXTURE_DATA"


def pytest_configure(config) -> None:
    """Without the shared data (a clone elsewhere, ``NAMI_DATA=/nonexistent``), the tests still run:
    on a data root laid out like ``../shared/data`` whose every file is the committed hand-written
    fixture. Only the checks of the real files themselves skip then (they say so)."""
    import os
    import tempfile

    from nami.paths import DataNotFoundError, data_root

    try:
        data_root()
        return
    except DataNotFoundError:
        pass
    import atexit
    import shutil

    root = Path(tempfile.mkdtemp(prefix="nami-fixture-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    text = FIXTURE_QA.read_text("utf-8")
    for relative in ("jaquad/train/jaquad_train_0000.json", "jaquad/dev/jaquad_dev_0000.json",
                     "jsquad/valid-v1.3.json"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, "utf-8")
    os.environ["NAMI_DATA"] = str(root)
    os.environ[FIXTURE_DATA_FLAG] = "1"


def pytest_report_header(config) -> str:
    """Which data the tests read (a NAMI_DATA that points nowhere is replaced by the fixture data: say so)."""
    import os

    if on_fixture_data():
        return (f"data: the committed fixture (tests/fixtures/tiny_qa.json) laid out at {os.environ['NAMI_DATA']}; "
                "no ../shared/data or $NAMI_DATA found")
    return f"data: {os.environ.get('NAMI_DATA') or '../shared/data'}"


def on_fixture_data() -> bool:
    import os

    return os.environ.get(FIXTURE_DATA_FLAG) == "1"


def skip_on_fixture_data(what: str) -> None:
    """Skip a test that needs a property of the real data the hand-written fixture does not have
    (``what``: that property), when the tests run on the fixture data."""
    if on_fixture_data():
        pytest.skip(f"needs {what} (the tests run on the committed fixture data: no ../shared/data)")


def _data_root() -> Path:
    from nami.paths import data_root

    return data_root()


@pytest.fixture(scope="session")
def tiny_squad(tmp_path_factory) -> Path:
    """16 questions with short contexts: JaQuAD train questions with contexts cut to ~80 characters
    around the answer, or (without the shared data) the first 16 of the hand-written fixture."""
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
