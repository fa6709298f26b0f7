"""Run directories: what a training run writes, how it is checked, and how it is loaded back.

Layout of ``runs/<date>-<arch>-<preset>-<hash>/``::

    config.json            {"train": TrainConfig, "model": ModelConfig, "tokenizer_fingerprint": ...}
    tokenizer/             the exact tokenizer the model was trained with
    model.safetensors      latest weights (float32): final at the end, refreshed at each periodic eval
    manifest.json          sha256 of the files above; verified by every load
    metrics.jsonl          one JSON object per line (start / train / eval / resume / final_eval)
    final_eval.json        the final evaluation on the full evaluation set
    predictions.json       {question_id: answer} of that final evaluation
    checkpoints/step-N/    resumable state: model.safetensors, optimizer.pt (optimizer state and
                           torch RNG: tensors and plain containers only), state.json (step,
                           data position, Python/NumPy RNG), manifest.json

Safety: every file is written to a temporary name and renamed; a checkpoint directory is built
under a temporary name and renamed when complete, so a crash (even SIGKILL) never leaves a
half-written file under its real name. Loading verifies the sha256 manifest and names the file
that does not match. Nothing is unpickled: weights are safetensors, configs and states JSON,
and ``optimizer.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from nami.models import ModelConfig, QAModel
from nami.models.mlm import MaskedLMModel
from nami.text import JapaneseTokenizer
from nami.training.config import TrainConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
PREDICTIONS_FILE = "predictions.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A run directory is missing files, is corrupt, or does not match what is asked of it."""


# --- files ---------------------------------------------------------------------------------------


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
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, names: list[str]) -> None:
    """Record the sha256 of ``names`` (paths relative to ``directory``) in its manifest."""
    write_json(directory / MANIFEST_FILE, {name: sha256_file(directory / name) for name in sorted(names)})


def verify_manifest(directory: Path) -> None:
    """Raise :class:`CheckpointError` naming the first missing or modified file."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing (cannot verify the files of {directory})")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: not a manifest")
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {manifest_path})")
        if sha256_file(path) != expected:
            raise CheckpointError(f"{path}: checksum mismatch (corrupt or modified file)")


def _root_files(run_dir: Path) -> list[str]:
    names = [CONFIG_FILE] + [f"{TOKENIZER_DIR}/{p.name}" for p in sorted((run_dir / TOKENIZER_DIR).iterdir())]
    return names + ([WEIGHTS_FILE] if (run_dir / WEIGHTS_FILE).is_file() else [])


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}


# --- run directory -------------------------------------------------------------------------------


def save_run_config(run_dir: Path, train: TrainConfig, model: ModelConfig, tokenizer: JapaneseTokenizer) -> None:
    tokenizer.save(run_dir / TOKENIZER_DIR)
    write_json(
        run_dir / CONFIG_FILE,
        {"train": train.to_dict(), "model": model.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint},
    )
    write_manifest(run_dir, _root_files(run_dir))


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    weights = _weights(model)
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp)))
    write_manifest(run_dir, _root_files(run_dir))


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, ModelConfig, str]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a nami run directory (no {CONFIG_FILE})")
    data = read_json(path)
    try:
        train = dict(data["train"])
        # Runs saved before answer_boundaries existed decoded answers on token boundaries: keep
        # that, so their recorded F1 is still what `nami predict` reproduces.
        train.setdefault("answer_boundaries", "token")
        return TrainConfig.from_dict(train), ModelConfig.from_dict(data["model"]), data["tokenizer_fingerprint"]
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


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: cannot read weights ({err})") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, JapaneseTokenizer, TrainConfig]:
    """The trained model (eval mode: a QAModel, or a MaskedLMModel for pretraining runs), its
    tokenizer and its training config, all verified."""
    run_dir = Path(run_dir)
    train_config, model_config, fingerprint = read_run_config(run_dir)
    verify_manifest(run_dir)
    tokenizer = load_tokenizer_checked(run_dir, model_config, fingerprint)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (the run has not saved weights yet)")
    if train_config.task == "qa":
        model: torch.nn.Module = QAModel(model_config)
    else:
        model = MaskedLMModel(model_config, tie_embeddings=train_config.tie_embeddings)
    load_weights_into(model, weights)
    return model.to(device).eval(), tokenizer, train_config


# --- resumable checkpoints -----------------------------------------------------------------------


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves excluded)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a complete resumable checkpoint for ``step`` and keep only the newest ``keep``."""
    root = run_dir / CHECKPOINTS_DIR
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_weights(model), str(tmp / WEIGHTS_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", "utf-8")
    write_manifest(tmp, [WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE])
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor, dict[str, Any]]:
    """(weights, optimizer state, torch RNG state, state.json) of a verified checkpoint."""
    verify_manifest(directory)
    weights_path = directory / WEIGHTS_FILE
    try:
        weights = load_file(str(weights_path))
    except Exception as err:
        raise CheckpointError(f"{weights_path}: cannot read weights ({err})") from err
    try:
        blob = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{directory / OPTIMIZER_FILE}: cannot read optimizer state ({err})") from err
    return weights, blob["optimizer"], blob["torch_rng"], read_json(directory / STATE_FILE)
