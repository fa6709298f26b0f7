"""Training objectives plugged into the generic loop of :mod:`nami.training.loop`, and their registry.

A task owns its data (validated first, before any slow step), its batches, its model, its loss
and its evaluation; the loop owns optimisation, schedules, logging, checkpoints and resume.
:data:`TASKS` maps each task name to its class: ``TrainConfig.task`` is validated against it, the
loop builds the task from it, and :func:`nami.training.checkpoint.load_run` loads a run's model
through the task's ``model_class``. A new task is a class with the attributes below plus one
:func:`register_task` line.

* :class:`QATask` — extractive QA on SQuAD-format data (JSQuAD EM / F1).
* :class:`MLMTask` — masked-LM pretraining on a text corpus, with the loss computed by
  :func:`nami.losses.linear_cross_entropy` (no full-vocabulary logits in training).
* :class:`GenerativeQATask` — generative QA with a decoder: the answer is written, not pointed at.
* :class:`CLMTask` — causal-LM pretraining (a Wave or Transformer *decoder*) on the same corpus,
  the loss over every position through the same function; held-out perplexity.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nami import paths
from nami.data.batching import PAD_MULTIPLE, QACollator, sorted_batches, token_type_count
from nami.data.clm import CLMCollator, pack_causal_sequences
from nami.data.generative import GenerativeCollator, build_generative, locate_answer
from nami.data.corpus import text_lines
from nami.data.features import FeatureConfig, QAFeatures, build_features
from nami.data.mlm import MLMCollator, pack_sequences
from nami.data.squad import DataValidationError, load_squad, with_title_prefix
from nami.evaluation.metric import evaluate_predictions
from nami.evaluation.predict import autocast_context, predict_answers
from nami.models import CausalLMModel, MaskedLMModel, ModelConfig, QAModel
from nami.training.config import TrainConfig
from nami.training.distributed import Ranks, merge_answers, shard_examples


class Task:
    """What the loop needs of a task (see :class:`QATask` for a complete one).

    Class attributes: ``name`` (``TrainConfig.task``), ``model_class`` (a model with
    ``from_pretrained``), ``default_eval`` (data file under the data root when ``eval_data`` is
    not given). Methods: ``__init__(config)`` loads and validates data; ``prepare(tokenizer,
    show)`` builds ``train_lengths`` and ``collate``; ``model_config(tokenizer)``;
    ``build_model(model_config)``; ``ready(batch)``; ``loss(model, batch)``; ``evaluate(model,
    device, full=, show=)``; ``describe(scores)``; ``summary()``; ``train_metrics()``.
    """

    name: str
    model_class: type
    default_eval: str

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


TASKS: dict[str, type[Task]] = {}


def sentence_boundary_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's sentence-ending pieces (``。``, and ``！？`` as NFKC makes them: ``!?``)."""
    ids = []
    for mark in ("。", "!", "?"):
        encoded = tokenizer.encode(mark).ids
        if len(encoded) == 1 and encoded[0] != tokenizer.unk_id:
            ids.append(int(encoded[0]))
    return ids


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task class to :data:`TASKS` under ``cls.name`` (a decorator)."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    TASKS[cls.name] = cls
    return cls


def resolve_train_data(config: TrainConfig) -> list[str]:
    """``config.train_data`` or the default: JaQuAD train (SQuAD files for QA, contexts for MLM)."""
    return config.train_data or [str(paths.default_data(paths.JAQUAD_TRAIN))]


def resolve_eval_data(config: TrainConfig) -> str:
    """``config.eval_data`` or the task's default: JSQuAD dev for QA, JaQuAD dev (held-out text) for MLM."""
    return config.eval_data or str(paths.default_data(TASKS[config.task].default_eval))


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


