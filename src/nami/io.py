"""Files nami writes and reads back: atomic writes, JSON, sha256 manifests.

The lowest layer (no torch, no other nami module): every layer above — models'
``save_pretrained``, training checkpoints, evaluation outputs, reports — writes through it.

* :func:`atomic_write` writes to a temporary file beside the target and renames it over the target,
  so a crash (even SIGKILL) never leaves a half-written file under the real name.
* A *manifest* (``manifest.json``) records the sha256 of the files of a directory; loading verifies
  it and names the first file that is missing or modified.
* :func:`read_input_bytes` / :func:`read_input_json` read what a user names as input: regular files
  only (a FIFO would hang, ``/dev/zero`` would fill memory), a size limit, symlink loops named as such.
* :func:`read_jsonl` reads an append-only log and tolerates the torn last line a crash leaves.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

MANIFEST_FILE = "manifest.json"


class CheckpointError(RuntimeError):
    """A run directory is missing files, is corrupt, or does not match what is asked of it."""


class InputFileError(ValueError):
    """A file the user named cannot be read as what it should be: ``"LABEL: REASON"`` (``.reason``)."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.reason = reason


class CommandFailed(RuntimeError):
    """A child process of a multi-run command (compare, ablate) failed; the message says where to look."""


# Inputs larger than this are refused rather than read into memory (the JaQuAD train split is ~40 MB).
MAX_INPUT_BYTES = 2 << 30


def describe_os_error(err: OSError, path: str | Path | None = None) -> str:
    """``"PATH: reason"`` for an ``OSError``, with a hint where one helps (disk full, symlink loop)."""
    name = path if path is not None else (err.filename if err.filename is not None else "")
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason += " (disk full: free some space and run the command again; no existing output was replaced)"
    elif err.errno == errno.ELOOP:
        reason = "symlink loop (the path's symbolic links point at each other)"
    return f"{name}: {reason}" if name != "" else reason


