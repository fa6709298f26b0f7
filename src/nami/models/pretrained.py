"""``save_pretrained`` / ``from_pretrained``: a model directory in the run-directory layout.

The Hugging Face shape users know, on nami's files::

    config.json          {"model": ModelConfig, "train": {"task": ..., ...}, "tokenizer_fingerprint": ...}
    model.safetensors    float32 weights (no pickle)
    tokenizer/           the tokenizer the model was trained with (optional)
    manifest.json        sha256 of every file above; verified by every load

A training run directory (:mod:`nami.training.checkpoint`) is such a directory plus logs and
checkpoints, so ``QAModel.from_pretrained("runs/<run>")`` loads a trained run directly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from nami.io import CheckpointError, atomic_write, read_json, update_manifest, verify_manifest, write_json
from nami.models.config import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def weights_of(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors of ``dtype`` (what ``model.safetensors`` holds: float32,
    or bfloat16 for a compact export; loading casts into the model's float32 parameters)."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}


def root_files(directory: Path) -> list[str]:
    """The files a model directory's manifest covers: config, tokenizer files, weights."""
    directory = Path(directory)
    names = [CONFIG_FILE]
    if (directory / TOKENIZER_DIR).is_dir():
        # Files only: a folder or hidden file a copy tool added (__MACOSX/, .DS_Store) is nothing nami
        # reads, and requiring it in the manifest made the run refuse to load.
        names += [f"{TOKENIZER_DIR}/{p.name}" for p in sorted((directory / TOKENIZER_DIR).iterdir())
                  if p.is_file() and not p.name.startswith(".")]
    return names + ([WEIGHTS_FILE] if (directory / WEIGHTS_FILE).is_file() else [])


_LEGACY_MIXER_KEY = re.compile(r"(blocks\.\d+\.)(?:wave|attn)\.")  # names before the mixer registry
_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def check_config_fits_weights(cls: type, model_config: ModelConfig, kwargs: dict[str, Any],
                              weights: dict[str, torch.Tensor], directory: Path) -> None:
    """Refuse a ``config.json`` whose model does not have the shapes of the saved weights, *before* the
    model is built: an untrusted directory whose config says ``d_ff = 1e9`` (its manifest regenerated)
    would otherwise allocate hundreds of GB. The layer count is checked first (a million layers are
    slow to build even without memory), then every tensor of the model built on the meta device
    (no memory) against the weights' shapes."""
    blocks = {int(m.group(1)) for key in weights for m in [_BLOCK_INDEX.search(key)] if m}
    if blocks and model_config.n_layers != len(blocks):
        raise CheckpointError(f"{directory / CONFIG_FILE}: n_layers={model_config.n_layers} but the weights hold "
                              f"{len(blocks)} blocks")
    try:
        with torch.device("meta"):
            shapes = {key: tuple(t.shape) for key, t in cls(model_config, **kwargs).state_dict().items()}
    except (RuntimeError, ValueError, OverflowError) as err:  # sizes no tensor can have, even without memory
        raise CheckpointError(f"{directory / CONFIG_FILE}: describes a model that cannot be built "
                              f"({' '.join(str(err).split())[:200]})") from err
    saved = {_LEGACY_MIXER_KEY.sub(r"\1mixer.", key): tuple(t.shape) for key, t in weights.items()}
    missing = [key for key in shapes if key not in saved]
    if missing:  # e.g. proxy tokens, branches or exit heads the weights never had: refused before they are made
        raise CheckpointError(f"{directory / CONFIG_FILE}: describes tensors the weights do not hold "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    for key, shape in shapes.items():
        if key in saved and saved[key] != shape:
            raise CheckpointError(f"{directory / CONFIG_FILE}: describes {key} as {shape}, but the weights hold "
                                  f"{saved[key]} (config.json and the weights disagree)")


def _kept_fingerprint(directory: Path) -> str | None:
    """Saving again into a directory that holds a tokenizer, without giving one: the tokenizer stays, and
    so does the fingerprint that ties it to the weights (writing ``null`` made the directory unloadable)."""
    if not (directory / TOKENIZER_DIR).is_dir() or not (directory / CONFIG_FILE).is_file():
        return None
    try:
        saved = read_json(directory / CONFIG_FILE)
    except (OSError, ValueError):
        return None
    return saved.get("tokenizer_fingerprint") if isinstance(saved, dict) else None


def save_weights_file(directory: Path, model: torch.nn.Module, also_written: tuple[str, ...] = (),
                      dtype: torch.dtype = torch.float32) -> None:
    """Write ``model.safetensors`` atomically and refresh the manifest for it (and ``also_written``,
    the other files the caller has just written); files this process did not write keep their
    recorded checksums, so an edit by someone else is never re-signed."""
    weights = weights_of(model, dtype)
    atomic_write(Path(directory) / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp)))
    update_manifest(directory, (WEIGHTS_FILE, *also_written), root_files(directory))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: cannot read weights ({err})") from err