@register_task
class QATask(Task):
    """Extractive QA: windows → span logits → cross-entropy on start/end; scored with EM / F1."""

    name = "qa"
    model_class = QAModel
    default_eval = paths.JSQUAD_DEV

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_paths = resolve_train_data(config)
        self.eval_path = resolve_eval_data(config)
        self.train_examples, self.eval_examples = load_qa_examples(config, self.train_paths, self.eval_path)

    def prepare(self, tokenizer, show: bool) -> None:
        config, fconfig = self.config, FeatureConfig.from_config(self.config)
        self.tokenizer = tokenizer
        self.train_features = select_windows(
            build_features(self.train_examples, tokenizer, fconfig, show_progress=show, desc="train windows"),
            config.negative_fraction, config.seed,
        )
        self.eval_features = build_features(self.eval_examples, tokenizer, fconfig, show_progress=show,
                                            desc="eval windows")
        rng = np.random.default_rng([config.seed, 2])
        ids = sorted(rng.permutation(len(self.eval_examples))[: config.eval_subset].tolist())
        self.subset_examples = [self.eval_examples[i] for i in ids]
        self.subset_features = build_features(self.subset_examples, tokenizer, fconfig, show_progress=False)
        self.train_lengths = self.train_features.lengths
        self.collate = QACollator(self.train_features, tokenizer.pad_id, sep_id=tokenizer.sep_id,
                                  question_match=self.config.question_match)

    def summary(self) -> dict[str, Any]:
        return {"train_examples": len(self.train_examples), "train_windows": len(self.train_features),
                "eval_examples": len(self.eval_examples)}

    def token_types(self) -> int:
        return token_type_count(self.config.question_match) if self.config.segment_embeddings else 0

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.config.model.exit_layers:
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            return QAModel.loss(logits, batch["start_positions"], batch["end_positions"])
        # Early exits: each exit learns from the answers and (self_distill) from the last layer.
        logits, exits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], with_exits=True)
        answers = (batch["start_positions"], batch["end_positions"])
        alpha, temperature = self.config.self_distill, self.config.distill_temperature
        exit_losses = [(1 - alpha) * QAModel.loss(e, *answers)
                       + (alpha * QAModel.distillation_loss(e, logits, temperature) if alpha else 0.0)
                       for e in exits]
        return QAModel.loss(logits, *answers) + sum(exit_losses) / len(exit_losses)

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool, show: bool) -> dict[str, Any]:
        examples = self.eval_examples if full else self.subset_examples
        features = self.eval_features if full else self.subset_features
        output = self._predict(model, device, examples, features, show)
        return self._scores(examples, output.answers, output.seconds)

    def evaluate_sharded(self, model: nn.Module, device: torch.device, *, full: bool, show: bool,
                         ranks: Ranks) -> dict[str, Any]:
        """Each rank answers every ``world``-th question; the answers are gathered and every question
        is scored exactly once (a duplicate or a missing one is an error)."""
        if not ranks.distributed:
            return self.evaluate(model, device, full=full, show=show)
        examples = self.eval_examples if full else self.subset_examples
        features = self.eval_features if full else self.subset_features
        mine = shard_examples(len(examples), ranks.rank, ranks.world)
        output = self._predict(model, device, [examples[i] for i in mine], features.for_examples(mine), show)
        parts = ranks.gather((output.answers, output.seconds))
        answers = merge_answers([answers for answers, _ in parts], expected=len({e.id for e in examples}))
        return self._scores(examples, answers, max(seconds for _, seconds in parts))

    def _predict(self, model: nn.Module, device: torch.device, examples: list, features: QAFeatures, show: bool):
        return predict_answers(
            model, examples, features, pad_id=self.tokenizer.pad_id, sep_id=self.tokenizer.sep_id,
            batch_size=self.config.eval_batch_size,
            max_answer_tokens=self.config.max_answer_tokens, answer_boundaries=self.config.answer_boundaries,
            question_match=self.config.question_match, precision=self.config.precision, device=device,
            show_progress=show,
        )

    def _scores(self, examples: list, answers: dict[str, str], seconds: float) -> dict[str, Any]:
        scores = evaluate_predictions(examples, answers)
        return {"data": self.eval_path, "exact_match": scores["exact_match"], "f1": scores["f1"],
                "count": scores["count"], "missing": len(scores["missing"]),
                "questions_per_s": len(answers) / seconds if seconds > 0 else float("nan"), "predictions": answers}

    def describe(self, scores: dict[str, Any]) -> str:
        return f"EM {scores['exact_match']:.2f} F1 {scores['f1']:.2f} on {scores['count']} questions"


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


