"""Multi-process training, correct by construction (``torchrun`` / ``accelerate launch``).

The rules the loop follows with ``N > 1`` processes (one process: none of this runs, and the
loop is bit for bit the single-process loop):

* **One global batch, sharded.** ``--batch-size`` is the *global* batch. Every rank walks the
  same batch order (a pure function of seed and epoch) and takes the strided slice
  ``batch[rank::N]`` of each batch (:class:`ShardedBatches`); batches smaller than ``N`` are
  skipped by every rank alike. Each rank's mean loss is weighted by its share of the batch's loss
  units (examples for QA, target tokens for the language models) so that DDP's gradient average
  is the gradient of the global mean: the same step as one process with the same global batch.
* **One clock.** Step time is the main process's, broadcast every step (:meth:`Ranks.agree`),
  so the learning rate, evaluation, checkpoint and stop decisions of a time-budgeted run are the
  same on every rank and all ranks stop on the same step. A SIGINT/SIGTERM seen by any rank stops
  all of them after that step.
* **One writer.** Only the main process creates the run directory and writes config, metrics,
  weights and checkpoints; the other ranks learn the run directory by broadcast.
* **Every RNG saved.** Checkpoints hold the Python/NumPy/torch (and CUDA) RNG states of every rank.
* **Evaluation once per question.** QA evaluation is sharded by example and gathered (an example
  scored twice or not at all is an error); other tasks evaluate on the main process.

``sharding="fsdp2"`` shards parameters, gradients and optimizer state across the processes with
PyTorch's FSDP2 (``fully_shard`` on every residual block, then on the whole model; the same gloo
path runs in CI on CPU). It is applied here rather than through Accelerate's FSDP plugin because
the plugin does not run on CPU process groups. Checkpoints and weights are the *full* state
(gathered with ``torch.distributed.checkpoint.state_dict``), so a sharded run's files are the
files of any other run; evaluation runs on a full copy of the model.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler


class Ranks:
    """The process group as the loop sees it: ``rank``, ``world`` (number of processes), ``is_main``
    and the few collectives the loop needs. With one process every method is a no-op."""

    def __init__(self, accelerator: Any = None) -> None:
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.rank == 0
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64; exact for the counts and flags the loop sums)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def agree(self, elapsed: float, tokens: int, loss_mean: float, units: float,
              signum: int | None) -> tuple[float, int, float, int | None]:
        """One collective per micro-batch: the main process's step time, the global token count, the
        global loss sum (``loss_mean * units`` summed; one process: ``loss_mean`` as given) and the
        stop signal (any rank's; the main one's number when it has one)."""
        if not self.distributed:
            return elapsed, tokens, loss_mean, signum
        main_time, tokens_all, loss_all, main_signal, any_signal = self.sum([
            elapsed if self.is_main else 0.0, float(tokens), loss_mean * units,
            float(signum or 0) if self.is_main else 0.0, 1.0 if signum else 0.0])
        agreed = int(main_signal) or (int(signal.SIGTERM) if any_signal else None)
        return main_time, int(tokens_all), loss_all, agreed

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


class ShardedBatches(Sampler[list[int]]):
    """This rank's slice ``batch[rank::world]`` of every global batch of ``sampler``. With
    ``world == 1`` it yields ``sampler``'s batches unchanged. Global batches with fewer than
    ``world`` items are skipped by every rank (``len`` counts the ones yielded)."""

    def __init__(self, sampler: Any, rank: int = 0, world: int = 1) -> None:
        self.sampler, self.rank, self.world = sampler, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def global_batches(self) -> list[list[int]]:
        return [b for b in self.sampler if len(b) >= self.world]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank :: self.world]

    def __len__(self) -> int:
        if self.world == 1:
            return len(self.sampler)
        return len(self.global_batches())


def shard_examples(count: int, rank: int, world: int) -> list[int]:
    """The example indices rank ``rank`` of ``world`` evaluates (strided: equal work per rank)."""
    return list(range(rank, count, world))


def merge_answers(parts: list[dict[str, str]], expected: int) -> dict[str, str]:
    """The ranks' ``{question_id: answer}`` dicts as one; a question answered twice is an error,
    and so is a total different from ``expected``."""
    merged: dict[str, str] = {}
    for part in parts:
        twice = merged.keys() & part.keys()
        if twice:
            raise RuntimeError(f"sharded evaluation answered {len(twice)} question(s) on more than one rank "
                               f"(e.g. {sorted(twice)[0]})")
        merged.update(part)
    if len(merged) != expected:
        raise RuntimeError(f"sharded evaluation answered {len(merged)} questions, expected {expected}")
    return merged


# --- FSDP2 ---------------------------------------------------------------------------------------


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` with FSDP2 applied in place: each residual :class:`~nami.models.block.Block` is one
    unit (its parameters are all-gathered for its forward and backward only), the rest of the model
    (embeddings, heads) is the root unit. Parameters become ``DTensor`` shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from nami.models.block import Block

    if not torch.distributed.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ValueError("option sharding=fsdp2 shards the model across processes: start training with "
                             "torchrun --nproc_per_node N -m nami train ... (or accelerate launch -m nami train ...)")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    model.to(device)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of an FSDP2 model on every rank (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded optimizer state (parameter names as keys) on the main process (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Shard a saved full optimizer state into ``optimizer`` (every rank reads the same file)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: the full value of a ``DTensor`` (a collective), ``tensor`` itself otherwise."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# --- DeepSpeed ZeRO ------------------------------------------------------------------------------
# ``sharding="zero2"`` / ``"zero3"``: the model and optimizer go through ``deepspeed.initialize``
# (applied here, like FSDP2, not through Accelerate's DeepSpeed plugin, which does not run on CPU
# process groups). Weights and optimizer state stay fp32 and ``--precision bf16`` is the same
# autocast as on every other path (DeepSpeed's own "bf16" mode would keep bf16 weights: different
# numbers). Checkpoints hold the *full* weights and a full AdamW state with the unsharded layout,
# read through DeepSpeed's gathering APIs (``GatheredParameters``, ``safe_get_full_optimizer_state``),
# so a ZeRO run's files are the files of any other run and resume exactly.

ZERO_STAGES = {"zero2": 2, "zero3": 3}


def _zero_template(stage: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 1,
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


#: nami's DeepSpeed configs, committed as ``configs/deepspeed/zero2.json`` / ``zero3.json`` too (the
#: starting point of a user's own ``--deepspeed-config``; a test keeps the files equal to these).
ZERO_CONFIGS: dict[int, dict[str, Any]] = {stage: _zero_template(stage) for stage in (2, 3)}


def deepspeed_config(sharding: str, path: str | None, *, global_batch: int, world: int,
                     max_grad_norm: float) -> dict[str, Any]:
    """The DeepSpeed config of a ``--sharding zero2/zero3`` run: nami's (:data:`ZERO_CONFIGS`) or the
    file ``path``, with its ``"auto"`` values filled from the run. Errors name the file and field."""
    import copy
    import json

    stage = ZERO_STAGES[sharding]
    where = f"--deepspeed-config {path}" if path else f"--sharding {sharding}"
    if path is None:
        config = copy.deepcopy(ZERO_CONFIGS[stage])
    else:
        from nami.io import read_input_bytes

        try:  # a regular file (a directory or FIFO is named as such), UTF-8, JSON
            config = json.loads(read_input_bytes(path, "--deepspeed-config").decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not UTF-8 text") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON (line {err.lineno}: {err.msg})") from err
        if not isinstance(config, dict):
            raise ValueError(f"{where}: expected a JSON object")
        _check_deepspeed_fields(config, where)
        found = config["zero_optimization"].get("stage")
        if found != stage:
            raise ValueError(f"{where}: zero_optimization.stage is {found}, but --sharding {sharding} is stage {stage}")
    micro = -(-global_batch // world)
    auto = {"train_micro_batch_size_per_gpu": micro, "gradient_clipping": max_grad_norm,
            "gradient_accumulation_steps": 1, "train_batch_size": micro * world}
    for key, value in auto.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    left = sorted(_auto_keys(config))
    if left:  # DeepSpeed would fail on the string later, with a traceback
        raise ValueError(f"{where}: nami fills \"auto\" only for {', '.join(auto)}; give a value for "
                         f"{', '.join(left)}")
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {key}={value!r}: expected a positive integer (or \"auto\")")
    if config["train_batch_size"] != config["train_micro_batch_size_per_gpu"] * world:
        raise ValueError(f"{where}: train_batch_size={config['train_batch_size']} must be "
                         f"train_micro_batch_size_per_gpu × processes = {config['train_micro_batch_size_per_gpu'] * world} "
                         f"(nami's --batch-size {global_batch} over {world} process(es))")
    clip = config["gradient_clipping"]
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip < 0:
        raise ValueError(f"{where}: gradient_clipping={clip!r}: expected a finite number >= 0 (or \"auto\")")
    if config["gradient_accumulation_steps"] != 1:
        raise ValueError(f"{where}: gradient_accumulation_steps must be 1 (use a larger --batch-size)")
    for key in ("bf16", "fp16"):
        if (config.get(key) or {}).get("enabled") is True:
            raise ValueError(f"{where}: {key}.enabled must be false: nami keeps fp32 weights and trains with "
                             "autocast (--precision bf16)")
        config.setdefault(key, {})["enabled"] = False
    return config


# Sections nami does not apply: the optimizer and its schedule are nami's (AdamW, --lr, --warmup,
# --schedule); a DeepSpeed config that sets them would be silently ignored, so it is refused by name.
_REFUSED_DEEPSPEED_SECTIONS = ("optimizer", "scheduler", "fp16", "amp")


def _check_deepspeed_fields(config: dict[str, Any], where: str) -> None:
    """The types of the fields nami reads, and the sections it would ignore, before DeepSpeed sees them
    (it raised AttributeError for ``{"zero_optimization": 3}`` or ``"bf16": true``)."""
    for key in _REFUSED_DEEPSPEED_SECTIONS:
        if key in config and not (key == "fp16" and config[key] in ({}, {"enabled": False})):
            raise ValueError(f"{where}: the \"{key}\" section is not applied by nami (its optimizer, learning rate "
                             "and schedule are nami's options: --lr, --warmup, --schedule); remove it")
    if not isinstance(config.get("zero_optimization"), dict):
        raise ValueError(f"{where}: zero_optimization: expected an object with \"stage\"")
    for key in ("bf16", "fp16"):
        if key in config and not isinstance(config[key], dict):
            raise ValueError(f"{where}: {key}: expected an object such as {{\"enabled\": false}}")


def _auto_keys(config: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is still the string "auto"."""
    if not isinstance(config, dict):
        return []
    found = []
    for key, value in config.items():
        if value == "auto":
            found.append(prefix + key)
        found += _auto_keys(value, f"{prefix}{key}.")
    return found


