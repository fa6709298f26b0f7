"""Masked-LM pretraining, the loss through Cut Cross-Entropy (no full-vocabulary logits in training)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nami.data.batching import sorted_batches
from nami.data.mlm import MLMCollator, pack_sequences
from nami.evaluation.predict import autocast_context
from nami.models import MaskedLMModel, ModelConfig
from nami.runs.tasks import MLM, register_task
from nami.training.tasks.base import _CorpusTask, unwrap


@register_task
class MLMTask(_CorpusTask):
    """Masked-LM pretraining; evaluation: masked-token accuracy, loss and pseudo-perplexity."""

    name = MLM
    model_class = MaskedLMModel

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
