"""Extractive QA on SQuAD-format data, scored with the official JSQuAD EM / char-F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from nami.data.batching import QACollator, token_type_count
from nami.data.features import FeatureConfig, QAFeatures, build_features
from nami.evaluation.metric import evaluate_predictions
from nami.evaluation.predict import predict_answers
from nami.models import QAModel
from nami.runs.tasks import QA, register_task
from nami.training.distributed import Ranks, merge_answers, shard_examples
from nami.training.tasks.base import QADataMixin, Task, select_windows


@register_task
class QATask(Task):
    """Extractive QA: windows → span logits → cross-entropy on start/end; scored with EM / F1."""

    name = QA
    model_class = QAModel

    __init__ = QADataMixin.__init__  # validated QA examples (shared with the other QA task)

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
        return f"EM {scores['exact_match']:.2f} F1 {scores['f1']:.2f} on {scores['count']:,} questions"
