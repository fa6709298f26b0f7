"""Loading SQuAD v1.1-format question answering data, with strict validation.

The format (JSQuAD, JaQuAD and SQuAD v1.1 all use it)::

    {"data": [{"title": str,
               "paragraphs": [{"context": str,
                               "qas": [{"id": str, "question": str,
                                        "answers": [{"text": str, "answer_start": int}]}]}]}]}

``answer_start`` is a character offset into ``context``. Extra fields (``version``,
``is_impossible``, ``answer_type``, ``question_type``, ...) are ignored.

Every record is validated, and every problem is reported as a :class:`BadRecord` naming the
file, the question id (or a JSON location such as ``data[3].paragraphs[0]`` when there is no
usable id, or ``<file>`` for a problem with the whole file) and a reason:

* file level: missing path, directory without ``*.json`` files, bytes that are not UTF-8 (a
  UTF-8 byte-order mark is accepted), malformed or truncated JSON (with line and column), JSON
  Python cannot hold (nested too deeply, an integer of more than 4,300 digits), a top level that
  is not an object with a ``"data"`` list;
* article level: not an object, ``"paragraphs"`` missing or not a list;
* paragraph level: not an object, ``"context"`` / ``"qas"`` missing or of the wrong type, a
  context that is empty or only whitespace;
* every text field (context, id, question, answer text): a lone surrogate such as the JSON escape
  ``"\\ud800"`` — not Unicode text, it could be neither tokenized nor written back as UTF-8;
  a title with one is treated as absent;
* question level: not an object; ``"id"`` missing, not a string (integer ids are rejected) or
  empty; ``"question"`` missing, not a string or blank; ``"answers"`` missing, not a list or
  empty (missing/empty is allowed with ``require_answers=False``); an id already used earlier
  in the same or an earlier file (the later occurrence is the bad one);
* answer level (makes its whole question bad): not an object; ``"text"`` missing, not a string
  or blank; ``"answer_start"`` missing or not an ``int`` (``bool`` is not an int here); a span
  outside the context; a span whose context text differs from the answer text.

A problem at one level drops everything below it: a bad paragraph takes its questions with it,
but is reported once. :func:`check_squad` collects all problems and never raises for them;
:func:`load_squad` raises :class:`DataValidationError` (or skips bad records with a warning).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from nami.io import InputFileError, read_input_bytes

__all__ = [
    "Answer",
    "BadRecord",
    "DataValidationError",
    "QAExample",
    "SquadFileNotFoundError",
    "SquadReport",
    "check_squad",
    "format_report",
    "load_squad",
    "resolve_squad_files",
]

PathLike: TypeAlias = str | os.PathLike[str]
SquadPaths: TypeAlias = PathLike | Sequence[PathLike]

FILE_LEVEL_ID = "<file>"
"""The :attr:`BadRecord.id` used for problems with a whole file (or path)."""

_MAX_LISTED = 20  # bad records listed in an error message / report before "... and N more"
_MAX_WARNED = 3  # bad records quoted in the one-line skip warning
_SNIPPET = 30  # characters of context / answer text quoted in a reason
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: valid in a Python str, not in Unicode text


@dataclass(frozen=True)
class Answer:
    """A gold answer: ``text`` occurs in the context at character offset ``start``."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """Exclusive character end offset of the answer in the context."""
        return self.start + len(self.text)


@dataclass(frozen=True)
class QAExample:
    """One validated question with its context and gold answers.

    ``answers`` is empty only when loaded with ``require_answers=False``. ``title`` is the
    article title ("" if absent or not a string); ``source`` is the file it came from.
    """

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    title: str
    source: str


@dataclass(frozen=True)
class BadRecord:
    """A record that failed validation.

    ``id`` is the question id when one is known, otherwise a JSON location such as
    ``data[3].paragraphs[0]``, or ``<file>`` for a problem with the whole file.
    """

    file: str
    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.id}: {self.reason}"


def _list_bad(bad: Sequence[BadRecord], limit: int = _MAX_LISTED, indent: str = "  ") -> str:
    """One line per bad record, at most ``limit`` of them, then "... and N more"."""
    lines = [f"{indent}{record}" for record in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"{indent}... and {len(bad) - limit} more")
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


class DataValidationError(ValueError):
    """SQuAD data failed validation; ``bad`` holds every bad record found."""

    def __init__(self, bad: Sequence[BadRecord], headline: str | None = None) -> None:
        self.bad: list[BadRecord] = list(bad)
        headline = headline or f"{_plural(len(self.bad), 'bad record')} in SQuAD data"
        super().__init__(f"{headline}:\n{_list_bad(self.bad)}" if self.bad else headline)


class SquadFileNotFoundError(FileNotFoundError):
    """A SQuAD path does not exist, or is a directory without ``*.json`` files."""


@dataclass
class SquadReport:
    """What :func:`check_squad` found. The counts are of GOOD records only.

    ``articles``: articles with a valid ``paragraphs`` list; ``contexts``: paragraphs with a
    valid context and ``qas`` list; ``questions``: questions that passed validation (one
    :class:`QAExample` each).
    """

    files: list[str]
    articles: int = 0
    contexts: int = 0
    questions: int = 0
    bad: list[BadRecord] = field(default_factory=list)


# --------------------------------------------------------------------------- paths


def _as_path_list(paths: SquadPaths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    result = [Path(p) for p in paths]
    if not result:
        raise ValueError("no SQuAD paths given")
    return result


def _expand(path: Path) -> list[Path]:
    """The JSON files a path stands for: itself, or a directory's ``*.json`` (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
        if not files:
            raise SquadFileNotFoundError(f"no *.json files in directory {path}")
        return files
    if not path.exists():
        if path.is_symlink():
            raise SquadFileNotFoundError(f"SQuAD file {path}: {_BROKEN_LINK}")
        raise SquadFileNotFoundError(f"SQuAD file or directory not found: {path}")
    return [path]


