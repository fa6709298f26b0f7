"""The project's default tokenizer: trained on JaQuAD train text, cached on disk.

Only JaQuAD *train* contexts and questions are used — never JSQuAD or any evaluation data — so
vocabulary statistics cannot leak from the sets we report on. The cache key hashes the corpus
files' contents, the training options and the tokenizer format version, so a changed corpus or
option trains a new tokenizer instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nami.paths import JAQUAD_TRAIN, cache_dir, default_data
from nami.text.segment import MECAB_DESCRIPTION
from nami.text.tokenizer import (
    CONFIG_FILE,
    FORMAT_VERSION,
    SPLIT_DIGITS,
    JapaneseTokenizer,
    TokenizerError,
    train_tokenizer,
)

__all__ = ["default_tokenizer", "jaquad_train_texts"]

DEFAULT_MODEL_TYPE = "unigram"


def _corpus_files() -> list[Path]:
    files = sorted(default_data(JAQUAD_TRAIN).glob("*.json"))
    if not files:
        raise TokenizerError(f"no JaQuAD train shards (*.json) in {default_data(JAQUAD_TRAIN)}")
    return files


def jaquad_train_texts(files: list[Path] | None = None) -> Iterator[str]:
    """The default tokenizer's training text: each JaQuAD train context once, then its questions."""
    files = _corpus_files() if files is None else files
    for file in files:
        for article in json.loads(file.read_text(encoding="utf-8"))["data"]:
            for paragraph in article["paragraphs"]:
                yield paragraph["context"]
                for qa in paragraph["qas"]:
                    yield qa["question"]


def _cache_key(files: list[Path], vocab_size: int) -> str:
    recipe = {
        "format_version": FORMAT_VERSION,
        "vocab_size": vocab_size,
        "model_type": DEFAULT_MODEL_TYPE,
        "split_digits": SPLIT_DIGITS,
        "word_segmentation": MECAB_DESCRIPTION,
        "corpus": [[file.name, hashlib.sha256(file.read_bytes()).hexdigest()] for file in files],
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"jaquad-train-{DEFAULT_MODEL_TYPE}-{vocab_size}-{digest}"


def _train(files: list[Path], vocab_size: int, directory: Path) -> JapaneseTokenizer:
    """Train into a temporary sibling, then move it into place (readers never see half a tokenizer)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}-", dir=directory.parent) as tmp:
        staging = Path(tmp) / "tokenizer"
        train_tokenizer(
            jaquad_train_texts(files),
            staging,
            vocab_size=vocab_size,
            model_type=DEFAULT_MODEL_TYPE,
            corpus_description=f"JaQuAD train contexts + questions ({len(files)} shards of {JAQUAD_TRAIN})",
        )
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    return JapaneseTokenizer.load(directory)


def default_tokenizer(vocab_size: int = 32000, *, shards: int | None = None, rebuild: bool = False) -> JapaneseTokenizer:
    """The JaQuAD-train tokenizer, trained on first use and cached under ``cache_dir()/tokenizers``.
    ``shards``: train on the first N JaQuAD train shards only (``--preset tiny``'s small vocabulary:
    seconds instead of minutes on first use); None: all of them."""
    files = _corpus_files()
    if shards is not None:
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"tokenizer_shards={shards!r}: expected an integer >= 1")
        files = files[:shards]
    directory = cache_dir() / "tokenizers" / _cache_key(files, vocab_size)
    tokenizer = None
    if not rebuild and (directory / CONFIG_FILE).exists():
        try:
            tokenizer = JapaneseTokenizer.load(directory)
        except TokenizerError as exc:
            print(f"nami: cached tokenizer unusable ({exc}); retraining", file=sys.stderr)
    if tokenizer is None:
        print(f"nami: training the default tokenizer (vocab {vocab_size}) on JaQuAD train", file=sys.stderr)
        tokenizer = _train(files, vocab_size, directory)
        print(f"nami: default tokenizer cached at {directory}", file=sys.stderr)  # once, when it is made
    return tokenizer
