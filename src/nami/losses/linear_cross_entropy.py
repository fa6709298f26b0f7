"""Cross-entropy at the vocabulary layer without the N × V logits: ``linear_cross_entropy``.

``linear_cross_entropy(hidden, classifier_weight, targets)`` equals
``cross_entropy(hidden @ classifier_weight.T, targets)``; the point is memory. At N = 32k positions
and a 128k vocabulary the fp32 logits alone are 16 GiB, and autograd keeps them (or their softmax)
alive until backward. Implementations (``IMPLEMENTATIONS``):

- ``"naive"`` — ``F.cross_entropy(F.linear(hidden, W), targets)``: the reference, materialises
  the logits.
- ``"torch_chunked"`` — PyTorch 2.13's ``F.linear_cross_entropy`` with
  ``LinearCrossEntropyOptions()``: chunks over the *batch*, computes the gradients during forward.
  Exact, maintained upstream: our anchor for correctness and speed on CPU.
- ``"blockwise"`` — nami's Cut Cross-Entropy (``nami.losses.blockwise``): blocks over rows *and*
  vocabulary, streaming log-sum-exp, recompute in backward, optional gradient filtering with a
  provable bound (``filter_policy="bounded_mass"``) and vocabulary ordering. We hand-write it
  because no library does CCE on CPU: the ``cut-cross-entropy`` kernels are Triton/CUDA-only and
  its CPU path (``torch_compile``) materialises the logits.
- ``"cce"`` — the ``cut-cross-entropy`` package's Triton kernel (optional dependency,
  ``pip install 'nami[cce]'``; CUDA with a bf16-capable GPU only). Missing package or missing CUDA
  raises — never a silent fallback.
- ``"auto"`` — ``"cce"`` on CUDA tensors when the package imports (and the GPU does bf16), otherwise
  ``AUTO_CPU_IMPL`` by the matmul dtype (``blockwise`` in both, from the measurements below), and
  ``"blockwise"`` whenever gradient filtering is requested (the only CPU path that filters).
  ``resolve_impl`` says what ``"auto"`` picks.

Semantics shared by every implementation (the dispatcher owns them):

- ``reduction="mean"`` divides the summed loss by the number of non-ignored targets; when every
  target is ignored the loss is **0 with zero gradients**. (``F.cross_entropy`` returns NaN there
  — 0/0 — with zero gradients; ``F.linear_cross_entropy``'s chunked path returns NaN with NaN
  gradients. A batch of padding must not poison a training run, so we differ deliberately.)
  ``"sum"`` sums; ``"none"`` returns (N,) with 0 at ignored positions.
- Under ``torch.autocast``: ``naive`` does what autocast does (bf16 logits, fp32 cross-entropy);
  ``blockwise`` and ``cce`` run their matmuls in the autocast dtype with an fp32 log-sum-exp and
  return an fp32 loss (see ``nami.losses.blockwise``); ``torch_chunked`` is left exactly as PyTorch
  runs it — ``F.linear_cross_entropy`` is not on autocast's op list, so it computes in the inputs'
  dtype (fp32 parameters → fp32).
- Targets outside ``[0, V)`` that are not ``ignore_index`` raise ``ValueError`` (a negative index
  would otherwise silently wrap around in a gather). This check synchronises with the device.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nami.losses.blockwise import (
    BOUNDED_MASS_EPS,
    FILTER_POLICIES,
    PAPER_THRESHOLD,
    BlockwiseConfig,
    blockwise_nll,
)

IMPLEMENTATIONS = ("naive", "torch_chunked", "blockwise", "cce")
REDUCTIONS = ("mean", "sum", "none")

AUTO_CPU_IMPL = {"full_precision": "blockwise", "low_precision": "blockwise"}
"""What ``impl="auto"`` uses without CUDA + ``cut-cross-entropy``, by the dtype the matmuls run in.

