"""Training steps of both encoders on one device, and an FSDP2 parity smoke run (part of gpu_check.sh).

    python benchmarks/gpu_train_check.py steps --device cuda --out OUT/train_steps.json
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_train_check.py fsdp2 --device cuda --out OUT/fsdp2.json
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_train_check.py zero3 --device cuda --out OUT/zero3.json

``steps``: QA training steps (AdamW, bf16 autocast) of the Wave and Transformer encoders on random
token ids — tokens/s (median of ``--repeats`` timed blocks) and peak device memory. ``fsdp2``:
the same steps with the model sharded by :func:`nami.training.distributed.shard_model` against an
unsharded copy with the same batches; the largest parameter difference is recorded (fp32).
``zero2`` / ``zero3``: the same through a DeepSpeed ZeRO engine (:func:`nami.training.distributed.deepspeed_engine`,
nami's config, needs ``pip install deepspeed``).
Both run on CPU too (``--device cpu``), which is how the script itself is tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nami.models import ModelConfig, QAModel


def batch(config: ModelConfig, batch_size: int, seq: int, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch_size, seq), generator=g)
    starts = torch.randint(1, seq - 8, (batch_size,), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, dtype=torch.bool).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device), "start": starts.to(device),
            "end": (starts + 3).to(device)}


def step(model, optimizer, b, device, precision: str) -> float:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    loss = QAModel.loss(logits, b["start"], b["end"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(args) -> dict:
    device = torch.device(args.device)
    out = {}
    for arch in ("wave", "transformer"):
        torch.manual_seed(0)
        config = ModelConfig.from_name(args.preset, arch=arch, vocab_size=32000, max_len=args.seq, type_vocab_size=2)
        model = QAModel(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b = batch(config, args.batch, args.seq, device, 0)
        for _ in range(args.warmup):
            step(model, optimizer, b, device, args.precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, b, device, args.precision)
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times) / args.steps
        out[arch] = {"tokens_per_s": args.batch * args.seq / seconds, "step_ms": 1000 * seconds,
                     "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
                     "params": sum(p.numel() for p in model.parameters())}
        print(arch, out[arch], flush=True)
    out["wave_over_transformer"] = out["wave"]["tokens_per_s"] / out["transformer"]["tokens_per_s"]
    return out


def run_fsdp2(args) -> dict:
    import copy

    from nami.training.distributed import full_weights, shard_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", arch="wave", vocab_size=1000, max_len=64, type_vocab_size=2)
    plain = QAModel(config).to(device)
    sharded = shard_model(copy.deepcopy(plain), device)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (plain, sharded)]
    for i in range(3):
        b = batch(config, 8, 64, device, i)
        for model, optimizer in zip((plain, sharded), optimizers):
            step(model, optimizer, b, device, "fp32")
    gathered = full_weights(sharded)
    reference = plain.state_dict()
    difference = max(float((gathered[k].to(device) - reference[k]).abs().max()) for k in reference)
    result = {"world_size": torch.distributed.get_world_size(), "steps": 3, "max_parameter_difference": difference,
              "ok": difference < 1e-5}
    print("fsdp2", result, flush=True)
    return result


def run_zero(args) -> dict:
    import copy

    from nami.runs.deepspeed import deepspeed_config
    from nami.training.distributed import deepspeed_engine, deepspeed_full_weights, deepspeed_step

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", arch="wave", vocab_size=1000, max_len=64, type_vocab_size=2)
    plain = QAModel(config).to(device)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    shadow = copy.deepcopy(plain)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    engine, _ = deepspeed_engine(shadow, torch.optim.AdamW(shadow.parameters(), lr=1e-3),
                                 deepspeed_config(args.mode, None, global_batch=8, world=world, max_grad_norm=1.0),
                                 device)
    for i in range(3):
        b = batch(config, 8, 64, device, i)
        step(plain, optimizer, b, device, "fp32")
        loss = QAModel.loss(engine(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b["start"], b["end"])
        problem = deepspeed_step(engine, loss)
        if problem:
            raise RuntimeError(problem)
    gathered = deepspeed_full_weights(engine)
    reference = plain.state_dict()
    difference = max(float((gathered[k].to(device) - reference[k]).abs().max()) for k in reference)
    result = {"world_size": world, "steps": 3, "max_parameter_difference": difference, "ok": difference < 1e-5}
    print(args.mode, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("steps", "fsdp2", "zero2", "zero3"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    result = (run_steps(args) if args.mode == "steps" else run_fsdp2(args) if args.mode == "fsdp2"
              else run_zero(args))
    if args.mode == "steps" or torch.distributed.get_rank() == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": args.device, **vars(args), "out": str(args.out), **result},
                                       indent=2, default=str) + "\n", "utf-8")


if __name__ == "__main__":
    main()