_BROKEN_LINK = "a symbolic link that leads nowhere (a symlink loop or a missing target)"


def _dedupe(files: list[Path]) -> list[Path]:
    """Drop repeats of the same file (e.g. a directory and a file inside it), keeping order."""
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def resolve_squad_files(paths: SquadPaths) -> list[Path]:
    """Expand ``paths`` into the list of SQuAD JSON files to read.

    ``paths`` is one file, one directory (all its ``*.json`` files, sorted by name, not
    recursive), or a sequence of files and/or directories (in the given order). A file named
    twice is read once.

    Raises:
        SquadFileNotFoundError: a path is missing, or a directory holds no ``*.json`` file.
        ValueError: ``paths`` is an empty sequence.
    """
    files: list[Path] = []
    for path in _as_path_list(paths):
        files.extend(_expand(path))
    return _dedupe(files)


# --------------------------------------------------------------------------- validation


_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "object",
    list: "list",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    """The JSON name of a parsed value's type ("object", "string", "null", ...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _snippet(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


class _Invalid(Exception):
    """Internal: a record failed validation with this reason."""


def _read_json(path: Path) -> Any:
    """Read and parse one file; raise :class:`_Invalid` with a precise reason on failure."""
    try:
        raw = read_input_bytes(path)  # regular files only: a FIFO or /dev/zero is refused, not read
    except InputFileError as exc:
        raise _Invalid(exc.reason) from None
    try:
        text = raw.decode("utf-8-sig")  # tolerates (and drops) a UTF-8 byte-order mark
    except UnicodeDecodeError as exc:
        bad_byte = raw[exc.start]
        raise _Invalid(f"not valid UTF-8: byte 0x{bad_byte:02x} at offset {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _Invalid("unreadable JSON: arrays/objects nested too deeply") from None
    except ValueError as exc:  # an integer literal longer than Python's 4,300-digit limit
        raise _Invalid(f"unreadable JSON: {str(exc).split(';')[0]}") from None


def _require(obj: dict[str, Any], key: str, kind: type, owner: str) -> Any:
    """``obj[key]``, checked to exist and to be a ``kind`` (never ``bool`` for ``int``)."""
    if key not in obj:
        raise _Invalid(f"{owner} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        shown = f" ({json.dumps(value)})" if isinstance(value, (int, float, bool)) else ""
        expected = _JSON_TYPE_NAMES[kind]
        raise _Invalid(f"{key!r} must be {_article(expected)}, got {_type_name(value)}{shown}")
    return value


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _require_text(obj: dict[str, Any], key: str, owner: str) -> str:
    """``obj[key]``, checked to be a string with some non-whitespace character."""
    value: str = _require(obj, key, str, owner)
    if not value.strip():
        raise _Invalid(f"{key!r} is empty" if not value else f"{key!r} is only whitespace")
    surrogate = _SURROGATE.search(value)
    if surrogate:
        raise _Invalid(
            f"{key!r} is not valid Unicode text: lone surrogate U+{ord(surrogate.group()):04X} "
            f"at character {surrogate.start()}"
        )
    return value


def _parse_answer(raw: Any, index: int, context: str) -> Answer:
    where = f"answers[{index}]"
    if not isinstance(raw, dict):
        raise _Invalid(f"{where} must be an object, got {_type_name(raw)}")
    try:
        text = _require_text(raw, "text", where)
        start = _require(raw, "answer_start", int, where)
    except _Invalid as exc:
        # Prefix the answer's position unless the message already names it.
        message = str(exc)
        raise _Invalid(message if message.startswith(where) else f"{where}: {message}") from None
    end = start + len(text)
    if start < 0 or end > len(context):
        raise _Invalid(
            f"{where}: answer_start {start} is out of range: span [{start}, {end}) does not "
            f"fit a context of {len(context)} characters"
        )
    found = context[start:end]
    if found != text:
        raise _Invalid(
            f"{where}: answer_start {start} does not point at the answer text "
            f"{_snippet(text)!r}: context has {_snippet(found)!r}"
        )
    return Answer(text=text, start=start)


class _Checker:
    """Walks parsed SQuAD files, collecting good examples and bad records."""

    def __init__(self, require_answers: bool) -> None:
        self.require_answers = require_answers
        self.examples: list[QAExample] = []
        self.report = SquadReport(files=[])
        self.first_seen: dict[str, str] = {}  # question id -> file where it first appeared

    def bad(self, file: str, record_id: str, reason: str) -> None:
        self.report.bad.append(BadRecord(file=file, id=record_id, reason=reason))

    def check_file(self, path: Path) -> None:
        file = str(path)
        self.report.files.append(file)
        try:
            root = _read_json(path)
        except _Invalid as exc:
            self.bad(file, FILE_LEVEL_ID, str(exc))
            return
        if not isinstance(root, dict) or not isinstance(root.get("data"), list):
            got = (
                f"an object whose 'data' is {_type_name(root.get('data'))}"
                if isinstance(root, dict)
                else _type_name(root)
            )
            self.bad(
                file,
                FILE_LEVEL_ID,
                f"not SQuAD-shaped: top level must be an object with a 'data' list, got {got}",
            )
            return
        before = (self.report.questions, len(self.report.bad))
        for a_index, article in enumerate(root["data"]):
            self.check_article(file, f"data[{a_index}]", article)
        if (self.report.questions, len(self.report.bad)) == before:  # nothing to train on or score
            self.bad(file, FILE_LEVEL_ID, "no questions (an empty SQuAD file)")

    def check_article(self, file: str, where: str, article: Any) -> None:
        if not isinstance(article, dict):
            self.bad(file, where, f"article must be an object, got {_type_name(article)}")
            return
        try:
            paragraphs = _require(article, "paragraphs", list, "article")
        except _Invalid as exc:
            self.bad(file, where, str(exc))
            return
        self.report.articles += 1
        title = article.get("title")
        title = title if isinstance(title, str) and not _SURROGATE.search(title) else ""
        for p_index, paragraph in enumerate(paragraphs):
            self.check_paragraph(file, f"{where}.paragraphs[{p_index}]", paragraph, title)

    def check_paragraph(self, file: str, where: str, paragraph: Any, title: str) -> None:
        if not isinstance(paragraph, dict):
            self.bad(file, where, f"paragraph must be an object, got {_type_name(paragraph)}")
            return
        try:
            context = _require_text(paragraph, "context", "paragraph")
            qas = _require(paragraph, "qas", list, "paragraph")
        except _Invalid as exc:
            self.bad(file, where, str(exc))
            return
        self.report.contexts += 1
        for q_index, qa in enumerate(qas):
            self.check_question(file, f"{where}.qas[{q_index}]", qa, context, title)

    def check_question(self, file: str, where: str, qa: Any, context: str, title: str) -> None:
        if not isinstance(qa, dict):
            self.bad(file, where, f"question must be an object, got {_type_name(qa)}")
            return
        try:
            qid = _require_text(qa, "id", "question")
        except _Invalid as exc:
            self.bad(file, where, str(exc))
            return
        # Every id is registered, even if the question turns out bad otherwise, so a reused
        # id is always reported (as the later occurrence).
        if qid in self.first_seen:
            self.bad(file, qid, f"duplicate question id (first seen in {self.first_seen[qid]})")
            return
        self.first_seen[qid] = file
        try:
            question = _require_text(qa, "question", "question")
            answers = self.parse_answers(qa, context)
        except _Invalid as exc:
            self.bad(file, qid, str(exc))
            return
        self.report.questions += 1
        self.examples.append(
            QAExample(
                id=qid,
                question=question,
                context=context,
                answers=answers,
                title=title,
                source=file,
            )
        )

    def parse_answers(self, qa: dict[str, Any], context: str) -> tuple[Answer, ...]:
        if "answers" not in qa and not self.require_answers:
            return ()
        raw_answers = _require(qa, "answers", list, "question")
        if not raw_answers and self.require_answers:
            raise _Invalid("'answers' is empty")
        return tuple(_parse_answer(raw, i, context) for i, raw in enumerate(raw_answers))


def _resolve_collecting(paths: SquadPaths) -> tuple[list[Path], list[BadRecord]]:
    """Like :func:`resolve_squad_files`, but turns missing paths into bad records."""
    files: list[Path] = []
    bad: list[BadRecord] = []
    for path in _as_path_list(paths):
        try:
            files.extend(_expand(path))
        except SquadFileNotFoundError:
            reason = ("directory has no *.json files" if path.is_dir()
                      else _BROKEN_LINK if path.is_symlink() else "file not found")
            bad.append(BadRecord(file=str(path), id=FILE_LEVEL_ID, reason=reason))
    return _dedupe(files), bad


def check_squad(
    paths: SquadPaths, *, require_answers: bool = True
) -> tuple[list[QAExample], SquadReport]:
    """Load and validate SQuAD files, collecting problems instead of raising.

    Args:
        paths: a file, a directory of ``*.json`` shards, or a sequence of those.
        require_answers: if False, a question with a missing or empty ``"answers"`` is kept
            with ``answers=()`` (answers that are present are still validated).

    Returns:
        The good examples in file order, and a report with the files read, the counts of
        good articles / contexts / questions and every bad record. Question ids are unique
        across all files.

    Raises:
        ValueError: only for an empty sequence of paths; data problems are never raised.
    """
    files, bad_paths = _resolve_collecting(paths)
    checker = _Checker(require_answers=require_answers)
    checker.report.bad.extend(bad_paths)
    for path in files:
        checker.check_file(path)
    return checker.examples, checker.report


def load_squad(
    paths: SquadPaths,
    *,
    on_bad_record: Literal["error", "skip"] = "error",
    require_answers: bool = True,
) -> list[QAExample]:
    """Load SQuAD files (see :func:`check_squad`) as a list of :class:`QAExample`.

    Args:
        paths: a file, a directory of ``*.json`` shards, or a sequence of those.
        on_bad_record: ``"error"`` raises :class:`DataValidationError` listing every bad
            record; ``"skip"`` drops bad records (a bad answer drops its question) and prints
            one warning line to stderr with the count and the first few reasons.
        require_answers: see :func:`check_squad`.

    Raises:
        DataValidationError: ``on_bad_record="error"`` and some record is bad (including a
            missing file).
        ValueError: ``on_bad_record`` is not one of the allowed values.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(
            f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}"
        )
    examples, report = check_squad(paths, require_answers=require_answers)
    if report.bad:
        if on_bad_record == "error":
            raise DataValidationError(report.bad)
        print(_skip_warning(report.bad), file=sys.stderr)
    return examples