class _CorpusTask(Task):
    """A pretraining task on the contexts of SQuAD-format files (or text files): its documents."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_paths = resolve_train_data(config)
        self.eval_path = resolve_eval_data(config)
        self.train_docs = corpus_documents(self.train_paths)
        self.eval_docs = corpus_documents([self.eval_path], "--eval-data")


@register_task
class MLMTask(_CorpusTask):
    """Masked-LM pretraining; evaluation: masked-token accuracy, loss and pseudo-perplexity."""

    name = "mlm"
    model_class = MaskedLMModel
    default_eval = paths.JAQUAD_DEV

    def prepare(self, tokenizer, show: bool) -> None:
        config = self.config
        self.tokenizer = tokenizer
        self.train_sequences = pack_sequences(self.train_docs, tokenizer, config.max_length, show_progress=show,
                                              desc="train sequences")
        self.eval_sequences = pack_sequences(self.eval_docs, tokenizer, config.max_length, show_progress=show,
                                             desc="eval sequences")
        self.train_lengths = np.fromiter(map(len, self.train_sequences), dtype=np.int64)
        masker = MLMCollator(self.train_sequences, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id,
                             vocab_size=tokenizer.vocab_size, probability=config.mlm_probability)
        self.collate, self.ready = masker.pad, masker.mask  # masks drawn in the step (see Task.ready)
        self.vocab_order = None
        if config.loss_vocab_order == "frequency":
            from nami.losses import frequency_vocab_order

            counts = np.bincount(np.concatenate(self.train_sequences), minlength=tokenizer.vocab_size)
            self.vocab_order = frequency_vocab_order(torch.from_numpy(counts[: tokenizer.vocab_size]))

    def summary(self) -> dict[str, Any]:
        return {"train_documents": len(self.train_docs), "train_sequences": len(self.train_sequences),
                "eval_sequences": len(self.eval_sequences)}

    def build_model(self, model_config: ModelConfig) -> nn.Module:
        return MaskedLMModel(model_config, tie_embeddings=self.config.tie_embeddings)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from nami.losses import linear_cross_entropy

        targets = batch["targets"].reshape(-1)
        positions = (targets != -100).nonzero().squeeze(1)
        filtering = self.config.loss_filter != "none"
        if filtering:
            self.filter_stats = {}  # filled by the backward pass

        def head_loss(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # inside the model's forward
            return linear_cross_entropy(hidden, weight, targets[positions], impl=self.config.loss_impl,
                                        filter_policy=self.config.loss_filter,
                                        filter_threshold=self.config.loss_filter_threshold,
                                        vocab_order=None if self.vocab_order is None
                                        else self.vocab_order.to(weight.device),
                                        stats=self.filter_stats if filtering else None)

        return model(batch["input_ids"], batch["attention_mask"], positions, head_loss=head_loss)

    def train_metrics(self) -> dict[str, Any]:
        """Gradient-filter figures of the latest batch (logged with each training record)."""
        stats = getattr(self, "filter_stats", None)
        if not stats:
            return {}
        return {"filter_skipped_fraction": stats["skipped_fraction"],
                "filter_dropped_mass_mean": float(stats["dropped_mass"].mean()),
                "filter_dropped_mass_max": float(stats["dropped_mass"].max())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool, show: bool) -> dict[str, Any]:
        """Masked-token accuracy and loss with fixed (seeded) masks; pseudo-perplexity on the final eval."""
        was_training = model.training
        model.eval()
        sequences = self.eval_sequences if full else self.eval_sequences[: self.config.eval_subset]
        collate = MLMCollator(sequences, pad_id=self.tokenizer.pad_id, mask_id=self.tokenizer.mask_id,
                              vocab_size=self.tokenizer.vocab_size, probability=self.config.mlm_probability,
                              generator=torch.Generator().manual_seed(self.config.seed))
        lengths = np.fromiter(map(len, sequences), dtype=np.int64)
        total_nll, correct, count = 0.0, 0, 0
        for indices in tqdm(sorted_batches(lengths, self.config.eval_batch_size), desc="mlm eval", disable=not show):
            batch = collate(indices)
            targets = batch["targets"].reshape(-1).to(device)
            positions = (targets != -100).nonzero().squeeze(1)
            with autocast_context(device, self.config.precision):
                hidden = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), positions)
            logits = hidden.float() @ unwrap(model).output_weight.float().T  # evaluation only: (M, V)
            gold = targets[positions]
            total_nll += torch.nn.functional.cross_entropy(logits, gold, reduction="sum").item()
            correct += int((logits.argmax(-1) == gold).sum())
            count += len(gold)
        scores: dict[str, Any] = {"data": self.eval_path, "masked_accuracy": 100.0 * correct / count,
                                  "masked_loss": total_nll / count, "masked_tokens": count}
        if full:
            scores.update(self.pseudo_perplexity(model, device, show))
        model.train(was_training)
        return scores

    def pseudo_perplexity(self, model: nn.Module, device: torch.device, show: bool) -> dict[str, Any]:
        """exp(mean NLL) of each token when it alone is masked (Salazar et al. 2020)."""
        nll, tokens = 0.0, 0
        mask_id = self.tokenizer.mask_id
        weight = unwrap(model).output_weight.float()
        for seq in tqdm(self.eval_sequences[: self.config.pppl_sequences], desc="pseudo-perplexity",
                        disable=not show):
            ids = torch.from_numpy(seq).to(device)
            # One copy of the sequence per inner token ([CLS] / [SEP] excluded), that token masked;
            # eval_batch_size copies at a time keep memory at an ordinary evaluation batch's.
            for chunk in torch.arange(1, len(seq) - 1, device=device).split(self.config.eval_batch_size):
                copies = ids.repeat(len(chunk), 1)
                copies[torch.arange(len(chunk)), chunk] = mask_id
                positions = torch.arange(len(chunk), device=device) * len(seq) + chunk
                with autocast_context(device, self.config.precision):
                    hidden = model(copies, torch.ones_like(copies, dtype=torch.bool), positions)
                logits = hidden.float() @ weight.T
                nll += torch.nn.functional.cross_entropy(logits, ids[chunk], reduction="sum").item()
                tokens += len(chunk)
        return {"pseudo_perplexity": math.exp(nll / tokens), "pppl_sequences": min(len(self.eval_sequences),
                                                                                     self.config.pppl_sequences)}

    def describe(self, scores: dict[str, Any]) -> str:
        text = f"masked acc {scores['masked_accuracy']:.2f}% loss {scores['masked_loss']:.3f}"
        return text + (f" PPPL {scores['pseudo_perplexity']:.1f}" if "pseudo_perplexity" in scores else "")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / Accelerate wrapper (``.module``), or the model itself."""
    return model.module if hasattr(model, "module") else model