The faster of the two memory-efficient CPU paths (``torch_chunked``, ``blockwise``); the evidence is
``benchmarks/linear_cross_entropy.py`` → ``results/linear_cross_entropy.md``, section "blockwise vs
torch_chunked". So far only the quick case (N=2048, V=8192, D=256, 2 threads, quiet machine, median
of 3): fp32 — naive 216 ms / 229 MB, torch_chunked 213 ms / 113 MB, blockwise 212 ms / 29 MB (a tie
in time: torch_chunked does three matmuls, computing the gradients inside forward, blockwise four,
recomputing the logits in backward; on a tie the upstream-maintained path is kept). bf16 autocast
(how nami trains) — naive 146 ms, torch_chunked 214 ms, blockwise 67 ms: PyTorch runs
``F.linear_cross_entropy`` in fp32 under autocast (it is not on autocast's op list; fed bf16
tensors it is slower still on this CPU) while blockwise runs its matmuls in bf16 (AMX).
At the issue's reference case (N=8192, V=32768, D=256, 2 threads, ``--cases 8192x32768x256``,
commit 4ae440d) blockwise is faster than torch_chunked in both dtypes — fp32 2956 vs 3625 ms
(61 vs 176 MB; naive 3686 ms / 3093 MB), bf16 1027 vs 3822 ms (98 vs 176 MB; naive 2283 ms) — so
``auto`` picks blockwise in both. Re-check against the full grid when it has run.
"""

DEFAULT_BLOCK_SIZE = (512, 2048)
"""(rows, vocabulary entries) per ``blockwise`` tile: a 4 MiB fp32 logits tile (fits in cache better than
16 MiB tiles; measured single-threaded at N=2048, V=8192, D=256, among 256..2048 × 1024..8192)."""

CCE_PACKAGE = "cut-cross-entropy==25.1.1"


def linear_cross_entropy(
    hidden: torch.Tensor,
    classifier_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    impl: str = "auto",
    block_size: int | Sequence[int] = DEFAULT_BLOCK_SIZE,
    filter_threshold: float | None = None,
    filter_policy: str = "none",
    vocab_order: torch.Tensor | None = None,
    stats: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ classifier_weight.T, targets)`` without materialising the logits.

    Args:
        hidden: (N, D) floating tensor (flatten batch/sequence dimensions first).
        classifier_weight: (V, D), same dtype and device as ``hidden`` (unless under autocast).
        targets: (N,) ``torch.long`` class indices in ``[0, V)`` or ``ignore_index``.
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``"mean"`` (over non-ignored targets; 0 when none), ``"sum"`` or ``"none"``.
        impl: one of ``IMPLEMENTATIONS`` or ``"auto"`` (see the module docstring).
        block_size: ``blockwise`` tile, ``(rows, vocab)``, or one int for both.
        filter_policy: gradient filtering, ``"none"`` (exact), ``"paper"`` (skip softmax segments
            whose every value is below the threshold, default ``2**-12``) or ``"bounded_mass"``
            (skip segments only while each row's total skipped softmax mass stays ≤ the threshold,
            default 1e-3). ``blockwise`` supports all three, ``cce`` ``"none"``/``"paper"``, the
            exact implementations only ``"none"``. The forward loss is never filtered.
        filter_threshold: the policy's threshold in ``[0, 1)``; ``None`` → the policy default,
            ``0`` → filtering off.
        vocab_order: optional permutation (V,) ``torch.long`` of the vocabulary applied before
            blocking, so that likely tokens share blocks and filtering skips more (e.g.
            ``frequency_vocab_order(counts)``). Does not change the result beyond rounding. Used by
            ``blockwise`` only (the exact implementations do not need it; ``cce`` orders by itself).
        stats: optional dict; ``blockwise`` fills it during backward with the gradient filter's
            record (``dropped_mass``, ``grad_logits_l1_error``, ``skipped_fraction``, ...; see
            ``nami.losses.blockwise``) and every implementation sets ``stats["impl"]``.

    Returns:
        scalar for ``"mean"``/``"sum"``, (N,) for ``"none"``.
    """
    n, v, n_valid = _validate(hidden, classifier_weight, targets, ignore_index, reduction, impl)
    rows, bv = _block_size(block_size)
    policy, threshold = _filter(filter_policy, filter_threshold)
    if vocab_order is not None:
        _validate_order(vocab_order, v, classifier_weight.device)
    chosen = resolve_impl(impl, hidden.device, policy, _compute_dtype(hidden))
    if policy != "none" and chosen in ("naive", "torch_chunked"):
        raise ValueError(f"filter_policy={filter_policy!r} needs impl='blockwise' or 'cce'; "
                         f"{chosen!r} computes the exact gradient")
    if policy == "bounded_mass" and chosen == "cce":
        raise ValueError("filter_policy='bounded_mass' is implemented by impl='blockwise' only; "
                         "the cut-cross-entropy kernel supports 'none' and 'paper'")
    if stats is not None:
        stats["impl"] = chosen

    if n_valid == 0:
        # Every target ignored: 0 with zero gradients (an empty sum keeps the graph connected).
        zero = (hidden[:0].sum() + classifier_weight[:0].sum()).float()
        return zero if reduction != "none" else torch.zeros(n, device=hidden.device) + zero
    if chosen == "naive":
        return _naive(hidden, classifier_weight, targets, ignore_index, reduction)
    if chosen == "torch_chunked":
        return _torch_chunked(hidden, classifier_weight, targets, ignore_index, reduction)
    if chosen == "cce":
        return _cce(hidden, classifier_weight, targets, ignore_index, reduction, policy, threshold)
    loss = _blockwise(hidden, classifier_weight, targets, targets != ignore_index, reduction, rows, bv, policy,
                      threshold, vocab_order, stats)
    return loss / n_valid if reduction == "mean" else loss


