"""Files nami writes and reads back: atomic writes, JSON, sha256 manifests.

The lowest layer (no torch, no other nami module): every layer above — models'
``save_pretrained``, training checkpoints, evaluation outputs, reports — writes through it.

* :func:`atomic_write` writes to a temporary file beside the target and renames it over the target,
  so a crash (even SIGKILL) never leaves a half-written file under the real name.
* A *manifest* (``manifest.json``) records the sha256 of the files of a directory; loading verifies
  it and names the first file that is missing or modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

MANIFEST_FILE = "manifest.json"


class CheckpointError(RuntimeError):
    """A run directory is missing files, is corrupt, or does not match what is asked of it."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(output: str | Path, option: str, *, inputs: Iterable[str | Path] = (),
                      protected: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output path that would destroy what the command reads.

    ``inputs``: files (or directories of files) the command reads: the output may be none of them
    and not inside such a directory. ``protected``: directories (a run directory) the output may not
    be written into. A directory, or a file standing where a parent directory should be, is refused
    too. Raises ``ValueError`` naming ``option``; returns the path.
    """
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"{option} {output}: is a directory (expected a file path)")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{option} {output}: {blocking} is a file, not a directory")
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if resolved == source or (source.is_dir() and source in resolved.parents):
            raise ValueError(f"{option} {output}: would overwrite the input {item}; write the output elsewhere")
    for directory in protected:
        root = Path(directory).resolve()
        if root == resolved or root in resolved.parents:
            raise ValueError(f"{option} {output}: is inside the run directory {directory}; write the output elsewhere")
    return path


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON (non-ASCII kept readable), written atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8"))


def read_json(path: Path) -> Any:
    """Parsed JSON; an unreadable or invalid file raises :class:`CheckpointError` naming it."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, names: Iterable[str]) -> None:
    """Record the sha256 of ``names`` (paths relative to ``directory``) in its manifest."""
    directory = Path(directory)
    write_json(directory / MANIFEST_FILE, {name: sha256_file(directory / name) for name in sorted(names)})


def verify_manifest(directory: Path, required: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` naming the first missing or modified file.

    ``required``: files that loading needs; each must be listed in the manifest (a manifest that
    leaves a file out cannot vouch for it).
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing (cannot verify the files of {directory})")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: not a manifest")
    for name in required:
        if name not in manifest:
            raise CheckpointError(f"{manifest_path}: does not list {name} (required to load {directory})")
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {manifest_path})")
        if sha256_file(path) != expected:
            raise CheckpointError(f"{path}: checksum mismatch (corrupt or modified file)")
