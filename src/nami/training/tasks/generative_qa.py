"""Generative QA with a decoder: the answer is written token by token, then mapped back to the context."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from nami.data.generative import GenerativeCollator, build_generative
from nami.evaluation.generative import generate_answers
from nami.evaluation.metric import evaluate_predictions
from nami.runs.tasks import GENERATIVE_QA, register_task
from nami.training.tasks.base import QADataMixin
from nami.training.tasks.clm import CLMTask


@register_task
class GenerativeQATask(CLMTask):
    """Generative QA: ``[CLS] context [SEP] question [SEP]`` → the answer's tokens + ``[SEP]``, loss on
    those only; scored with the JSQuAD metric after mapping each generated answer back to the
    context's original characters (:func:`nami.data.generative.locate_answer`; the share found there
    is reported as ``located``, the rest are the detokenised — normalised — text)."""

    name = GENERATIVE_QA

    __init__ = QADataMixin.__init__  # validated QA examples (shared with the other QA task)

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
                                device=device, show=show, num_beams=self.config.num_beams,
                                constrain=self.config.constrain)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool, show: bool) -> dict[str, Any]:
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
