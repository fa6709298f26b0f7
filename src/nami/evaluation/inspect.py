"""A look inside a QA model for one question: what each layer computed for each token.

For every block, per token of the (first) window:

* ``mixer_share`` — the share of the block's mixing that comes from its main mixer rather than its
  parallel branches, ``|mixer(h)| / (|mixer(h)| + |Σ branches(h)|)``: in a ``wave+conv`` model, how
  much of the update is the global wave and how much the local convolution (1.0 without branches).
  This is the question the fair comparison asks of the model as a whole, asked token by token;
* ``alignment`` (Wave layers) — the mean over dimensions of ``w_{j,k} / G_k``, the cosine of the
  token's phase: how much of each dimension's global norm the token itself carries (near 0: a token
  that relates to the sequence through many others; near ±1: a token that dominates its dimensions);
* ``update`` — the size of the block's change to the token, ``|x_out − x_in| / |x_in|``.

And the span head's start / end scores of each context token. Tokens come with their text and
character offsets in the context, so a page can draw them over the text. Forward hooks only: the
model and its outputs are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from nami.data.batching import QACollator
from nami.data.features import FeatureConfig, build_features
from nami.data.squad import QAExample


@torch.no_grad()
def inspect_qa(model: torch.nn.Module, tokenizer, feature_config: FeatureConfig, *, question: str, context: str,
               question_match: bool = False, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The per-layer, per-token record described in the module docstring (first window of the context)."""
    from nami.models.block import Block
    from nami.models.wave import WaveLayer

    example = QAExample("inspect", question, context, (), "", "<inspect>")
    features = build_features([example], tokenizer, feature_config, show_progress=False)
    batch = QACollator(features, tokenizer.pad_id, sep_id=tokenizer.sep_id, question_match=question_match)([0])
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    types = batch["token_type_ids"].to(device) if "token_type_ids" in batch else None
    length = int(mask[0].sum())
    k = getattr(getattr(model, "config", None), "proxy_tokens", 0) or 0  # proxy tokens sit before the window
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    records: list[dict[str, Any]] = [{} for _ in blocks]
    handles = []
    for index, block in enumerate(blocks):
        handles.append(block.register_forward_hook(_block_hook(records[index])))
        handles.append(block.mixer.register_forward_hook(_output_hook(records[index], "mixer")))
        for branch in block.branches or ():
            handles.append(branch.register_forward_hook(_output_hook(records[index], "branch", add=True)))
        if isinstance(block.mixer, WaveLayer):
            handles.append(block.mixer.to_waves.register_forward_hook(_output_hook(records[index], "waves")))
    was_training = model.training
    model.eval()
    try:
        logits = model(ids, mask, types)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    layers = []
    for index, record in enumerate(records):
        mixer = record["mixer"][0, k:k + length].float().norm(dim=-1)
        branch = record["branch"][0, k:k + length].float().norm(dim=-1) if "branch" in record \
            else torch.zeros_like(mixer)
        layer = {"block": index, "mixer": type(blocks[index].mixer).__name__,
                 "mixer_share": (mixer / (mixer + branch).clamp_min(1e-12)).tolist(),
                 "update": record["update"][0, k:k + length].tolist()}
        if "waves" in record:
            w = record["waves"][0, k:k + length].float()
            norms = w.norm(dim=0, keepdim=True).clamp_min(1e-12)  # G_k over the window's tokens
            layer["alignment"] = (w / norms).mean(dim=-1).tolist()
        layers.append(layer)
    offsets = features.context_offsets[0][:length].tolist()
    return {"tokens": [tokenizer.decode([int(t)]) for t in ids[0, :length].tolist()],
            "offsets": [o if o[0] >= 0 else None for o in offsets],
            "layers": layers,
            "start_scores": _finite(logits.start[0, :length]), "end_scores": _finite(logits.end[0, :length]),
            "windows": len(features.input_ids)}


def _finite(scores: torch.Tensor) -> list[float | None]:
    return [float(s) if torch.isfinite(s) else None for s in scores.float()]


def _output_hook(record: dict[str, Any], key: str, add: bool = False):
    def hook(module, inputs, output):
        value = output.detach()
        record[key] = record[key] + value if add and key in record else value
    return hook


def _block_hook(record: dict[str, Any]):
    def hook(module, inputs, output):
        before = inputs[0].detach().float()
        record["update"] = (output.detach().float() - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-12)
    return hook
