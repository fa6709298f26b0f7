"""The Python API for trained runs, in the Hugging Face ``pipeline`` shape::

    from nami import pipeline

    qa = pipeline("question-answering", model="runs/<run>")      # loads and verifies the run once
    qa(question="梅雨がないのは北海道とどこ?", context="梅雨は、北海道と小笠原諸島を除く日本で見られる。")
    # {'answer': '小笠原諸島', 'score': 7.93, 'start': 8, 'end': 13}

A pipeline owns what a run was trained with — its tokenizer, windowing, token types (question
match), answer boundaries, special ids and precision — so callers cannot decode a model wrongly.
``nami ask`` and ``nami predict`` are thin layers over it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch

from nami.data.features import ANSWER_BOUNDARIES, FeatureConfig, build_features
from nami.data.squad import QAExample, load_squad
from nami.evaluation.metric import evaluate_predictions
from nami.evaluation.predict import PredictionOutput, predict_answers
from nami.io import read_json, write_json
from nami.runs import load as runs
from nami.runs.tasks import INFOS, info


def check_text(option: str, text: Any) -> None:
    """Raise ``ValueError`` naming ``option`` unless ``text`` is usable question/context text.

    Refused: non-strings, empty text, text with no visible character (only whitespace, control or
    format characters), and lone surrogates (undecodable bytes in a command-line argument).
    """
    from nami.text.normalize import normalize

    if not isinstance(text, str):
        raise ValueError(f"{option}: expected text, got {type(text).__name__}")
    if not text:
        raise ValueError(f"{option} is empty")
    surrogate = re.search("[\ud800-\udfff]", text)
    if surrogate:
        code, at = ord(surrogate.group()), surrogate.start()
        raise ValueError(
            f"{option} is not valid text: undecodable byte 0x{code - 0xDC00:02x} at character {at} (pass UTF-8)"
            if 0xDC80 <= code <= 0xDCFF
            else f"{option} is not valid text: lone surrogate U+{code:04X} at character {at}"
        )
    if not normalize(text).text.strip():
        raise ValueError(f"{option} has no visible text (only whitespace, control or format characters)")


def _checked_items(inputs: Any, question: str | None, context: str | None) -> tuple[list[dict[str, str]], bool]:
    """A QA pipeline's ``{"question", "context"}`` items (from ``inputs`` or ``question=`` / ``context=``),
    each text checked (:func:`check_text`), and whether one item was given."""
    if inputs is None:
        items, single = [{"question": question, "context": context}], True
    elif question is not None or context is not None:
        raise ValueError("give either inputs or question= and context=, not both")
    elif isinstance(inputs, dict):
        items, single = [inputs], True
    else:
        items, single = list(inputs), False
    for i, item in enumerate(items):
        where = "" if single else f"inputs[{i}]."
        if not isinstance(item, dict):
            raise ValueError(f"inputs[{i}]: expected a dict with question and context")
        check_text(f"{where}question", item.get("question"))
        check_text(f"{where}context", item.get("context"))
    return items, single


class _RunPipeline:
    """Loads one trained run (verified) for a pipeline; ``task`` names it, ``answers`` says how the run
    must answer (its task's registry entry: ``extract``, ``generate``, or None for text generation)."""

    task: str
    answers: str | None
    how_to_train: str

    def __init__(self, model: str | Path, *, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.run_dir = Path(model)
        self.device = torch.device(device)
        self.model, self.tokenizer, self.config = runs.load_run(self.run_dir, device=self.device)
        entry = INFOS.get(self.config.task)
        if entry is None or entry.pipeline != self.task or entry.answers != self.answers:
            raise ValueError(f"{self.run_dir}: a {self.config.task!r} run; {self.task} needs {self.how_to_train}")


def _recorded_match(run_dir: Path, data, scores: dict[str, Any]) -> dict[str, Any]:
    """``recorded_f1`` / ``matches_recorded`` when the run's final evaluation scored the same data file."""
    recorded = Path(run_dir) / runs.FINAL_EVAL_FILE
    if not recorded.is_file():
        return {}
    try:  # not covered by the manifest: an untrusted file, read defensively (the output is already written)
        final = read_json(recorded)
        fields = {k: final[k] for k in ("data", "f1", "exact_match")} if isinstance(final, dict) else None
        if fields is None or not isinstance(fields["data"], str) or not all(
                isinstance(fields[k], (int, float)) and not isinstance(fields[k], bool) for k in ("f1", "exact_match")):
            raise ValueError("expected an object with data, f1 and exact_match")
    except (KeyError, ValueError, OSError, runs.CheckpointError) as err:
        import sys

        print(f"nami: warning: {recorded}: unreadable ({err}); not compared with the recorded score", file=sys.stderr)
        return {"matches_recorded": None}
    data_paths = [str(Path(d).resolve()) for d in ([data] if isinstance(data, (str, Path)) else data)]
    try:
        recorded_data = str(Path(fields["data"]).resolve())
    except (OSError, ValueError):  # not a path (a NUL byte, ...): not this data
        return {}
    if [recorded_data] != data_paths:
        return {}
    return {"recorded_f1": fields["f1"],
            "matches_recorded": (fields["f1"], fields["exact_match"]) == (scores["f1"], scores["exact_match"])}


class QuestionAnsweringPipeline(_RunPipeline):
    """Extractive QA with one trained run, loaded once.

    Call it with ``question=`` and ``context=`` (one answer) or with a list of
    ``{"question", "context"}`` dicts (a list of answers, decoded in batches). Each answer is
    ``{"answer", "score", "start", "end"}`` with ``context[start:end] == answer``; ``score`` is the
    span's start logit + end logit (higher is more confident; not a probability). With ``top_k > 1``
    each answer becomes a list of up to ``top_k`` distinct spans, best first. A context with no
    answerable token (e.g. only a literal ``[SEP]``) gives ``{"answer": "", "score": None,
    "start": 0, "end": 0}`` (an empty list with ``top_k > 1``). Contexts of any length work: a long
    one is cut into overlapping windows whose best spans compete.
    """

    task, answers, how_to_train = "question-answering", "extract", "a QA run (nami train)"

    def __init__(self, model: str | Path, *, window: int | None = None, **kwargs: Any) -> None:
        """``window``: tokens per window instead of the run's ``max_length`` — longer windows (a whole
        document at once) only for models without a learned position table (``wave_rope`` or no
        positions), whose cost grows linearly with the window for Wave-family mixers."""
        super().__init__(model, **kwargs)
        self.feature_config = FeatureConfig.from_config(self.config)
        if window is not None:
            self.feature_config = self._window(window)

    def _window(self, window: int) -> FeatureConfig:
        config = self.model.config
        if isinstance(window, bool) or not isinstance(window, int) or window < 8:
            raise ValueError(f"window={window!r}: expected an integer >= 8 tokens")
        positional = config.position_embedding == "learned" or "fft_gate" in (config.branches or ())
        if positional and window > config.max_len:
            raise ValueError(f"window={window}: this run's model reads at most {config.max_len} tokens at once (a "
                             "learned position table or a sized frequency filter); windows longer than that need a "
                             "model without positions or with RoPE (--wave-rope --position-embedding none)")
        base = self.feature_config
        return FeatureConfig(window, min(base.doc_stride, max(1, window // 2)), base.max_question_tokens)

    def __call__(self, inputs: dict[str, str] | Sequence[dict[str, str]] | None = None, *,
                 question: str | None = None, context: str | None = None, top_k: int = 1,
                 batch_size: int | None = None) -> dict[str, Any] | list[Any]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r}: expected an integer >= 1")
        items, single = _checked_items(inputs, question, context)
        candidates, _ = self.answer_spans(items, top_k=top_k, batch_size=batch_size)
        answers = [cands if top_k > 1 else (cands[0] if cands else {"answer": "", "score": None, "start": 0,
                                                                        "end": 0})
                   for cands in candidates]
        return answers[0] if single else answers

    def answer_spans(self, items: Sequence[dict[str, str]], *, top_k: int = 1, batch_size: int | None = None,
                     ) -> tuple[list[list[dict[str, Any]]], list[int]]:
        """The ``top_k`` candidates of each ``{"question", "context"}`` item and its window count."""
        examples = [QAExample(id=str(i), question=item["question"], context=item["context"], answers=(), title="",
                              source="<pipeline>") for i, item in enumerate(items)]
        features = build_features(examples, self.tokenizer, self.feature_config, show_progress=False)
        output = self.predict_examples(examples, features, n_best=top_k, batch_size=batch_size, show_progress=False)
        candidates = [[{"answer": ex.context[s.char_start:s.char_end], "score": s.score, "start": s.char_start,
                        "end": s.char_end} for s in output.nbest[ex.id]] for ex in examples]
        windows = [0] * len(examples)
        for index in features.example_index:
            windows[index] += 1
        return candidates, windows

    def predict_examples(self, examples: list[QAExample], features=None, *, n_best: int = 1,
                         batch_size: int | None = None, answer_boundaries: str | None = None,
                         show_progress: bool = True) -> PredictionOutput:
        """Answers (and n-best spans) of SQuAD-style examples, decoded as the run was trained."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if features is None:
            features = build_features(examples, self.tokenizer, self.feature_config, show_progress=show_progress)
        return predict_answers(
            self.model, examples, features, pad_id=self.tokenizer.pad_id, sep_id=self.tokenizer.sep_id,
            batch_size=batch_size or self.config.eval_batch_size, max_answer_tokens=self.config.max_answer_tokens,
            answer_boundaries=answer_boundaries or self.config.answer_boundaries,
            question_match=self.config.question_match, n_best=n_best, precision=self.config.precision,
            device=self.device, show_progress=show_progress,
        )

    def ask(self, question: str, context: str, *, n_best: int = 3) -> dict[str, Any]:
        """``nami ask``: ``{"answer", "candidates": [{"text", "score", "start", "end"}], "windows"}``."""
        (cands,), (windows,) = self.answer_spans([{"question": question, "context": context}], top_k=n_best)
        candidates = [{"text": c["answer"], "score": c["score"], "start": c["start"], "end": c["end"]} for c in cands]
        return {"answer": candidates[0]["text"] if candidates else "", "candidates": candidates, "windows": windows}

    def predict_file(self, data: str | Sequence[str], output: str | Path, *, batch_size: int | None = None,
                     answer_boundaries: str | None = None, quiet: bool = False) -> dict[str, Any]:
        """Write ``{question_id: answer}`` for every question in ``data``; score it when answers exist.

        Returns a summary with EM / F1 (when the data has answers), questions/s, and whether the F1
        equals the one recorded in the run's ``final_eval.json`` for the same data file (checked
        only when decoding with the run's own ``answer_boundaries``; ``None`` uses it).
        """
        if answer_boundaries is not None and answer_boundaries not in ANSWER_BOUNDARIES:
            raise ValueError(f"answer_boundaries={answer_boundaries!r}: expected one of {', '.join(ANSWER_BOUNDARIES)}")
        examples = load_squad(data, require_answers=False, on_bad_record=self.config.on_bad_record)
        boundaries = answer_boundaries or self.config.answer_boundaries
        result = self.predict_examples(examples, batch_size=batch_size, answer_boundaries=boundaries,
                                       show_progress=not quiet)
        write_json(Path(output), result.answers)
        summary: dict[str, Any] = {"output": str(output), "count": len(examples),
                                   "questions_per_s": round(result.questions_per_second, 2),
                                   "answer_boundaries": boundaries}
        if all(ex.answers for ex in examples):
            scores = evaluate_predictions(examples, result.answers)
            summary.update(exact_match=scores["exact_match"], f1=scores["f1"])
            if boundaries == self.config.answer_boundaries:
                summary.update(_recorded_match(self.run_dir, data, scores))
        return summary


class TextGenerationPipeline(_RunPipeline):
    """Continue prompts with a causal-LM run (``nami pretrain --objective clm``), loaded once.

    ``gen("梅雨は", max_new_tokens=16)`` → ``{"generated_text", "prompt", "token_ids", "stopped"}``;
    a list of prompts gives a list (decoded as one batch). ``generated_text`` is the prompt followed by
    its continuation, as in Hugging Face's pipeline; ``return_full_text=False`` gives the continuation
    only. The continuation is in the tokenizer's normalised form (NFKC + lower case). Greedy by default; ``temperature``,
    ``top_k``, ``top_p`` and ``seed`` sample reproducibly. Generation stops at ``[SEP]`` (the
    end-of-document token of causal-LM pretraining; ``stopped: "eos"``) or after ``max_new_tokens``.
    """

    task, answers, how_to_train = "text-generation", None, "a causal-LM run (nami pretrain --objective clm)"

    def __call__(self, prompts: str | Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = 0,
                 on_text: Any = None, return_full_text: bool = True) -> dict[str, Any] | list[dict[str, Any]]:
        """``on_text(piece)``: called with each new piece of the first prompt's continuation (streaming)."""
        from nami.models.generation import generate

        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        for i, text in enumerate(texts):
            check_text("prompt" if single else f"prompts[{i}]", text)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 1")
        if not isinstance(return_full_text, bool):
            raise ValueError(f"return_full_text={return_full_text!r}: expected True or False")
        eos = self.tokenizer.sep_id
        encoded = [[self.tokenizer.cls_id, *self.tokenizer.encode(t).ids] for t in texts]
        shown: list[int] = []
        printed, done = "", False

        def stream(next_ids: torch.Tensor) -> None:  # the first prompt's text, piece by piece
            nonlocal printed, done
            token = int(next_ids[0])
            if on_text is None or done:
                return
            if token == eos:
                done = True
                return
            shown.append(token)
            text = self.tokenizer.decode(shown)
            on_text(text[len(printed):])
            printed = text

        outputs, _ = generate(self.model, encoded, max_new_tokens=max_new_tokens, eos_id=eos,
                              pad_id=self.tokenizer.pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed, on_token=stream)
        results = []
        for text, ids in zip(texts, outputs):
            stopped = "eos" if ids and ids[-1] == eos else "length"
            body = ids[:-1] if stopped == "eos" else ids
            continuation = self.tokenizer.decode(body)
            results.append({"generated_text": text + continuation if return_full_text else continuation,
                            "prompt": text, "token_ids": ids,
                            "stopped": stopped})
        return results[0] if single else results


class GenerativeQAPipeline(_RunPipeline):
    """Question answering with a generative-QA run (``nami train --task generative-qa``): the decoder
    writes each answer, which is then looked up among the context's tokens and, where found, given
    as the context's own characters. ``pipeline("question-answering", RUN)`` returns this for such a
    run. Greedy or beam search (``num_beams``) and free or span-constrained (``constrain="context"``)
    decoding; defaults: the run's."""

    task, answers, how_to_train = "question-answering", "generate", \
        "a generative-QA run (nami train --task generative-qa)"

    def __call__(self, inputs: dict[str, str] | Sequence[dict[str, str]] | None = None, *,
                 question: str | None = None, context: str | None = None, num_beams: int | None = None,
                 constrain: str | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """``{"answer", "start", "end", "found_in_context"}`` per item (``start`` / ``end`` None when the
        written answer is not in the context)."""
        items, single = _checked_items(inputs, question, context)
        examples = [QAExample(str(i), item["question"], item["context"], (), "", "<pipeline>")
                    for i, item in enumerate(items)]
        answers = self._answers(examples, num_beams=num_beams, constrain=constrain)
        return answers[0] if single else answers

    def _answers(self, examples: list[QAExample], *, num_beams: int | None = None, constrain: str | None = None,
                 batch_size: int | None = None, show: bool = False) -> list[dict[str, Any]]:
        from nami.data.generative import build_generative, locate_span
        from nami.evaluation.generative import generate_token_answers

        config = self.config
        if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
            raise ValueError(f"num_beams={num_beams!r}: expected an integer >= 1")
        items = build_generative(examples, self.tokenizer, config.max_length,
                                 max_question_tokens=config.max_question_tokens,
                                 max_answer_tokens=config.max_answer_tokens, training=False)
        generated = generate_token_answers(self.model, self.tokenizer, items, max_answer_tokens=config.max_answer_tokens,
                                           batch_size=batch_size or config.eval_batch_size,
                                           precision=config.precision, device=self.device, show=show,
                                           num_beams=num_beams or config.num_beams,
                                           constrain=constrain or config.constrain)
        out = []
        for example, item, ids in zip(examples, items, generated):
            span = locate_span(ids, item)
            text = example.context[span[0] : span[1]] if span else self.tokenizer.decode(ids)
            out.append({"answer": text, "start": span[0] if span else None, "end": span[1] if span else None,
                        "found_in_context": span is not None})
        return out

    def ask(self, question: str, context: str, *, n_best: int = 1) -> dict[str, Any]:
        """``nami ask``: the one written answer, with its character span where it is found in the context."""
        answer = self(question=question, context=context)
        candidate = {"text": answer["answer"], "score": None, "start": answer["start"], "end": answer["end"]}
        return {"answer": answer["answer"], "candidates": [candidate] if answer["answer"] else [], "windows": 1,
                "generated": True, "found_in_context": answer["found_in_context"]}

    def predict_file(self, data: str | Sequence[str], output: str | Path, *, batch_size: int | None = None,
                     num_beams: int | None = None, constrain: str | None = None,
                     quiet: bool = False) -> dict[str, Any]:
        """Write ``{question_id: answer}`` for every question in ``data``; scored when answers exist
        (and checked against the run's recorded F1 when decoded as the run was)."""
        import time

        config = self.config
        examples = load_squad(data, require_answers=False, on_bad_record=config.on_bad_record)
        started = time.perf_counter()
        answers = self._answers(examples, num_beams=num_beams, constrain=constrain, batch_size=batch_size,
                                show=not quiet)
        seconds = time.perf_counter() - started
        predictions = {ex.id: a["answer"] for ex, a in zip(examples, answers)}
        write_json(Path(output), predictions)
        beams, constraint = num_beams or config.num_beams, constrain or config.constrain
        summary: dict[str, Any] = {"output": str(output), "count": len(examples),
                                   "located": sum(a["found_in_context"] for a in answers) / len(examples),
                                   "num_beams": beams, "constrain": constraint,
                                   "questions_per_s": round(len(examples) / seconds, 2)}
        if all(ex.answers for ex in examples):
            scores = evaluate_predictions(examples, predictions)
            summary.update(exact_match=scores["exact_match"], f1=scores["f1"])
            if beams == config.num_beams and constraint == config.constrain:
                summary.update(_recorded_match(self.run_dir, data, scores))
        return summary


PIPELINES = {"question-answering": QuestionAnsweringPipeline, "text-generation": TextGenerationPipeline}
# A run whose task writes its answers is answered by the generative pipeline of the same name.
_WRITTEN = {"question-answering": GenerativeQAPipeline}


def pipeline(task: str, model: str | Path | None = None, **kwargs: Any):
    """A ready pipeline for ``task`` over the trained run directory ``model`` (loaded once).

    ``task``: ``"question-answering"`` (:class:`QuestionAnsweringPipeline`, or
    :class:`GenerativeQAPipeline` for a generative-QA run) or ``"text-generation"``
    (:class:`TextGenerationPipeline`). ``model=None``: the QA model that ships with nami
    (:data:`nami.paths.SHIPPED_QA`, its card beside it). Keyword arguments: ``device`` (default
    ``"cpu"``), ``threads``.
    """
    if task not in PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}: expected one of {', '.join(PIPELINES)}")
    if model is None:
        if task != "question-answering":
            raise ValueError(f"pipeline({task!r}): name a run (model=...); nami ships a question-answering model only")
        from nami.paths import shipped_qa

        model = shipped_qa()
    if task in _WRITTEN and _writes_answers(model):
        return _WRITTEN[task](model, **kwargs)
    return PIPELINES[task](model, **kwargs)


def _writes_answers(run_dir: str | Path) -> bool:
    """Whether the run's task writes its answers (generative QA) rather than pointing at a span."""
    task = runs.read_run_config(run_dir)[0].task
    return info(task).answers == "generate"


def predict_file(run_dir: str | Path, data: str | Sequence[str], output: str | Path, *,
                 batch_size: int | None = None, threads: int | None = None, answer_boundaries: str | None = None,
                 quiet: bool = False, num_beams: int | None = None, constrain: str | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    """``nami predict``: the question-answering pipeline of the run (extractive or generative)'s
    ``predict_file``; options the run's pipeline does not take are refused by name."""
    qa = pipeline("question-answering", run_dir, threads=threads, device=device)
    if isinstance(qa, GenerativeQAPipeline):
        if answer_boundaries is not None:
            raise ValueError("--answer-boundaries applies to extractive QA runs, not generative-QA runs")
        return qa.predict_file(data, output, batch_size=batch_size, num_beams=num_beams, constrain=constrain,
                               quiet=quiet)
    for option, value in (("--num-beams", num_beams), ("--constrain", constrain)):
        if value is not None:
            raise ValueError(f"{option} applies to generative-QA runs (nami train --task generative-qa)")
    return qa.predict_file(data, output, batch_size=batch_size, answer_boundaries=answer_boundaries, quiet=quiet)


def ask(run_dir: str | Path, *, context: str, question: str, n_best: int = 3, device: str = "cpu",
        whole: bool = False) -> dict[str, Any]:
    """``nami ask``: the ``n_best`` answer spans of ``context`` for ``question`` (a generative-QA run:
    its one written answer, ``"generated": True``, with its span where found).

    Returns ``{"answer", "candidates": [{"text", "score", "start", "end"}], "windows"}`` with
    ``text == context[start:end]`` (never empty). Control characters other than tab and newline
    are accepted and, like whitespace, separate words; format characters (zero-width space/joiners,
    BOM) are ignored inside words. A context with no answerable token gives
    ``{"answer": "", "candidates": []}``.

    Raises:
        ValueError: naming the option (``--context``, ``--question``, ``--n-best``) for unusable text
            (:func:`check_text`) or ``n_best < 1`` — checked before the run is loaded.
    """
    check_text("--context", context)
    check_text("--question", question)
    if n_best < 1:
        raise ValueError(f"--n-best={n_best}: expected >= 1")
    qa = pipeline("question-answering", run_dir, device=device)
    if whole and isinstance(qa, QuestionAnsweringPipeline):  # the whole context in one window: one pass
        needed = len(qa.tokenizer.encode(context).ids) + qa.feature_config.max_question_tokens + 3
        qa.feature_config = qa._window(-(-needed // 16) * 16)
    return qa.ask(question, context, n_best=n_best)


def predict_generative_file(run_dir: str | Path, data: str | Sequence[str], output: str | Path, *,
                            batch_size: int | None = None, threads: int | None = None, quiet: bool = False,
                            num_beams: int | None = None, constrain: str | None = None,
                            device: str = "cpu") -> dict[str, Any]:
    """:meth:`GenerativeQAPipeline.predict_file` with a fresh pipeline (kept for older callers)."""
    return GenerativeQAPipeline(run_dir, threads=threads, device=device).predict_file(
        data, output, batch_size=batch_size, num_beams=num_beams, constrain=constrain, quiet=quiet)
