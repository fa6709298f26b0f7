"""The training loop of every task (:mod:`nami.training.tasks`), on ``accelerate.Accelerator``,
resumable bit for bit.

Accelerate owns device placement, mixed precision (bf16 autocast on CPU and CUDA), gradient
accumulation and DDP. Under ``torchrun`` / ``accelerate launch`` the loop trains with N processes
by the rules of :mod:`nami.training.distributed`: ``--batch-size`` is the global batch, one clock
(the main process's) for every decision, one writer, every rank's RNG in the checkpoint.

Reliability:

* **Exact resume.** A checkpoint holds the weights, optimizer state, the Python, NumPy and torch
  RNG states (CPU, and CUDA when used; of every process), the epoch and how many batches of it were consumed, and the logging window. The batch
  order is a pure function of (seed, epoch), so ``nami train --resume RUN`` continues with the
  very next batch: a run killed at any step and resumed ends with the same weights and metrics
  as an uninterrupted one (for step/epoch-limited runs; a ``max_minutes`` budget depends on the
  clock by definition).
* **Signals.** SIGINT / SIGTERM finish the current step, save a checkpoint and stop with
  :class:`TrainingInterrupted`; SIGKILL loses at most the work since the last checkpoint.
* **Non-finite guard.** A NaN/Inf loss or gradient stops training with :class:`NonFiniteError`
  naming the step and the first non-finite tensor; ``nonfinite_skips=N`` skips up to N such
  batches first (each is logged). Nothing is patched silently.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.data_loader import prepare_data_loader
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nami import resources
from nami.data.batching import BucketBatchSampler, WindowDataset
from nami.io import fingerprint_files, read_jsonl
from nami.models import count_parameters
from nami.models.block import set_branches
from nami.models.speed import autograd_wave_layers, compile_wave_layers
from nami.resources import peak_rss_mb, resolve_precision, usable_cpus
from nami.runs.config import TrainConfig
from nami.text import JapaneseTokenizer, default_tokenizer
from nami.training import checkpoint as ckpt
from nami.training.distributed import Ranks, ShardedBatches
from nami.training.strategy import first_nonfinite_gradient, param_groups, strategy_for  # noqa: F401 (re-exported)
from nami.training.tasks import TASKS


class NonFiniteError(RuntimeError):
    """A NaN/Inf loss or gradient (the message names the step and the tensor)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped training after saving a checkpoint."""

    def __init__(self, run_dir: Path, step: int, signum: int) -> None:
        self.run_dir, self.step, self.signum = run_dir, step, signum
        super().__init__(
            f"{signal.Signals(signum).name} at step {step}: checkpoint saved; continue with "
            f"`nami train --resume {run_dir}`"
        )


@dataclass
class TrainResult:
    run_dir: Path
    final_eval: dict[str, Any]
    params: dict[str, int]
    train_tokens_per_s: float
    steps: int


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint's ``state.json``."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` consumed (all of them, skipped ones included)
    train_seconds: float = 0.0  # evaluation and checkpointing excluded
    tokens_seen: int = 0
    skipped_batches: int = 0
    next_eval_seconds: float = math.inf
    window: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "tokens": 0, "seconds": 0.0, "batches": 0})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python and NumPy global RNG states as JSON (torch's CPU state goes into the checkpoint's
    tensors); the CUDA generators' states too when CUDA is in use."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": json.loads(json.dumps(random.getstate())),
             "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_state)
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def rank_rng_state() -> dict[str, Any]:
    """Every RNG state of this process as JSON (what ranks other than the main one save)."""
    return {**rng_state(), "torch": torch.get_rng_state().tolist()}


def set_rank_rng_state(state: dict[str, Any]) -> None:
    set_rng_state(state, torch.tensor(state["torch"], dtype=torch.uint8))


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier at training progress in [0, 1]: linear warmup, then decay to 0."""
    if progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * rest)) if schedule == "cosine" else 1.0 - rest


def model_name(config: TrainConfig) -> str:
    """How messages name the model: its variant (``wave+conv``, given as ``--arch``) or its architecture."""
    return (config.notes or {}).get("variant") or config.arch


def load_tokenizer(config: TrainConfig) -> JapaneseTokenizer:
    if config.tokenizer:
        return JapaneseTokenizer.load(config.tokenizer)
    return default_tokenizer(config.vocab_size, shards=config.tokenizer_shards)


def new_run_dir(config: TrainConfig) -> Path:
    """Claim a new run directory: ``mkdir`` fails if it exists, so two runs never share one."""
    name = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.arch}-{config.preset}-{config.short_hash()}"
    run_dir = Path(config.runs_dir) / name
    if (run_dir / ckpt.CONFIG_FILE).exists():
        raise FileExistsError(f"run directory {run_dir} already holds a run; choose another --run-name or --resume it")
    if run_dir.exists():
        raise FileExistsError(f"run directory {run_dir} exists but holds no run (no {ckpt.CONFIG_FILE}: a start that "
                              f"crashed?); remove it (rm -r {run_dir}) or choose another --run-name")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError as err:
        raise FileExistsError(f"run directory {run_dir} was just created by another process; choose another "
                              "--run-name") from err
    return run_dir