def _skip_warning(bad: Sequence[BadRecord]) -> str:
    shown = "; ".join(str(record) for record in bad[:_MAX_WARNED])
    more = f"; ... and {len(bad) - _MAX_WARNED} more" if len(bad) > _MAX_WARNED else ""
    return f"warning: skipped {_plural(len(bad), 'bad SQuAD record')} ({shown}{more})"


def format_report(report: SquadReport, *, list_bad: bool = True) -> str:
    """A short human-readable summary of a :class:`SquadReport`, one item per line (``list_bad``:
    followed by the bad records)."""
    files = report.files
    if len(files) <= 3:
        file_list = ", ".join(files)
    else:
        file_list = f"{files[0]} ... {files[-1]}"
    lines = [
        f"files:       {len(files):,}" + (f" ({file_list})" if files else ""),
        f"articles:    {report.articles:,}",
        f"contexts:    {report.contexts:,}",
        f"questions:   {report.questions:,}",
        f"bad records: {len(report.bad):,}",
    ]
    if report.bad and list_bad:
        lines.append(_list_bad(report.bad))
    return "\n".join(lines)



# JSQuAD writes its contexts as "<title> [SEP] <paragraph>": the literal separator token.
TITLE_SEPARATOR = "[SEP]"


def with_title_prefix(example: QAExample) -> QAExample:
    """The example in JSQuAD's context format ``"<title> [SEP] <paragraph>"`` (answer offsets shifted).

    JSQuAD contexts carry their article title this way; JaQuAD's do not. Training on the same
    format as evaluation lets the model use the title and see the separator where it will be.
    Contexts that already start with their title prefix, or examples without a title, are kept.
    """
    from dataclasses import replace

    prefix = f"{example.title} {TITLE_SEPARATOR} "
    if not example.title or example.context.startswith(prefix):
        return example
    answers = tuple(replace(a, start=a.start + len(prefix)) for a in example.answers)
    return replace(example, context=prefix + example.context, answers=answers)