@register_task
class CLMTask(_CorpusTask):
    """Causal-LM pretraining: next-token loss at every position; evaluation: held-out perplexity.

    The loss multiplies hidden states with the vocabulary matrix inside
    :func:`nami.losses.linear_cross_entropy` (``loss_impl``), so the ``(B·S, V)`` logits — largest
    here, where every position carries a target — are never materialised.
    """

    name = "clm"
    model_class = CausalLMModel
    default_eval = paths.JAQUAD_DEV

    def model_config(self, tokenizer) -> ModelConfig:
        return dataclasses.replace(super().model_config(tokenizer), causal=True)

    def prepare(self, tokenizer, show: bool) -> None:
        config = self.config
        self.tokenizer = tokenizer
        self.train_sequences = pack_causal_sequences(self.train_docs, tokenizer, config.max_length,
                                                     show_progress=show, desc="train sequences")
        self.eval_sequences = pack_causal_sequences(self.eval_docs, tokenizer, config.max_length,
                                                    show_progress=show, desc="eval sequences")
        self.train_lengths = np.fromiter(map(len, self.train_sequences), dtype=np.int64)
        self.collate = CLMCollator(self.train_sequences, pad_id=tokenizer.pad_id)

    def summary(self) -> dict[str, Any]:
        return {"train_documents": len(self.train_docs), "train_sequences": len(self.train_sequences),
                "eval_sequences": len(self.eval_sequences)}

    def _nll(self, model: nn.Module, batch: dict[str, torch.Tensor], reduction: str) -> tuple[torch.Tensor, int]:
        from nami.losses import linear_cross_entropy

        targets = batch["targets"].reshape(-1)
        keep = (targets != -100).nonzero().squeeze(1)

        def head_loss(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # inside the model's forward
            return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1])[keep], weight, targets[keep],
                                        impl=self.config.loss_impl, reduction=reduction)

        return model(batch["input_ids"], batch["attention_mask"], head_loss=head_loss), len(keep)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._nll(model, batch, "mean")[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool, show: bool) -> dict[str, Any]:
        """Perplexity ``exp(mean NLL)`` of the held-out sequences' next tokens."""
        was_training = model.training
        model.eval()
        sequences = self.eval_sequences if full else self.eval_sequences[: self.config.eval_subset]
        collate = CLMCollator(sequences, pad_id=self.tokenizer.pad_id)
        lengths = np.fromiter(map(len, sequences), dtype=np.int64)
        total, count = 0.0, 0
        for indices in tqdm(sorted_batches(lengths, self.config.eval_batch_size), desc="clm eval", disable=not show):
            batch = {k: v.to(device) for k, v in collate(indices).items()}
            with autocast_context(device, self.config.precision):
                nll, n = self._nll(model, batch, "sum")
            total += float(nll)
            count += n
        model.train(was_training)
        loss = total / count
        return {"data": self.eval_path, "loss": loss, "perplexity": math.exp(loss), "tokens": count,
                "sequences": len(sequences)}

    def describe(self, scores: dict[str, Any]) -> str:
        return f"held-out loss {scores['loss']:.3f} perplexity {scores['perplexity']:.1f} ({scores['tokens']:,} tokens)"