def resolve_impl(impl: str = "auto", device: torch.device | str = "cpu", filter_policy: str = "none",
                 compute_dtype: torch.dtype = torch.float32) -> str:
    """The implementation ``impl`` stands for (``"auto"`` resolved) on ``device``.

    ``compute_dtype`` is the dtype the matmuls would run in: the autocast dtype under autocast,
    else the inputs' dtype.
    """
    if impl != "auto":
        return impl
    device = torch.device(device)
    if device.type == "cuda" and filter_policy != "bounded_mass" and cce_available():
        return "cce"
    if filter_policy != "none":
        return "blockwise"
    low = compute_dtype in (torch.bfloat16, torch.float16)
    return AUTO_CPU_IMPL["low_precision" if low else "full_precision"]


def cce_available() -> bool:
    """Whether ``impl="cce"`` can run here: CUDA, a bf16-capable GPU and the package installed."""
    return (torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            and importlib.util.find_spec("cut_cross_entropy") is not None)


def frequency_vocab_order(counts: torch.Tensor) -> torch.Tensor:
    """A ``vocab_order`` putting frequent tokens first (descending ``counts``, stable)."""
    if counts.dim() != 1:
        raise ValueError(f"counts must be 1-D (V,), got shape {tuple(counts.shape)}")
    return torch.sort(counts, descending=True, stable=True).indices


