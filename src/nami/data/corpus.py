"""Plain-text corpora for tokenizer training (and, later, language-model pretraining).

A corpus is a list of paths: ``.json`` files or directories are read as SQuAD data (their
contexts, each once, and their questions); any other file is UTF-8 text, one document per line
(lines end with ``\\n`` or ``\\r\\n``; blank lines are skipped; a UTF-8 byte-order mark is
dropped).

Every source is validated, and every problem raises :class:`CorpusError` (a ``ValueError``, so
``nami`` prints it as one ``nami: error:`` line) naming the file, and the line when there is one:

* a path that does not exist or is not a regular file; a directory without ``*.json`` shards;
* an empty text file, or one with no text line (only blank lines);
* a binary file: a NUL byte on any line, or more than :data:`BINARY_CONTROL_FRACTION` of the
  first :data:`SNIFF_CHARS` characters being control characters other than tab, newline,
  vertical tab, form feed and carriage return;
* bytes that are not UTF-8 (with the line and the byte);
* a line of more than :data:`MAX_LINE_CHARS` characters. A line is one document, and MeCab and
  SentencePiece work on whole documents; a file that is one giant line is almost always the wrong
  file or a missing line break, so it is refused rather than silently cut. At most
  ``4 * MAX_LINE_CHARS`` bytes of a line are ever held in memory;
* SQuAD data that fails validation (see :mod:`nami.data.squad`; the first bad record is quoted)
  or holds no question.

Other control characters inside a line (ESC, DEL, ...) are accepted: normalisation turns them
into word separators (:mod:`nami.text.normalize`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from nami.data.squad import DataValidationError, load_squad

__all__ = [
    "BINARY_CONTROL_FRACTION",
    "MAX_LINE_CHARS",
    "SNIFF_CHARS",
    "CorpusError",
    "read_corpus",
    "squad_texts",
    "text_lines",
]

MAX_LINE_CHARS = 1_000_000
"""Longest accepted line (document) of a text corpus file, in characters."""

SNIFF_CHARS = 65_536
"""How many leading characters of a text file the binary check looks at."""

BINARY_CONTROL_FRACTION = 0.25
"""A text file whose first :data:`SNIFF_CHARS` characters hold more control characters than this
fraction (tab, newline, vertical tab, form feed and carriage return excepted) is binary."""

_MAX_LINE_BYTES = 4 * MAX_LINE_CHARS  # UTF-8 needs at most 4 bytes per character
_BOM = b"\xef\xbb\xbf"
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # Cc minus \t \n \v \f \r


class CorpusError(ValueError):
    """A corpus source cannot be used; the message names the file (and line)."""


def read_corpus(paths: Sequence[str | Path]) -> list[str]:
    """All documents of the corpus, in order; :class:`CorpusError` for any unusable source."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise CorpusError("corpus: no files given")
    texts: list[str] = []
    for path in map(Path, paths):
        if path.is_dir() or path.suffix == ".json":
            texts.extend(squad_texts(path))
        else:
            texts.extend(text_lines(path))
    return texts


def squad_texts(path: str | Path) -> Iterator[str]:
    """Each distinct context of a SQuAD file or directory of shards once, and every question."""
    path = Path(path)
    if path.is_dir() and not any(p.is_file() for p in path.glob("*.json")):
        raise CorpusError(
            f"corpus directory {path}: no *.json SQuAD shards in it (name text files one by one)"
        )
    try:
        examples = load_squad(path)
    except DataValidationError as err:
        shown = err.bad[0] if err.bad else "invalid data"
        more = f" (and {len(err.bad) - 1:,} more bad records)" if len(err.bad) > 1 else ""
        raise CorpusError(f"corpus file {path}: not usable SQuAD data: {shown}{more}") from err
    if not examples:
        raise CorpusError(f"corpus file {path}: the SQuAD data holds no question")
    seen: set[str] = set()
    for example in examples:
        if example.context not in seen:
            seen.add(example.context)
            yield example.context
        yield example.question


def text_lines(path: str | Path) -> Iterator[str]:
    """The non-blank lines of a UTF-8 text file, stripped; validated as the module describes.

    Errors are raised when the generator reaches them (lines before a bad one are yielded).
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus file {path}: not found")
    if not path.is_file():
        raise CorpusError(f"corpus file {path}: not a regular file")
    try:
        handle = path.open("rb")
    except OSError as err:
        raise CorpusError(f"corpus file {path}: cannot read ({err.strerror or err})") from err
    with handle:
        sniffed = controls = text_count = 0
        line_no = 0
        while True:
            try:
                raw = handle.readline(_MAX_LINE_BYTES + 3)  # the longest line, "\r\n", one byte more
            except OSError as err:
                raise CorpusError(f"corpus file {path}: cannot read ({err.strerror or err})") from err
            if not raw:
                break
            line_no += 1
            if line_no == 1:
                raw = raw.removeprefix(_BOM)
            if b"\x00" in raw:
                raise CorpusError(
                    f"corpus file {path}: line {line_no} has a NUL byte: a binary file, not UTF-8 text"
                )
            line = _decode_line(path, line_no, raw.removesuffix(b"\n").removesuffix(b"\r"))
            if len(line) > MAX_LINE_CHARS:
                raise _too_long(path, line_no)
            if sniffed < SNIFF_CHARS:
                head = line[: SNIFF_CHARS - sniffed]
                sniffed += len(head)
                controls += len(_CONTROL.findall(head))
                if sniffed >= SNIFF_CHARS:
                    _check_controls(path, controls, sniffed)
            text = line.strip()
            if text:
                text_count += 1
                yield text
    if line_no == 0:
        raise CorpusError(f"corpus file {path}: empty file")
    if sniffed < SNIFF_CHARS:
        _check_controls(path, controls, sniffed)
    if text_count == 0:
        raise CorpusError(f"corpus file {path}: no text lines (only blank lines)")


def _too_long(path: Path, line_no: int) -> CorpusError:
    return CorpusError(
        f"corpus file {path}: line {line_no} is longer than {MAX_LINE_CHARS:,} characters "
        "(one document per line: is a line break missing?)"
    )


def _decode_line(path: Path, line_no: int, raw: bytes) -> str:
    if len(raw) > _MAX_LINE_BYTES:
        raise _too_long(path, line_no)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"corpus file {path}: not UTF-8 text: line {line_no} has byte 0x{raw[err.start]:02x} "
            f"at column {len(raw[: err.start].decode('utf-8', errors='replace')) + 1}"
        ) from None


def _check_controls(path: Path, controls: int, sniffed: int) -> None:
    if sniffed and controls > BINARY_CONTROL_FRACTION * sniffed:
        raise CorpusError(
            f"corpus file {path}: {controls:,} of the first {sniffed:,} characters are control "
            "characters: a binary file, not UTF-8 text"
        )
