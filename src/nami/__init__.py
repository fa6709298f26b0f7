"""nami (波): Japanese language models built on the Wave Network (arXiv 2411.02674).

Data flow, one package per layer (nothing imports a layer above it; ``tests/test_layers.py``
checks it): ``io`` (atomic files, manifests) → ``text`` (MeCab + SentencePiece with exact
offsets) → ``data`` (SQuAD loading, QA windows, batches) → ``models`` (one residual block around
registered mixers, task heads) → ``losses`` → ``evaluation`` (JSQuAD metric, span decoding) →
``training`` (tasks, the Accelerate loop, run directories) → ``pipelines`` (the Python API for
trained runs) → ``reports`` / ``bench`` → ``cli``.

The public names below are imported lazily (as Hugging Face transformers does), so ``import nami``
stays fast and does not import torch::

    from nami import pipeline
    qa = pipeline("question-answering", model="runs/<run>")
    qa(question="...", context="...")   # {"answer", "score", "start", "end"}
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "pipeline": "nami.pipelines",
    "QuestionAnsweringPipeline": "nami.pipelines",
    "TextGenerationPipeline": "nami.pipelines",
    "CausalLMModel": "nami.models",
    "generate": "nami.models",
    "ModelConfig": "nami.models",
    "QAModel": "nami.models",
    "MaskedLMModel": "nami.models",
    "MixerInputs": "nami.models",
    "register_mixer": "nami.models",
    "ARCHITECTURES": "nami.models",
    "MIXERS": "nami.models",
    "JapaneseTokenizer": "nami.text",
    "TrainConfig": "nami.runs.config",
    "TASKS": "nami.training.tasks",
    "register_task": "nami.training.tasks",
    "train": "nami.training.loop",
    "resume": "nami.training.loop",
    "load_run": "nami.runs.load",
    "evaluate_predictions": "nami.evaluation.metric",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'nami' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
