"""The task interface the loop trains through, and what several tasks share (data loading, defaults).

A task owns its data (validated first, before any slow step), its batches, its model, its loss
and its evaluation; the loop (:mod:`nami.training.loop`) owns optimisation, schedules, logging,
checkpoints and resume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nami import paths
from nami.data.batching import PAD_MULTIPLE
from nami.data.corpus import text_lines
from nami.data.features import QAFeatures
from nami.data.squad import DataValidationError, load_squad, with_title_prefix
from nami.models import ModelConfig
from nami.runs.config import TrainConfig
from nami.runs.tasks import info
from nami.training.distributed import Ranks


class Task:
    """What the loop needs of a task (see :class:`QATask` for a complete one).

    Class attributes: ``name`` (``TrainConfig.task``; its :class:`~nami.runs.tasks.TaskInfo`
    says what the rest of nami needs to know), ``model_class`` (a model with ``from_pretrained``).
    Methods: ``__init__(config)`` loads and validates data; ``prepare(tokenizer,
    show)`` builds ``train_lengths`` and ``collate``; ``model_config(tokenizer)``;
    ``build_model(model_config)``; ``ready(batch)``; ``loss(model, batch)``; ``evaluate(model,
    device, full=, show=)``; ``describe(scores)``; ``summary()``; ``train_metrics()``.
    """

    name: str
    model_class: type

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def model_config(self, tokenizer) -> ModelConfig:
        """``config.model`` with the fields the tokenizer and the task decide filled in."""
        boundaries = sentence_boundary_ids(tokenizer) if self.config.model.uses_hierarchy() else None
        # Batches are padded to a multiple of PAD_MULTIPLE tokens, so the model must take the padded
        # length (max_length=100 gives batches of 112; max_len=100 would fail at the first long batch).
        max_len = -(-self.config.max_length // PAD_MULTIPLE) * PAD_MULTIPLE
        return dataclasses.replace(self.config.model, vocab_size=tokenizer.vocab_size, max_len=max_len,
                                   pad_id=tokenizer.pad_id, type_vocab_size=self.token_types(),
                                   sentence_boundary_ids=boundaries)

    def token_types(self) -> int:
        """Segment embeddings the model needs (0 = none)."""
        return 0

    def build_model(self, model_config: ModelConfig) -> nn.Module:
        return self.model_class(model_config)

    def train_metrics(self) -> dict[str, Any]:
        return {}

    def ready(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated training batch (on the device) → what :meth:`loss` takes. Randomness a batch
        needs (masked LM's masks) is drawn here, in the training step: collation runs a batch
        ahead of the step, before a checkpoint saves the RNG, so draws made there would shift on
        resume."""
        return batch

    def data_files(self) -> list[str]:
        """The files the task trains and evaluates on (their fingerprint is checked on ``--resume``)."""
        return [*getattr(self, "train_paths", []), *([self.eval_path] if getattr(self, "eval_path", None) else [])]

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """What :meth:`loss` averages over in ``batch``: its target tokens (language models) or its
        windows (QA). Multi-process training weights each rank's mean by its share of these."""
        if "targets" in batch:
            return int((batch["targets"] != -100).sum())
        return int(batch["input_ids"].shape[0])

    def evaluate_sharded(self, model: nn.Module, device: torch.device, *, full: bool, show: bool,
                         ranks: Ranks) -> dict[str, Any]:
        """:meth:`evaluate` under multi-process training: here the main process evaluates and every
        rank gets its scores (tasks that can split their evaluation override this)."""
        scores = self.evaluate(model, device, full=full, show=show) if ranks.is_main else None
        return ranks.broadcast(scores)


def sentence_boundary_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's sentence-ending pieces (``。``, and ``！？`` as NFKC makes them: ``!?``)."""
    ids = []
    for mark in ("。", "!", "?"):
        encoded = tokenizer.encode(mark).ids
        if len(encoded) == 1 and encoded[0] != tokenizer.unk_id:
            ids.append(int(encoded[0]))
    return ids


def resolve_train_data(config: TrainConfig) -> list[str]:
    """``config.train_data`` or the default: JaQuAD train (SQuAD files for QA, contexts for MLM)."""
    return config.train_data or [str(paths.default_data(paths.JAQUAD_TRAIN))]


def resolve_eval_data(config: TrainConfig) -> str:
    """``config.eval_data`` or the task's default: JSQuAD dev for QA, JaQuAD dev (held-out text) for MLM."""
    return config.eval_data or str(paths.default_data(info(config.task).default_eval))


def select_windows(features: QAFeatures, negative_fraction: float, seed: int) -> QAFeatures:
    """All windows that contain the answer plus a seeded ``negative_fraction`` of the others."""
    if negative_fraction >= 1.0:
        return features
    rng = np.random.default_rng([seed, 1])
    keep = features.has_answer | (rng.random(len(features)) < negative_fraction)
    return features.subset(np.flatnonzero(keep).tolist())


def load_option_data(paths: Any, option: str, **kwargs: Any) -> list:
    """:func:`load_squad` whose error names the option the files came from (``--train-data``)."""
    try:
        return load_squad(paths, **kwargs)
    except DataValidationError as err:
        count = f"{len(err.bad):,} bad record{'s' if len(err.bad) != 1 else ''}"
        raise DataValidationError(err.bad, f"{option}: {count} in SQuAD data") from None


def load_qa_examples(config: TrainConfig, train_paths: list[str], eval_path: str) -> tuple[list, list]:
    """Validated QA train / eval examples; training contexts in JSQuAD's title format when asked."""
    train = load_option_data(train_paths, "--train-data", on_bad_record=config.on_bad_record)
    if config.title_prefix:
        train = [with_title_prefix(ex) for ex in train]
    return train, load_option_data(eval_path, "--eval-data", on_bad_record=config.on_bad_record)


def corpus_documents(paths_: list[str], option: str = "--train-data") -> list[str]:
    """Documents of a pretraining corpus: SQuAD files/directories give their contexts (each once),
    other files one document per line."""
    docs: list[str] = []
    for path in map(Path, paths_):
        if path.is_dir() or path.suffix == ".json":
            docs.extend(dict.fromkeys(ex.context for ex in load_option_data(path, option)))
        else:
            docs.extend(text_lines(path))
    return docs


class QADataMixin:
    """The data of a task trained on SQuAD-format QA files (extractive and generative QA alike):
    validated train / eval examples, training contexts in JSQuAD's title format when asked."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_paths = resolve_train_data(config)
        self.eval_path = resolve_eval_data(config)
        self.train_examples, self.eval_examples = load_qa_examples(config, self.train_paths, self.eval_path)


class _CorpusTask(Task):
    """A pretraining task on the contexts of SQuAD-format files (or text files): its documents."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_paths = resolve_train_data(config)
        self.eval_path = resolve_eval_data(config)
        self.train_docs = corpus_documents(self.train_paths)
        self.eval_docs = corpus_documents([self.eval_path], "--eval-data")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / Accelerate wrapper (``.module``), or the model itself."""
    return model.module if hasattr(model, "module") else model
