"""QA training on top of ``accelerate.Accelerator``.

Accelerate owns device placement, mixed precision (bf16 autocast on CPU and CUDA) and gradient
accumulation, so multi-process and DeepSpeed training can be switched on later through its
launcher without touching this loop.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nami import paths
from nami.data.batching import BucketBatchSampler, QACollator, WindowDataset
from nami.data.features import FeatureConfig, QAFeatures, build_features
from nami.data.squad import QAExample, load_squad
from nami.evaluation.metric import evaluate_predictions
from nami.evaluation.predict import predict_answers
from nami.models import QAModel, count_parameters, preset_config
from nami.text import JapaneseTokenizer, default_tokenizer
from nami.training import checkpoint as ckpt
from nami.training.config import TrainConfig


@dataclass
class TrainResult:
    run_dir: Path
    final_eval: dict[str, Any]
    params: dict[str, int]
    train_tokens_per_s: float
    steps: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier at training progress in [0, 1]: linear warmup, then decay to 0."""
    if progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * rest)) if schedule == "cosine" else 1.0 - rest


def resolve_train_data(config: TrainConfig) -> list[str]:
    return config.train_data or [str(paths.default_data(paths.JAQUAD_TRAIN))]


def resolve_eval_data(config: TrainConfig) -> str:
    return config.eval_data or str(paths.default_data(paths.JSQUAD_DEV))


def load_tokenizer(config: TrainConfig, quiet: bool = False) -> JapaneseTokenizer:
    if config.tokenizer:
        return JapaneseTokenizer.load(config.tokenizer)
    return default_tokenizer(config.vocab_size)


def feature_config(config: TrainConfig) -> FeatureConfig:
    return FeatureConfig(config.max_length, config.doc_stride, config.max_question_tokens)


