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
import math
from dataclasses import dataclass, field
from typing import Any

from nami.checks import in_range
from nami.data.choices import ANSWER_BOUNDARIES
from nami.models.config import DATA_FIELDS, PRESETS, ModelConfig
from nami.runs.tasks import INFOS, QA, option_tasks

# Options that must be > 0 (checked by ``validate`` and, on the command line, when parsed: a bad
# value is refused before torch is imported); those in OPTIONAL_OPTIONS may also be null.
POSITIVE_INTEGER_OPTIONS = ("vocab_size", "max_length", "doc_stride", "max_question_tokens", "batch_size",
                            "grad_accum", "num_beams", "eval_subset", "eval_batch_size", "max_answer_tokens",
                            "log_every", "max_steps", "checkpoint_every_steps", "keep_checkpoints", "threads",
                            "pppl_sequences", "tokenizer_shards")
POSITIVE_NUMBER_OPTIONS = ("lr", "epochs", "max_minutes", "eval_every_minutes", "checkpoint_every_minutes",
                           "distill_temperature", "max_grad_norm", "adam_eps")
OPTIONAL_OPTIONS = ("max_steps", "checkpoint_every_steps", "threads", "max_minutes", "eval_every_minutes",
                    "checkpoint_every_minutes", "tokenizer_shards")

PRECISIONS = ("auto", "bf16", "fp32")
LOSS_IMPLS = ("auto", "blockwise", "torch_chunked", "naive", "cce")
LOSS_FILTERS = ("none", "paper", "bounded_mass")
VOCAB_ORDERS = ("none", "frequency")
SCHEDULES = ("cosine", "linear")
BAD_RECORD_POLICIES = ("error", "skip")
LOG_WITH = ("tensorboard",)
SHARDINGS = ("none", "fsdp2", "zero2", "zero3")
CONSTRAINTS = ("none", "context")  # generative QA decoding (nami.evaluation.generative)


def _task_phrase(tasks: tuple[str, ...]) -> str:
    """``masked-LM pretraining`` / ``QA fine-tuning``: how a message names the tasks an option is for."""
    return " / ".join(f"{INFOS[t].label} {'pretraining' if INFOS[t].command == 'pretrain' else 'fine-tuning'}"
                      for t in tasks if t in INFOS)


def _choice(config: "TrainConfig", name: str, allowed: tuple[str, ...]) -> None:
    if getattr(config, name) not in allowed:
        raise ValueError(f"option {name}={getattr(config, name)!r}: expected one of {', '.join(allowed)}")


def _positive(config: "TrainConfig", name: str, *, allow_none: bool = False, integer: bool = True) -> None:
    value = getattr(config, name)
    if value is None and allow_none:
        return
    if not in_range(value, 0, low_open=True, integer=integer):  # NaN, inf, bools and 0 refused (nami.checks)
        raise ValueError(f"option {name}={value!r}: expected a positive finite "
                         f"{'integer' if integer else 'number'}")


