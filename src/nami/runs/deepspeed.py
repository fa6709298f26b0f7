"""DeepSpeed ZeRO configs of ``--sharding zero2 / zero3``: nami's own, or a user's file checked and
completed. Torch-free and below training, so that a training config can check its
``--deepspeed-config`` file when it is built, before any data is loaded; the engine itself is
started in :mod:`nami.training.distributed`."""

from __future__ import annotations

import math
from typing import Any

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