def new_run_dir(config: TrainConfig) -> Path:
    name = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.arch}-{config.preset}-{config.short_hash()}"
    run_dir = Path(config.runs_dir) / name
    if (run_dir / ckpt.CONFIG_FILE).exists():
        raise FileExistsError(f"run directory {run_dir} already holds a run; choose another --run-name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def select_windows(features: QAFeatures, negative_fraction: float, seed: int) -> QAFeatures:
    """All windows that contain the answer plus a seeded ``negative_fraction`` of the others."""
    if negative_fraction >= 1.0:
        return features
    rng = np.random.default_rng([seed, 1])
    keep = features.has_answer | (rng.random(len(features)) < negative_fraction)
    return features.subset(np.flatnonzero(keep).tolist())


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, LayerNorms or embedding tables)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_matrix = isinstance(module, torch.nn.Linear) and name == "weight"
            (decay if is_matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MetricsLog:
    """Append-only JSONL log, flushed per line so a crash keeps everything logged so far."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def evaluate(
    model: torch.nn.Module,
    examples: list[QAExample],
    features: QAFeatures,
    tokenizer: JapaneseTokenizer,
    config: TrainConfig,
    device: torch.device,
    show_progress: bool,
) -> tuple[dict[str, Any], dict[str, str]]:
    """EM / F1 (JSQuAD metric) and the predicted answers."""
    output = predict_answers(
        model,
        examples,
        features,
        pad_id=tokenizer.pad_id,
        batch_size=config.eval_batch_size,
        max_answer_tokens=config.max_answer_tokens,
        precision=config.precision,
        device=device,
        show_progress=show_progress,
    )
    scores = evaluate_predictions(examples, output.answers)
    scores["questions_per_s"] = output.questions_per_second
    return scores, output.answers


def train(config: TrainConfig, *, quiet: bool = False) -> TrainResult:
    """Train a QA model as ``config`` says; returns where the run was written and its final scores."""
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    show = not quiet
    # Accelerate keeps a process-wide singleton; drop its mixed-precision settings so that a second
    # run in the same process (notebooks, tests) can choose another precision. The process-group
    # state (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        gradient_accumulation_steps=config.grad_accum,
    )
    device = accelerator.device

    # Validate the data before anything slow happens (the default tokenizer may need training).
    train_paths, eval_path = resolve_train_data(config), resolve_eval_data(config)
    train_examples = load_squad(train_paths, on_bad_record=config.on_bad_record)
    eval_examples = load_squad(eval_path, on_bad_record=config.on_bad_record)
    tokenizer = load_tokenizer(config)
    fconfig = feature_config(config)
    train_features = select_windows(
        build_features(train_examples, tokenizer, fconfig, show_progress=show, desc="train windows"),
        config.negative_fraction,
        config.seed,
    )
    eval_features = build_features(eval_examples, tokenizer, fconfig, show_progress=show, desc="eval windows")
    subset_rng = np.random.default_rng([config.seed, 2])
    subset_ids = sorted(subset_rng.permutation(len(eval_examples))[: config.eval_subset].tolist())
    subset_examples = [eval_examples[i] for i in subset_ids]
    subset_features = build_features(subset_examples, tokenizer, fconfig, show_progress=False)

    model_config = preset_config(
        config.preset,
        config.arch,
        vocab_size=tokenizer.vocab_size,
        max_len=config.max_length,
        wave_mode=config.wave_mode,
        dropout=config.dropout,
        pad_id=tokenizer.pad_id,
    )
    model = QAModel(model_config)
    params = count_parameters(model)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)

    sampler = BucketBatchSampler(train_features.lengths, config.batch_size, seed=config.seed)
    loader = DataLoader(
        WindowDataset(train_features), batch_sampler=sampler, collate_fn=QACollator(train_features, tokenizer.pad_id)
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    run_dir = new_run_dir(config)
    ckpt.save_run_config(run_dir, config, model_config, tokenizer)
    log = MetricsLog(run_dir / ckpt.METRICS_FILE)
    optimizer_steps_per_epoch = max(1, len(sampler) // config.grad_accum)
    total_steps = config.max_steps or max(1, int(config.epochs * optimizer_steps_per_epoch))
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    log.write(
        {
            "type": "start",
            "run_dir": str(run_dir),
            "params": params,
            "train_examples": len(train_examples),
            "train_windows": len(train_features),
            "eval_examples": len(eval_examples),
            "total_steps": total_steps,
            "budget_minutes": config.max_minutes,
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
    )
    if show:
        print(
            f"[nami] {config.arch} ({params['total']:,} params) on {len(train_features):,} windows from "
            f"{len(train_examples):,} questions -> {run_dir}",
            flush=True,
        )

    step, epoch, train_seconds, tokens_seen = 0, 0, 0.0, 0
    window_loss, window_tokens, window_seconds, window_batches = 0.0, 0, 0.0, 0
    next_eval = config.eval_every_minutes * 60 if config.eval_every_minutes else math.inf
    started_wall = time.perf_counter()

    def progress() -> float:
        p = step / total_steps
        return max(p, train_seconds / budget_s) if budget_s else p

    bar = tqdm(total=total_steps if not budget_s else None, disable=not show, desc=f"train {config.arch}", unit="step")
    finished = False
    model.train()
    while not finished:
        sampler.set_epoch(epoch)
        for batch in loader:
            tick = time.perf_counter()
            with accelerator.accumulate(model):
                logits = model(batch["input_ids"], batch["attention_mask"])
                loss = QAModel.loss(logits, batch["start_positions"], batch["end_positions"])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    factor = lr_factor(progress(), config.warmup, config.schedule)
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * factor
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - tick
            train_seconds += elapsed
            n_tokens = int(batch["attention_mask"].sum())
            tokens_seen += n_tokens
            window_loss += loss.item()
            window_tokens += n_tokens
            window_seconds += elapsed
            window_batches += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % config.log_every == 0:
                record = {
                    "type": "train",
                    "step": step,
                    "epoch": epoch,
                    "train_seconds": round(train_seconds, 3),
                    "wall_seconds": round(time.perf_counter() - started_wall, 3),
                    "loss": window_loss / window_batches,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": window_tokens / window_seconds,
                }
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window_loss, window_tokens, window_seconds, window_batches = 0.0, 0, 0.0, 0
            if progress() >= 1.0:
                finished = True
                break
            if train_seconds >= next_eval:
                next_eval += config.eval_every_minutes * 60
                scores, _ = evaluate(model, subset_examples, subset_features, tokenizer, config, device, False)
                log.write(
                    {
                        "type": "eval",
                        "step": step,
                        "train_seconds": round(train_seconds, 3),
                        "wall_seconds": round(time.perf_counter() - started_wall, 3),
                        "subset": len(subset_examples),
                        "exact_match": scores["exact_match"],
                        "f1": scores["f1"],
                    }
                )
                if show:
                    tqdm.write(f"[nami] step {step}: subset EM {scores['exact_match']:.2f} F1 {scores['f1']:.2f}")
                ckpt.save_weights(run_dir, accelerator.unwrap_model(model))
        else:
            epoch += 1
    bar.close()

    unwrapped = accelerator.unwrap_model(model)
    ckpt.save_weights(run_dir, unwrapped)
    ckpt.save_training_state(
        run_dir,
        {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "train_seconds": train_seconds,
            "torch_rng": torch.get_rng_state(),
        },
    )
    train_tokens_per_s = tokens_seen / train_seconds if train_seconds else float("nan")
    scores, answers = evaluate(unwrapped, eval_examples, eval_features, tokenizer, config, device, show)
    final = {
        "data": eval_path,
        "exact_match": scores["exact_match"],
        "f1": scores["f1"],
        "count": scores["count"],
        "missing": len(scores["missing"]),
        "questions_per_s": scores["questions_per_s"],
        "threads": torch.get_num_threads(),
        "step": step,
        "train_seconds": train_seconds,
        "train_tokens_per_s": train_tokens_per_s,
        "params": params,
    }
    ckpt.write_json(run_dir / ckpt.PREDICTIONS_FILE, answers)
    ckpt.write_json(run_dir / ckpt.FINAL_EVAL_FILE, final)
    log.write({"type": "final_eval", "wall_seconds": round(time.perf_counter() - started_wall, 3), **final})
    log.close()
    if show:
        print(
            f"[nami] {config.arch}: EM {final['exact_match']:.2f} F1 {final['f1']:.2f} on {final['count']} questions "
            f"({train_tokens_per_s:,.0f} train tok/s) -> {run_dir}",
            flush=True,
        )
    return TrainResult(run_dir, final, params, train_tokens_per_s, step)