class NullLog:
    """The metrics log of ranks other than the main process: they write nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog:
    """Append-only JSONL log, flushed per line so a crash keeps everything logged so far; with
    ``tensorboard_dir`` the numbers of train / eval records also go to TensorBoard (Accelerate's
    ``TensorBoardTracker``; ``tensorboard --logdir RUN/tensorboard``)."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.tracker = None
        if tensorboard_dir is not None:
            from accelerate.tracking import TensorBoardTracker

            self.tracker = TensorBoardTracker(run_name=tensorboard_dir.name, logging_dir=tensorboard_dir.parent)
            self.tracker.start()  # opens the SummaryWriter (Accelerate's init_trackers does the same)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.tracker is not None and record.get("type") in ("train", "eval", "final_eval"):
            prefix = "train" if record["type"] == "train" else "eval"
            values = {f"{prefix}/{k}": v for k, v in record.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            self.tracker.log(values, step=record.get("step"))

    def close(self) -> None:
        self.file.close()
        if self.tracker is not None:
            self.tracker.finish()


def truncate_metrics(path: Path, step: int) -> list[int]:
    """Drop what a killed run logged after the checkpoint it is resumed from (``step``; -1 = all).

    Returns the numbers of the lines that were not JSON objects and were dropped: a crash mid-write
    leaves a torn last line, which must not block ``--resume``.
    """
    if not path.is_file():
        return []
    records, torn = read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= step and r.get("type") != "final_eval"]
    ckpt.atomic_write(path, lambda tmp: tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), "utf-8"))
    return torn


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, *, quiet: bool = False) -> TrainResult:
    """Train the model of ``config.task`` as ``config`` says, in a new run directory."""
    if os.environ.get("RANK", "0") == "0":
        for line in config.ignored_options():  # not silently: saved in the config, yet changing nothing
            print(f"nami: warning: {line}", file=sys.stderr, flush=True)
    return _fit(config, run_dir=None, quiet=quiet)


def resume(run_dir: str | Path, *, quiet: bool = False, threads: int | None = None,
           allow_changed_data: bool = False) -> TrainResult:
    """Continue the run in ``run_dir`` from its newest checkpoint; a run stopped before its first
    checkpoint (a crash, SIGKILL) starts again from step 0 with its saved config. A finished run
    (``final_eval.json``) is left as it is: its recorded result is returned, nothing is retrained."""
    run_dir = Path(run_dir)
    _verify_run_settings(run_dir)
    config, _, _ = ckpt.read_run_config(run_dir)
    if threads:
        config.threads = threads
    return _fit(config, run_dir=run_dir, quiet=quiet, allow_changed_data=allow_changed_data)


def _verify_run_settings(run_dir: Path) -> None:
    """A run directory is untrusted input: its config and tokenizer must be the ones its manifest
    recorded when the run started (an edited ``config.json`` would otherwise train with settings the
    run never had, and the next weights refresh would have re-signed them). A run stopped before its
    manifest existed has no checkpoint and restarts from its config, as a new run would."""
    from nami.io import MANIFEST_FILE, read_json, verify_files
    from nami.models.pretrained import TOKENIZER_DIR

    manifest_path = run_dir / MANIFEST_FILE
    if not manifest_path.is_file() and not ckpt.checkpoint_dirs(run_dir):
        return
    try:
        listed = read_json(manifest_path) if manifest_path.is_file() else {}
    except (OSError, ValueError):
        listed = {}
    tokenizer = [n for n in (listed if isinstance(listed, dict) else {}) if n.startswith(f"{TOKENIZER_DIR}/")]
    verify_files(run_dir, [ckpt.CONFIG_FILE, *tokenizer])  # a missing or unreadable manifest: named there