def _fraction(config: "TrainConfig", name: str, low: float, high: float, *, high_open: bool = False,
              low_open: bool = False, allow_none: bool = False) -> None:
    value = getattr(config, name)
    if value is None and allow_none:
        return
    if not in_range(value, low, high, low_open=low_open, high_open=high_open):
        bounds = f"{low:g} {'<' if low_open else '<='} value {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"option {name}={value!r}: expected a number with {bounds}")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Paths are strings so the config is plain JSON.

    ``train_data`` / ``eval_data``: ``None`` means the defaults (JaQuAD train / JSQuAD dev under
    the data root, see :mod:`nami.paths`). The run stops at whichever comes first of ``epochs``,
    ``max_steps`` and ``max_minutes`` (training time, evaluation excluded); the learning-rate
    schedule follows the same progress, so a time-budgeted run still decays to zero. Only a run
    without ``max_minutes`` is bitwise reproducible.
    """

    task: str = QA  # a task of the registry (nami.runs.tasks): extractive QA by default
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
    tokenizer_shards: int | None = None  # the default tokenizer reads the first N JaQuAD train shards (None: all)
    max_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64
    negative_fraction: float = 1.0  # share of answerless windows kept for training
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW's (beta1, beta2)
    adam_eps: float = 1e-6
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
    constrain: str = "none"  # generative QA: "context" = answers decoded as spans of the context only
    answer_boundaries: str = "word"  # decoded answers begin/end on MeCab word boundaries ("token": anywhere)
    precision: str = "auto"  # resolved to bf16 / fp32 when a run starts (nami.resources.resolve_precision)
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
    log_with: str | None = None  # "tensorboard": also log to RUN/tensorboard (pip install 'nami[tensorboard]')
    # Wave layers (causal too) backpropagate through a hand-written backward that keeps only w and G²
    # and recomputes the rest, LayerNorm and output projection included
    # (nami.models.wave.wave_mixer_recompute): less training memory and faster than autograd, same
    # forward. false: autograd through the plain maths (the reference). compile_wave replaces both.
    wave_recompute: bool = True
    # Multi-process training (torchrun / accelerate launch): "none" replicates the model on every
    # process (DDP); "fsdp2" shards parameters, gradients and optimizer state (nami.training.distributed);
    # "zero2" / "zero3": DeepSpeed ZeRO stage 2 (gradients and optimizer state) / 3 (parameters too),
    # with nami's DeepSpeed config or the file ``deepspeed_config``.
    sharding: str = "none"
    deepspeed_config: str | None = None
    # Self-distillation (QA with model.exit_layers): each early-exit head's loss is
    # (1 − self_distill) · CE(answers) + self_distill · T² · KL(last layer ‖ exit), T = distill_temperature.
    self_distill: float = 0.0
    distill_temperature: float = 1.0
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

    def ignored_options(self) -> list[str]:
        """The options set away from their defaults that this run's task never reads
        (:data:`OPTION_TASKS`), one line each: they are saved in the run's config yet change nothing
        (a config file shared by a pretraining and a QA stage has some; ``nami train`` warns)."""
        lines = []
        for name, tasks in OPTION_TASKS.items():
            if self.task in tasks:
                continue
            owner, cls = (self, TrainConfig) if hasattr(self, name) else (self.model, type(self.model))
            spec = cls.__dataclass_fields__[name]
            default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
            if getattr(owner, name) != default:
                lines.append(f"option {name}={getattr(owner, name)!r} is read by task {' / '.join(tasks)} only: "
                             f"this {self.task} run ignores it")
        return lines

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option."""
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"option model={self.model!r}: expected a ModelConfig")

        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"option seed={seed!r}: expected an integer 0 <= seed < 2**32")

        self._validate_choices()
        self._validate_numbers()
        self._validate_model_options()
        self._validate_paths()

    def _validate_choices(self) -> None:
        """Options with a fixed list of values, and the combinations they allow."""
        _choice(self, "task", tuple(INFOS))
        _choice(self, "loss_impl", LOSS_IMPLS)
        _choice(self, "loss_filter", LOSS_FILTERS)
        _choice(self, "loss_vocab_order", VOCAB_ORDERS)
        if self.loss_vocab_order != "none" and self.loss_impl not in ("auto", "blockwise"):
            raise ValueError(f"option loss_vocab_order={self.loss_vocab_order} needs loss_impl auto or blockwise "
                             f"(got {self.loss_impl}, which does not cut the vocabulary into blocks)")
        if self.loss_filter != "none" and self.loss_impl not in ("auto", "blockwise", "cce"):
            raise ValueError(f"option loss_filter={self.loss_filter} needs loss_impl auto, blockwise or cce "
                             f"(got {self.loss_impl}: an exact implementation that cannot filter)")
        _fraction(self, "loss_filter_threshold", 0.0, 1.0, high_open=True, allow_none=True)
        for name in ("loss_filter", "loss_vocab_order"):  # read by the masked-LM loss only: never silently ignored
            if getattr(self, name) != "none" and self.task not in OPTION_TASKS[name]:
                raise ValueError(f"option {name}={getattr(self, name)}: applies to {_task_phrase(OPTION_TASKS[name])} "
                                 f"only (task {' / '.join(OPTION_TASKS[name])}, not {self.task})")
        _choice(self, "precision", PRECISIONS)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "on_bad_record", BAD_RECORD_POLICIES)
        _choice(self, "answer_boundaries", ANSWER_BOUNDARIES)
        _choice(self, "sharding", SHARDINGS)
        _choice(self, "constrain", CONSTRAINTS)
        if self.deepspeed_config is not None and not self.sharding.startswith("zero"):
            raise ValueError(f"option deepspeed_config={self.deepspeed_config}: a DeepSpeed config needs "
                             f"--sharding zero2 or zero3 (not {self.sharding})")
        if self.deepspeed_config is not None:  # read and checked now, before any data is loaded
            from nami.runs.deepspeed import deepspeed_config

            deepspeed_config(self.sharding, self.deepspeed_config, global_batch=self.batch_size, world=1,
                             max_grad_norm=self.max_grad_norm)
        if self.sharding.startswith("zero") and self.grad_accum != 1:
            raise ValueError(f"option grad_accum={self.grad_accum}: not supported with --sharding {self.sharding} "
                             "(the DeepSpeed engine would count micro-batches across epoch ends differently); "
                             "use a larger --batch-size")
        if self.log_with is not None:
            _choice(self, "log_with", LOG_WITH)
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
                raise ValueError("option log_with=tensorboard needs the tensorboard package: "
                                 "pip install 'nami[tensorboard]' (or pip install tensorboard)")

    def _validate_numbers(self) -> None:
        """Counts, sizes, rates and fractions."""
        for name in POSITIVE_INTEGER_OPTIONS:
            _positive(self, name, allow_none=name in OPTIONAL_OPTIONS)
        for name in POSITIVE_NUMBER_OPTIONS:
            _positive(self, name, allow_none=name in OPTIONAL_OPTIONS, integer=False)
        skips = self.nonfinite_skips
        if isinstance(skips, bool) or not isinstance(skips, int) or skips < 0:
            raise ValueError(f"option nonfinite_skips={self.nonfinite_skips!r}: expected an integer >= 0")
        _fraction(self, "mlm_probability", 0.0, 1.0, low_open=True, high_open=True)

    def _validate_model_options(self) -> None:
        """Switches and the options that depend on the model (branches, early exits, Wave layers)."""
        if self.compile_wave is True and "wave" not in self.model.layer_mixers():
            raise ValueError(f"option compile_wave=true needs Wave layers (arch={self.arch} has none)")
        for name in ("tie_embeddings", "segment_embeddings", "question_match", "title_prefix", "compile_wave",
                     "wave_recompute"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"option {name}={getattr(self, name)!r}: expected true or false")
        if self.branch_schedule is not None:
            if not isinstance(self.branch_schedule, dict):
                raise ValueError(f"option branch_schedule={self.branch_schedule!r}: expected {{branch: fraction}}")
            for name, at in self.branch_schedule.items():
                if name not in (self.model.branches or ()):
                    raise ValueError(f"option branch_schedule: {name!r} is not one of the model's branches "
                                     f"({self.model.branches})")
                if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0.0 <= at < 1.0:  # NaN fails too
                    raise ValueError(f"option branch_schedule[{name!r}]={at!r}: expected a fraction 0 <= value < 1")
        if self.question_match and not self.segment_embeddings:
            raise ValueError("option question_match=true needs segment_embeddings=true (it is a token type)")
        _fraction(self, "negative_fraction", 0.0, 1.0)
        _fraction(self, "self_distill", 0.0, 1.0)
        if self.self_distill and not self.model.exit_layers:
            raise ValueError(f"option self_distill={self.self_distill} needs early-exit heads to teach "
                             "(model option exit_layers, e.g. [1, 2])")
        if self.model.exit_layers and self.task not in OPTION_TASKS["exit_layers"]:
            raise ValueError(f"model option exit_layers: early-exit span heads are for extractive QA (task "
                             f"{' / '.join(OPTION_TASKS['exit_layers'])}, not {self.task})")
        _fraction(self, "warmup", 0.0, 1.0, high_open=True)
        _fraction(self, "weight_decay", 0.0, math.inf, high_open=True)
        betas = self.adam_betas
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"option adam_betas={betas!r}: expected two numbers 0 <= beta < 1")
        self.adam_betas = [float(b) for b in betas]

    def _validate_paths(self) -> None:
        """Data, tokenizer and run locations."""
        if self.max_length > 4096:
            raise ValueError(f"option max_length={self.max_length}: at most 4096 for QA windows")
        if self.train_data is not None and (not isinstance(self.train_data, list) or not self.train_data
                                            or not all(isinstance(p, str) and p for p in self.train_data)):
            raise ValueError(f"option train_data={self.train_data!r}: expected a non-empty list of paths")
        for name in ("eval_data", "tokenizer", "run_name", "init_from"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"option {name}={value!r}: expected a path (a non-empty string) or null")
        if not isinstance(self.runs_dir, str) or not self.runs_dir:
            raise ValueError(f"option runs_dir={self.runs_dir!r}: expected a directory path")
        if self.run_name is not None and (self.run_name in (".", "..") or "/" in self.run_name):
            raise ValueError(f"option run_name={self.run_name!r}: expected a plain directory name (no '/'); "
                             "use runs_dir for the parent directory")
        if not isinstance(self.notes, dict):
            raise ValueError(f"option notes={self.notes!r}: expected a JSON object")

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
                   "keep_checkpoints", "log_with", "sharding", "deepspeed_config")
        data = {k: v for k, v in self.to_dict().items() if k not in ignored}
        if data.get("tokenizer_shards") is None:  # a later field at its default: earlier runs keep their names
            data.pop("tokenizer_shards", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


# --help text of every training option (the command line is generated from the dataclasses; the
# model options' texts come from ModelConfig's docstring). ``OPTION_TASKS``: options that only one
# kind of task reads; the other commands do not offer them.
OPTION_HELP: dict[str, str] = {
    "task": "what to train: qa (extractive QA), generative-qa, mlm / clm (pretraining; nami pretrain)",
    "segment_embeddings": "question / context token-type embeddings (BERT's token_type_ids)",
    "question_match": "a third token type for context words that also occur in the question (DrQA's exact-match "
                      "feature); needs --segment-embeddings",
    "title_prefix": "QA training contexts in JSQuAD's '<title> [SEP] <paragraph>' format",
    "train_data": "SQuAD-format training files or directories of *.json shards (default: JaQuAD train; "
                  "pretraining: their contexts)",
    "eval_data": "SQuAD-format evaluation file (default: JSQuAD dev; pretraining: JaQuAD dev contexts)",
    "tokenizer": "a saved tokenizer directory (default: the cached default tokenizer, trained once)",
    "vocab_size": "pieces of the default tokenizer (ignored with --tokenizer)",
    "tokenizer_shards": "the default tokenizer is trained on the first N JaQuAD train shards only (default: all; "
                        "--preset tiny: 2)",
    "max_length": "tokens per window or sequence (rounded up to a multiple of 16 for the model)",
    "doc_stride": "tokens between the starts of consecutive windows of a long context (NOT the overlap, as in "
                  "Hugging Face run_qa.py's --doc_stride: overlap = max_length - question - doc_stride)",
    "max_question_tokens": "questions are cut to this many tokens",
    "negative_fraction": "share of answerless windows kept for training (0-1)",
    "batch_size": "windows / sequences per optimizer step (before --grad-accum)",
    "grad_accum": "batches accumulated per optimizer step (the loss is the mean over all their tokens / windows, as in one big batch)",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay on matrices",
    "adam_betas": "AdamW's beta1 beta2",
    "adam_eps": "AdamW's epsilon",
    "warmup": "fraction of training progress spent warming up the learning rate (0-1)",
    "schedule": "learning-rate decay after warm-up",
    "max_grad_norm": "gradient clipping norm",
    "epochs": "passes over the training data (the run stops at the first of epochs, max steps, max minutes)",
    "max_steps": "optimizer steps to train (default: from --epochs)",
    "max_minutes": "training-time budget in minutes (evaluation excluded); the schedule follows it",
    "eval_every_minutes": "evaluate on --eval-subset questions every N training minutes (default 10; none: only "
                          "at the end)",
    "eval_subset": "questions (or sequences) of the periodic evaluations; the final one uses all",
    "eval_batch_size": "windows per evaluation batch",
    "max_answer_tokens": "longest answer span (tokens) the decoder considers",
    "num_beams": "generative QA: beam-search width when answers are generated (1 = greedy)",
    "constrain": "generative QA: none = free generation; context = every answer decoded as a span of its context "
                 "(tokens that continue a place where the answer so far occurs, or the end)",
    "answer_boundaries": "answers begin/end on MeCab word boundaries (word) or on any token (token)",
    "precision": "auto (bf16 autocast where the hardware has native bf16: AMX / AVX512-BF16 CPUs, Ampere+ GPUs; "
                 "else fp32, which is faster there), bf16 or fp32; the run saves what auto chose",
    "seed": "seed of initialisation, data order and dropout (a run without --max-minutes is bitwise reproducible)",
    "threads": "CPU threads (default: all cores)",
    "log_every": "optimizer steps between training log records",
    "checkpoint_every_steps": "save a resumable checkpoint every N steps",
    "checkpoint_every_minutes": "save a resumable checkpoint every N training minutes",
    "keep_checkpoints": "resumable checkpoints kept (oldest deleted first)",
    "nonfinite_skips": "batches with a NaN/inf loss or gradient skipped before training stops",
    "on_bad_record": "a malformed data record stops the run (error) or is skipped and counted (skip)",
    "runs_dir": "directory that holds run directories",
    "run_name": "run directory name (default: date-arch-preset-hash)",
    "init_from": "a run (e.g. nami pretrain) whose encoder weights start this run",
    "mlm_probability": "share of tokens masked",
    "loss_impl": "vocabulary-layer loss: auto (blockwise CCE on CPU, cce on CUDA), blockwise, torch_chunked, "
                 "naive (materialises the logits), cce",
    "loss_filter": "CCE gradient filtering: skip vocabulary blocks whose softmax mass is negligible",
    "loss_filter_threshold": "filtering threshold (default: the policy's)",
    "loss_vocab_order": "frequency: order the vocabulary by token frequency so filtering skips more blocks",
    "tie_embeddings": "the output matrix is the input token embedding",
    "pppl_sequences": "held-out sequences scored by pseudo-perplexity at the end",
    "branch_schedule": 'stage-wise training: {branch: progress 0-1 at which it switches on} (JSON, e.g. \'{"conv": 0.5}\')',
    "compile_wave": "torch.compile everything of a Wave layer after its first projection (maths, LayerNorm, "
                    "output projection) as one graph that keeps only w for backward (same results to rounding; "
                    "less time than the default outside the matrix products, about its memory; "
                    "results/roofline.md, results/compile_tail_*.md)",
    "self_distill": "weight (0-1) of the last layer's span distribution teaching the early-exit heads "
                    "(--exit-layers); 0 = exits learn from the answers only",
    "distill_temperature": "softmax temperature of self-distillation",
    "wave_recompute": "Wave layers keep only w and G² for backward and recompute the wave maths, its "
                      "LayerNorm and projection input (less memory, faster; false = autograd, the reference; "
                      "compile_wave replaces both)",
    "sharding": "with several processes (torchrun / accelerate launch): none = a full model per process (DDP), "
                "fsdp2 = parameters, gradients and optimizer state sharded across them (PyTorch FSDP2), "
                "zero2 / zero3 = DeepSpeed ZeRO stage 2 / 3 (pip install deepspeed)",
    "deepspeed_config": "a DeepSpeed config JSON for --sharding zero2/zero3 (default: nami's, the same as "
                        "configs/deepspeed/zero2.json / zero3.json); \"auto\" values are filled from the run",
    "log_with": "tensorboard: also log the training curves to RUN/tensorboard (needs pip install "
                "'nami[tensorboard]'; view with tensorboard --logdir RUN/tensorboard)",
    "rope_base": "base of the RoPE angles (with --wave-rope / --attention-rope)",
    "rope_scale": "scale of the positions in the RoPE angles (with --wave-rope / --attention-rope)",
    "preset": "model size: tiny (d=64, 2 layers; on the command line also quick first-run settings for the options "
              "not given: a 4k tokenizer on 2 JaQuAD shards, training on those shards, 128-token windows, batch 16, "
              "30 s), small (d=256, 4 layers), base (d=512, 8 layers)",
}
# Options only some tasks read (each task's registry entry names them); the others warn.
class _LiveOptionTasks(dict):
    """:func:`~nami.runs.tasks.option_tasks` read at each use, so tasks a plugin registers
    after this module was imported count too."""

    def _now(self) -> dict[str, tuple[str, ...]]:
        return option_tasks()

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._now()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._now()

    def get(self, key: str, default=None):
        return self._now().get(key, default)

    def items(self):
        return self._now().items()

    def keys(self):
        return self._now().keys()

    def __iter__(self):
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


OPTION_TASKS: dict[str, tuple[str, ...]] = _LiveOptionTasks()


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
