"""Training objectives plugged into the generic loop of :mod:`nami.training.loop`, one module each.

* :mod:`~nami.training.tasks.qa` — extractive QA on SQuAD-format data (JSQuAD EM / F1).
* :mod:`~nami.training.tasks.mlm` — masked-LM pretraining, the loss through
  :func:`nami.losses.linear_cross_entropy` (no full-vocabulary logits in training).
* :mod:`~nami.training.tasks.generative_qa` — generative QA with a decoder: the answer is written.
* :mod:`~nami.training.tasks.clm` — causal-LM pretraining of a decoder; held-out perplexity.

A task owns its data, batches, model, loss and evaluation; the loop owns optimisation, logging,
checkpoints and resume. :mod:`~nami.runs.tasks` (torch-free) lists them with what the
rest of nami needs to know; adding a task is one module + one :func:`register_task` (see
docs/architecture.md). Names below are loaded on first use, so importing the registry stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from nami.runs.tasks import (  # noqa: F401
    CLM,
    GENERATIVE_QA,
    INFOS,
    MLM,
    QA,
    TASKS,
    TaskInfo,
    info,
    load_builtin_tasks,
    option_tasks,
    register_task,
    task_class,
    task_names,
    unregister_task,
)

_LAZY = {"Task": "base", "resolve_train_data": "base", "resolve_eval_data": "base", "select_windows": "base",
         "load_option_data": "base", "load_qa_examples": "base", "corpus_documents": "base",
         "sentence_boundary_ids": "base", "unwrap": "base", "with_title_prefix": "base", "QATask": "qa", "MLMTask": "mlm", "CLMTask": "clm",
         "GenerativeQATask": "generative_qa"}


def __getattr__(name: str) -> Any:
    if name == "generate_answers":  # moved below training and inference alike
        from nami.evaluation.generative import generate_answers

        return generate_answers
    if name in _LAZY:
        return getattr(importlib.import_module(f"nami.training.tasks.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