def finished_result(run_dir: Path) -> TrainResult | None:
    """The recorded result of a finished run (its ``final_eval.json``), else None. A run whose weights
    were saved but whose checkpoints are gone cannot be resumed: an error, not a restart from step
    0 that would overwrite them."""
    final_path = run_dir / ckpt.FINAL_EVAL_FILE
    if final_path.exists():
        try:
            final = json.loads(final_path.read_text("utf-8"))
            return TrainResult(run_dir, final, final["params"], final["train_tokens_per_s"], final["step"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ckpt.CheckpointError(f"{final_path}: unreadable ({err}); the run looks finished, so it is not "
                                       "retrained: delete this file to redo its final evaluation") from err
    if (run_dir / ckpt.WEIGHTS_FILE).exists() and not ckpt.checkpoint_dirs(run_dir):
        raise ckpt.CheckpointError(f"{run_dir}: its training finished ({ckpt.WEIGHTS_FILE}) but its "
                                   f"{ckpt.CHECKPOINTS_DIR}/ are gone, so it cannot be resumed; score it with "
                                   f"`nami predict --checkpoint {run_dir}`")
    return None


def _fit(config: TrainConfig, *, run_dir: Path | None, quiet: bool, allow_changed_data: bool = False) -> TrainResult:
    locks: list[ckpt.RunLock] = []  # the run directory's lock, held while this process writes to it
    try:
        return _fit_locked(config, run_dir=run_dir, quiet=quiet, locks=locks, allow_changed_data=allow_changed_data)
    finally:
        for lock in locks:
            lock.release()


def _fit_locked(config: TrainConfig, *, run_dir: Path | None, quiet: bool, locks: list,
                allow_changed_data: bool = False) -> TrainResult:
    """Setup, the steps, the end: where a reader finds each piece of a run (:class:`Trainer`)."""
    trainer = Trainer(config, run_dir=run_dir, quiet=quiet, locks=locks)
    trainer.allow_changed_data = allow_changed_data
    finished = trainer.setup_process()
    if finished is not None:
        return finished
    trainer.setup_model()
    trainer.setup_optimizer()
    trainer.setup_data()
    trainer.open_run()
    trainer.train()
    return trainer.finish()


class Trainer:
    """One training run, in the order it happens.

    ``setup_process`` (threads, seeds, Accelerate, processes) → ``setup_model`` (task, tokenizer,
    model, the checkpoint's weights on resume) → ``setup_optimizer`` (the :class:`~nami.training.strategy.Strategy`
    of ``--sharding``) → ``setup_data`` (the batch order) → ``open_run`` (run directory, metrics log,
    RNG states on resume) → ``train`` (``train_step`` per batch; ``after_step`` logs, evaluates,
    checkpoints and stops) → ``finish`` (final checkpoint, weights, the full evaluation).
    """

    def __init__(self, config: TrainConfig, *, run_dir: Path | None, quiet: bool, locks: list) -> None:
        self.config, self.run_dir, self.quiet, self.locks = config, run_dir, quiet, locks
        self.compiled = None
        self.torn: list[int] = []
        self.window_units = 0.0  # loss units of the accumulation window so far
        self.last_checkpoint_seconds = 0.0

    # --- setup -------------------------------------------------------------------------------

    def setup_process(self) -> TrainResult | None:
        """Threads, seeds, Accelerate and the processes; a finished run's recorded result (nothing to do)."""
        config = self.config
        if config.threads:
            cpus = usable_cpus()
            if cpus and config.threads > cpus:  # oversubscribed threads make every step many times slower
                print(f"nami: warning: --threads {config.threads} is more than the {cpus} CPU(s) this process may "
                      "use; steps will be much slower than with at most that many", file=sys.stderr, flush=True)
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        # Accelerate keeps a process-wide singleton; drop its mixed-precision settings so that a second
        # run in the same process (notebooks, tests) can choose another precision. The process-group
        # state (PartialState) is kept.
        AcceleratorState._reset_state()
        # Several processes without a GPU (torchrun on CPU): Accelerate sets up gloo only when told cpu=True.
        multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        if config.precision == "auto":  # the saved config records the choice, so a resume keeps it on any host
            config.precision = resolve_precision("auto", "cuda" if torch.cuda.is_available() and not multi_cpu
                                                 else "cpu")
            if not self.quiet and os.environ.get("RANK", "0") == "0":
                print(f"[nami] precision auto -> {config.precision}"
                      + ("" if config.precision == "bf16" else " (no native bf16 here: bf16 autocast would be slower)"),
                      flush=True)
        self.accelerator = Accelerator(
            cpu=multi_cpu,
            mixed_precision="bf16" if config.precision == "bf16" else "no",
            gradient_accumulation_steps=config.grad_accum,
            # Stage-wise training switches branches off: their parameters get no gradient in that stage.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=bool(config.branch_schedule))],
        )
        self.device = self.accelerator.device
        self.ranks = ranks = Ranks(self.accelerator)
        if ranks.distributed and config.batch_size < ranks.world:
            raise ValueError(f"--batch-size {config.batch_size} is the global batch; with {ranks.world} processes it "
                             f"must be at least {ranks.world}")
        if self.run_dir is not None and ranks.is_main:
            self.locks.append(ckpt.RunLock(self.run_dir))  # before anything slow: a second writer is refused at once
        self.show = not self.quiet and ranks.is_main
        if self.run_dir is None:
            return None
        if ranks.is_main:
            ckpt.recover_interrupted_save(self.run_dir)
        finished = finished_result(self.run_dir)
        if finished is not None and ranks.is_main:
            print(f"[nami] {self.run_dir} is finished ({ckpt.FINAL_EVAL_FILE}, step {finished.steps:,}): nothing "
                  "to resume", flush=True)
        return finished

    def setup_model(self) -> None:
        """The task, its tokenizer and data, the model (and on resume the checkpoint's weights)."""
        config, run_dir, ranks = self.config, self.run_dir, self.ranks
        # The task validates its data first, before anything slow (the default tokenizer may need training).
        self.task = task = TASKS[config.task](config)
        init = ckpt.read_run_config(config.init_from) if config.init_from else None
        with self.accelerator.main_process_first():  # a tokenizer trained on first use is trained once, by the main process
            if run_dir is not None:
                _, saved_model_config, fingerprint = ckpt.read_run_config(run_dir)
                tokenizer = ckpt.load_tokenizer_checked(run_dir, saved_model_config, fingerprint)
            elif init is not None:
                tokenizer = init_tokenizer(config, init)
            else:
                tokenizer = load_tokenizer(config)
        self.tokenizer = tokenizer
        self.data_fingerprint = fingerprint_files(task.data_files())
        if run_dir is not None:
            self._check_data(run_dir)
        task.prepare(tokenizer, self.show)
        model_config = task.model_config(tokenizer)
        if init is not None:
            model_config = compatible_init_config(config, model_config, init[1])
        config.model = self.model_config = model_config  # the saved config holds the model exactly as built
        model = task.build_model(model_config)
        # A run with a checkpoint continues from it; a run stopped before its first one starts again.
        self.resumed = run_dir is not None and bool(ckpt.checkpoint_dirs(run_dir))
        self.restarted = run_dir is not None and not self.resumed
        if init is not None and not self.resumed:
            load_encoder_from(model, Path(config.init_from))
        if ranks.rank > 0:  # the same initial weights everywhere, then each rank its own dropout/masking stream
            seed_everything((config.seed + 7919 * ranks.rank) % 2**32)
        self.params = count_parameters(model)
        self.compiled = compile_wave_layers(model) if config.compile_wave else None
        if self.compiled is not None and self.show:
            print("[nami] --compile-wave: the first training steps compile the Wave layer (C++ code, up to a minute "
                  "the first time; cached after)", flush=True)
        if not config.compile_wave and not config.wave_recompute:
            autograd_wave_layers(model)
        self.progress = Progress(next_eval_seconds=config.eval_every_minutes * 60 if config.eval_every_minutes
                                 else math.inf)
        if self.resumed:
            self._load_checkpoint(model)
        self.model = model

    def _check_data(self, run_dir: Path) -> None:
        """A resumed run on changed data is refused (``allow_changed_data``: continued, and logged)."""
        recorded = ckpt.recorded_data_fingerprint(run_dir)
        self.data_changed = recorded is not None and recorded != self.data_fingerprint
        if self.data_changed and not getattr(self, "allow_changed_data", False):
            raise ckpt.CheckpointError(
                f"{run_dir}: its training / evaluation data changed since the run started (data fingerprint "
                f"{recorded} then, {self.data_fingerprint} now: {', '.join(self.task.data_files())}); resume with "
                "--allow-changed-data to continue on the data as it is now (recorded in metrics.jsonl)")

    def _load_checkpoint(self, model: torch.nn.Module) -> None:
        """The newest checkpoint's weights into ``model``; its optimizer state, RNG and progress kept for later."""
        run_dir, ranks = self.run_dir, self.ranks
        checkpoints = ckpt.checkpoint_dirs(run_dir)
        self.latest = latest = checkpoints[-1]
        try:
            weights, self.saved_optimizer, self.saved_torch_rng, self.saved_state = ckpt.load_checkpoint(latest)
        except ckpt.CheckpointError as err:
            if len(checkpoints) < 2:
                raise
            raise ckpt.CheckpointError(f"{err}; the earlier checkpoint {checkpoints[-2].name} may be intact: move "
                                       f"{latest.name} out of {latest.parent} to resume from it") from err
        saved_world = self.saved_state.get("world_size", 1)
        if saved_world != ranks.world:
            raise ckpt.CheckpointError(f"{latest}: saved by {saved_world} process(es), resumed with {ranks.world}; "
                                       f"resume with {saved_world} (the data shards and RNG streams are per process)")
        try:
            model.load_state_dict(weights)
        except (RuntimeError, ValueError) as err:  # the saved config no longer describes these weights
            raise ckpt.CheckpointError(f"{latest}: does not fit the model of {run_dir / ckpt.CONFIG_FILE} "
                                       f"({' '.join(str(err).split())[:300]})") from err

    def setup_optimizer(self) -> None:
        """The strategy of ``--sharding`` lays out the model and builds the optimizer (on resume: its state)."""
        self.strategy = strategy_for(self.config, self.accelerator, self.ranks,
                                     lambda: self.task.build_model(self.model_config))
        self.strategy.setup(self.model)
        if self.resumed:
            try:
                self.strategy.load_optimizer_state(self.saved_optimizer)
            except (RuntimeError, ValueError, KeyError) as err:
                raise ckpt.CheckpointError(f"{self.latest}: optimizer state does not fit the model of "
                                           f"{self.run_dir / ckpt.CONFIG_FILE} ({' '.join(str(err).split())[:300]})"
                                           ) from err
            self.progress = Progress(**self.saved_state["progress"])

    def setup_data(self) -> None:
        """The batch order: a pure function of (seed, epoch), each process its slice of every global batch."""
        config, task = self.config, self.task
        self.sampler = BucketBatchSampler(task.train_lengths, config.batch_size, seed=config.seed)
        self.shards = ShardedBatches(self.sampler, self.ranks.rank, self.ranks.world)
        # Accelerate's loader wrapper for device placement, resume skipping and gradient accumulation's
        # end-of-epoch sync, told not to shard again (ShardedBatches did) nor to synchronise RNGs.
        # Its own generator: every DataLoader iterator draws a worker base seed, and drawn from torch's
        # global RNG that draw would shift the dropout stream of a resumed run (which makes a new
        # iterator right after restoring the RNG) against the uninterrupted one.
        self.loader = prepare_data_loader(
            DataLoader(WindowDataset(task.train_lengths), batch_sampler=self.shards, collate_fn=task.collate,
                       generator=torch.Generator().manual_seed(config.seed)),
            self.device, num_processes=1, process_index=0, put_on_device=True, rng_types=[])

    def open_run(self) -> None:
        """The run directory (new, or the resumed one's log cut back to its checkpoint), Accelerate's
        wrapping, the metrics log, the budget, and — last, so nothing after draws randomness — the
        checkpoint's RNG states."""
        config, ranks = self.config, self.ranks
        if self.resumed:
            if ranks.is_main:
                self.torn = truncate_metrics(self.run_dir / ckpt.METRICS_FILE, self.progress.step)
        elif self.restarted:
            if ranks.is_main:  # the stopped start logged nothing to keep
                self.torn = truncate_metrics(self.run_dir / ckpt.METRICS_FILE, -1)
        else:
            if ranks.is_main:
                self.run_dir = new_run_dir(config)
                self.locks.append(ckpt.RunLock(self.run_dir))
                ckpt.save_run_config(self.run_dir, config, self.model_config, self.tokenizer,
                                     data_fingerprint=self.data_fingerprint)
            self.run_dir = Path(ranks.broadcast(str(self.run_dir) if ranks.is_main else None))
        run_dir = self.run_dir
        self.strategy.prepare()
        if ranks.is_main:
            self.log = MetricsLog(run_dir / ckpt.METRICS_FILE,
                                  tensorboard_dir=run_dir / "tensorboard" if config.log_with == "tensorboard" else None)
        else:
            self.log = NullLog()
        # Accelerate also steps on an epoch's last, partial accumulation window: ceil, not floor
        steps_per_epoch = max(1, -(-len(self.shards) // config.grad_accum))
        self.total_steps = config.max_steps or max(1, int(config.epochs * steps_per_epoch))
        self.budget_s = config.max_minutes * 60 if config.max_minutes else None
        if self.torn:
            print(f"[nami] {run_dir / ckpt.METRICS_FILE}: dropped {len(self.torn)} unreadable line(s) (line "
                  f"{', '.join(map(str, self.torn))}; a crash mid-write tears the last line)", file=sys.stderr,
                  flush=True)
        if self.resumed:
            # Last: nothing above may consume randomness after it. Ranks > 0 saved theirs in state.json.
            if ranks.rank == 0:
                set_rng_state(self.saved_state["rng"], self.saved_torch_rng)
            else:
                set_rank_rng_state(self.saved_state["rank_rng"][ranks.rank - 1])
            self.log.write({"type": "resume", "step": self.progress.step, "from": self.latest.name,
                            "dropped_log_lines": self.torn,
                            **({"data_changed": self.data_fingerprint} if getattr(self, "data_changed", False)
                               else {})})
            if self.show:
                print(f"[nami] resuming {run_dir} at step {self.progress.step} (epoch {self.progress.epoch})",
                      flush=True)
        else:
            self._log_start()
        self.last_checkpoint_seconds = self.progress.train_seconds

    def _log_start(self) -> None:
        config, ranks, task = self.config, self.ranks, self.task
        if self.restarted and ranks.is_main:
            print(f"[nami] {self.run_dir} stopped before its first checkpoint: starting it again from step 0 with its "
                  "saved config", file=sys.stderr, flush=True)
        self.log.write({
            "type": "start", "task": config.task, "run_dir": str(self.run_dir), "params": self.params, **task.summary(),
            "total_steps": self.total_steps, "budget_minutes": config.max_minutes, "device": str(self.device),
            "threads": torch.get_num_threads(), "init_from": config.init_from, "malloc_tuning": resources.MALLOC_TUNING,
            "processes": ranks.world, "global_batch": config.batch_size * config.grad_accum,
        })
        summary = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
                            for k, v in task.summary().items())
        # The run directory is printed even with --quiet: it is what every later command needs.
        if ranks.is_main:
            processes = f", {ranks.world} processes" if ranks.distributed else ""
            print(f"[nami] {config.task} {model_name(config)} ({self.params['total']:,} params{processes}) -> "
                  f"{self.run_dir}",
                  flush=True)
        if self.show:
            print(f"[nami] data: {summary}", flush=True)

    # --- the steps ---------------------------------------------------------------------------

    def fraction_done(self) -> float:
        """Training progress in [0, 1]: steps of the total, or training seconds of the budget if further."""
        p = self.progress.step / self.total_steps
        return max(p, self.progress.train_seconds / self.budget_s) if self.budget_s else p

    def save_checkpoint(self) -> torch.nn.Module:
        """Weights, optimizer state, progress and every rank's RNG states; returns the whole model.
        Collectives (RNG gather; FSDP2 / ZeRO gathers): every rank calls this at the same step."""
        ranks = self.ranks
        others = ranks.gather(rank_rng_state() if ranks.rank > 0 else None)[1:]
        whole = self.strategy.full_model()
        optimizer_state = self.strategy.optimizer_state()
        if not ranks.is_main:
            return whole
        state = {"progress": asdict(self.progress), "rng": rng_state(), "world_size": ranks.world,
                 "sharding": self.config.sharding}
        if others:
            state["rank_rng"] = others
        ckpt.save_checkpoint(self.run_dir, self.progress.step, whole, optimizer_state, state,
                             self.config.keep_checkpoints)
        return whole  # the whole model (under FSDP2 gathered once for both uses)

    def _progress_bar(self) -> tqdm:
        """With a time budget the bar counts training seconds (its total is the budget, so it has an
        ETA); otherwise optimizer steps."""
        config, show = self.config, self.show
        if self.budget_s:
            return tqdm(total=round(self.budget_s), initial=min(round(self.progress.train_seconds),
                                                                round(self.budget_s)),
                        disable=not show, desc=f"train {config.arch}", unit="s",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of training "
                                   "[{elapsed}<{remaining}{postfix}]")
        return tqdm(total=self.total_steps, initial=self.progress.step, disable=not show, desc=f"train {config.arch}",
                    unit="step")

    def train(self) -> None:
        """Epochs of batches until the budget (steps, epochs or minutes) is spent."""
        progress = self.progress
        self.bar = self._progress_bar()
        self.strategy.model.train()
        finished = self.fraction_done() >= 1.0
        with StopSignals() as self.stop:
            while not finished:
                batches = self.loader
                if progress.batch_in_epoch:  # exact resume: the epoch continues where it stopped
                    batches = self.accelerator.skip_first_batches(self.loader, progress.batch_in_epoch)
                # Accelerate's loaders pass their own epoch counter to the sampler when iterated, so
                # both must be told the epoch (a resumed run starts that counter anew).
                self.sampler.set_epoch(progress.epoch)
                batches.set_epoch(progress.epoch)
                for batch in batches:
                    if not self.train_step(batch):
                        continue  # inside an accumulation window, or a skipped batch
                    if self.after_step():
                        finished = True
                        break
                else:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0
        self.bar.close()

    def train_step(self, batch: dict[str, Any]) -> bool:
        """Forward, backward and (at the end of an accumulation window) the optimizer step for one
        batch; whether an optimizer step was taken. Gradient accumulation weighs batches by their loss
        units (tokens, windows), as one big batch would; a non-finite loss or gradient skips the batch
        (up to ``nonfinite_skips``) or stops the run."""
        config, progress, ranks, strategy, accelerator = (self.config, self.progress, self.ranks, self.strategy,
                                                          self.accelerator)
        model = strategy.model
        tick = time.perf_counter()
        progress.batch_in_epoch += 1
        if config.branch_schedule:  # stage-wise training: which branches this batch uses
            set_branches(model, self.fraction_done(), config.branch_schedule)
        batch = self.task.ready(batch)  # e.g. masked LM's masks, drawn in step order (exact resume)
        accumulating = config.grad_accum > 1
        total_units = None
        with accelerator.accumulate(model):
            loss = self.task.loss(model, batch)
            units = self.task.loss_units(batch) if ranks.distributed or accumulating else 1
            problem = None if torch.isfinite(loss) else f"non-finite loss ({loss.item()})"
            scale = 1.0
            if ranks.distributed:
                # Weight this rank's mean by its share of the global batch (DDP averages over
                # ranks), and skip the batch on every rank if any rank's loss is not finite.
                total_units, bad = ranks.sum([units, 0.0 if problem is None else 1.0])
                if bad and problem is None:
                    problem = "non-finite loss on another process"
                scale = units * ranks.world / total_units
            if problem is None and accelerator.sync_gradients:  # the learning rate of this step
                factor = lr_factor(self.fraction_done(), config.warmup, config.schedule)
                for group in strategy.optimizer.param_groups:
                    group["lr"] = config.lr * factor
            if problem is None:
                problem = self._backward(loss, units, total_units, scale)
            if problem is not None:
                self._skip_batch(problem)
                return False
            strategy.step()
            if accelerator.sync_gradients:
                self.window_units = 0.0
        self._account(tick, batch, loss, units, total_units)
        return accelerator.sync_gradients

    def _backward(self, loss: torch.Tensor, units: float, total_units: float | None, scale: float) -> str | None:
        """Backward (and, at a window's end, the gradient check and clipping); the problem, if any."""
        ranks, strategy = self.ranks, self.strategy
        distributed = ranks.distributed
        if strategy.engine_steps:  # DeepSpeed: backward, clipping and the step in its engine
            return strategy.backward(loss * scale if distributed else loss)
        accumulating = self.config.grad_accum > 1
        if accumulating:
            # The window's mean over its loss units, as one big batch would take it, not the mean of its
            # batches' means: each batch's sum now (× world: DDP averages over processes), divided by the
            # window's total at its last batch (Accelerate divides every batch by grad_accum: undone there).
            strategy.backward(loss * (units * ranks.world))
            self.window_units += total_units if distributed else units
        else:
            strategy.backward(loss * scale if distributed else loss)
        if not self.accelerator.sync_gradients:
            return None
        rescale = self.config.grad_accum / max(self.window_units, 1) if accumulating else None
        return strategy.clip(rescale)

    def _skip_batch(self, problem: str) -> None:
        progress, config = self.progress, self.config
        where = f"at step {progress.step + 1} (epoch {progress.epoch}, batch {progress.batch_in_epoch})"
        if progress.skipped_batches >= config.nonfinite_skips:
            raise NonFiniteError(f"{problem} {where}; stopping (nonfinite_skips={config.nonfinite_skips}). "
                                 "Lower --lr, use --precision fp32, or check the data.")
        progress.skipped_batches += 1
        self.log.write({"type": "skipped_batch", "step": progress.step, "reason": f"{problem} {where}"})
        self.strategy.zero_grad()
        self.window_units = 0.0  # the window's gradients so far are gone with it

    def _account(self, tick: float, batch: dict[str, Any], loss: torch.Tensor, units: float,
                 total_units: float | None) -> None:
        """Training seconds, tokens and the logging window; one clock, one token count and one stop
        signal for all ranks (a no-op with one process)."""
        progress, ranks, stop = self.progress, self.ranks, self.stop
        elapsed = time.perf_counter() - tick
        elapsed, n_tokens, loss_sum, stop.received = ranks.agree(
            elapsed, int(batch["attention_mask"].sum()), loss.item(), units, stop.received)
        batch_loss = loss_sum / total_units if ranks.distributed else loss_sum
        progress.train_seconds += elapsed
        progress.tokens_seen += n_tokens
        window = progress.window
        window["loss"] += batch_loss
        window["tokens"] += n_tokens
        window["seconds"] += elapsed
        window["batches"] += 1
        self._elapsed = elapsed

    def after_step(self) -> bool:
        """After an optimizer step: the progress bar, the log, periodic evaluation and checkpoints, a
        stop signal. Whether training is finished."""
        config, progress = self.config, self.progress
        progress.step += 1
        self.bar.update(min(self._elapsed, max(self.bar.total - self.bar.n, 0)) if self.budget_s else 1)
        if progress.step % config.log_every == 0:
            self._log_train()
        if self.fraction_done() >= 1.0:
            return True
        if progress.train_seconds >= progress.next_eval_seconds:
            progress.next_eval_seconds += config.eval_every_minutes * 60
            self._evaluate_subset()
        due_by_steps = config.checkpoint_every_steps and progress.step % config.checkpoint_every_steps == 0
        since_checkpoint = progress.train_seconds - self.last_checkpoint_seconds
        due_by_time = config.checkpoint_every_minutes and since_checkpoint >= config.checkpoint_every_minutes * 60
        if due_by_steps or due_by_time or self.stop.received:
            self.save_checkpoint()
            self.last_checkpoint_seconds = progress.train_seconds
        if self.stop.received:
            self.log.write({"type": "interrupted", "step": progress.step, "signal": self.stop.received})
            self.log.close()
            self.bar.close()
            raise TrainingInterrupted(self.run_dir, progress.step, self.stop.received)
        return False

    def _log_train(self) -> None:
        progress = self.progress
        window = progress.window
        record = {
            "type": "train", "step": progress.step, "epoch": progress.epoch,
            "train_seconds": round(progress.train_seconds, 3),
            "loss": window["loss"] / window["batches"], "lr": self.strategy.optimizer.param_groups[0]["lr"],
            "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
            **self.task.train_metrics(),
        }
        self.log.write(record)
        self.bar.set_postfix(step=progress.step, loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        progress.window = {"loss": 0.0, "tokens": 0, "seconds": 0.0, "batches": 0}

    def _evaluate_subset(self) -> None:
        """The periodic evaluation on the evaluation subset; the weights file refreshed."""
        progress = self.progress
        whole = self.strategy.full_model()  # one gather (FSDP2) for the evaluation and the weights file
        scores = self.task.evaluate_sharded(whole, self.device, full=False, show=False, ranks=self.ranks)
        self.log.write({"type": "eval", "step": progress.step, "train_seconds": round(progress.train_seconds, 3),
                        **scalars(scores)})
        if self.show:
            tqdm.write(f"[nami] step {progress.step}: subset {self.task.describe(scores)}")
        if self.ranks.is_main:
            ckpt.save_weights(self.run_dir, whole)

    # --- the end -----------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """The final checkpoint and weights, the full evaluation, ``final_eval.json`` and one line."""
        config, progress, ranks, run_dir = self.config, self.progress, self.ranks, self.run_dir
        whole = self.save_checkpoint()
        if ranks.is_main:
            ckpt.save_weights(run_dir, whole)
        train_tokens_per_s = progress.tokens_seen / progress.train_seconds if progress.train_seconds else float("nan")
        scores = self.task.evaluate_sharded(whole, self.device, full=True, show=self.show, ranks=ranks)
        final = {
            **scalars(scores), "threads": torch.get_num_threads(), "step": progress.step,
            "train_seconds": progress.train_seconds, "train_tokens_per_s": train_tokens_per_s,
            "skipped_batches": progress.skipped_batches, "params": self.params,
            "peak_rss_mb": round(peak_rss_mb(), 1),  # the whole training process, data and evaluation included
        }
        if ranks.distributed:
            final["processes"] = ranks.world  # tokens/s counts every process's tokens over the main one's clock
        if self.compiled is not None:
            final["compile_wave_failure"] = self.compiled.failure  # None: the compiled Wave maths ran throughout
        if ranks.is_main:
            if "predictions" in scores:
                ckpt.write_json(run_dir / ckpt.PREDICTIONS_FILE, scores["predictions"])
            ckpt.write_json(run_dir / ckpt.FINAL_EVAL_FILE, final)
            self.log.write({"type": "final_eval", **final})
            # One line even with --quiet: the final scores and where they are.
            print(f"[nami] {config.task} {model_name(config)}: {self.task.describe(scores)} ({train_tokens_per_s:,.0f} "
                  f"train tok/s, {progress.step:,} steps) -> {run_dir}", flush=True)
        self.log.close()
        ranks.barrier()  # no rank leaves before the main process has written the run's results
        return TrainResult(run_dir, final, self.params, train_tokens_per_s, progress.step)


def scalars(scores: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly numbers and strings of an evaluation (predictions dropped)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float, str))}


def init_tokenizer(config: TrainConfig, init: tuple[TrainConfig, Any, str]) -> JapaneseTokenizer:
    """The tokenizer of the run named by ``init_from``; ``--tokenizer`` must be the same one."""
    init_dir = Path(config.init_from)
    ckpt.verify_manifest(init_dir)
    tokenizer = ckpt.load_tokenizer_checked(init_dir, init[1], init[2])
    if config.tokenizer:
        given = JapaneseTokenizer.load(config.tokenizer)
        if given.fingerprint != tokenizer.fingerprint:
            raise ckpt.CheckpointError(
                f"--tokenizer {config.tokenizer} (fingerprint {given.fingerprint}) is not the tokenizer of "
                f"--init-from {init_dir} ({tokenizer.fingerprint}); a pretrained encoder only works with its own"
            )
    return tokenizer


def compatible_init_config(config: TrainConfig, model_config: Any, init_model: Any) -> Any:
    """This run's model config with the pretrained encoder's shape; mismatches are errors."""
    # the shapes, and what changes the maths without weights (positions as rotations, epsilons, windows)
    fields = ("arch", "mixers", "d_model", "n_layers", "d_ff", "n_heads", "wave_mode", "vocab_size", "pad_id", "causal",
              "position_embedding", "wave_rope", "attention_rope", "rope_base", "rope_scale", "local_window", "norm_eps", "wave_eps")
    different = [f"{f} ({getattr(model_config, f)} here, {getattr(init_model, f)} in --init-from)"
                 for f in fields if getattr(model_config, f) != getattr(init_model, f)]
    if different:
        raise ckpt.CheckpointError(f"--init-from {config.init_from}: encoder differs: {'; '.join(different)}")
    if config.max_length > init_model.max_len:
        raise ckpt.CheckpointError(f"--max-length {config.max_length} exceeds the pretrained position table "
                                   f"({init_model.max_len}) of --init-from {config.init_from}")
    model_config.max_len = init_model.max_len
    return model_config


def load_encoder_from(model: torch.nn.Module, init_dir: Path) -> None:
    """Copy the ``encoder.*`` weights of a verified run into ``model.encoder``."""
    from safetensors.torch import load_file

    weights = load_file(str(init_dir / ckpt.WEIGHTS_FILE))
    encoder = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    missing, unexpected = model.encoder.load_state_dict(encoder, strict=False)
    missing = [k for k in missing if not k.startswith("embeddings.segment.")]  # QA-only, newly initialised
    if missing or unexpected:
        raise ckpt.CheckpointError(f"{init_dir / ckpt.WEIGHTS_FILE}: encoder weights do not fit "
                                   f"(missing {missing}, unexpected {unexpected})")