def deepspeed_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any],
                     device: torch.device) -> tuple[Any, Any]:
    """``(engine, optimizer)`` of ``deepspeed.initialize`` for ``model`` and its AdamW ``optimizer``."""
    try:
        import deepspeed
    except ImportError as err:
        raise ValueError("option sharding=zero2/zero3 needs DeepSpeed: pip install deepspeed") from err
    if not torch.distributed.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ValueError("option sharding=zero2/zero3 shards the model across processes: start training with "
                             "torchrun --nproc_per_node N -m nami train ... (or accelerate launch -m nami train ...)")
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    # The language models multiply by the token embedding in their own forward (tied output
    # matrix): ZeRO-3 must gather it there too, not only inside the embedding's forward.
    tied = getattr(model, "output_weight", None)
    stale = stale_extension_locks()
    if stale:  # a build killed midway leaves its lock, and every later ZeRO run waits on it forever
        raise ValueError(f"a stale DeepSpeed/torch extension build lock blocks the op build: {', '.join(map(str, stale))} "
                         "(left by a build that was stopped); remove it and run again")
    if int(os.environ.get("RANK", "0")) == 0:
        print("[nami] DeepSpeed: building or loading its optimizer op (the first time on a machine: 30 s to 2 min)",
              file=sys.stderr, flush=True)
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                     dist_init_required=False)
    if config["zero_optimization"]["stage"] == 3 and isinstance(tied, torch.nn.Parameter):
        deepspeed.zero.register_external_parameter(engine.module, tied)
    return engine, ds_optimizer


