"""Reading a run directory back: its config (migrating older layouts), its tokenizer and its model.

Below both training (which resumes runs) and inference (:mod:`nami.pipelines`, which answers with
them), so that inference imports nothing from :mod:`nami.training`. The model class comes from the
run's task: built-in tasks name it in :mod:`nami.models.pretrained` without importing their training
code; a task added by a plugin is asked for its ``model_class``. The directory's layout is described
in :mod:`nami.training.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nami.io import CheckpointError, read_json, verify_manifest
from nami.models import ModelConfig
from nami.models.pretrained import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, root_files
from nami.runs.config import TrainConfig
from nami.runs.tasks import model_class
from nami.text import JapaneseTokenizer

METRICS_FILE = "metrics.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
PREDICTIONS_FILE = "predictions.json"


def inputs_of_model(model: dict[str, Any]) -> dict[str, Any]:
    """Input settings for a directory that records none (``save_pretrained`` of a model built by hand):
    windows no longer than the model's positions, token types as its segment embeddings say, and
    today's default answer boundaries."""
    defaults = TrainConfig()
    max_length = min(defaults.max_length, int(model.get("max_len") or defaults.max_length))
    types = int(model.get("type_vocab_size") or 0)
    return {"max_length": max_length, "doc_stride": min(defaults.doc_stride, max_length // 2),
            "max_question_tokens": min(defaults.max_question_tokens, max_length // 4),
            "segment_embeddings": types > 0, "question_match": types >= 3,
            "answer_boundaries": defaults.answer_boundaries}


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, ModelConfig, str]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a nami run directory (no {CONFIG_FILE})")
    data = read_json(path)
    try:
        train = dict(data["train"])
        if set(train) == {"task"}:  # save_pretrained without training settings: inputs the model can take
            train.update(inputs_of_model(data["model"]))
        # Runs saved before answer_boundaries existed decoded answers on token boundaries: keep
        # that, so their recorded F1 is still what `nami predict` reproduces.
        train.setdefault("answer_boundaries", "token")
        # Runs saved before TrainConfig.model existed kept the model's fields flat in "train": the
        # saved model config is the base, the flat fields (the same values) apply on top.
        model = dict(data["model"])
        model.setdefault("name", train.get("preset"))  # saved before ModelConfig.name: the run's preset
        train.setdefault("model", model)
        return TrainConfig.from_dict(train), ModelConfig.from_dict(model), data["tokenizer_fingerprint"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid run config ({err})") from err


def load_tokenizer_checked(run_dir: Path, model_config: ModelConfig, fingerprint: str) -> JapaneseTokenizer:
    tokenizer = JapaneseTokenizer.load(run_dir / TOKENIZER_DIR)
    if tokenizer.fingerprint != fingerprint:
        raise CheckpointError(
            f"{run_dir / TOKENIZER_DIR}: tokenizer fingerprint {tokenizer.fingerprint} does not match the one "
            f"recorded in {CONFIG_FILE} ({fingerprint})"
        )
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{run_dir / TOKENIZER_DIR}: vocabulary of {tokenizer.vocab_size} does not match the model's "
            f"vocab_size {model_config.vocab_size}"
        )
    return tokenizer


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, JapaneseTokenizer, TrainConfig]:
    """The trained model (eval mode; the model class of the run's task: a QAModel, a MaskedLMModel,
    ...), its tokenizer and its training config, all verified."""
    run_dir = Path(run_dir)
    train_config, model_config, fingerprint = read_run_config(run_dir)
    verify_manifest(run_dir, required=root_files(run_dir))  # every file loading reads must be vouched for
    tokenizer = load_tokenizer_checked(run_dir, model_config, fingerprint)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (the run has not saved weights yet)")
    # The registry names the class (a registered task may build on a built-in model class).
    model = model_class(train_config.task).from_pretrained(run_dir, device=device, verify=False, check_task=False)
    return model, tokenizer, train_config
