"""Causal-LM pretraining of a decoder: next-token loss at every position, held-out perplexity."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nami.data.batching import sorted_batches
from nami.data.clm import CLMCollator, pack_causal_sequences
from nami.evaluation.predict import autocast_context
from nami.models import CausalLMModel, ModelConfig
from nami.runs.tasks import CLM, register_task
from nami.training.tasks.base import _CorpusTask


@register_task
class CLMTask(_CorpusTask):
    """Causal-LM pretraining: next-token loss at every position; evaluation: held-out perplexity.

    The loss multiplies hidden states with the vocabulary matrix inside
    :func:`nami.losses.linear_cross_entropy` (``loss_impl``), so the ``(B·S, V)`` logits — largest
    here, where every position carries a target — are never materialised.
    """

    name = CLM
    model_class = CausalLMModel

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
