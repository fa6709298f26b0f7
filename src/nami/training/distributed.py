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

# The configs themselves (nami's, or a user's file checked and completed) are in nami.runs.deepspeed:
# TrainConfig checks a --deepspeed-config file when it is built.


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