# --------------------------------------------------------------------------------------------
# implementations: each returns reduction "sum" (scalar) or "none" (N,), ignored rows → 0


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def _naive(hidden, weight, targets, ignore_index, reduction):
    return F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=ignore_index, reduction=reduction)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype ``blockwise`` (and F.linear) runs the matmuls in: autocast's, else the inputs'."""
    low = _autocast_dtype(hidden.device)
    return low if low is not None and hidden.dtype != torch.float64 else hidden.dtype


def _torch_chunked(hidden, weight, targets, ignore_index, reduction):
    # Exactly what PyTorch does, autocast included: F.linear_cross_entropy is not on autocast's list,
    # so under autocast it computes in the inputs' dtype (fp32 for fp32 parameters).
    return F.linear_cross_entropy(hidden, weight, targets, ignore_index=ignore_index, reduction=reduction,
                                  options=torch.nn.LinearCrossEntropyOptions())


def _blockwise(hidden, weight, targets, valid, reduction, rows, bv, policy, threshold, vocab_order, stats):
    compute = _compute_dtype(hidden)
    n = hidden.shape[0]
    if vocab_order is not None:
        weight = weight.index_select(0, vocab_order)
        inverse = torch.empty_like(vocab_order)
        inverse[vocab_order] = torch.arange(vocab_order.numel(), device=vocab_order.device)
        targets = torch.where(valid, inverse[targets.clamp(0, vocab_order.numel() - 1)], targets)
    row_index = None
    if not bool(valid.all()):
        row_index = valid.nonzero().squeeze(1)
        hidden, targets = hidden.index_select(0, row_index), targets.index_select(0, row_index)
    cfg = BlockwiseConfig(block_rows=rows, block_vocab=bv, filter_policy=policy, threshold=threshold,
                          compute_dtype=compute, stats=stats, row_index=row_index, n_rows_total=n)
    nll = blockwise_nll(hidden, weight, targets, cfg)
    if reduction != "none":
        return nll.sum()
    if row_index is None:
        return nll
    return nll.new_zeros(n).index_put((row_index,), nll)


def _cce(hidden, weight, targets, ignore_index, reduction, policy, threshold):
    if hidden.device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"impl='cce' needs CUDA tensors on a CUDA machine (the cut-cross-entropy kernel is "
                           f"Triton/CUDA-only); got device {hidden.device}, torch.cuda.is_available()="
                           f"{torch.cuda.is_available()}. Use impl='blockwise' or 'torch_chunked' on CPU.")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy
    except ImportError as error:
        raise ImportError(f"impl='cce' needs the optional package {CCE_PACKAGE!r} "
                          f"(pip install 'nami[cce]'): {error}") from error
    if not torch.cuda.is_bf16_supported():
        raise RuntimeError("impl='cce' needs a bf16-capable (Ampere or newer) GPU")
    low = _autocast_dtype(hidden.device)
    if low is not None:
        hidden, weight = hidden.to(low), weight.to(low)
    filter_eps = None if policy == "none" else float(threshold)
    loss = cce_linear_cross_entropy(hidden, weight, targets, ignore_index=ignore_index, reduction=reduction,
                                    filter_eps=filter_eps, impl="cce")
    return loss.float()


# --------------------------------------------------------------------------------------------
# validation


def _validate(hidden, weight, targets, ignore_index, reduction, impl) -> tuple[int, int, int]:
    for name, t in (("hidden", hidden), ("classifier_weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")  # noqa: TRY004
    if impl != "auto" and impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {IMPLEMENTATIONS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (N, D); got shape {tuple(hidden.shape)} (flatten leading dims with "
                         f".flatten(0, -2))")
    if weight.dim() != 2:
        raise ValueError(f"classifier_weight must be (V, D); got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"hidden (N, D) = {tuple(hidden.shape)} and classifier_weight (V, D) = "
                         f"{tuple(weight.shape)} disagree on D")
    if weight.shape[0] == 0 or hidden.shape[1] == 0:
        raise ValueError(f"empty vocabulary or hidden size: classifier_weight {tuple(weight.shape)}")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets must be (N,) = ({hidden.shape[0]},); got shape {tuple(targets.shape)}")
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be torch.long class indices; got {targets.dtype}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"hidden and classifier_weight must be floating point; got {hidden.dtype}, {weight.dtype}")
    if hidden.dtype != weight.dtype and not torch.is_autocast_enabled(hidden.device.type):
        raise ValueError(f"hidden ({hidden.dtype}) and classifier_weight ({weight.dtype}) must have the same dtype "
                         f"outside autocast")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(f"hidden, classifier_weight and targets must be on one device; got {hidden.device}, "
                         f"{weight.device}, {targets.device}")
    if not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")  # noqa: TRY004
    v = weight.shape[0]
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= v))
    if bool(bad.any()):
        first = int(targets[bad][0])
        raise ValueError(f"target {first} is outside [0, V={v}) and is not ignore_index={ignore_index}")
    return hidden.shape[0], v, int(valid.sum())


def _block_size(block_size) -> tuple[int, int]:
    sizes = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(
            f"block_size must be a positive int or (rows, vocab) pair of positive ints; got {block_size!r}"
        )
    return sizes


def _filter(policy: str, threshold: float | None) -> tuple[str, float]:
    if policy not in FILTER_POLICIES:
        raise ValueError(f"unknown filter_policy {policy!r}; expected one of {FILTER_POLICIES}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise ValueError(f"filter_threshold must be a number in [0, 1) or None; got {threshold!r}")
        if policy == "none" and threshold != 0:
            raise ValueError(f"filter_threshold={threshold} given with filter_policy='none'; choose a policy "
                             f"('paper' or 'bounded_mass')")
    if policy == "none" or threshold == 0:
        return "none", 0.0
    if threshold is None:
        threshold = PAPER_THRESHOLD if policy == "paper" else BOUNDED_MASS_EPS
    return policy, float(threshold)


def _validate_order(order: torch.Tensor, v: int, device: torch.device) -> None:
    if not isinstance(order, torch.Tensor) or order.dtype != torch.long or order.shape != (v,):
        raise ValueError(f"vocab_order must be a (V,) = ({v},) torch.long permutation; got "
                         f"{getattr(order, 'dtype', type(order).__name__)} {tuple(getattr(order, 'shape', ()))}")
    if order.device != device:
        raise ValueError(f"vocab_order is on {order.device}, classifier_weight on {device}")
    if not bool((torch.sort(order).values == torch.arange(v, device=order.device)).all()):
        raise ValueError("vocab_order is not a permutation of range(V)")
