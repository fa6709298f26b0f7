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
from accelerate.state import AcceleratorState
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import convert_outputs_to_fp32
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nami import resources
from nami.data.batching import BucketBatchSampler, WindowDataset
from nami.io import read_jsonl
from nami.models import count_parameters
from nami.models.block import set_branches
from nami.models.speed import autograd_wave_layers, compile_wave_layers
from nami.resources import peak_rss_mb, resolve_precision
from nami.text import JapaneseTokenizer, default_tokenizer
from nami.training import checkpoint as ckpt
from nami.training.config import TrainConfig
from nami.training.distributed import (
    ZERO_STAGES,
    Ranks,
    ShardedBatches,
    deepspeed_config,
    deepspeed_engine,
    deepspeed_full_optimizer_state,
    deepspeed_full_weights,
    deepspeed_load_optimizer_state,
    deepspeed_step,
    full_optimizer_state,
    full_weights,
    load_full_optimizer_state,
    local,
    shard_model,
)
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


def load_tokenizer(config: TrainConfig) -> JapaneseTokenizer:
    if config.tokenizer:
        return JapaneseTokenizer.load(config.tokenizer)
    return default_tokenizer(config.vocab_size)


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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, LayerNorms or embedding tables)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_matrix = isinstance(module, torch.nn.Linear) and name == "weight"
            (decay if is_matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def first_nonfinite_gradient(model: torch.nn.Module) -> str:
    for name, param in model.named_parameters():
        if param.grad is not None and not torch.isfinite(local(param.grad)).all():
            return name
    return "<none found>"


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


def resume(run_dir: str | Path, *, quiet: bool = False, threads: int | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its newest checkpoint; a run stopped before its first
    checkpoint (a crash, SIGKILL) starts again from step 0 with its saved config. A finished run
    (``final_eval.json``) is left as it is: its recorded result is returned, nothing is retrained."""
    run_dir = Path(run_dir)
    config, _, _ = ckpt.read_run_config(run_dir)
    if threads:
        config.threads = threads
    return _fit(config, run_dir=run_dir, quiet=quiet)


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


def _fit(config: TrainConfig, *, run_dir: Path | None, quiet: bool) -> TrainResult:
    locks: list[ckpt.RunLock] = []  # the run directory's lock, held while this process writes to it
    try:
        return _fit_locked(config, run_dir=run_dir, quiet=quiet, locks=locks)
    finally:
        for lock in locks:
            lock.release()


def _fit_locked(config: TrainConfig, *, run_dir: Path | None, quiet: bool, locks: list) -> TrainResult:
    if config.threads:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if cpus and config.threads > cpus:  # oversubscribed threads make every step many times slower
            print(f"nami: warning: --threads {config.threads} is more than the {cpus} CPU(s) this process may use; "
                  "steps will be much slower than with at most that many", file=sys.stderr, flush=True)
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    # Accelerate keeps a process-wide singleton; drop its mixed-precision settings so that a second
    # run in the same process (notebooks, tests) can choose another precision. The process-group
    # state (PartialState) is kept.
    AcceleratorState._reset_state()
    # Several processes without a GPU (torchrun on CPU): Accelerate sets up gloo only when told cpu=True.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    if config.precision == "auto":  # the saved config records the choice, so a resume keeps it on any host
        config.precision = resolve_precision("auto", "cuda" if torch.cuda.is_available() and not multi_cpu else "cpu")
        if not quiet and os.environ.get("RANK", "0") == "0":
            print(f"[nami] precision auto -> {config.precision}"
                  + ("" if config.precision == "bf16" else " (no native bf16 here: bf16 autocast would be slower)"),
                  flush=True)
    accelerator = Accelerator(
        cpu=multi_cpu,
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        gradient_accumulation_steps=config.grad_accum,
        # Stage-wise training switches branches off: their parameters get no gradient in that stage.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=bool(config.branch_schedule))],
    )
    device = accelerator.device
    ranks = Ranks(accelerator)
    if ranks.distributed and config.batch_size < ranks.world:
        raise ValueError(f"--batch-size {config.batch_size} is the global batch; with {ranks.world} processes it "
                         f"must be at least {ranks.world}")
    if run_dir is not None and ranks.is_main:
        locks.append(ckpt.RunLock(run_dir))  # before anything slow: a second writer is refused at once
    show = not quiet and ranks.is_main
    if run_dir is not None:
        if ranks.is_main:
            ckpt.recover_interrupted_save(run_dir)
        finished = finished_result(run_dir)
        if finished is not None:
            if ranks.is_main:
                print(f"[nami] {run_dir} is finished ({ckpt.FINAL_EVAL_FILE}, step {finished.steps:,}): nothing "
                      "to resume", flush=True)
            return finished

    # The task validates its data first, before anything slow (the default tokenizer may need training).
    task = TASKS[config.task](config)
    init = ckpt.read_run_config(config.init_from) if config.init_from else None
    with accelerator.main_process_first():  # a tokenizer trained on first use is trained once, by the main process
        if run_dir is not None:
            _, saved_model_config, fingerprint = ckpt.read_run_config(run_dir)
            tokenizer = ckpt.load_tokenizer_checked(run_dir, saved_model_config, fingerprint)
        elif init is not None:
            tokenizer = init_tokenizer(config, init)
        else:
            tokenizer = load_tokenizer(config)
    task.prepare(tokenizer, show)

    model_config = task.model_config(tokenizer)
    if init is not None:
        model_config = compatible_init_config(config, model_config, init[1])
    config.model = model_config  # the saved config holds the model exactly as built
    model = task.build_model(model_config)
    # A run with a checkpoint continues from it; a run stopped before its first one starts again.
    resumed = run_dir is not None and bool(ckpt.checkpoint_dirs(run_dir))
    restarted = run_dir is not None and not resumed
    if init is not None and not resumed:
        load_encoder_from(model, Path(config.init_from))
    if ranks.rank > 0:  # the same initial weights everywhere, then each rank its own dropout/masking stream
        seed_everything((config.seed + 7919 * ranks.rank) % 2**32)
    params = count_parameters(model)
    compiled = compile_wave_layers(model) if config.compile_wave else None
    if compiled is not None and show:
        print("[nami] --compile-wave: the first training steps compile the Wave layer (C++ code, up to a minute "
              "the first time; cached after)", flush=True)
    if not config.compile_wave and not config.wave_recompute:
        autograd_wave_layers(model)
    progress = Progress(next_eval_seconds=config.eval_every_minutes * 60 if config.eval_every_minutes else math.inf)
    torn: list[int] = []
    if resumed:
        checkpoints = ckpt.checkpoint_dirs(run_dir)
        latest = checkpoints[-1]
        try:
            weights, optimizer_state, torch_rng, state = ckpt.load_checkpoint(latest)
        except ckpt.CheckpointError as err:
            if len(checkpoints) < 2:
                raise
            raise ckpt.CheckpointError(f"{err}; the earlier checkpoint {checkpoints[-2].name} may be intact: move "
                                       f"{latest.name} out of {latest.parent} to resume from it") from err
        saved_world = state.get("world_size", 1)
        if saved_world != ranks.world:
            raise ckpt.CheckpointError(f"{latest}: saved by {saved_world} process(es), resumed with {ranks.world}; "
                                       f"resume with {saved_world} (the data shards and RNG streams are per process)")
        try:
            model.load_state_dict(weights)
        except (RuntimeError, ValueError) as err:  # the saved config no longer describes these weights
            raise ckpt.CheckpointError(f"{latest}: does not fit the model of {run_dir / ckpt.CONFIG_FILE} "
                                       f"({' '.join(str(err).split())[:300]})") from err
    sharded = config.sharding == "fsdp2"
    zero = config.sharding in ZERO_STAGES  # DeepSpeed ZeRO: the engine does backward and step
    if sharded:  # after loading full weights, before the optimizer (which must see the shards)
        model = shard_model(model, device)
    if (sharded or zero) and config.precision == "bf16":  # what Accelerate's prepare does for an unsharded model
        model.forward = convert_outputs_to_fp32(torch.autocast(device.type, dtype=torch.bfloat16)(model.forward))
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    if zero:  # the parameters in the optimizer's order: the layout of the full optimizer state in checkpoints
        zero_groups = [list(group["params"]) for group in optimizer.param_groups]
        model, optimizer = deepspeed_engine(
            model, optimizer, deepspeed_config(config.sharding, config.deepspeed_config, global_batch=config.batch_size,
                                               world=ranks.world, max_grad_norm=config.max_grad_norm), device)
    if resumed:
        try:
            if sharded:
                load_full_optimizer_state(model, optimizer, optimizer_state)
            elif zero:
                deepspeed_load_optimizer_state(model, zero_groups, optimizer_state)
            else:
                optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ckpt.CheckpointError(f"{latest}: optimizer state does not fit the model of "
                                       f"{run_dir / ckpt.CONFIG_FILE} ({' '.join(str(err).split())[:300]})") from err
        progress = Progress(**state["progress"])
    sampler = BucketBatchSampler(task.train_lengths, config.batch_size, seed=config.seed)
    shards = ShardedBatches(sampler, ranks.rank, ranks.world)  # this rank's slice of every global batch
    # Accelerate's loader wrapper for device placement, resume skipping and gradient accumulation's
    # end-of-epoch sync, told not to shard again (ShardedBatches did) nor to synchronise RNGs.
    # Its own generator: every DataLoader iterator draws a worker base seed, and drawn from torch's
    # global RNG that draw would shift the dropout stream of a resumed run (which makes a new
    # iterator right after restoring the RNG) against the uninterrupted one.
    loader = prepare_data_loader(DataLoader(WindowDataset(task.train_lengths), batch_sampler=shards,
                                            collate_fn=task.collate,
                                            generator=torch.Generator().manual_seed(config.seed)),
                                 device, num_processes=1, process_index=0, put_on_device=True, rng_types=[])

    if resumed:
        if ranks.is_main:
            torn = truncate_metrics(run_dir / ckpt.METRICS_FILE, progress.step)
    elif restarted:
        if ranks.is_main:
            torn = truncate_metrics(run_dir / ckpt.METRICS_FILE, -1)  # the stopped start logged nothing to keep
    else:
        if ranks.is_main:
            run_dir = new_run_dir(config)
            locks.append(ckpt.RunLock(run_dir))
            ckpt.save_run_config(run_dir, config, model_config, tokenizer)
        run_dir = Path(ranks.broadcast(str(run_dir) if ranks.is_main else None))
    if sharded:
        optimizer = accelerator.prepare(optimizer)  # FSDP2 is applied above; Accelerate must not wrap the model
    elif not zero:  # a DeepSpeed engine is not wrapped again
        model, optimizer = accelerator.prepare(model, optimizer)

    if ranks.is_main:
        log = MetricsLog(run_dir / ckpt.METRICS_FILE,
                         tensorboard_dir=run_dir / "tensorboard" if config.log_with == "tensorboard" else None)
    else:
        log = NullLog()
    # Accelerate also steps on an epoch's last, partial accumulation window: ceil, not floor
    steps_per_epoch = max(1, -(-len(shards) // config.grad_accum))
    total_steps = config.max_steps or max(1, int(config.epochs * steps_per_epoch))
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    if torn:
        print(f"[nami] {run_dir / ckpt.METRICS_FILE}: dropped {len(torn)} unreadable line(s) (line "
              f"{', '.join(map(str, torn))}; a crash mid-write tears the last line)", file=sys.stderr, flush=True)
    if resumed:
        # Last: nothing above may consume randomness after it. Ranks > 0 saved theirs in state.json.
        if ranks.rank == 0:
            set_rng_state(state["rng"], torch_rng)
        else:
            set_rank_rng_state(state["rank_rng"][ranks.rank - 1])
        log.write({"type": "resume", "step": progress.step, "from": latest.name, "dropped_log_lines": torn})
        if show:
            print(f"[nami] resuming {run_dir} at step {progress.step} (epoch {progress.epoch})", flush=True)
    else:
        if restarted and ranks.is_main:
            print(f"[nami] {run_dir} stopped before its first checkpoint: starting it again from step 0 with its "
                  "saved config", file=sys.stderr, flush=True)
        log.write({
            "type": "start", "task": config.task, "run_dir": str(run_dir), "params": params, **task.summary(),
            "total_steps": total_steps, "budget_minutes": config.max_minutes, "device": str(device),
            "threads": torch.get_num_threads(), "init_from": config.init_from, "malloc_tuning": resources.MALLOC_TUNING,
            "processes": ranks.world, "global_batch": config.batch_size * config.grad_accum,
        })
        summary = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
                            for k, v in task.summary().items())
        # The run directory is printed even with --quiet: it is what every later command needs.
        if ranks.is_main:
            processes = f", {ranks.world} processes" if ranks.distributed else ""
            print(f"[nami] {config.task} {config.arch} ({params['total']:,} params{processes}) -> {run_dir}",
                  flush=True)
        if show:
            print(f"[nami] data: {summary}", flush=True)

    def fraction_done() -> float:
        p = progress.step / total_steps
        return max(p, progress.train_seconds / budget_s) if budget_s else p

    def full_model() -> torch.nn.Module:
        """The model with whole parameters: itself, or under FSDP2 / ZeRO a gathered copy (a collective)."""
        if not (sharded or zero):
            # Only DDP (several processes) wraps it. Accelerate's unwrap_model imports DeepSpeed where it is
            # installed, whose import prints a warning on stdout (an extra line in --quiet's two).
            return accelerator.unwrap_model(model) if accelerator.num_processes > 1 else model
        copy = task.build_model(model_config)
        copy.load_state_dict(deepspeed_full_weights(model) if zero else full_weights(model))
        return copy.to(device)

    def save_checkpoint() -> torch.nn.Module:
        # Every rank's RNG states and (FSDP2) the gathered weights and optimizer state: collectives,
        # so every rank calls this at the same step.
        others = ranks.gather(rank_rng_state() if ranks.rank > 0 else None)[1:]
        whole = full_model()
        optimizer_state = (full_optimizer_state(model, optimizer.optimizer) if sharded else
                           deepspeed_full_optimizer_state(model, zero_groups) if zero else optimizer)
        if not ranks.is_main:
            return whole
        state = {"progress": asdict(progress), "rng": rng_state(), "world_size": ranks.world,
                 "sharding": config.sharding}
        if others:
            state["rank_rng"] = others
        ckpt.save_checkpoint(run_dir, progress.step, whole, optimizer_state, state, config.keep_checkpoints)
        return whole  # the whole model (under FSDP2 gathered once for both uses)

    last_checkpoint_seconds = progress.train_seconds
    # With a time budget the bar counts training seconds (its total is the budget, so it has an ETA);
    # otherwise it counts optimizer steps.
    if budget_s:
        bar = tqdm(total=round(budget_s), initial=min(round(progress.train_seconds), round(budget_s)),
                   disable=not show,
                   desc=f"train {config.arch}", unit="s",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of training "
                              "[{elapsed}<{remaining}{postfix}]")
    else:
        bar = tqdm(total=total_steps, initial=progress.step, disable=not show, desc=f"train {config.arch}",
                   unit="step")
    model.train()
    # Gradient accumulation weighs batches by their loss units (see the backward below); checkpoints
    # and stops fall on optimizer steps, so a window never spans a resume.
    accumulating, window_units = config.grad_accum > 1, 0.0
    finished = fraction_done() >= 1.0
    with StopSignals() as stop:
        while not finished:
            batches = loader
            if progress.batch_in_epoch:  # exact resume: the epoch continues where it stopped
                batches = accelerator.skip_first_batches(loader, progress.batch_in_epoch)
            # Accelerate's loaders pass their own epoch counter to the sampler when iterated, so
            # both must be told the epoch (a resumed run starts that counter anew).
            sampler.set_epoch(progress.epoch)
            batches.set_epoch(progress.epoch)
            for batch in batches:
                tick = time.perf_counter()
                progress.batch_in_epoch += 1
                if config.branch_schedule:  # stage-wise training: which branches this batch uses
                    set_branches(model, fraction_done(), config.branch_schedule)
                batch = task.ready(batch)  # e.g. masked LM's masks, drawn in step order (exact resume)
                with accelerator.accumulate(model):
                    loss = task.loss(model, batch)
                    units = task.loss_units(batch) if ranks.distributed or accumulating else 1
                    problem = None if torch.isfinite(loss) else f"non-finite loss ({loss.item()})"
                    if ranks.distributed:
                        # Weight this rank's mean by its share of the global batch (DDP averages over
                        # ranks), and skip the batch on every rank if any rank's loss is not finite.
                        total_units, bad = ranks.sum([units, 0.0 if problem is None else 1.0])
                        if bad and problem is None:
                            problem = "non-finite loss on another process"
                        scale = units * ranks.world / total_units
                    if problem is None and accelerator.sync_gradients:  # the learning rate of this step
                        factor = lr_factor(fraction_done(), config.warmup, config.schedule)
                        for group in optimizer.param_groups:
                            group["lr"] = config.lr * factor
                    if problem is None and zero:
                        problem = deepspeed_step(model, loss * scale if ranks.distributed else loss)
                    elif problem is None:
                        if accumulating:
                            # The window's mean over its loss units (tokens, windows), as one big batch
                            # would take it, not the mean of its batches' means: each batch's sum now
                            # (× world: DDP averages over processes), divided by the window's total at
                            # its last batch (Accelerate divides every batch by grad_accum: undone there).
                            accelerator.backward(loss * (units * ranks.world))
                            window_units += total_units if ranks.distributed else units
                        else:
                            accelerator.backward(loss * scale if ranks.distributed else loss)
                        if accelerator.sync_gradients:
                            grads = [p.grad for p in model.parameters() if p.grad is not None]
                            if accumulating:
                                for grad in grads:
                                    grad.mul_(config.grad_accum / max(window_units, 1))
                            # Checked before clipping: a NaN norm would spread NaN into every gradient.
                            if not torch.isfinite(local(torch.nn.utils.get_total_norm(grads))):
                                problem = f"non-finite gradient in {first_nonfinite_gradient(model)}"
                            elif sharded:  # DTensor gradients: torch's clipping computes the global norm
                                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                            else:
                                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    if problem is not None:
                        where = f"at step {progress.step + 1} (epoch {progress.epoch}, batch {progress.batch_in_epoch})"
                        if progress.skipped_batches >= config.nonfinite_skips:
                            raise NonFiniteError(
                                f"{problem} {where}; stopping (nonfinite_skips={config.nonfinite_skips}). "
                                "Lower --lr, use --precision fp32, or check the data."
                            )
                        progress.skipped_batches += 1
                        log.write({"type": "skipped_batch", "step": progress.step, "reason": f"{problem} {where}"})
                        optimizer.zero_grad(set_to_none=True)
                        window_units = 0.0  # the window's gradients so far are gone with it
                        continue
                    if not zero:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if accelerator.sync_gradients:
                            window_units = 0.0
                elapsed = time.perf_counter() - tick
                # One clock, one token count and one stop signal for all ranks (no-op with one process).
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
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(min(elapsed, max(bar.total - bar.n, 0)) if budget_s else 1)
                if progress.step % config.log_every == 0:
                    record = {
                        "type": "train", "step": progress.step, "epoch": progress.epoch,
                        "train_seconds": round(progress.train_seconds, 3),
                        "loss": window["loss"] / window["batches"], "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                        **task.train_metrics(),
                    }
                    log.write(record)
                    bar.set_postfix(step=progress.step, loss=f"{record['loss']:.3f}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                    progress.window = {"loss": 0.0, "tokens": 0, "seconds": 0.0, "batches": 0}
                if fraction_done() >= 1.0:
                    finished = True
                    break
                if progress.train_seconds >= progress.next_eval_seconds:
                    progress.next_eval_seconds += config.eval_every_minutes * 60
                    whole = full_model()  # one gather (FSDP2) for the evaluation and the weights file
                    scores = task.evaluate_sharded(whole, device, full=False, show=False, ranks=ranks)
                    log.write({"type": "eval", "step": progress.step, "train_seconds": round(progress.train_seconds, 3),
                               **scalars(scores)})
                    if show:
                        tqdm.write(f"[nami] step {progress.step}: subset {task.describe(scores)}")
                    if ranks.is_main:
                        ckpt.save_weights(run_dir, whole)
                due_by_steps = config.checkpoint_every_steps and progress.step % config.checkpoint_every_steps == 0
                since_checkpoint = progress.train_seconds - last_checkpoint_seconds
                due_by_time = (config.checkpoint_every_minutes
                               and since_checkpoint >= config.checkpoint_every_minutes * 60)
                if due_by_steps or due_by_time or stop.received:
                    save_checkpoint()
                    last_checkpoint_seconds = progress.train_seconds
                if stop.received:
                    log.write({"type": "interrupted", "step": progress.step, "signal": stop.received})
                    log.close()
                    bar.close()
                    raise TrainingInterrupted(run_dir, progress.step, stop.received)
            else:
                progress.epoch += 1
                progress.batch_in_epoch = 0
    bar.close()

    whole = save_checkpoint()
    if ranks.is_main:
        ckpt.save_weights(run_dir, whole)
    train_tokens_per_s = progress.tokens_seen / progress.train_seconds if progress.train_seconds else float("nan")
    scores = task.evaluate_sharded(whole, device, full=True, show=show, ranks=ranks)
    final = {
        **scalars(scores), "threads": torch.get_num_threads(), "step": progress.step,
        "train_seconds": progress.train_seconds, "train_tokens_per_s": train_tokens_per_s,
        "skipped_batches": progress.skipped_batches, "params": params,
        "peak_rss_mb": round(peak_rss_mb(), 1),  # the whole training process, data and evaluation included
    }
    if ranks.distributed:
        final["processes"] = ranks.world  # tokens/s counts every process's tokens over the main one's clock
    if compiled is not None:
        final["compile_wave_failure"] = compiled.failure  # None: the compiled Wave maths ran throughout
    if ranks.is_main:
        if "predictions" in scores:
            ckpt.write_json(run_dir / ckpt.PREDICTIONS_FILE, scores["predictions"])
        ckpt.write_json(run_dir / ckpt.FINAL_EVAL_FILE, final)
        log.write({"type": "final_eval", **final})
        # One line even with --quiet: the final scores and where they are.
        print(f"[nami] {config.task} {config.arch}: {task.describe(scores)} ({train_tokens_per_s:,.0f} train tok/s, "
              f"{progress.step:,} steps) -> {run_dir}", flush=True)
    log.close()
    ranks.barrier()  # no rank leaves before the main process has written the run's results
    return TrainResult(run_dir, final, params, train_tokens_per_s, progress.step)


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