def check_finite_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or inf: such a model answers nothing (every score NaN) without an error."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name} holds non-finite values (NaN or inf); the model cannot be "
                                  "used (a diverged run? evaluate an earlier checkpoint)")


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``; every tensor must fit (names and shapes)."""
    missing, unexpected = model.load_state_dict(read_weights(path), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


class PreTrainedMixin:
    """Adds ``save_pretrained`` / ``from_pretrained`` to a model with a ``config: ModelConfig``."""

    task: ClassVar[str]  # the training task whose runs hold this model ("qa", "mlm", ...)
    tasks: ClassVar[tuple[str, ...]]  # optional: every task whose runs hold this model class
    config: ModelConfig

    def save_pretrained(self, directory: str | Path, *, tokenizer: Any = None,
                        train_config: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32) -> Path:
        """Write config, weights and tokenizer with a sha256 manifest; returns the directory, which
        ``pipeline(...)`` / ``nami ask`` load as they load a run.

        ``tokenizer``: the tokenizer the model was trained with. Default: the one already in
        ``directory`` (saving again in place), else the one of the directory the model was loaded
        from (``from_pretrained``); with neither, saving is refused (a directory without its
        tokenizer answers nothing). ``tokenizer=False`` writes config and weights alone, for
        ``from_pretrained`` only.
        ``train_config``: the training settings that shape its inputs (windows, token types, answer
        boundaries), which ``pipeline`` / ``nami predict`` then apply; default: those of the run or
        directory the model was loaded from (``from_pretrained``), else none (derived from the model
        when loaded: see :func:`nami.runs.load.read_run_config`).
        ``dtype``: of the weights on disk (``torch.bfloat16`` halves them; ``nami export``)."""
        directory = Path(directory)
        weights_only = tokenizer is False
        if tokenizer is None and _kept_fingerprint(directory) is None:
            source = getattr(self, "loaded_from", None)
            if source is not None and (Path(source) / TOKENIZER_DIR).is_dir():
                from nami.text import JapaneseTokenizer

                tokenizer = JapaneseTokenizer.load(Path(source) / TOKENIZER_DIR)
            else:
                raise ValueError(f"save_pretrained({directory}): give tokenizer= (the tokenizer the model was "
                                 "trained with: a directory without it cannot be loaded by pipeline() or nami ask); "
                                 "tokenizer=False writes the config and weights alone, for from_pretrained")
        if weights_only:
            tokenizer = None
        directory.mkdir(parents=True, exist_ok=True)
        fingerprint = tokenizer.fingerprint if tokenizer is not None else _kept_fingerprint(directory)
        if tokenizer is not None:
            tokenizer.save(directory / TOKENIZER_DIR)
        train = dict(train_config if train_config is not None else getattr(self, "saved_train_config", None) or {})
        train.setdefault("task", self.task)
        write_json(directory / CONFIG_FILE, {
            "train": train, "model": self.config.to_dict(), "tokenizer_fingerprint": fingerprint,
        })
        written = [CONFIG_FILE] + ([n for n in root_files(directory) if n.startswith(f"{TOKENIZER_DIR}/")]
                                   if tokenizer is not None else [])
        save_weights_file(directory, self, tuple(written), dtype=dtype)  # type: ignore[arg-type]
        return directory

    @classmethod
    def model_kwargs(cls, saved: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor arguments besides the config, read from a saved directory (override per model)."""
        return {}

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu", verify: bool = True,
                        check_task: bool = True):
        """The model saved in ``directory`` (a ``save_pretrained`` directory or a run), in eval mode.

        The manifest is verified first (``verify=False`` when the caller already did), and the
        directory must hold this model's task (``check_task=False``: the caller, e.g. the task
        registry of a registered task built on this model, has checked the class).
        """
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise CheckpointError(f"{directory}: not a nami model directory (no {CONFIG_FILE})")
        if verify:
            verify_manifest(directory, required=(CONFIG_FILE, WEIGHTS_FILE))
        saved = read_json(directory / CONFIG_FILE)
        try:
            task = (saved.get("train") or {}).get("task", "qa")
            model_config = ModelConfig.from_dict(saved["model"])
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{directory / CONFIG_FILE}: invalid model config ({err})") from err
        if check_task and task not in getattr(cls, "tasks", (cls.task,)):
            raise CheckpointError(f"{directory}: holds a {task!r} model, not {cls.__name__} (task {cls.task!r})")
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise CheckpointError(f"{weights_path}: missing (the run has not saved weights yet)")
        weights = read_weights(weights_path)
        check_finite_weights(weights, weights_path)
        kwargs = cls.model_kwargs(saved, weights)
        check_config_fits_weights(cls, model_config, kwargs, weights, directory)  # before allocating anything
        model = cls(model_config, **kwargs)  # type: ignore[call-arg]
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)  # type: ignore[attr-defined]
        except RuntimeError as err:  # a shape differs: config.json and the weights disagree
            raise CheckpointError(f"{weights_path}: weights do not fit the model of {directory / CONFIG_FILE} "
                                  f"({' '.join(str(err).split())[:400]})") from err
        if missing or unexpected:
            raise CheckpointError(f"{weights_path}: weights do not fit the model "
                                  f"(missing {missing}, unexpected {unexpected})")
        model.saved_train_config = saved.get("train")  # what save_pretrained writes again by default
        model.loaded_from = directory  # whose tokenizer save_pretrained copies by default
        return model.to(device).eval()  # type: ignore[attr-defined]
