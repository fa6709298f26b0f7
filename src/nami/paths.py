"""Where nami looks for data and caches.

Data: ``$NAMI_DATA`` if set, else ``../shared/data`` next to the current directory or next to
the source checkout. Caches (trained default tokenizers, tokenized features):
``$NAMI_CACHE`` if set, else ``~/.cache/nami``.
"""

from __future__ import annotations

import os
from pathlib import Path

# Relative to the data root (see ../shared/data/README.md).
JAQUAD_TRAIN = "jaquad/train"
JAQUAD_DEV = "jaquad/dev"
JSQUAD_DEV = "jsquad/valid-v1.3.json"

# The QA model that ships with nami (``nami export``; its card is README.md beside the weights):
# ``nami ask`` and ``pipeline("question-answering")`` use it when no model is named.
SHIPPED_QA = Path(__file__).resolve().parent / "shipped" / "reader"


class DataNotFoundError(FileNotFoundError):
    """The data root or a default data file cannot be found."""


def data_root() -> Path:
    """The directory holding ``jaquad/`` and ``jsquad/``."""
    env = os.environ.get("NAMI_DATA")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(f"$NAMI_DATA={env} is not a directory")
        return root
    candidates = [Path.cwd() / ".." / "shared" / "data", Path.cwd() / "shared" / "data"]
    repo_root = Path(__file__).resolve().parents[2]  # src/nami/paths.py -> checkout root
    candidates.append(repo_root / ".." / "shared" / "data")
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    raise DataNotFoundError(
        "cannot find the data directory: set $NAMI_DATA or place the data at ../shared/data "
        f"(looked in: {', '.join(str(c) for c in candidates)})"
    )


def default_data(relative: str) -> Path:
    """A default data file or directory under :func:`data_root`, checked to exist."""
    path = data_root() / relative
    if not path.exists():
        raise DataNotFoundError(f"default data {relative!r} not found under {data_root()}")
    return path


def shipped_qa() -> Path:
    """The shipped QA model's directory, checked to exist."""
    if not (SHIPPED_QA / "config.json").is_file():
        raise DataNotFoundError(f"no model named and no shipped model at {SHIPPED_QA} (this installation has "
                                "none): name a trained run directory")
    return SHIPPED_QA


def cache_dir() -> Path:
    """nami's cache directory (created on demand)."""
    env = os.environ.get("NAMI_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "nami"
    path.mkdir(parents=True, exist_ok=True)
    return path
