"""Bytes per token that one residual block keeps for backward: Transformer vs Wave (the default
hand-written backward, and autograd through the plain maths), measured with autograd's saved-tensor
hooks under bf16 autocast and in fp32.

    python benchmarks/block_saved_bytes.py [--preset small] [--causal] [--out results/block_saved_bytes.json]

Every tensor autograd saves during one block's forward is recorded once (tensors sharing storage
are counted once). Weights and their bf16 copies do not grow with the sequence, so the per-token
figure is the difference between two sequence lengths divided by the extra tokens:
``(bytes(S=1024) − bytes(S=512)) / (B · 512)``, reported also in units of ``D`` (bytes per token
per model dimension), the unit in which the memory issue counts (a Transformer block ≈ 36·D in
bf16 with its FFN). Split into the mixer (norm1 + mixer + residual) and the FFN half by measuring
the mixer alone. This is the per-block count; ``nami bench scaling`` measures whole-model training
memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from nami.models import MixerInputs, ModelConfig
from nami.models.block import Block
from nami.models.registry import mixer_class
from nami.models.speed import autograd_wave_layers
from nami.reports.environment import git_commit, machine_description, now_iso, provenance_lines

VARIANTS = {"transformer": ("transformer", False), "wave (autograd, --no-wave-recompute)": ("wave", True),
            "wave (default: hand-written backward)": ("wave", False)}


def saved_bytes(fn, x: torch.Tensor, bf16: bool) -> int:
    """Bytes of the distinct storages autograd saves while ``fn(x)`` runs forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fn(x)
    return sum(storages.values())


def per_token(block: Block, part: str, d_model: int, batch: int, lengths: tuple[int, int], bf16: bool) -> float:
    counts = []
    for length in lengths:
        torch.manual_seed(0)
        x = torch.randn(batch, length, d_model, requires_grad=True)
        inputs = MixerInputs(padding_mask=torch.ones(batch, length, dtype=torch.bool))
        if part == "block":
            counts.append(saved_bytes(lambda t: block(t, inputs), x, bf16))
        else:  # the mixer half: norm1 → mixer → residual
            counts.append(saved_bytes(lambda t: t + block.mixer(block.norm1(t), inputs), x, bf16))
    return (counts[1] - counts[0]) / (batch * (lengths[1] - lengths[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--causal", action="store_true", help="decoder blocks (prefix norms / causal attention)")
    parser.add_argument("--out", default="results/block_saved_bytes.json")
    args = parser.parse_args()
    commit = git_commit()
    lengths = (512, 1024)
    rows = {}
    for precision in ("bf16", "fp32"):
        for name, (arch, autograd) in VARIANTS.items():
            config = ModelConfig.from_name(args.preset, arch, vocab_size=1000, max_len=max(lengths),
                                           dropout=args.dropout, causal=args.causal)
            block = Block(config, mixer_class(config.layer_mixers()[0]))
            if autograd:
                autograd_wave_layers(torch.nn.ModuleList([block]))
            bf16 = precision == "bf16"
            whole = per_token(block, "block", config.d_model, args.batch, lengths, bf16)
            mixer = per_token(block, "mixer", config.d_model, args.batch, lengths, bf16)
            rows[f"{name} {precision}"] = {
                "block": name, "precision": precision, "bytes_per_token": whole, "per_D": whole / config.d_model,
                "mixer_half_per_D": mixer / config.d_model, "ffn_half_per_D": (whole - mixer) / config.d_model,
                "d_model": config.d_model, "d_ff": config.d_ff}
            print(name, precision, rows[f"{name} {precision}"], flush=True)
    result = {"command": "python benchmarks/block_saved_bytes.py " + " ".join(sys.argv[1:]), "commit": commit,
              "machine": machine_description(), "date": now_iso(), "preset": args.preset, "batch": args.batch,
              "dropout": args.dropout, "causal": args.causal, "lengths": list(lengths), "precision": "bf16 autocast and fp32", "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    d = next(iter(rows.values()))["d_model"]
    lines = [f"# Bytes one {'decoder ' if args.causal else ''}block keeps for backward, per token (preset "
             f"{args.preset}: D = {d}, dropout {args.dropout})", "",
             "| block | precision | bytes / token | × D | mixer half (× D) | FFN half (× D) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows.values():
        lines.append(f"| {row['block']} | {row['precision']} | {row['bytes_per_token']:,.0f} | {row['per_D']:.1f} | "
                     f"{row['mixer_half_per_D']:.1f} | {row['ffn_half_per_D']:.1f} |")
    lines += ["", "Per-token bytes = (saved bytes at S = 1024 − at S = 512) / extra tokens, so weights and their "
              "bf16 copies (which do not grow with S) drop out. Storages shared by several saved tensors count once.",
              "", *provenance_lines(result)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
