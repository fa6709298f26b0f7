"""The one list of training tasks: names, what each reads, and the class that trains it.

Torch-free (the command line builds its ``--help`` from it). A task is one module in this package
plus one :func:`register_task` line; everything outside this package asks the registry instead of
comparing task names: which options a task reads (:func:`option_tasks`), which command trains it
(``nami train`` / ``nami pretrain``), its label in reports, its default evaluation data, its
pipeline. The task *classes* (which import torch) are loaded on first use, like the mixers of
:mod:`nami.models.registry`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from nami import paths

# The built-in tasks' names (constants for code that must name one, e.g. a preset's stages).
QA, GENERATIVE_QA, MLM, CLM = "qa", "generative-qa", "mlm", "clm"


@dataclass(frozen=True)
class TaskInfo:
    """What the rest of nami knows of a task without importing it.

    Attributes:
        name: ``TrainConfig.task``.
        module: the module whose import registers the task class.
        command: the command that trains it: ``train`` (fine-tuning on QA data) or ``pretrain``.
        options: training options only this task (and others naming them) reads.
        label: how reports name it ("QA", "masked-LM", ...).
        default_eval: evaluation data under the data root when ``eval_data`` is not given.
        causal: whether it trains a decoder (its runs generate text).
        pipeline: the ``nami.pipelines`` task name that loads its runs (``None``: none).
        answers: whether its runs answer questions (``nami predict`` / ``nami ask``): "extract", "generate" or None.
        model: ``"module:Class"`` of the model its runs hold, so that loading a run (inference) does
            not import the task's training code; empty: ask the task class's ``model_class``.
    """

    name: str
    module: str
    command: str
    options: tuple[str, ...] = ()
    label: str = ""
    default_eval: str = paths.JSQUAD_DEV
    causal: bool = False
    pipeline: str | None = None
    answers: str | None = None
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_EXTRACTIVE = ("self_distill", "distill_temperature", "exit_layers", "segment_embeddings", "question_match",
               "doc_stride", "negative_fraction", "answer_boundaries")
# generative QA reads the question / answer lengths and the title format, not the extractive windows
_QA_SHARED = ("title_prefix", "max_question_tokens", "max_answer_tokens")
_MASKED = ("mlm_probability", "tie_embeddings", "pppl_sequences", "loss_filter", "loss_filter_threshold",
           "loss_vocab_order")
_LM_LOSS = ("loss_impl",)

INFOS: dict[str, TaskInfo] = {
    QA: TaskInfo(QA, "nami.training.tasks.qa", "train", _EXTRACTIVE + _QA_SHARED, "QA", paths.JSQUAD_DEV,
                 pipeline="question-answering", answers="extract", model="nami.models.qa:QAModel"),
    MLM: TaskInfo(MLM, "nami.training.tasks.mlm", "pretrain", _MASKED + _LM_LOSS, "masked-LM", paths.JAQUAD_DEV,
                  model="nami.models.mlm:MaskedLMModel"),
    CLM: TaskInfo(CLM, "nami.training.tasks.clm", "pretrain", _LM_LOSS, "causal-LM", paths.JAQUAD_DEV, causal=True,
                  pipeline="text-generation", model="nami.models.clm:CausalLMModel"),
    GENERATIVE_QA: TaskInfo(GENERATIVE_QA, "nami.training.tasks.generative_qa", "train",
                            _QA_SHARED + _LM_LOSS + ("num_beams", "constrain"), "generative QA", paths.JSQUAD_DEV,
                            causal=True, pipeline="question-answering", answers="generate",
                            model="nami.models.clm:CausalLMModel"),
}


class _Tasks(dict):
    """name → task class; the built-in classes are imported on first look-up."""

    def _load(self) -> None:
        load_builtin_tasks()

    def __getitem__(self, name: str):
        self._load()
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def keys(self):
        self._load()
        return super().keys()

    def items(self):
        self._load()
        return super().items()

    def values(self):
        self._load()
        return super().values()

    def get(self, name: str, default: Any = None):
        self._load()
        return super().get(name, default)


TASKS: dict[str, type] = _Tasks()
BUILTIN_TASKS = tuple(INFOS)
_loading = False


def load_builtin_tasks() -> None:
    """Import (and so register) the built-in task modules; cheap after the first call."""
    global _loading
    if _loading or all(dict.__contains__(TASKS, name) for name in BUILTIN_TASKS):
        return
    _loading = True
    try:
        for name in BUILTIN_TASKS:
            importlib.import_module(INFOS[name].module)
    finally:
        _loading = False


def register_task(cls: type, info: TaskInfo | None = None) -> type:
    """Add a task class under ``cls.name`` (a decorator). A task outside nami gives its ``info``
    (``cls.info`` is used when present), else one is made: trained by ``nami train``, no options of
    its own."""
    name = cls.name
    if dict.__contains__(TASKS, name) and dict.__getitem__(TASKS, name) is not cls:
        existing = dict.__getitem__(TASKS, name)
        raise ValueError(f"task {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
                         f"{cls.__module__}.{cls.__qualname__} cannot take its name")
    info = info or getattr(cls, "info", None) or INFOS.get(name) or TaskInfo(name, cls.__module__, "train", label=name)
    INFOS[name] = info
    dict.__setitem__(TASKS, name, cls)
    return cls


def unregister_task(name: str) -> None:
    """Remove a task that is not built in (tests, notebooks)."""
    if name in BUILTIN_TASKS:
        raise ValueError(f"task {name!r} is built in")
    dict.pop(TASKS, name, None)
    INFOS.pop(name, None)


def info(name: str) -> TaskInfo:
    if name not in INFOS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(INFOS)}")
    return INFOS[name]


def task_names(command: str | None = None) -> tuple[str, ...]:
    """Every task's name (those ``command`` trains, if given), built-in ones first."""
    return tuple(name for name, i in INFOS.items() if command is None or i.command == command)


def option_tasks() -> dict[str, tuple[str, ...]]:
    """Options only some tasks read → those tasks (the others warn that they ignore them)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, i in INFOS.items():
        for option in i.options:
            out[option] = (*out.get(option, ()), name)
    return out


def task_class(name: str) -> type:
    """The class that trains task ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(INFOS)}")
    return TASKS[name]


def model_class(name: str) -> type:
    """The model class that runs of task ``name`` hold (for loading them), without importing the task's
    training code where its :class:`TaskInfo` names the class."""
    entry = info(name)
    if name in BUILTIN_TASKS and entry.model:
        module, _, attr = entry.model.partition(":")
        return getattr(importlib.import_module(module), attr)
    return task_class(name).model_class  # a plugin's task: its class says (a copied TaskInfo could mislead)
