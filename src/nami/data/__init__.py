"""Data loading: SQuAD-format QA examples (:mod:`nami.data.squad`)."""

from nami.data.squad import (
    Answer,
    BadRecord,
    DataValidationError,
    QAExample,
    SquadFileNotFoundError,
    SquadReport,
    check_squad,
    format_report,
    load_squad,
    resolve_squad_files,
)

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
