"""Typed configuration of a training run (saved as ``config.json`` in every run directory).

The model is a nested :class:`~nami.models.ModelConfig` (``TrainConfig.model``), not a copy of its
fields. ``TrainConfig.from_dict`` (and so ``--config`` files and the CLI) also takes the model's
user-facing fields flat, as *shortcuts*: ``{"arch": "transformer", "preset": "tiny", "dropout": 0.1}``
sets ``model`` from the size preset and those fields. Runs saved before the nesting, whose
``config.json`` has these fields flat, load through the same path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nami.data.features import ANSWER_BOUNDARIES
from nami.models.config import DATA_FIELDS, PRESETS, ModelConfig

PRECISIONS = ("bf16", "fp32")
LOSS_IMPLS = ("auto", "blockwise", "torch_chunked", "naive", "cce")
LOSS_FILTERS = ("none", "paper", "bounded_mass")
VOCAB_ORDERS = ("none", "frequency")
SCHEDULES = ("cosine", "linear")
BAD_RECORD_POLICIES = ("error", "skip")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Paths are strings so the config is plain JSON.

    ``train_data`` / ``eval_data``: ``None`` means the defaults (JaQuAD train / JSQuAD dev under
    the data root, see :mod:`nami.paths`). The run stops at whichever comes first of ``epochs``,
    ``max_steps`` and ``max_minutes`` (training time, evaluation excluded); the learning-rate
    schedule follows the same progress, so a time-budgeted run still decays to zero. Only a run
    without ``max_minutes`` is bitwise reproducible.
    """

    task: str = "qa"  # a task of nami.training.tasks.TASKS: "qa" (extractive QA), "mlm" (masked-LM pretraining)
    # The model: architecture, size, dropout. Its vocab_size / max_len / pad_id / type_vocab_size are
    # filled in by training from the tokenizer and the task (the saved config holds the filled values).
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_name("small"))
    segment_embeddings: bool = True  # QA: question / context token-type embeddings (BERT's token_type_ids)
    # QA: a third token type for context words that also occur in the question (DrQA's exact-match
    # feature; nami.data.features). Needs segment_embeddings.
    question_match: bool = False
    title_prefix: bool = True  # QA training contexts in JSQuAD's "<title> [SEP] <paragraph>" format
    train_data: list[str] | None = None
    eval_data: str | None = None
    tokenizer: str | None = None  # a saved tokenizer directory; None = the cached default
    vocab_size: int = 32000  # of the default tokenizer
    max_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64
    negative_fraction: float = 1.0  # share of answerless windows kept for training
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of training progress
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None
    eval_every_minutes: float | None = 10.0
    eval_subset: int = 500  # questions used by periodic evaluation (final evaluation uses all)
    eval_batch_size: int = 64
    max_answer_tokens: int = 16  # ~24 characters; JaQuAD train answers: median 5, p99 19 characters
    num_beams: int = 1  # generative QA: beam search width when answers are generated (1 = greedy)
    answer_boundaries: str = "word"  # decoded answers begin/end on MeCab word boundaries ("token": anywhere)
    precision: str = "bf16"
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    keep_checkpoints: int = 2  # resumable checkpoints kept under checkpoints/ (oldest deleted first)
    nonfinite_skips: int = 0  # batches with a NaN/Inf loss or gradient skipped before aborting
    on_bad_record: str = "error"
    runs_dir: str = "runs"
    run_name: str | None = None
    init_from: str | None = None  # a (pretraining) run whose encoder weights start this run
    mlm_probability: float = 0.15
    loss_impl: str = "auto"  # vocabulary-layer loss of the MLM task (nami.losses.linear_cross_entropy)
    loss_filter: str = "none"  # MLM: CCE gradient filtering policy (nami.losses.linear_cross_entropy)
    loss_filter_threshold: float | None = None  # None = the policy's default threshold
    # MLM: "frequency" orders the vocabulary by training-token frequency before the blockwise loss
    # cuts it into blocks, so likely tokens share blocks and filtering can skip more (same loss).
    loss_vocab_order: str = "none"
    tie_embeddings: bool = True  # MLM output matrix = input token embedding
    pppl_sequences: int = 64  # held-out sequences scored by pseudo-perplexity in the final MLM evaluation
    # Stage-wise training: {branch mixer: training progress (0-1) at which it switches on}, e.g.
    # {"sentence_wave": 0.33, "segment_wave": 0.66}; branches not named are on from the start.
    branch_schedule: dict[str, float] | None = None
    compile_wave: bool = False  # torch.compile the Wave layer's element-wise maths (nami.models.speed)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def arch(self) -> str:
        """``model.arch`` (read-only shortcut)."""
        return self.model.arch

    @property
    def preset(self) -> str:
        """The model's size preset name, ``"custom"`` when it was not built from one."""
        return self.model.name or "custom"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option."""
        from nami.training.tasks import TASKS  # the registry imports this module

        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"option model={self.model!r}: expected a ModelConfig")

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"option {name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")

        def positive(name: str, *, allow_none: bool = False, integer: bool = True) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                raise ValueError(f"option {name}={value!r}: expected a positive {'integer' if integer else 'number'}")

        choice("task", tuple(TASKS))
        choice("loss_impl", LOSS_IMPLS)
        choice("loss_filter", LOSS_FILTERS)
        choice("loss_vocab_order", VOCAB_ORDERS)
        if self.loss_vocab_order != "none" and self.loss_impl not in ("auto", "blockwise"):
            raise ValueError(f"option loss_vocab_order={self.loss_vocab_order} needs loss_impl auto or blockwise "
                             f"(got {self.loss_impl}, which does not cut the vocabulary into blocks)")
        if self.loss_filter != "none" and self.loss_impl not in ("auto", "blockwise", "cce"):
            raise ValueError(f"option loss_filter={self.loss_filter} needs loss_impl auto, blockwise or cce "
                             f"(got {self.loss_impl}: an exact implementation that cannot filter)")
        threshold = self.loss_filter_threshold
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
            raise ValueError(f"option loss_filter_threshold={threshold!r}: expected 0 <= value < 1")
        choice("precision", PRECISIONS)
        choice("schedule", SCHEDULES)
        choice("on_bad_record", BAD_RECORD_POLICIES)
        choice("answer_boundaries", ANSWER_BOUNDARIES)
        for name in ("vocab_size", "max_length", "doc_stride", "max_question_tokens", "batch_size", "grad_accum", "num_beams",
                     "eval_subset", "eval_batch_size", "max_answer_tokens", "log_every"):
            positive(name)
        positive("max_steps", allow_none=True)
        positive("checkpoint_every_steps", allow_none=True)
        positive("keep_checkpoints")
        positive("checkpoint_every_minutes", allow_none=True, integer=False)
        skips = self.nonfinite_skips
        if isinstance(skips, bool) or not isinstance(skips, int) or skips < 0:
            raise ValueError(f"option nonfinite_skips={self.nonfinite_skips!r}: expected an integer >= 0")
        positive("threads", allow_none=True)
        for name in ("lr", "epochs"):
            positive(name, integer=False)
        positive("max_minutes", allow_none=True, integer=False)
        positive("eval_every_minutes", allow_none=True, integer=False)
        positive("pppl_sequences")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"option mlm_probability={self.mlm_probability}: expected 0 < p < 1")
        if self.compile_wave is True and "wave" not in self.model.layer_mixers():
            raise ValueError(f"option compile_wave=true needs Wave layers (arch={self.arch} has none)")
        for name in ("tie_embeddings", "segment_embeddings", "question_match", "title_prefix", "compile_wave"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"option {name}={getattr(self, name)!r}: expected true or false")
        if self.branch_schedule is not None:
            if not isinstance(self.branch_schedule, dict):
                raise ValueError(f"option branch_schedule={self.branch_schedule!r}: expected {{branch: fraction}}")
            for name, at in self.branch_schedule.items():
                if name not in (self.model.branches or ()):
                    raise ValueError(f"option branch_schedule: {name!r} is not one of the model's branches "
                                     f"({self.model.branches})")
                if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0.0 <= at < 1.0:
                    raise ValueError(f"option branch_schedule[{name!r}]={at!r}: expected a fraction 0 <= value < 1")
        if self.question_match and not self.segment_embeddings:
            raise ValueError("option question_match=true needs segment_embeddings=true (it is a token type)")
        if not 0.0 <= self.negative_fraction <= 1.0:
            raise ValueError(f"option negative_fraction={self.negative_fraction}: expected 0 <= value <= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"option warmup={self.warmup}: expected a fraction 0 <= warmup < 1")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("options weight_decay must be >= 0 and max_grad_norm > 0")
        if self.max_length > 4096:
            raise ValueError(f"option max_length={self.max_length}: at most 4096 for QA windows")
        if self.train_data is not None and (not isinstance(self.train_data, list) or not self.train_data):
            raise ValueError("option train_data: expected a non-empty list of paths")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config from JSON-like data: nested ``model`` and/or flat model shortcuts (module docstring)."""
        if not isinstance(data, dict):
            raise ValueError(f"training config: expected a JSON object, got {type(data).__name__}")
        values = dict(data)
        shortcuts = {name: values.pop(name) for name in MODEL_SHORTCUTS if name in values}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config field(s): {', '.join(unknown)}")
        values["model"] = resolve_model(values.get("model"), shortcuts)
        return cls(**values)

    def short_hash(self) -> str:
        """8 hex digits identifying the settings (output location excluded)."""
        ignored = ("runs_dir", "run_name", "threads", "checkpoint_every_steps", "checkpoint_every_minutes",
                   "keep_checkpoints")
        data = {k: v for k, v in self.to_dict().items() if k not in ignored}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


# Model fields a training config (or a command line) may give flat; "preset" picks the size preset.
MODEL_SHORTCUTS: tuple[str, ...] = ("preset",) + tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name not in DATA_FIELDS + ("name",)
)


def resolve_model(model: ModelConfig | dict[str, Any] | None, shortcuts: dict[str, Any]) -> ModelConfig:
    """``model`` (a config, its dict, or None = the ``small`` preset) with the flat ``shortcuts`` applied.

    ``preset`` sets the size fields (d_model, n_layers, d_ff, n_heads) and the name; the other
    shortcuts set their own field.
    """
    if isinstance(model, ModelConfig):
        base = model.to_dict()
    elif isinstance(model, dict):
        base = dict(model)
    elif model is None:
        base = ModelConfig.from_name("small").to_dict()
    else:
        raise ValueError(f"option model={model!r}: expected a JSON object of model fields")
    shortcuts = dict(shortcuts)
    preset = shortcuts.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"option preset={preset!r}: expected one of {', '.join(PRESETS)}")
        base.update(PRESETS[preset], name=preset)
    base.update(shortcuts)
    return ModelConfig.from_dict(base)