@register_task
class GenerativeQATask(CLMTask):
    """Generative QA: ``[CLS] context [SEP] question [SEP]`` → the answer's tokens + ``[SEP]``, loss on
    those only; scored with the JSQuAD metric after mapping each generated answer back to the
    context's original characters (:func:`nami.data.generative.locate_answer`; the share found there
    is reported as ``located``, the rest are the detokenised — normalised — text)."""

    name = "generative-qa"
    default_eval = paths.JSQUAD_DEV

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_paths = resolve_train_data(config)
        self.eval_path = resolve_eval_data(config)
        self.train_examples, self.eval_examples = load_qa_examples(config, self.train_paths, self.eval_path)

    def prepare(self, tokenizer, show: bool) -> None:
        config = self.config
        self.tokenizer = tokenizer
        options = dict(max_question_tokens=config.max_question_tokens, max_answer_tokens=config.max_answer_tokens)
        self.train_items = build_generative(self.train_examples, tokenizer, config.max_length, training=True,
                                            **options)
        self.eval_items = build_generative(self.eval_examples, tokenizer, config.max_length, training=False, **options)
        rng = np.random.default_rng([config.seed, 2])
        self.subset = sorted(rng.permutation(len(self.eval_examples))[: config.eval_subset].tolist())
        self.train_lengths = np.fromiter((len(e.prompt) + len(e.target) for e in self.train_items), dtype=np.int64)
        self.collate = GenerativeCollator(self.train_items, pad_id=tokenizer.pad_id)

    def summary(self) -> dict[str, Any]:
        return {"train_examples": len(self.train_items), "eval_examples": len(self.eval_examples)}

    def generate_answers(self, model: nn.Module, indices: list[int], device: torch.device,
                         show: bool) -> tuple[dict[str, str], int]:
        return generate_answers(model, self.tokenizer, [self.eval_examples[i] for i in indices],
                                [self.eval_items[i] for i in indices], max_answer_tokens=self.config.max_answer_tokens,
                                batch_size=self.config.eval_batch_size, precision=self.config.precision,
                                device=device, show=show, num_beams=self.config.num_beams)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool, show: bool) -> dict[str, Any]:
        import time

        indices = list(range(len(self.eval_examples))) if full else self.subset
        started = time.perf_counter()
        answers, located = self.generate_answers(model, indices, device, show)
        seconds = time.perf_counter() - started
        examples = [self.eval_examples[i] for i in indices]
        scores = evaluate_predictions(examples, answers)
        return {"data": self.eval_path, "exact_match": scores["exact_match"], "f1": scores["f1"],
                "count": scores["count"], "missing": len(scores["missing"]), "located": located / max(len(indices), 1),
                "questions_per_s": len(indices) / seconds if seconds else float("nan"), "predictions": answers}

    def describe(self, scores: dict[str, Any]) -> str:
        return (f"EM {scores['exact_match']:.2f} F1 {scores['f1']:.2f} on {scores['count']} questions "
                f"({100 * scores['located']:.1f} % found in their context)")


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, examples: list, items: list, *, max_answer_tokens: int,
                     batch_size: int, precision: str, device: torch.device | str = "cpu",
                     show: bool = False, num_beams: int = 1) -> tuple[dict[str, str], int]:
    """Generated answers ``{id: text}`` of ``examples`` (their prompts ``items``; greedy in batches by
    length, or beam search one example at a time) and how many were found verbatim in their context
    (the rest: detokenised text)."""
    from nami.models.generation import beam_search, generate

    device = torch.device(device)
    answers: dict[str, str] = {}
    located = 0
    lengths = np.array([len(item.prompt) for item in items])
    for batch in tqdm(sorted_batches(lengths, batch_size), desc="generate answers", disable=not show):
        with autocast_context(device, precision):
            if num_beams > 1:
                outputs = [beam_search(unwrap(model), items[b].prompt, num_beams=num_beams,
                                       max_new_tokens=max_answer_tokens + 1, eos_id=tokenizer.sep_id) for b in batch]
            else:
                outputs, _ = generate(unwrap(model), [items[b].prompt for b in batch],
                                      max_new_tokens=max_answer_tokens + 1, eos_id=tokenizer.sep_id,
                                      pad_id=tokenizer.pad_id)
        for b, ids in zip(batch, outputs):
            ids = ids[:-1] if ids and ids[-1] == tokenizer.sep_id else ids
            text, found = locate_answer(ids, items[b], examples[b].context)
            located += found
            answers[examples[b].id] = text if found else tokenizer.decode(ids)
    return answers, located
