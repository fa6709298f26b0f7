"""``nami`` command line: a thin layer over the library (argument parsing and error reporting).

Every user error (bad data, bad option, missing file, mismatched checkpoint) ends in one
``nami: error: ...`` line and exit status 2 — never a Python traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
import typing
from pathlib import Path
from typing import Any, Sequence

from nami.checks import in_range
from nami.data.choices import ANSWER_BOUNDARIES
from nami.runs.config import TrainConfig
from nami.runs.tasks import task_names

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from nami.data.squad import DataValidationError
    from nami.paths import DataNotFoundError
    from nami.text import TokenizerError
    from nami.training.checkpoint import CheckpointError

    return (UserError, DataValidationError, DataNotFoundError, TokenizerError, CheckpointError, FileNotFoundError,
            FileExistsError, ValueError)


# --- option values: checked when parsed, so bad values never reach a command -------------------


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one ``nami: error:`` line (the contract of every other user error)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"nami: error: {message} (see `{self.prog} --help`)\n")


def _number(text: str, kind: type, low: float, *, low_open: bool = False, high: float = math.inf) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if not in_range(value, low, high, low_open=low_open):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        bound += f" and <= {high:g}" if high != math.inf else ""
        raise argparse.ArgumentTypeError(f"expected a finite {'integer' if kind is int else 'number'} {bound}, "
                                         f"got {text!r}")
    return value


class _NoneValue:
    """``--option none`` for an option whose ``None`` means something (``OPTIONAL_OPTIONS``): argparse's
    own ``None`` means "not given"."""

    def __repr__(self) -> str:
        return "none"


NONE = _NoneValue()


def _optional(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return NONE if text.strip().lower() in ("none", "null") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"conv\": 0.5}}', got {text!r}")
    return value


def _device(text: str) -> str:
    """A torch device string, checked when parsed (``cuda`` on a machine without CUDA is refused here)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no MPS device is available here")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):  # meta, ipu, ...: nothing nami can run on
        raise argparse.ArgumentTypeError(f"{text!r}: nami runs on cpu, cuda, mps or xpu devices")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: no XPU device is available here")
    return text


def _seed(text: str) -> int:
    value = nonnegative_int(text)
    if value >= 2**63:  # torch.Generator.manual_seed takes a 64-bit integer (larger overflowed with a traceback)
        raise argparse.ArgumentTypeError(f"{text}: expected a seed below 2**63")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1)


def nonnegative_int(text: str) -> int:
    return _number(text, int, 0)


def positive_float(text: str) -> float:
    return _number(text, float, 0.0, low_open=True)


def nonnegative_float(text: str) -> float:
    return _number(text, float, 0.0)


def probability(text: str) -> float:
    return _number(text, float, 0.0, low_open=True, high=1.0)


# --- train options generated from TrainConfig -------------------------------------------------

_HIDDEN_TRAIN_FIELDS = {"notes", "model"}


def _option_fields() -> list[tuple[str, Any, Any]]:
    """(name, type hint, default) of every training option: the :class:`TrainConfig` fields and the
    user-facing :class:`ModelConfig` fields (``TrainConfig.model``, given flat; ``--preset`` picks the size)."""
    from nami.models.config import PRESETS, ModelConfig  # dataclasses only: no torch before a command runs
    from nami.runs.config import MODEL_SHORTCUTS

    train_hints = typing.get_type_hints(TrainConfig)
    model_hints = typing.get_type_hints(ModelConfig)
    # The defaults of the "small" preset, read without building (validating) a config.
    model_defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)} | PRESETS["small"]
    options = [(f.name, train_hints[f.name], f.default) for f in dataclasses.fields(TrainConfig)
               if f.name not in _HIDDEN_TRAIN_FIELDS]
    options.append(("preset", str, "small"))
    options += [(name, model_hints[name], model_defaults.get(name)) for name in MODEL_SHORTCUTS
                if name != "preset"]
    return options


def option_names() -> list[str]:
    return [name for name, _, _ in _option_fields()]


