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

import os
import signal
from collections.abc import Iterator
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
