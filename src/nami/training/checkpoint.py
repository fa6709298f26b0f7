"""Run directories: what a training run writes and how it is checked (reading one back: :mod:`nami.runs.load`).

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

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nami.io import (  # noqa: F401  (re-exported: the run-directory API in one place)
    MANIFEST_FILE,
    RUN_LOCK_FILE,
    CheckpointError,
    atomic_write,
    describe_os_error,
    read_json,
    sha256_file,
    verify_manifest,
    write_json,
    write_manifest,
)
from nami.models import ModelConfig
from nami.models.pretrained import (  # noqa: F401
    CONFIG_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    load_weights_into,
    read_weights,
    root_files,
    save_weights_file,
    weights_of,
)
from nami.runs.config import TrainConfig
from nami.runs.load import (  # noqa: F401  (re-exported: reading a run lives below training and inference)
    FINAL_EVAL_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    inputs_of_model,
    load_run,
    load_tokenizer_checked,
    read_run_config,
)
from nami.text import JapaneseTokenizer

CHECKPOINTS_DIR = "checkpoints"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
LOCK_FILE = RUN_LOCK_FILE  # ".lock"


# --- run directory -------------------------------------------------------------------------------


def save_run_config(run_dir: Path, train: TrainConfig, model: ModelConfig, tokenizer: JapaneseTokenizer,
                    data_fingerprint: str | None = None) -> None:
    tokenizer.save(run_dir / TOKENIZER_DIR)
    write_json(
        run_dir / CONFIG_FILE,
        {"train": train.to_dict(), "model": model.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint,
         "data_fingerprint": data_fingerprint},
    )
    write_manifest(run_dir, root_files(run_dir))


def recorded_data_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the training data a run started with (None: runs saved before it was kept)."""
    saved = read_json(Path(run_dir) / CONFIG_FILE)
    return saved.get("data_fingerprint") if isinstance(saved, dict) else None


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    """The run's ``model.safetensors`` (atomically) and a refreshed manifest."""
    save_weights_file(run_dir, model)


# What a run's training writes: none of it may be a symlink (a run directory from elsewhere could lead
# nami's checkpoints into another directory, and then delete its step-* folders there).
WRITTEN_PATHS = (LOCK_FILE, CHECKPOINTS_DIR, METRICS_FILE, FINAL_EVAL_FILE, PREDICTIONS_FILE, WEIGHTS_FILE,
                 MANIFEST_FILE, CONFIG_FILE, "tensorboard")