def stale_extension_locks(root: str | Path | None = None, older_than_s: float = 900.0) -> list[Path]:
    """``lock`` files of torch's C++ extension builds (``$TORCH_EXTENSIONS_DIR``, default
    ``~/.cache/torch_extensions``) older than ``older_than_s``: a build holds its lock for at most a few
    minutes, so an older one was left by a build that was killed."""
    base = Path(root or os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    if not base.is_dir():
        return []
    now = time.time()
    return sorted(p for p in base.rglob("lock") if p.is_file() and now - p.stat().st_mtime > older_than_s)


def deepspeed_step(engine: Any, loss: torch.Tensor) -> str | None:
    """Backward and optimizer step through the engine (it averages gradients over ranks, clips to
    ``gradient_clipping`` and skips a step whose gradient norm is not finite). Returns the problem, if any."""
    engine.backward(loss)
    engine.step()
    norm = engine.get_global_grad_norm()
    if norm is not None and not math.isfinite(float(norm)):
        return "non-finite gradient (the DeepSpeed engine skipped the step)"
    return None


def deepspeed_full_weights(engine: Any) -> dict[str, torch.Tensor]:
    """The whole model's state dict on every rank (ZeRO-3 gathers the parameters: a collective)."""
    import deepspeed

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _link_optimizer_state(engine: Any) -> None:
    """Point every ZeRO-1/2 parameter's optimizer-state fragments at the AdamW state of its group.

    DeepSpeed links them once, right after the *first* parameter group's first step, when the
    other groups (nami has two: with and without weight decay) have no state yet, and never again:
    their fragments stay empty ("exp_avg not found in optimizer state fragment"). Linking again
    once every group has state fixes that. ZeRO-3 reads its partitions directly (no-op there)."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def deepspeed_full_optimizer_state(engine: Any, groups: list[list[torch.nn.Parameter]]) -> dict[str, Any]:
    """A full AdamW ``state_dict()`` (the layout of the unsharded optimizer: parameters numbered in
    ``groups`` order) from DeepSpeed's partitions (a collective: every rank calls it)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    base = engine.optimizer.optimizer  # the torch AdamW over DeepSpeed's flat partitions
    steps = [s["step"] for s in base.state.values() if "step" in s]
    if steps:
        _link_optimizer_state(engine)
    state: dict[int, dict[str, torch.Tensor]] = {}
    param_groups, index = [], 0
    for params, group in zip(groups, base.param_groups):
        ids = []
        for p in params:
            if steps:  # (before the first step AdamW has no state yet, like an unsharded one)
                moments = {key: safe_get_full_optimizer_state(p, key) for key in ("exp_avg", "exp_avg_sq")}
                if any(m is None for m in moments.values()):
                    raise RuntimeError(f"DeepSpeed returned no optimizer state for a parameter of shape "
                                       f"{tuple(p.shape)}")
                state[index] = {"step": steps[0].detach().clone().cpu(),
                                **{k: m.detach().clone().cpu() for k, m in moments.items()}}
            ids.append(index)
            index += 1
        param_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": param_groups}


def deepspeed_load_optimizer_state(engine: Any, groups: list[list[torch.nn.Parameter]], saved: dict[str, Any]) -> None:
    """Put a full AdamW state (:func:`deepspeed_full_optimizer_state`, or an unsharded run's) into
    DeepSpeed's partitions (every rank reads the same file)."""
    from deepspeed.utils import safe_set_full_optimizer_state

    base = engine.optimizer.optimizer
    entries = {int(k): v for k, v in saved["state"].items()}
    if not entries:
        return
    step = next(iter(entries.values()))["step"]
    # AdamW creates its state at the first step; create it now, so that there is a place to write
    # into (ZeRO-3 keys it by its fp32 sub-group partitions, ZeRO-1/2 by the groups' flat partitions).
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or \
        [flat for group in base.param_groups for flat in group["params"]]
    for flat in flats:
        base.state[flat] = {"step": step.detach().clone().to(torch.float32),
                            "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
    _link_optimizer_state(engine)
    index = 0
    for params in groups:
        for p in params:
            entry = entries.get(index)
            if entry is None:
                raise KeyError(f"optimizer state of parameter {index} is missing")
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, entry[key].to(p.device), key)
            index += 1
    for saved_group, group in zip(saved["param_groups"], base.param_groups):
        for key, value in saved_group.items():
            if key != "params":
                group[key] = value