def read_input_bytes(path: str | Path, what: str = "", max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file ``path``; :class:`InputFileError` naming ``what path`` otherwise.

    Refuses directories, FIFOs, devices and sockets (reading them hangs or never ends), files over
    ``max_bytes``, and names a missing file or a symlink loop as such.
    """
    label = f"{what} {path}".strip()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(label, "file not found") from None
    except OSError as err:
        raise InputFileError(label, describe_os_error(err, "")) from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(label, "is a directory (expected a file)")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(label, "not a regular file (a FIFO, device or socket cannot be read as input)")
    if info.st_size > max_bytes:
        raise InputFileError(label, f"{info.st_size / 2**20:,.0f} MB, more than the {max_bytes / 2**20:,.0f} MB "
                             "an input file may have")
    try:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as err:
        raise InputFileError(label, f"cannot read ({err.strerror or err})") from None


def read_input_json(path: str | Path, what: str = "", max_bytes: int = MAX_INPUT_BYTES) -> Any:
    """Parsed JSON of a user-named file (UTF-8, a byte-order mark allowed); errors name the file."""
    label = f"{what} {path}".strip()
    raw = read_input_bytes(path, what, max_bytes)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputFileError(label, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputFileError(label, f"not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise InputFileError(label, "not readable JSON (arrays/objects nested too deeply)") from None
    except ValueError as err:  # e.g. an integer literal over Python's digit limit
        raise InputFileError(label, f"not readable JSON ({err})") from None


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON objects of an append-only log, and the numbers of the lines that are not one.

    A crash mid-write leaves a torn last line; callers tolerate it (and say so) instead of refusing
    the whole log.
    """
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    return records, bad


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # a read-only folder: name the output, not the temporary file beside it
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: name the real target, not the temporary file
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _resolve(path: Path, option: str, shown: str | Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:  # Python < 3.13 raises RuntimeError on a symlink loop
        raise ValueError(f"{option} {shown}: cannot be resolved (a symlink loop?): {err}") from err


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
    resolved = _resolve(path, option, output)
    for item in inputs:
        source = _resolve(Path(item), option, item)
        if resolved == source or (source.is_dir() and source in resolved.parents):
            raise ValueError(f"{option} {output}: would overwrite the input {item}; write the output elsewhere")
    for directory in protected:
        root = Path(directory).resolve()
        if root == resolved or root in resolved.parents:
            raise ValueError(f"{option} {output}: is inside the run directory {directory}; write the output elsewhere")
    return path


def check_output_dir(output: str | Path, option: str) -> Path:
    """Refuse, before any work, a directory path that is a file or lies below a file."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {output}: is a file (expected a directory)")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{option} {output}: {blocking} is a file, not a directory")
    return path


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON (non-ASCII kept readable), written atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8"))


def read_json(path: Path) -> Any:
    """Parsed JSON; an unreadable or invalid file raises :class:`CheckpointError` naming it."""
    try:
        return json.loads(read_input_bytes(path).decode("utf-8"))
    except InputFileError as err:
        raise CheckpointError(str(err)) from err
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
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


def _entry_path(directory: Path, name: object, manifest_path: Path) -> Path:
    """The file a manifest entry names, which must be a plain relative path inside ``directory``
    (checked on the name and its resolved place before the file is touched: an entry such as
    ``/proc/self/pagemap`` or ``../../x`` would make verification read, or hang on, files outside the
    run, and its error would tell whether they exist)."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise CheckpointError(f"{manifest_path}: entry {name!r} is not a plain relative path inside {directory}")
    path = directory / name
    try:
        path.resolve().relative_to(Path(directory).resolve())
    except ValueError:  # a symlink leading out of the directory
        raise CheckpointError(f"{manifest_path}: entry {name!r} leads outside {directory}") from None
    return path


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """sha256 over the names and contents of the data files ``paths`` stand for (a directory: its
    ``*.json`` files, sorted): a run records it at its start and ``--resume`` compares it, so a run
    never continues on changed data without saying so."""
    digest = hashlib.sha256()
    for given in paths:
        path = Path(given)
        files = sorted(p for p in path.glob("*.json") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(f"{file.name}\0{sha256_file(file) if file.is_file() else 'missing'}\0".encode())
    return digest.hexdigest()[:16]


def update_manifest(directory: Path, written: Iterable[str], names: Iterable[str]) -> None:
    """Refresh the manifest for the files this process has just ``written``; the other ``names`` keep
    the checksums already recorded (a file first seen is recorded as it is). A file someone else
    modified is therefore never re-signed: its old checksum stays and the next verification names
    it. A missing or unreadable manifest is written anew."""
    directory = Path(directory)
    written = set(written)
    try:
        recorded = read_json(directory / MANIFEST_FILE) if (directory / MANIFEST_FILE).is_file() else {}
    except (OSError, ValueError, CheckpointError):  # an unreadable manifest is written anew
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    entries = {name: sha256_file(directory / name) if name in written or name not in recorded else recorded[name]
               for name in sorted(names)}
    write_json(directory / MANIFEST_FILE, entries)


def verify_files(directory: Path, names: Iterable[str]) -> None:
    """Raise :class:`CheckpointError` naming the first of ``names`` that is missing, not listed in the
    manifest, or modified since it was recorded (the other files of the manifest are not read)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    manifest = _read_manifest(directory, manifest_path)
    for name in names:
        path = _entry_path(directory, name, manifest_path)
        if name not in manifest:
            raise CheckpointError(f"{manifest_path}: does not list {name}")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {manifest_path})")
        if sha256_file(path) != manifest[name]:
            raise CheckpointError(f"{path}: checksum mismatch (modified since the run wrote it: the run is not "
                                  "resumed with settings it was not started with)")


def verify_manifest(directory: Path, required: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` naming the first missing or modified file.

    ``required``: files that loading needs; each must be listed in the manifest (a manifest that
    leaves a file out cannot vouch for it).
    """
    directory = Path(directory)
    required = tuple(required)
    manifest_path = directory / MANIFEST_FILE
    try:
        _verify_once(directory, manifest_path, required)
    except CheckpointError:
        # A process training the run refreshes its weights, then its manifest: a reader in between
        # sees new weights under the old manifest. While one holds the run (its lock), wait for the
        # manifest to move on and check again; otherwise the mismatch is real.
        if not manifest_path.is_file() or not _being_trained(directory):
            raise
        import time

        before, waited = manifest_path.read_bytes(), 0.0
        while manifest_path.read_bytes() == before and waited < 30.0:
            time.sleep(0.1)
            waited += 0.1
        _verify_once(directory, manifest_path, required)


RUN_LOCK_FILE = ".lock"  # held (flock) by the process training a run: nami.training.checkpoint.RunLock


def _being_trained(directory: Path) -> bool:
    import fcntl

    lock = directory / RUN_LOCK_FILE
    if not lock.is_file():
        return False
    try:  # read-only: a reader must not need write access to the run (an immutable .lock hid the real error)
        handle = open(lock, "r")
    except OSError:
        return False  # cannot tell: the verification's own error (e.g. a checksum mismatch) is the one to show
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _read_manifest(directory: Path, manifest_path: Path) -> dict[str, Any]:
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing (cannot verify the files of {directory})")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: not a manifest")
    return manifest


def _verify_once(directory: Path, manifest_path: Path, required: tuple[str, ...]) -> None:
    manifest = _read_manifest(directory, manifest_path)
    for name in required:
        if name not in manifest:
            raise CheckpointError(f"{manifest_path}: does not list {name} (required to load {directory})")
    for name, expected in manifest.items():
        path = _entry_path(directory, name, manifest_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {manifest_path})")
        if sha256_file(path) != expected:
            raise CheckpointError(f"{path}: checksum mismatch (corrupt or modified file)")


class OutputLock:
    """An exclusive ``flock`` on ``path`` while a command writes an output (released on exit, even after
    SIGKILL, by the kernel): two ``nami compare`` (or ``nami ablate``) into one ``--out`` at once both
    exited 0 while one result was lost; the second is now refused. The lock file is opened without
    following a symlink (a symlink planted there would have nami create or lock its target)."""

    def __init__(self, path: Path, option: str = "--out") -> None:
        import fcntl

        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise CommandFailed(f"{option}: cannot lock {self.path} ({describe_os_error(err)})") from None
        self.handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise CommandFailed(f"{option} {self.path.parent}: another nami process is writing there (it holds "
                                f"{self.path}); wait for it to finish or choose another {option}") from None

    def release(self) -> None:
        import fcntl

        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