def refuse_symlinks(run_dir: Path) -> None:
    """Raise :class:`CheckpointError` if a path training writes inside ``run_dir`` is a symlink."""
    for name in WRITTEN_PATHS:
        if (run_dir / name).is_symlink():
            raise CheckpointError(f"{run_dir / name}: a symlink; nami writes there and does not follow links "
                                  "out of a run directory (replace it with the file or folder itself)")
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            if entry.is_symlink():
                raise CheckpointError(f"{entry}: a symlink; nami replaces and deletes checkpoints there and does "
                                      "not follow links out of a run directory")


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` while a process trains the run (released on exit, even
    after SIGKILL, by the kernel): a second ``nami train --resume`` of a run being trained is refused."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = Path(run_dir) / LOCK_FILE
        refuse_symlinks(Path(run_dir))  # a resumed run is untrusted: nami must not write through its links
        try:  # never through a symlink: a planted .lock would have nami create (and lock) its target
            self.handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644),
                                    "a+")
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot open the run's lock ({err.strerror})") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self.handle.close()
            raise CheckpointError(f"{run_dir}: another process is training this run (it holds {self.path}); "
                                  "wait for it to finish or stop it first") from err

    def release(self) -> None:
        import fcntl

        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


# --- resumable checkpoints -----------------------------------------------------------------------


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves excluded)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def recover_interrupted_save(run_dir: Path) -> None:
    """Undo what a kill inside :func:`save_checkpoint`'s same-step swap left: a ``.old-step-N`` whose
    ``step-N`` is missing is that checkpoint (complete) and is renamed back; next to a ``step-N``
    it is a leftover and is removed."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    for stale in sorted(root.glob(".old-step-*")) if root.is_dir() else []:
        final = root / stale.name[len(".old-"):]
        if final.exists():
            shutil.rmtree(stale)
        else:
            os.replace(stale, final)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a complete resumable checkpoint for ``step`` and keep only the newest ``keep``
    (``optimizer``: the optimizer, or its state dict as already gathered from a sharded run)."""
    root = run_dir / CHECKPOINTS_DIR
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        save_file(weights_of(model), str(tmp / WEIGHTS_FILE))
        optimizer_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        torch.save({"optimizer": optimizer_state, "torch_rng": torch.get_rng_state()}, tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", "utf-8")
        write_manifest(tmp, [WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE])
    except (OSError, RuntimeError) as err:  # a full disk: torch reports it as a RuntimeError ("unexpected pos")
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial checkpoint filling the disk
        previous = checkpoint_dirs(run_dir)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        reason = describe_os_error(err, "") if isinstance(err, OSError) else " ".join(str(err).split())[:200]
        raise CheckpointError(f"{final}: cannot save the checkpoint ({reason}); {kept}") from err
    if final.exists():  # the same step again (a resumed run that was killed in its final evaluation)
        # Renamed aside, not deleted first: deleting takes long, and a kill meanwhile left no checkpoint
        stale = root / f".old-step-{step:08d}"
        if stale.exists():
            shutil.rmtree(stale)
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale)
    else:
        os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor, dict[str, Any]]:
    """(weights, optimizer state, torch RNG state, state.json) of a verified checkpoint."""
    verify_manifest(directory, required=(WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE))
    weights = read_weights(directory / WEIGHTS_FILE)
    try:
        blob = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{directory / OPTIMIZER_FILE}: cannot read optimizer state ({err})") from err
    if not isinstance(blob, dict) or not isinstance(blob.get("optimizer"), dict) \
            or not isinstance(blob.get("torch_rng"), torch.Tensor) or blob["torch_rng"].dtype != torch.uint8 \
            or blob["torch_rng"].dim() != 1 or blob["torch_rng"].numel() < 16:
        raise CheckpointError(f"{directory / OPTIMIZER_FILE}: not a nami checkpoint's optimizer file (expected "
                              "{optimizer: state dict, torch_rng: uint8 RNG state})")
    state = read_json(directory / STATE_FILE)
    check_state(state, directory / STATE_FILE)
    return weights, blob["optimizer"], blob["torch_rng"], state


# The fields of nami.training.loop.Progress (kept in state.json; a test keeps the two lists equal).
PROGRESS_FIELDS = ("step", "epoch", "batch_in_epoch", "train_seconds", "tokens_seen", "skipped_batches",
                   "next_eval_seconds", "window")


def check_state(state: Any, path: Path) -> None:
    """The shape of a checkpoint's ``state.json``, checked before anything is restored from it: an
    error names the file and the field (a wrong shape raised KeyError / TypeError deep in the resume)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    progress = state.get("progress")
    known = PROGRESS_FIELDS
    if not isinstance(progress, dict) or set(progress) - set(known):
        raise CheckpointError(f"{path}: progress: expected an object with the fields {', '.join(known)}")
    for name in ("step", "epoch", "batch_in_epoch", "tokens_seen", "skipped_batches"):
        value = progress.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{path}: progress.{name}={value!r}: expected an integer >= 0")
    for name in ("train_seconds", "next_eval_seconds"):
        value = progress.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
            raise CheckpointError(f"{path}: progress.{name}={value!r}: expected a number >= 0")
    window = progress.get("window", {})
    if not isinstance(window, dict) or not all(
            isinstance(window.get(k, 0), (int, float)) and not isinstance(window.get(k, 0), bool)
            for k in ("loss", "tokens", "seconds", "batches")):
        raise CheckpointError(f"{path}: progress.window: expected an object of numbers (loss, tokens, seconds, "
                              "batches)")
    others = state.get("rank_rng", [])
    if not isinstance(others, list) or not all(isinstance(r, dict) and isinstance(r.get("torch"), list)
                                               for r in others):
        raise CheckpointError(f"{path}: rank_rng: expected one RNG state object per other process")
    rng = state.get("rng")
    python = rng.get("python") if isinstance(rng, dict) else None
    numpy_state = rng.get("numpy") if isinstance(rng, dict) else None
    if (not isinstance(python, list) or len(python) != 3 or not isinstance(python[1], list)
            or len(python[1]) != 625 or not all(isinstance(x, int) for x in python[1])):
        raise CheckpointError(f"{path}: rng.python: not a Python random state")
    if not isinstance(numpy_state, list) or len(numpy_state) != 5 or not isinstance(numpy_state[1], list) \
            or len(numpy_state[1]) != 624:
        raise CheckpointError(f"{path}: rng.numpy: not a NumPy random state")
