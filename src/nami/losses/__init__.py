"""Vocabulary-layer losses: ``linear_cross_entropy`` (Cut Cross-Entropy and friends)."""

from nami.losses.blockwise import BOUNDED_MASS_EPS, FILTER_POLICIES, PAPER_THRESHOLD
from nami.losses.linear_cross_entropy import (
    AUTO_CPU_IMPL,
    DEFAULT_BLOCK_SIZE,
    IMPLEMENTATIONS,
    cce_available,
    frequency_vocab_order,
    linear_cross_entropy,
    resolve_impl,
)

__all__ = [
    "AUTO_CPU_IMPL",
    "BOUNDED_MASS_EPS",
    "DEFAULT_BLOCK_SIZE",
    "FILTER_POLICIES",
    "IMPLEMENTATIONS",
    "PAPER_THRESHOLD",
    "cce_available",
    "frequency_vocab_order",
    "linear_cross_entropy",
    "resolve_impl",
]
