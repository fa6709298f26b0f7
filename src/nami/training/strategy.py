"""How a run lays its model, gradients and optimizer over processes: one ``Strategy`` per run.

The training loop (:mod:`nami.training.loop`) calls the same methods whatever the layout; each
strategy owns its part of wrapping, backward, the optimizer step, and the whole weights and
optimizer state a checkpoint needs:

* ``Replicated`` — a full model per process: one process, or DDP through Accelerate (``--sharding none``);
* ``FSDP2`` — parameters, gradients and optimizer state sharded across processes (PyTorch FSDP2);
* ``ZeRO`` — DeepSpeed ZeRO-2/3: its engine does backward, clipping and the optimizer step.

Checkpoints always hold whole (gathered) weights and optimizer state, so a run saved by one layout
reads back the same under the same layout (the loop refuses another process count).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from accelerate.utils import convert_outputs_to_fp32

from nami.runs.config import TrainConfig
from nami.runs.deepspeed import ZERO_STAGES, deepspeed_config
from nami.training.distributed import (
    Ranks,
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


class Strategy:
    """A full model per process (one process, or DDP through Accelerate). Subclasses change the layout.

    Lifecycle: :meth:`setup` (shard, build the optimizer) → optionally :meth:`load_optimizer_state`
    → :meth:`prepare` (Accelerate's wrapping) → per batch :meth:`backward`, at an optimizer step
    :meth:`clip` and :meth:`step` → for checkpoints :meth:`full_model` and :meth:`optimizer_state`.
    """

    name = "replicated"
    engine_steps = False  # True: backward() also clips and steps (DeepSpeed's engine)

    def __init__(self, config: TrainConfig, accelerator: Any, ranks: Ranks, build_model: Callable[[], torch.nn.Module]):
        self.config, self.accelerator, self.ranks, self.build_model = config, accelerator, ranks, build_model
        self.device = accelerator.device
        self.model: torch.nn.Module | None = None
        self.optimizer: Any = None

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(param_groups(model, c.weight_decay), lr=c.lr, betas=tuple(c.adam_betas),
                                 eps=c.adam_eps)

    def _autocast_outputs(self, model: torch.nn.Module) -> None:
        """bf16 autocast around the forward, as Accelerate's prepare does for a model it wraps."""
        if self.config.precision == "bf16":
            model.forward = convert_outputs_to_fp32(torch.autocast(self.device.type, dtype=torch.bfloat16)(model.forward))

    def setup(self, model: torch.nn.Module) -> None:
        """Lay out the (fully loaded) model and build its optimizer."""
        self.model, self.optimizer = model, self._optimizer(model)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def prepare(self) -> None:
        """Accelerate's device placement, autocast and (several processes) DDP wrapping."""
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

    def backward(self, loss: torch.Tensor) -> str | None:
        self.accelerator.backward(loss)
        return None

    def clip(self, rescale: float | None = None) -> str | None:
        """At an optimizer step: the accumulated gradients times ``rescale``, checked for non-finite
        values (before clipping: a NaN norm would spread NaN into every gradient), then clipped.
        Returns the problem, if any."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if rescale is not None:
            for grad in grads:
                grad.mul_(rescale)
        if not torch.isfinite(local(torch.nn.utils.get_total_norm(grads))):
            return f"non-finite gradient in {first_nonfinite_gradient(self.model)}"
        self._clip_norm()
        return None

    def _clip_norm(self) -> None:
        self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def full_model(self) -> torch.nn.Module:
        """The model with whole parameters (for evaluation and the weights file)."""
        # Only DDP (several processes) wraps it. Accelerate's unwrap_model imports DeepSpeed where it is
        # installed, whose import prints a warning on stdout (an extra line in --quiet's two).
        return self.accelerator.unwrap_model(self.model) if self.accelerator.num_processes > 1 else self.model

    def optimizer_state(self) -> Any:
        """What a checkpoint saves of the optimizer (the optimizer itself, or its gathered state)."""
        return self.optimizer

    def _gathered_model(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        copy = self.build_model()
        copy.load_state_dict(weights)
        return copy.to(self.device)


class FSDP2(Strategy):
    """Parameters, gradients and optimizer state sharded across processes (PyTorch FSDP2)."""

    name = "fsdp2"

    def setup(self, model: torch.nn.Module) -> None:
        model = shard_model(model, self.device)  # after loading full weights, before the optimizer
        self._autocast_outputs(model)
        self.model, self.optimizer = model, self._optimizer(model)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        load_full_optimizer_state(self.model, self.optimizer, state)

    def prepare(self) -> None:
        self.optimizer = self.accelerator.prepare(self.optimizer)  # the model is sharded: not wrapped again

    def _clip_norm(self) -> None:  # DTensor gradients: torch's clipping computes the global norm
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)

    def full_model(self) -> torch.nn.Module:
        return self._gathered_model(full_weights(self.model))  # a collective

    def optimizer_state(self) -> Any:
        return full_optimizer_state(self.model, self.optimizer.optimizer)


class ZeRO(Strategy):
    """DeepSpeed ZeRO-2/3: the engine does backward, clipping and the optimizer step."""

    name = "zero"
    engine_steps = True

    def setup(self, model: torch.nn.Module) -> None:
        self._autocast_outputs(model)
        optimizer = self._optimizer(model)
        # the parameters in the optimizer's order: the layout of the full optimizer state in checkpoints
        self.groups = [list(group["params"]) for group in optimizer.param_groups]
        c = self.config
        self.model, self.optimizer = deepspeed_engine(
            model, optimizer, deepspeed_config(c.sharding, c.deepspeed_config, global_batch=c.batch_size,
                                               world=self.ranks.world, max_grad_norm=c.max_grad_norm), self.device)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        deepspeed_load_optimizer_state(self.model, self.groups, state)

    def prepare(self) -> None:
        pass  # a DeepSpeed engine is not wrapped again

    def backward(self, loss: torch.Tensor) -> str | None:
        return deepspeed_step(self.model, loss)  # backward, clipping and the step

    def step(self) -> None:
        pass  # done in backward

    def full_model(self) -> torch.nn.Module:
        return self._gathered_model(deepspeed_full_weights(self.model))  # ZeRO-3 gathers: a collective

    def optimizer_state(self) -> Any:
        return deepspeed_full_optimizer_state(self.model, self.groups)


def strategy_for(config: TrainConfig, accelerator: Any, ranks: Ranks,
                 build_model: Callable[[], torch.nn.Module]) -> Strategy:
    """The strategy ``config.sharding`` names (``none`` → :class:`Strategy`)."""
    cls = FSDP2 if config.sharding == "fsdp2" else ZeRO if config.sharding in ZERO_STAGES else Strategy
    return cls(config, accelerator, ranks, build_model)