def _model_field_help() -> dict[str, str]:
    """The model options' help: the ``Attributes:`` section of :class:`ModelConfig`'s docstring."""
    from nami.models.config import ModelConfig

    helps: dict[str, str] = {}
    name = None
    for line in (ModelConfig.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        stripped = line.strip()
        if line.startswith(" " * 8) and not line.startswith(" " * 9) and ":" in stripped:
            name, text = stripped.split(":", 1)
            helps[name] = text.strip()
        elif name and stripped:
            helps[name] += " " + stripped
    return {k: _plain_help(v) for k, v in helps.items()}


def _plain_help(text: str) -> str:
    """A docstring's reST as command-line text: ``:data:`~a.B``` → ``B``, ``["wave", "conv"]`` →
    ``wave conv`` (how the command line takes a list), ``"wave"`` → ``wave``."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", text)
    text = re.sub(r"``\[([^\]]*)\]``", lambda m: "'" + " ".join(x.strip(' "') for x in m[1].split(",")) + "'", text)
    text = re.sub(r'``"([\w-]+)"``', r"\1", text)
    return text.replace("``", "'")


def add_train_options(parser: argparse.ArgumentParser, exclude: set[str] = frozenset(),
                      tasks: tuple[str, ...] | None = None) -> None:
    """One ``--option`` per training option (the dataclasses are the single source of truth), with its
    help text and default; ``tasks``: offer only the options those tasks read (``OPTION_TASKS``)."""
    from nami.runs.config import (
        OPTION_HELP,
        OPTION_TASKS,
        OPTIONAL_OPTIONS,
        POSITIVE_INTEGER_OPTIONS,
        POSITIVE_NUMBER_OPTIONS,
    )

    helps = {**_model_field_help(), **OPTION_HELP}
    choices = _choice_lists()
    for name, hint, default in _option_fields():
        if name in exclude or (tasks and name in OPTION_TASKS and not set(OPTION_TASKS[name]) & set(tasks)):
            continue
        flag = "--" + name.replace("_", "-")
        text = helps.get(name, "").replace("%", "%%")
        # A help text that already says its default is not told it twice.
        default_text = "" if "default" in text else f"(default: {'none' if default is None else default})"
        args = typing.get_args(hint) if typing.get_origin(hint) is not typing.Literal else ()
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if typing.get_origin(base) is list or typing.get_origin(hint) is list:
            item = (typing.get_args(base) or (str,))[0]
            metavar = "PATH" if name.endswith("data") else "N" if item is int else "NAME"
            parser.add_argument(flag, nargs="+", default=None, metavar=metavar, type=item, help=f"{text} {default_text}")
        elif typing.get_origin(base) is dict:
            parser.add_argument(flag, type=_json_object, default=None, metavar="JSON", help=f"{text} {default_text}")
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{text} {default_text}")
        elif typing.get_origin(base) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(base), default=None, help=f"{text} {default_text}")
        elif name in choices:
            parser.add_argument(flag, choices=choices[name](), default=None, help=f"{text} {default_text}")
        else:
            kind = (positive_int if name in POSITIVE_INTEGER_OPTIONS else
                    positive_float if name in POSITIVE_NUMBER_OPTIONS else base)
            if name in OPTIONAL_OPTIONS:
                kind = _optional(kind)
            parser.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=f"{text} {default_text}")


def _choice_lists() -> dict[str, Any]:
    """Options whose values are a fixed list (shown in --help; argparse refuses others at once)."""
    from nami.models.config import POSITION_EMBEDDINGS, PRESETS
    from nami.runs import config as train_config

    return {
        "preset": lambda: tuple(PRESETS),
        "precision": lambda: train_config.PRECISIONS,
        "schedule": lambda: train_config.SCHEDULES,
        "loss_impl": lambda: train_config.LOSS_IMPLS,
        "loss_filter": lambda: train_config.LOSS_FILTERS,
        "loss_vocab_order": lambda: train_config.VOCAB_ORDERS,
        "on_bad_record": lambda: train_config.BAD_RECORD_POLICIES,
        "answer_boundaries": lambda: ANSWER_BOUNDARIES,
        "constrain": lambda: train_config.CONSTRAINTS,
        "position_embedding": lambda: POSITION_EMBEDDINGS,
        "log_with": lambda: train_config.LOG_WITH,
        "sharding": lambda: train_config.SHARDINGS,
    }


def _variant_of(args: argparse.Namespace) -> Any:
    """The model variant ``--arch`` names when it is one of the variant table (``wave+conv``,
    ``wave_plus``, ``conv-only``, ...) rather than an architecture; None for an architecture."""
    from nami.reports.variants import resolve

    name = getattr(args, "arch", None)
    if not name:
        return None
    try:
        variant = resolve(name)
    except ValueError:
        return None  # an architecture (perhaps a plugin's); TrainConfig checks it
    return variant if (variant.arch, variant.options) != (name, {}) else None


def train_config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    values = dict(base or {})
    variant = _variant_of(args)  # --arch wave+conv: the variant's architecture and options
    variant_options = {k: v for k, v in (variant.options if variant else {}).items() if "." not in k}
    arch = variant.arch if variant else getattr(args, "arch", None)
    if getattr(args, "recipe", None):  # a compare preset's stage: the reported settings; options override it
        from nami.reports.presets import recipe

        stage = getattr(args, "recipe_stage", "finetune")
        mixers = getattr(args, "mixers", None)  # compile_wave only where the model has Wave layers
        model_options = {**variant_options, **({"mixers": mixers} if mixers and mixers is not NONE else {})}
        values.update(recipe(args.recipe, stage, arch=arch or "wave", options=model_options or None))
        if getattr(args, "objective", None) and values["task"] != args.objective:
            raise UserError(f"--recipe {args.recipe}: its pretraining objective is {values['task']}, not "
                            f"--objective {args.objective}")
    if getattr(args, "config", None):
        loaded = _read_json(args.config, "--config")
        if not isinstance(loaded, dict):
            raise UserError(f"--config {args.config}: training config: expected a JSON object, got "
                            f"{type(loaded).__name__}")
        if {"train", "tokenizer_fingerprint"} <= set(loaded) and isinstance(loaded["train"], dict):
            # a run's config.json: its training settings, for a new run (its own name is not reused)
            loaded = {k: v for k, v in loaded["train"].items() if k != "run_name"}
        values.update(loaded)
    values.update(variant_options)
    for name in option_names():
        value = getattr(args, name, None)
        if value is not None:
            values[name] = None if value is NONE else value
    if variant is not None:
        values["arch"] = variant.arch
        values["notes"] = {**(values.get("notes") or {}), "variant": variant.name}
    if values.get("preset") == "tiny" and not getattr(args, "recipe", None) and not getattr(args, "config", None):
        _first_use_defaults(values)
    try:
        return TrainConfig.from_dict(values)
    except ValueError as err:
        if getattr(args, "config", None):  # the value may come from the file: name it
            raise UserError(f"{err} (options from --config {args.config} and the command line)") from err
        raise


# `--preset tiny` is the first thing to try: under a minute on 2 cores on first use (benchmarks/first_minute.py
# → results/first_minute.md).
# Each applies unless given: a 4k tokenizer trained on 2 JaQuAD train shards (the default 32k one reads all 30,
# ~2 min), training on those 2 shards, short windows, a small batch, 30 s of training, no periodic evaluation.
TINY_FIRST_USE = dict(vocab_size=4000, tokenizer_shards=2, max_length=128, doc_stride=64, max_question_tokens=32,
                      batch_size=16, lr=2e-3, eval_every_minutes=None)
TINY_TRAIN_SHARDS = 2
TINY_MINUTES = 0.5


def _first_use_defaults(values: dict[str, Any]) -> None:
    """``--preset tiny``'s quick settings, for the options the command line did not give."""
    from nami.runs.tasks import QA, option_tasks

    readers = option_tasks()  # options only some tasks read: set only for a task that reads them
    task = values.get("task") or QA
    for name, value in TINY_FIRST_USE.items():
        if name in ("vocab_size", "tokenizer_shards") and values.get("tokenizer"):
            continue  # the given tokenizer's vocabulary
        if name in readers and task not in readers[name]:
            continue
        values.setdefault(name, value)
    if not any(name in values for name in ("epochs", "max_steps", "max_minutes")):  # `none` given counts as given
        values["max_minutes"] = TINY_MINUTES
    if values.get("train_data") is None:
        from nami.paths import JAQUAD_TRAIN, DataNotFoundError, default_data

        try:
            shards = sorted(default_data(JAQUAD_TRAIN).glob("*.json"))[:TINY_TRAIN_SHARDS]
        except DataNotFoundError:
            shards = []  # the run reports the missing data itself
        if shards:
            values["train_data"] = [str(path) for path in shards]


def _read_json(path: str, what: str) -> Any:
    from nami.io import read_input_json

    return read_input_json(path, what)  # InputFileError (a ValueError) names the option and the file


# --- commands ----------------------------------------------------------------------------------


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from nami.data.corpus import read_corpus
    from nami.io import check_output_dir
    from nami.text import train_tokenizer

    out = check_output_dir(args.out, "--out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {args.out}: already exists and is not an empty directory (a tokenizer or a run's "
                        "tokenizer/ would be overwritten); choose a new directory")
    texts = read_corpus(args.corpus)
    tokenizer = train_tokenizer(texts, args.out, vocab_size=args.vocab_size, model_type=args.model_type,
                                show_progress=not args.quiet)
    note = ""
    if tokenizer.vocab_size < args.vocab_size:  # --vocab-size is an upper bound (hard_vocab_limit=False)
        note = (f" ({args.vocab_size:,} asked: the corpus has too few distinct words for more; a larger corpus "
                "gives more pieces)")
    print(f"tokenizer with {tokenizer.vocab_size:,} pieces saved to {args.out}{note}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from nami.data.squad import check_squad, format_report

    _, report = check_squad(args.paths, require_answers=not args.allow_unanswered)
    for bad in report.bad:
        print(f"{bad.file}: {bad.id}: {bad.reason}")
    # The bad records once each, on stdout (above); the summary counts them.
    print(format_report(report, list_bad=False), file=sys.stderr if report.bad else sys.stdout)
    return 1 if report.bad else 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from nami.data.fetch import fetch

    files = fetch(args.dataset, args.dir, base_url=args.base_url, timeout=args.timeout,
                  progress=lambda line: print(f"[nami] {line}", flush=True))
    print(f"[nami] {args.dataset}: {len(files)} file(s) in place and verified")
    return 0


def cmd_data_articles(args: argparse.Namespace) -> int:
    from nami.data.articles import article_view, to_squad
    from nami.data.squad import load_squad
    from nami.io import check_output_path, write_json

    check_output_path(args.out, "--out", inputs=args.paths)
    examples = article_view(load_squad(args.paths), separator=args.separator)
    write_json(Path(args.out), to_squad(examples))
    lengths = sorted(len(c) for c in {ex.context for ex in examples})
    print(f"[nami] {len(examples):,} questions over {len(lengths):,} articles (characters: median "
          f"{lengths[len(lengths) // 2]:,}, longest {lengths[-1]:,}) -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nami.data.squad import load_squad
    from nami.evaluation.metric import evaluate_predictions, load_predictions

    examples = load_squad(args.data, on_bad_record=args.on_bad_record)
    predictions = load_predictions(args.predictions)
    if predictions and not set(predictions) & {example.id for example in examples}:
        raise UserError(f"--predictions {args.predictions}: none of its {len(predictions):,} question ids is in "
                        f"--data {' '.join(map(str, args.data)) if isinstance(args.data, list) else args.data} "
                        f"(first: {next(iter(predictions))!r}); predictions of another dataset?")
    scores = evaluate_predictions(examples, predictions)
    if scores["missing"]:
        print(f"nami: warning: {len(scores['missing'])} question(s) have no prediction and count as wrong "
              f"(first: {', '.join(scores['missing'][:5])})", file=sys.stderr)
    print(json.dumps({k: scores[k] for k in ("exact_match", "f1", "count")}))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``nami pretrain`` = ``nami train --task mlm`` (``--objective clm``: ``--task clm``, a causal decoder)."""
    from nami.runs.tasks import MLM

    args.task = args.objective or (None if args.recipe else MLM)  # the recipe's objective, else masked LM
    return cmd_train(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from nami.pipelines import pipeline

    if args.temperature == 0 and (args.top_k is not None or args.top_p is not None):
        raise UserError("--top-k / --top-p restrict sampling: give --temperature > 0 too (e.g. 0.8); at the "
                        "default 0 decoding is greedy and would ignore them")
    generator = pipeline("text-generation", model=args.checkpoint, threads=args.threads, device=args.device)
    stream = None if args.no_stream or args.json else (lambda piece: print(piece, end="", flush=True))
    if stream is not None:
        print(args.prompt, end="", flush=True)  # the prompt, then its continuation as it is written
    result = generator(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_text=stream)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif stream is None:
        print(result["generated_text"])
    else:
        print(flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # Options are checked before torch is imported, so a bad value is refused at once.
    config = None
    if getattr(args, "allow_changed_data", False) and not args.resume:
        raise UserError("--allow-changed-data applies with --resume (a new run records its data as it is)")
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in option_names()
                 if name not in ("threads", "task") and getattr(args, name, None) is not None]
        given += ["--recipe"] if getattr(args, "recipe", None) else []
        if given or args.config:
            dropped = ", ".join(given) or "--config"
            raise UserError(f"--resume continues the run with its saved config; drop {dropped}")
    else:
        if args.tokenizer and args.vocab_size is not None:
            raise UserError("--vocab-size sizes the default tokenizer; with --tokenizer DIR the vocabulary is "
                            "that tokenizer's (drop one of them)")
        config = train_config_from_args(args)
    from nami.training.loop import NonFiniteError, TrainingInterrupted, resume, train

    try:
        if config is None:
            resume(args.resume, quiet=args.quiet, threads=args.threads,
                   allow_changed_data=getattr(args, "allow_changed_data", False))
        else:
            train(config, quiet=args.quiet)
    except TrainingInterrupted as stopped:
        print(f"nami: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except NonFiniteError as err:
        print(f"nami: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from nami.io import check_output_path
    from nami.pipelines import predict_file
    from nami.resources import peak_rss_mb

    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size}: expected >= 1")
    check_output_path(args.output, "--output", inputs=args.data, protected=[args.checkpoint])

    result = predict_file(args.checkpoint, args.data, args.output, batch_size=args.batch_size,
                          threads=args.threads, answer_boundaries=args.answer_boundaries, quiet=args.quiet,
                          num_beams=args.num_beams, constrain=args.constrain, device=args.device)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)  # this process did nothing but predict
    print(json.dumps(result, ensure_ascii=False))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import time

    from nami.pipelines import ask
    from nami.resources import peak_rss_mb

    context = args.context
    if args.context_file is not None:
        try:
            context = Path(args.context_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"--context-file {args.context_file}: cannot read it as UTF-8 text ({error})") from None
    started = time.perf_counter()
    if args.checkpoint is None:
        from nami.paths import shipped_qa

        args.checkpoint = str(shipped_qa())
    answer = ask(args.checkpoint, context=context, question=args.question, n_best=args.n_best,
                 device=args.device, whole=args.whole)
    if args.verbose:
        print(f"[nami] {len(context):,} characters in {answer.get('windows', 1)} window(s), "
              f"{time.perf_counter() - started:.2f} s, peak {peak_rss_mb():,.0f} MB", file=sys.stderr)
    if args.json:
        print(json.dumps(answer, ensure_ascii=False))
    else:
        for rank, cand in enumerate(answer["candidates"], 1):
            if answer.get("generated"):  # a generative-QA run writes one answer
                where = (f"chars {cand['start']}-{cand['end']}" if answer["found_in_context"]
                         else "not found verbatim in the context")
                print(f"{rank}. {cand['text']}\t(generated; {where})")
            else:
                print(f"{rank}. {cand['text']}\t(score {cand['score']:.2f} = start + end logit, "
                      f"chars {cand['start']}-{cand['end']})")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from nami.data.squad import load_squad
    from nami.evaluation import lexical
    from nami.evaluation.metric import evaluate_predictions
    from nami.io import check_output_path, write_json
    from nami.reports.environment import git_commit, machine_description, now_iso

    if args.window < 1:
        raise UserError(f"--window={args.window}: expected >= 1")
    for option, value in (("--output", args.output), ("--results", args.results)):
        if value:
            check_output_path(value, option, inputs=args.data)
    examples = load_squad(args.data, on_bad_record=args.on_bad_record)
    predictions = lexical.predict(examples, window=args.window, show_progress=not args.quiet)
    scores = evaluate_predictions(examples, predictions)
    summary = {k: scores[k] for k in ("exact_match", "f1", "count")}
    if args.output:
        write_json(Path(args.output), predictions)
    if args.results:
        write_json(Path(args.results), {"command": " ".join(["nami", *sys.argv[1:]]), "commit": git_commit(),
                                        "machine": machine_description(), "date": now_iso(), "data": args.data,
                                        "baseline": "lexical-overlap", "window": args.window, **summary})
    print(json.dumps(summary))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.preset is None:  # not a 2-hour job by accident
        from nami.reports.presets import describe_presets

        raise UserError("--preset: choose how long to train, e.g. --preset quick (~11 min of training chains); the presets: "
                        + describe_presets())
    from nami.reports.compare import run_compare

    run_compare(
        preset=args.preset,
        minutes=args.minutes,
        pretrain_minutes=args.pretrain_minutes,
        parallel=args.parallel,
        out_dir=args.out,
        train_data=args.train_data,
        eval_data=args.eval_data,
        tokenizer=args.tokenizer,
        lexical_baseline=not args.no_lexical,
        quiet=args.quiet,
        command=" ".join(["nami", *sys.argv[1:]]),
        results_path=args.results,
        models=tuple(args.models),
        custom=_custom_variants(args),
        reuse=tuple(args.reuse or ()),
        started=getattr(args, "started", None),
    )
    return 0


def _custom_variants(args: argparse.Namespace) -> dict[str, Any]:
    from nami.reports.variants import parse_variant

    custom: dict[str, Any] = {}
    for spec in getattr(args, "variant", None) or ():
        try:
            custom.update(parse_variant(spec))
        except ValueError as error:
            raise UserError(str(error)) from None
    return custom


def cmd_ablate(args: argparse.Namespace) -> int:
    from nami.reports.ablate import merge_ablations, run_ablation

    command = " ".join(["nami", *sys.argv[1:]])
    if args.merge:
        if args.variants:
            raise UserError("--merge tabulates existing ablation files; drop --variants")
        record = merge_ablations(args.merge, args.out, command=command, notes=args.note, title=args.title)
        print(f"[nami] wrote {args.out}.json and {args.out}.md ({len(record['rows'])} rows)")
        return 0
    custom = _custom_variants(args)
    variants = args.variants or list(custom)
    if not variants:
        raise UserError("--variants: expected the variants to train (or --merge FILE... to tabulate earlier runs)")
    record = run_ablation(variants=variants, preset=args.preset, minutes=args.minutes,
                          pretrain_minutes=args.pretrain_minutes, seeds=args.seeds, out=args.out,
                          train_data=args.train_data, eval_data=args.eval_data, tokenizer=args.tokenizer,
                          quiet=args.quiet, command=command, custom=custom, allow_dirty=args.allow_dirty,
                          title=args.title)
    if record.get("nothing_trained"):
        print(f"[nami] nothing to train: every variant and seed asked for is already in {args.out}.json "
              f"({len(record['rows'])} rows, unchanged); give another --out to train them again")
        return 0
    print(f"[nami] wrote {args.out}.json and {args.out}.md ({len(record['rows'])} rows)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"nami serve needs {' and '.join(missing)}: pip install 'nami[serve]'")
    from nami.serve import serve

    if not args.runs:
        from nami.paths import shipped_qa

        args.runs = [str(shipped_qa())]
    serve(args.runs, host=args.host, port=args.port, device=args.device, max_context_chars=args.max_context_chars,
          batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, threads=args.threads)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nami import paths
    from nami.reports.export import export_model

    eval_data = args.eval_data or str(paths.default_data(paths.JSQUAD_DEV))
    import shlex

    card = export_model(args.run, args.out, eval_data=eval_data, dtype=args.dtype, results=args.results,
                        name=args.name, note=args.note, quiet=args.quiet, command=shlex.join(args.command_line))
    ev = card["evaluation"]
    print(f"[nami] exported {args.run} to {args.out} ({card['weights']['bytes_on_disk'] / 1e6:.1f} MB): "
          f"EM {ev['exact_match']:.2f} / F1 {ev['f1']:.2f} on {ev['data']} ({ev['count']:,} questions)")
    return 0


def cmd_bench_long_context(args: argparse.Namespace) -> int:
    from nami.bench.long_context import markdown, run_long_context

    _check_results_out(args.out)
    readers = {}
    for spec in args.readers:
        name, _, rest = spec.partition("=")
        run, _, mode = rest.partition(":")
        if not name or not run:
            raise UserError(f"--readers {spec!r}: expected NAME=RUN[:windows|:whole]")
        readers[name] = (run, mode or "windows")
    from nami import paths

    data = args.data or str(paths.default_data(paths.JSQUAD_DEV))
    result = run_long_context(readers, data=data, out=args.out, quiet=args.quiet,
                              command=" ".join(["nami", *sys.argv[1:]]))
    if not args.quiet:
        print(markdown(result))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from nami.bench.serve import markdown, run_serve_bench

    _check_results_out(args.out)
    result = run_serve_bench(args.run, levels=tuple(args.concurrency), seconds=args.seconds, out=args.out,
                             quiet=args.quiet, command=" ".join(["nami", *sys.argv[1:]]), warmup=args.warmup,
                             soak_seconds=args.soak_seconds, repeats=args.repeats, threads=args.threads)
    if not args.quiet:
        print(markdown(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nami.reports.report import RESULTS_FILE, rerender

    if not (Path(args.dir) / RESULTS_FILE).is_file():
        raise UserError(f"{args.dir}: no {RESULTS_FILE} (expected a directory written by `nami compare`)")
    from nami.reports.compare import check_results_path, copy_results

    if args.results is not None:
        check_results_path(args.results)
    print(rerender(args.dir))
    if args.results is not None:
        print(f"[nami] wrote {copy_results(args.dir, args.results)}")
    return 0


def cmd_bench_scaling(args: argparse.Namespace) -> int:
    from nami.bench.scaling import run_scaling

    _check_results_out(args.out)  # before the benchmark runs, not after

    result = run_scaling(seq_lens=tuple(args.seq_lens), tokens=args.tokens, preset=args.preset,
                         precision=args.precision, repeats=args.repeats, threads=args.threads,
                         memory_cap_mb=args.memory_cap_mb, time_limit_s=args.time_limit_s,
                         compile_wave=not args.no_compile_wave, autograd_wave=not args.no_autograd_wave, out=args.out,
                         quiet=args.quiet, command=" ".join(["nami", *sys.argv[1:]]))
    if not args.quiet:
        from nami.bench.scaling import markdown

        print(markdown(result))
    return 0


def cmd_bench_generation(args: argparse.Namespace) -> int:
    from nami.bench.generation import markdown, run_generation_bench

    _check_results_out(args.out)  # before the benchmark runs, not after

    result = run_generation_bench(prompt_lens=tuple(args.prompt_lens), new_tokens=args.new_tokens, preset=args.preset,
                                  batch=args.batch, repeats=args.repeats,
                                  precision=args.precision, threads=args.threads, memory_cap_mb=args.memory_cap_mb,
                                  time_limit_s=args.time_limit_s, out=args.out, quiet=args.quiet,
                                  compile_step=args.compile, command=" ".join(["nami", *sys.argv[1:]]),
                                  **({"models": tuple(args.models)} if args.models else {}))
    if not args.quiet:
        print(markdown(result))
    return 0


def cmd_bench_roofline(args: argparse.Namespace) -> int:
    from nami.bench.roofline import markdown, run_roofline

    _check_results_out(args.out)  # before the benchmark runs, not after

    result = run_roofline(seq_len=args.seq_len, tokens=args.tokens, preset=args.preset, repeats=args.repeats,
                          threads=args.threads, out=args.out, command=" ".join(["nami", *sys.argv[1:]]),
                          quiet=args.quiet)
    if not args.quiet:
        print(markdown(result))
    return 0


def _preset_names() -> list[str]:
    from nami.reports.presets import COMPARE_PRESETS

    return [name for name in COMPARE_PRESETS if not name.startswith("smoke")]


def _compare_presets_help() -> str:
    from nami.reports.presets import describe_presets  # no torch: the presets are data

    return describe_presets()


def describe_variants() -> str:
    from nami.reports.variants import describe  # no torch: the table is data

    return describe()


def _check_results_out(out: str) -> None:
    """A benchmark's ``--out`` JSON and the ``.md`` / ``.png`` written beside it must be writable files."""
    from nami.io import check_output_path

    if Path(out).suffix in (".md", ".png"):  # the markdown / plot beside it would then overwrite the JSON
        raise UserError(f"--out {out}: name the JSON file (e.g. {Path(out).with_suffix('.json')}); the .md and "
                        ".png are written beside it")
    for suffix in (".json", ".md", ".png"):
        check_output_path(Path(out).with_suffix(suffix) if suffix != ".json" else Path(out), "--out")


def build_parser() -> argparse.ArgumentParser:
    from nami import __version__

    parser = _Parser(prog="nami", description="nami (波): Japanese Wave Network toolkit",
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                         "environment:\n"
                         "  NAMI_DATA     the data folder (default: ../shared/data)\n"
                         "  NAMI_CACHE    caches, e.g. the default tokenizer (default: ~/.cache/nami)\n"
                         "  NAMI_PLUGINS  modules to import first, comma-separated (their @register_mixer mixers "
                         "become architectures)\n"
                         "  NAMI_DEBUG    1: tracebacks instead of one-line errors"))
    parser.add_argument("--version", action="version", version=f"nami {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_inference_commands(sub)
    _add_experiment_commands(sub)
    _add_serve_command(sub)
    _add_bench_commands(sub)
    _fill_help(parser)
    return parser


def _add_data_commands(sub: Any) -> None:
    """The tokenizer, data and evaluation tools subcommands."""
    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    p = tok.add_parser("train", help="train a MeCab + SentencePiece tokenizer")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="text files (one document per line), SQuAD JSON files or directories of shards")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--vocab-size", type=positive_int, default=32000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tokenizer_train)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="validate SQuAD-format files")
    p.add_argument("paths", nargs="+", help="files or directories of *.json shards")
    p.add_argument("--allow-unanswered", action="store_true", help="questions without answers are fine")
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("fetch", help="download JSQuAD dev / JaQuAD from their official homes, verified by sha256, "
                                      "into the folder the defaults read")
    p.add_argument("dataset", choices=["jsquad", "jaquad"])
    p.add_argument("--dir", default=None, help="the data folder (default: $NAMI_DATA, else ../shared/data)")
    p.add_argument("--base-url", default=None, help="a mirror with the same layout (default: the official home)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per request")
    p.set_defaults(func=cmd_data_fetch)
    p = data.add_parser("articles", help="the article-level view: every question asked about its whole article "
                                         "(paragraphs joined, answer offsets shifted) → one SQuAD file")
    p.add_argument("paths", nargs="+", help="SQuAD files or directories of *.json shards")
    p.add_argument("--out", required=True, help="the SQuAD JSON file to write")
    p.add_argument("--separator", default="\n", help="between paragraphs (default: a newline)")
    p.set_defaults(func=cmd_data_articles)

    p = sub.add_parser("evaluate", help="JSQuAD EM / F1 of a predictions file")
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--predictions", required=True)
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.set_defaults(func=cmd_evaluate)


def _add_run_control_options(p: Any) -> None:
    """What train and pretrain share beyond the training options: where the settings come from
    (--config, --recipe), resuming, and output."""
    p.add_argument("--config", help="JSON file of training options (command-line options override it)")
    p.add_argument("--recipe", choices=_preset_names(), default=None,
                   help="start from the settings of a compare preset's stage (e.g. standard: the reported runs); "
                        "--config and other options override them")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its newest checkpoint")
    p.add_argument("--allow-changed-data", action="store_true",
                   help="with --resume: continue even though the training or evaluation data changed since the run "
                        "started (refused by default; recorded in metrics.jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the run directory and final scores "
                                                           "are still printed, one line each)")


def _add_training_commands(sub: Any) -> None:
    """The train and pretrain subcommands."""
    p = sub.add_parser("train", help="train an extractive QA model")
    _add_run_control_options(p)
    add_train_options(p, tasks=task_names("train"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="masked-LM (or causal-LM) pretraining (default corpus: JaQuAD train contexts)")
    p.add_argument("--objective", choices=task_names("pretrain"), default=None,
                   help="mlm: masked LM (an encoder); clm: causal LM (a decoder that generates, nami generate)")
    _add_run_control_options(p)
    add_train_options(p, exclude={"task"}, tasks=task_names("pretrain"))
    p.set_defaults(func=cmd_pretrain, recipe_stage="pretrain")


def _add_inference_commands(sub: Any) -> None:
    """The predict, ask, generate and the baseline subcommands."""
    p = sub.add_parser("predict", help="answer every question of a SQuAD file with a trained run")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--output", required=True, help="PRED.json to write ({question_id: answer})")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's eval_batch_size")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--answer-boundaries", choices=ANSWER_BOUNDARIES, default=None,
                   help="where answers may begin/end: MeCab word boundaries or any token (default: the run's "
                        "answer_boundaries; runs saved before the option existed: token)")
    p.add_argument("--num-beams", type=positive_int, default=None,
                   help="generative-QA runs: beam search width (default: the run's num_beams, 1 = greedy)")
    p.add_argument("--constrain", choices=["none", "context"], default=None,
                   help="generative-QA runs: context = answers decoded as spans of their context only (default: the "
                        "run's constrain, none = free generation)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, mps, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ask", help="answer one question about one context")
    p.add_argument("--checkpoint", default=None,
                   help="run directory (extractive or generative QA; default: the QA model shipped with nami, "
                        "see src/nami/shipped/reader/README.md)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--context", help="the text to answer from")
    where.add_argument("--context-file", metavar="FILE", help="read the context from a UTF-8 text file (a whole "
                       "document: it is read in windows of the run's length, the best span over all of them)")
    p.add_argument("--question", required=True)
    p.add_argument("--verbose", action="store_true", help="also print the windows read, the time and peak memory")
    p.add_argument("--whole", action="store_true",
                   help="read the whole context in one window (a model without a learned position table: "
                        "--wave-rope / no positions; linear time for Wave-family models) instead of the run's windows")
    p.add_argument("--n-best", type=positive_int, default=3, help="answer spans to list (extractive runs; a "
                   "generative run writes one answer)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, mps, ... (default: cpu)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("generate", help="continue a prompt with a causal-LM run (nami pretrain --objective clm)")
    p.add_argument("--checkpoint", required=True, help="run directory of a causal-LM run")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample from the K most likely tokens "
                   "(with --temperature > 0)")
    p.add_argument("--top-p", type=probability, default=None, help="sample from the smallest set of tokens "
                   "whose probability reaches P (nucleus; with --temperature > 0)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sampler, 0 <= seed < 2**63 (sampling is "
                   "reproducible)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--no-stream", action="store_true", help="print the text at the end, not token by token")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, mps, ... (default: cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object: generated_text, token_ids, ...")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("baseline", help="non-neural reference answers (lexical-overlap heuristic)")
    p.add_argument("kind", choices=["lexical"])
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--output", help="PRED.json to write ({question_id: answer})")
    p.add_argument("--results", help="also write the scores with provenance to this JSON file")
    p.add_argument("--window", type=int, default=8, help="words on each side of a candidate that are compared")
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_baseline)


def _add_experiment_commands(sub: Any) -> None:
    """The compare, ablate and report subcommands."""
    p = sub.add_parser("compare", help="train Wave and Transformer under one budget and write a report")
    p.add_argument("--preset", default=None, help=f"compare preset (required; start with quick): "
                   f"{_compare_presets_help()}")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="QA training minutes per model (overrides the preset)")
    p.add_argument("--pretrain-minutes", type=nonnegative_float, default=None,
                   help="masked-LM pretraining minutes per model before QA training (overrides the preset; 0 = none)")
    p.add_argument("--parallel", action="store_true",
                   help="train both models at once, one thread each: half the wall time, half the cores per model "
                        "(default: one after the other, all cores each)")
    p.add_argument("--out", default=None,
                   help="report directory: results.json, report.md, plots and runs/ "
                        "(default: reports/<date-time>-compare-<preset>)")
    p.add_argument("--train-data", nargs="+", default=None)
    p.add_argument("--eval-data", default=None)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the cached default tokenizer)")
    p.add_argument("--no-lexical", action="store_true", help="skip scoring the lexical-overlap heuristic")
    p.add_argument("--models", nargs="+", default=["wave", "transformer"], metavar="NAME",
                   help="models to train, variants of the table (the same as nami ablate --variants; "
                        "default: wave transformer)")
    p.add_argument("--variant", action="append", default=None, metavar="SPEC",
                   help="define a model without code: NAME=ARCH:key=value,... or a JSON file (see nami ablate)")
    p.add_argument("--results", default=None, metavar="JSON",
                   help="also write the results JSON here (e.g. results/compare.json)")
    p.add_argument("--reuse", nargs="+", default=None, metavar="ABLATION_JSON",
                   help="reuse runs `nami ablate` trained with a model's exact plan instead of training it again "
                        "(e.g. results/ablations-standard.json: its seed-0 wave+conv and transformer runs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ablate", help="train model variants under one protocol → OUT.json / OUT.md table")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="tabulate earlier ablation files of one protocol into --out (no training)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="variants of the table (nami.reports.variants) [family]: " + describe_variants()
                        + "; any name + -noqm: the question-match feature off (default: every --variant given)")
    p.add_argument("--variant", action="append", default=None, metavar="SPEC",
                   help="define a variant without code: NAME=ARCH:key=value,... (JSON values, e.g. "
                        "'wide=wave:branches=[\"conv\"],d_ff=1280') or a JSON file {NAME: {arch, options}}; repeatable")
    p.add_argument("--allow-dirty", action="store_true",
                   help="train from a checkout with uncommitted changes (refused by default: results must name a "
                        "commit; the files then say -dirty)")
    p.add_argument("--title", default=None, help="the markdown's title")
    p.add_argument("--note", action="append", default=None,
                   help="with --merge: a line for the markdown (e.g. a selection decision); repeatable")
    p.add_argument("--preset", default=None,
                   help="compare preset whose recipe every run follows (default: screening = the scratch "
                        "preset's QA recipe for --minutes, default 8)")
    p.add_argument("--minutes", type=positive_float, default=None, help="QA training minutes per run")
    p.add_argument("--pretrain-minutes", type=nonnegative_float, default=None)
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0])
    p.add_argument("--out", default="results/ablations", help="OUT.json and OUT.md (runs under OUT-runs/)")
    p.add_argument("--train-data", nargs="+", default=None)
    p.add_argument("--eval-data", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("report", help="render a compare report directory's report.md again from its results.json")
    p.add_argument("dir", help="directory written by `nami compare`")
    p.add_argument("--results", default=None, metavar="JSON", help="also write its results JSON here")
    p.set_defaults(func=cmd_report)


# Help for options whose meaning is the same in every command that has them (``--quiet``, ...), and
# for the positional and specific ones without a text where they are defined; every option of every
# command has a help text (tested).
_COMMON_HELP = {
    "--quiet": "no progress bars (results are still printed)",
    "--threads": "CPU threads torch uses (default: all usable)",
    "--preset": "model size preset: tiny, small or base",
    "--train-data": "SQuAD-format training files or folders of *.json shards (default: the preset's)",
    "--eval-data": "SQuAD-format evaluation file (default: the preset's; the screen: JaQuAD dev)",
    "--tokenizer": "a saved tokenizer folder (default: the cached default tokenizer)",
    "--data": "SQuAD-format files or folders of *.json shards",
    "--on-bad-record": "error: stop at a bad record (default); skip: drop it with one warning line",
    "--predictions": "a JSON file {question_id: answer} (what nami predict writes)",
    "--question": "the question to answer",
    "--json": "print the result as one JSON object",
    "--prompt": "the text to continue",
    "--max-new-tokens": "tokens to generate at most",
    "--vocab-size": "pieces of the SentencePiece vocabulary",
    "--model-type": "SentencePiece model type",
    "--pretrain-minutes": "masked-LM pretraining minutes per run (overrides the preset; 0 = none)",
    "--seeds": "one run per seed and variant (a table's rows average them)",
    "--port": "TCP port (default: 8000)",
    "--seq-lens": "sequence lengths to measure",
    "--prompt-lens": "prompt lengths to measure",
    "--new-tokens": "tokens generated per prompt",
    "--memory-cap-mb": "a case over this resident memory is stopped and reported",
    "--time-limit-s": "a case over this time is stopped and reported",
    "--concurrency": "numbers of concurrent clients to measure",
    "--seq-len": "sequence length of the measured steps",
    "--tokens": "tokens per measured step",
    "--repeats": "repeats per case (medians are reported)",
    "dataset": "jsquad (JSQuAD dev) or jaquad (JaQuAD train and dev)",
    "kind": "the baseline: lexical (the noun chunk whose neighbouring words overlap the question most)",
}


def _fill_help(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fill_help(sub)
        elif not action.help and not isinstance(action, argparse._HelpAction):
            key = action.option_strings[0] if action.option_strings else action.dest
            action.help = _COMMON_HELP.get(key)


def _add_serve_command(sub: Any) -> None:
    """The serve subcommand."""
    p = sub.add_parser("serve", help="serve trained runs over HTTP: a JSON API and a web page (pip install "
                                     "'nami[serve]')")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories (QA, generative-QA or causal-LM runs; "
                                                           "default: the QA model shipped with nami)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--max-context-chars", type=positive_int, default=100_000,
                   help="longest context or prompt a request may send (longer: HTTP 413)")
    p.add_argument("--batch-window-ms", type=nonnegative_float, default=0.0,
                   help="how long the first question of a batch also waits for others (default 0: a batch is "
                        "the questions that queued while the previous one ran)")
    p.add_argument("--max-batch", type=positive_int, default=32, help="questions per forward pass at most")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads for inference (default: the usable CPUs minus one, at least 1: a core is "
                        "left to the HTTP side)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="a QA run as a compact model directory with a model card (bf16 weights, "
                                      "tokenizer, card.json + README.md with its measured EM / F1)")
    p.add_argument("run", help="the trained QA run directory")
    p.add_argument("--out", required=True, help="the directory to write (new or empty)")
    p.add_argument("--eval-data", default=None,
                   help="SQuAD-format file the card's EM / F1 are measured on (default: JSQuAD dev)")
    p.add_argument("--results", default=None,
                   help="the results JSON whose record of this run (command, commit, machine, selection score) the "
                        "card quotes (written by nami ablate)")
    p.add_argument("--name", default=None, help="the model's name in its card (default: the folder's name)")
    p.add_argument("--note", default=None, help="a sentence the card shows under its title (e.g. why this model)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="weights on disk (default: bf16)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)


def _add_bench_commands(sub: Any) -> None:
    """The the benchmarks subcommands."""
    bench = sub.add_parser("bench", help="benchmarks (not tests): scaling with sequence length, roofline, generation")
    bench = bench.add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("scaling", help="time and memory of Wave vs Transformer against sequence length")
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--tokens", type=positive_int, default=16384, help="tokens per step (batch = tokens / S, at least 1)")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the CPU/GPU has native bf16, else fp32 (recorded as chosen)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed steps per case (median reported)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--memory-cap-mb", type=positive_float, default=16000.0,
                   help="a case whose process passes this resident memory is stopped and listed as skipped")
    p.add_argument("--time-limit-s", type=positive_float, default=600.0, help="per case")
    p.add_argument("--no-compile-wave", action="store_true",
                   help="skip the wave-compiled variant (Wave with its layer's tail through torch.compile)")
    p.add_argument("--no-autograd-wave", action="store_true",
                   help="skip the wave-autograd variant (autograd through the plain Wave maths, --no-wave-recompute; "
                        "the default Wave uses the hand-written memory-light backward)")
    p.add_argument("--out", default="results/scaling.json", help="JSON (and .md / .png beside it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_scaling)
    p = bench.add_parser("generation", help="decoding speed and memory of the Wave and Transformer decoders "
                                            "against prompt length")
    p.add_argument("--prompt-lens", type=positive_int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--new-tokens", type=positive_int, default=64)
    p.add_argument("--batch", type=positive_int, default=1,
                   help="prompts decoded together (tokens/s counts all rows)")
    p.add_argument("--repeats", type=positive_int, default=1,
                   help="fresh processes per case (the decoders alternating); medians are reported")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   choices=["wave", "wave+conv", "transformer-static", "transformer"],
                   help="decoders to measure (default: all four; transformer-static: keys/values preallocated, "
                        "transformer: grown by torch.cat)")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the CPU/GPU has native bf16, else fp32 (recorded as chosen)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--memory-cap-mb", type=positive_float, default=16000.0)
    p.add_argument("--time-limit-s", type=positive_float, default=600.0)
    p.add_argument("--compile", action="store_true",
                   help="decode through torch.compile(model), every decoder (compiled during the warm-up)")
    p.add_argument("--out", default="results/generation.json", help="JSON (and .md / .png beside it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_generation)
    p = bench.add_parser("long-context", help="QA readers on whole articles vs paragraphs: EM/F1, questions/s, "
                                              "memory, F1 against article length")
    p.add_argument("--readers", nargs="+", required=True, metavar="NAME=RUN[:MODE]",
                   help="readers: a run and how it reads an article: windows (the run's sliding windows, default) "
                        "or whole (one window; models without a learned position table)")
    p.add_argument("--data", default=None, help="SQuAD file (default: JSQuAD dev)")
    p.add_argument("--out", default="results/long_context.json", help="JSON (and .md / .png beside it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_long_context)

    p = bench.add_parser("serve", help="requests/s and latency of nami serve under concurrent clients on 127.0.0.1, "
                                       "micro-batched and batch-1")
    p.add_argument("run", help="the run to serve (e.g. tests/fixtures/runs/wave)")
    p.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=positive_float, default=15.0, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=nonnegative_float, default=2.0,
                   help="seconds per level before measuring (first batches of a new size build their kernels)")
    p.add_argument("--soak-seconds", type=nonnegative_float, default=60.0,
                   help="a steady micro-batched run at concurrency 16 afterwards, memory checked (0: none)")
    p.add_argument("--repeats", type=positive_int, default=1,
                   help="fresh servers per mode, the modes alternating; records are medians over repeats")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="the server's torch threads (default: nami serve's own, the usable CPUs minus one)")
    p.add_argument("--out", default="results/serve.json", help="JSON (and .md beside it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_serve)

    p = bench.add_parser("roofline", help="GEMM roof of this machine and the models' training FLOP utilisation")
    p.add_argument("--seq-len", type=positive_int, default=512)
    p.add_argument("--tokens", type=positive_int, default=16384)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", default="results/roofline.json", help="JSON (and .md beside it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_roofline)



def load_plugins() -> list[str]:
    """Import the modules named in ``$NAMI_PLUGINS`` (comma-separated), so that the mixers they register
    (``@register_mixer``) are architectures of every command, and of the processes ``nami compare`` and
    ``torchrun`` start (they inherit the variable). Returns the names imported."""
    import importlib

    names = [n.strip() for n in os.environ.get("NAMI_PLUGINS", "").split(",") if n.strip()]
    if names:  # the built-in mixers and tasks first: a plugin reusing one of their names is refused at once
        from nami.models.registry import load_builtin_mixers
        from nami.runs.tasks import load_builtin_tasks

        load_builtin_mixers()
        load_builtin_tasks()
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name.split(".")[0] and err.name != name:
                raise UserError(f"NAMI_PLUGINS: {name!r} imports a module that is missing ({err})") from err
            raise UserError(f"NAMI_PLUGINS: cannot import {name!r} ({type(err).__name__}: {err}); is its "
                            "directory on PYTHONPATH?") from err
        except SystemExit as err:  # a plugin calling sys.exit() must not end nami silently
            raise UserError(f"NAMI_PLUGINS: importing {name!r} called sys.exit({err.code})") from None
        except Exception as err:  # a plugin's own error, whatever it is: one line naming it
            raise UserError(f"NAMI_PLUGINS: importing {name!r} failed ({type(err).__name__}: {err})") from err
    return names


def _process_started() -> float:
    """When this process started (``time.time()`` scale), interpreter start-up included; now where the
    system does not say (not Linux)."""
    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22: start, clock ticks after boot
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age if 0 <= age < 3600 else time.time()
    except (OSError, ValueError, IndexError):
        return time.time()


def main(argv: Sequence[str] | None = None) -> int:
    # The command's clock (a report states the whole command's wall time): from the process's start
    # when main() is what the process runs, else (main() called from Python) from now.
    started = _process_started() if argv is None else time.time()
    from nami.resources import tune_malloc

    try:
        load_plugins()
    except UserError as err:
        print(f"nami: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    args.command_line = ["nami", *(sys.argv[1:] if argv is None else argv)]  # as typed (or as called)
    tune_malloc()  # CPU steps reuse their pages instead of re-faulting them (see nami.resources)
    from nami.io import CommandFailed, describe_os_error

    try:
        return args.func(args)
    except _user_error_types() as err:
        if os.environ.get("NAMI_DEBUG"):
            raise
        message = describe_os_error(err) if isinstance(err, OSError) and err.errno is not None else str(err)
        print(f"nami: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, CommandFailed) as err:  # the machine, not the input: a full disk, a failed child run
        if os.environ.get("NAMI_DEBUG"):
            raise
        message = describe_os_error(err) if isinstance(err, OSError) and err.errno is not None else str(err)
        print(f"nami: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nami: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """A command launched by torchrun / accelerate leaves its process group open: close it before the
    interpreter exits (otherwise its communication threads are torn down by the C++ runtime at exit,
    which torch warns about and which can abort the process: "terminate called without an active
    exception"). A no-op in a single process."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
