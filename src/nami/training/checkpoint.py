"""Run directories: what a training run writes and how a trained run is loaded back.

Layout of ``runs/<date>-<arch>-<preset>-<hash>/``::

    config.json          {"train": TrainConfig, "model": ModelConfig, "tokenizer_fingerprint": ...}
    tokenizer/           the exact tokenizer the model was trained with
    model.safetensors    weights (float32)
    training_state.pt    optimizer / progress / RNG state (tensors and plain containers only;
                         loaded with ``torch.load(weights_only=True)``: no arbitrary pickle)
    metrics.jsonl        one JSON object per log line (train / eval / final_eval)
    final_eval.json      the final evaluation on the full evaluation set
    predictions.json     {question_id: answer} of that final evaluation

Files are written to a temporary name and renamed, so a crash never leaves a half-written file
under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from nami.models import ModelConfig, QAModel
from nami.text import JapaneseTokenizer
from nami.training.config import TrainConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
PREDICTIONS_FILE = "predictions.json"
TOKENIZER_DIR = "tokenizer"


class CheckpointError(RuntimeError):
    """A run directory is missing files or does not match what is asked of it."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def save_run_config(run_dir: Path, train: TrainConfig, model: ModelConfig, tokenizer: JapaneseTokenizer) -> None:
    tokenizer.save(run_dir / TOKENIZER_DIR)
    write_json(
        run_dir / CONFIG_FILE,
        {"train": train.to_dict(), "model": model.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint},
    )


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))


def save_training_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_training_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state in this run directory")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, ModelConfig, str]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a nami run directory (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text("utf-8"))
        return TrainConfig.from_dict(data["train"]), ModelConfig.from_dict(data["model"]), data["tokenizer_fingerprint"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable run config ({err})") from err


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[QAModel, JapaneseTokenizer, TrainConfig]:
    """The trained model (eval mode), its tokenizer and its training config."""
    run_dir = Path(run_dir)
    train_config, model_config, fingerprint = read_run_config(run_dir)
    tokenizer = JapaneseTokenizer.load(run_dir / TOKENIZER_DIR)
    if tokenizer.fingerprint != fingerprint:
        raise CheckpointError(
            f"{run_dir / TOKENIZER_DIR}: tokenizer fingerprint {tokenizer.fingerprint} does not match the one "
            f"recorded in {CONFIG_FILE} ({fingerprint})"
        )
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (the run has not saved weights yet)")
    model = QAModel(model_config)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{weights}: cannot read weights ({err})") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), tokenizer, train_config
