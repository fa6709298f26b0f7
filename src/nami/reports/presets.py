"""The ``nami compare`` presets as data: the training recipe of every reported comparison.

Torch-free (``nami compare --help`` lists them without importing torch); :mod:`nami.reports.compare`
runs them.
"""

from __future__ import annotations

from typing import Any

from nami import paths
from nami.runs.tasks import CLM, GENERATIVE_QA, MLM, QA

_SMOKE_QA = dict(preset="tiny", max_length=128, doc_stride=64, batch_size=16, lr=2e-3, eval_subset=50,
                 eval_every_minutes=None, epochs=1.0, log_every=2)  # seconds long: log often enough for curves
# The QA fine-tuning settings of the reported comparisons: small models (d=256, 4 layers) on JaQuAD
# train + dev (JSQuAD's own train split is not available here); JSQuAD dev contexts fit one
# 256-token window, so few answerless windows are kept. Dropout 0.1 on embeddings and residual
# branches, none on attention probabilities: without dropout both models stop improving on dev
# after ~20 QA minutes (3-4 epochs). Attention dropout makes a Transformer step 1.88x instead of
# 1.18x the no-dropout time (results/dropout_cost.md) and did not reliably add F1
# (results/exp_transformer_dropout.md). Context words that also occur in the question get their own
# token type (question_match, DrQA's exact-match feature) for both models.
_STANDARD_QA = dict(preset="small", max_length=256, doc_stride=128, batch_size=32, lr=1e-3, warmup=0.05,
                    negative_fraction=0.1, segment_embeddings=True, question_match=True, title_prefix=True,
                    max_answer_tokens=16,
                    dropout=0.1, attention_dropout=0.0, eval_subset=500, eval_every_minutes=10.0, epochs=20.0)
# Masked-LM pretraining on JaQuAD train contexts (nami pretrain's default corpus), same encoder shape.
_STANDARD_MLM = dict(preset="small", max_length=256, batch_size=32, lr=1e-3, warmup=0.05, epochs=50.0,
                     eval_every_minutes=None, eval_subset=200, pppl_sequences=32)

# Causal-LM pretraining (a decoder) and generative QA fine-tuning; the same shape and corpus.
_STANDARD_CLM = dict(preset="small", max_length=320, batch_size=32, lr=1e-3, warmup=0.05, epochs=50.0,
                     eval_every_minutes=2.0, eval_subset=200)  # held-out perplexity against time
_GENERATIVE_QA = dict(preset="small", max_length=320, batch_size=32, lr=1e-3, warmup=0.05, title_prefix=True,
                      max_answer_tokens=16, dropout=0.1, attention_dropout=0.0, eval_subset=300,
                      eval_every_minutes=10.0, epochs=20.0)

# Wave only: torch.compile of the Wave layer's tail (maths, LayerNorm, output projection; same maths; a
# compile failure falls back to eager with a warning and is recorded in final_eval.json).
_WAVE_SPEED = dict(compile_wave=True)

# A compare preset is data: the models it trains, and per model a chain of training *stages*, each
# one `nami train --config` run of a task (nami.training.tasks.TASKS) with its own time budget.
# A stage may start from an earlier stage's encoder (``init_from``: that stage's name). The last
# stage is the QA run that is scored; ``--minutes`` sets its budget and ``--pretrain-minutes`` that
# of the stage named "pretrain" (0 drops it). ``data``: the QA training files (names under the
# data root); ``arch``: speed options per *mixer* (``wave``: compile_wave), applied to a model that has a
# layer of that mixer (not to conv-only or a Transformer, whatever their ``arch``). A preset's total
# training budget per model is the sum of its stages' minutes.
_SMOKE_PRETRAIN = dict(preset="tiny", max_length=128, batch_size=16, lr=2e-3, eval_every_minutes=None,
                       eval_subset=20, pppl_sequences=2, log_every=2)
COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds-long end-to-end checks of the whole pipeline (used by the tests).
    "smoke": dict(stages=[dict(name="finetune", task=QA, minutes=0.3, train=_SMOKE_QA)]),
    "smoke-pretrain": dict(stages=[
        dict(name="pretrain", task=MLM, minutes=0.1, train=_SMOKE_PRETRAIN),
        dict(name="finetune", task=QA, minutes=0.2, train=_SMOKE_QA, init_from="pretrain"),
    ]),
    # The reported comparison: 55 training minutes per model on 2 CPU cores = 20 minutes of masked-LM
    # pretraining + 35 minutes of QA fine-tuning from it.
    "standard": dict(
        data=[paths.JAQUAD_TRAIN, paths.JAQUAD_DEV], arch=dict(wave=_WAVE_SPEED),
        stages=[dict(name="pretrain", task=MLM, minutes=20.0, train=_STANDARD_MLM),
                dict(name="finetune", task=QA, minutes=35.0, train=_STANDARD_QA, init_from="pretrain")],
    ),
    # Generative QA with decoders: causal-LM pretraining on JaQuAD train contexts, then generative
    # QA fine-tuning from it (answers written token by token, mapped back to the context's characters).
    "generative": dict(
        data=[paths.JAQUAD_TRAIN, paths.JAQUAD_DEV],
        stages=[dict(name="pretrain", task=CLM, minutes=20.0, train=_STANDARD_CLM),
                dict(name="finetune", task=GENERATIVE_QA, minutes=35.0, train=_GENERATIVE_QA, init_from="pretrain")],
    ),
    # The standard recipe scaled down to 3.5 training minutes per model (1.25 masked-LM + 2.25 QA; no
    # periodic evaluation): the two training chains, final evaluation included, took 11.2 minutes on 2
    # cores (results/compare-quick at 8bb54bf, whose report timed only those chains); re-scoring, the
    # lexical baseline and the report come on top.
    "quick": dict(
        data=[paths.JAQUAD_TRAIN, paths.JAQUAD_DEV], arch=dict(wave=_WAVE_SPEED),
        stages=[dict(name="pretrain", task=MLM, minutes=1.25, train=_STANDARD_MLM),
                dict(name="finetune", task=QA, minutes=2.25, train={**_STANDARD_QA, "eval_every_minutes": None},
                     init_from="pretrain")],
    ),
    # The same 55 minutes spent on QA training from scratch (the control for pretraining).
    "scratch": dict(data=[paths.JAQUAD_TRAIN, paths.JAQUAD_DEV], arch=dict(wave=_WAVE_SPEED),
                    stages=[dict(name="finetune", task=QA, minutes=55.0, train=_STANDARD_QA)]),
}
FINAL_STAGE = "finetune"  # the scored QA stage of every preset
PRESET_SUMMARIES = {
    "smoke": "~2 min; 18 s of training per model (tiny preset), then the full evaluation (checks the pipeline)",
    "smoke-pretrain": "~2 min; smoke with a 6 s masked-LM stage first",
    "quick": "the standard recipe scaled down (1.25 min masked LM + 2.25 min QA per model): ~11 min of training "
             "chains for both models on 2 cores, then re-scoring, the baseline and the report",
    "standard": "~2 h; the reported comparison (20 min masked LM + 35 min QA per model)",
    "generative": "~2 h; decoders: 20 min causal LM + 35 min generative QA per model",
    "scratch": "~2 h; 55 min of QA per model without pretraining (the control)",
}


def describe_presets() -> str:
    """One line per compare preset with its training minutes per model (for ``--help`` and README)."""
    lines = []
    for name, spec in COMPARE_PRESETS.items():
        minutes = sum(stage["minutes"] for stage in spec["stages"])
        lines.append(f"{name} ({minutes:g} training min/model): {PRESET_SUMMARIES.get(name, '')}")
    return "; ".join(lines)


def speed_options(preset: str, arch: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's speed options that apply to this model: those of every mixer its layers use
    (``options["mixers"]`` or the architecture's mixer), so ``compile_wave`` reaches exactly the
    models with Wave layers."""
    from nami.reports.variants import Variant

    layers = set(Variant("model", arch, dict(options or {})).layer_mixers())
    values: dict[str, Any] = {}
    for mixer, extra in COMPARE_PRESETS[preset].get("arch", {}).items():
        if mixer in layers:
            values.update(extra)
    return values


def family_options(preset: str, arch: str, options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per stage, the options a preset sets for the model's *family* (``spec["family"]``, e.g.
    ``{"transformer": {"finetune": {"lr": 5e-4}}}``): the recipe a selection chose for that family,
    recorded in the preset so every later run of it uses the same one."""
    from nami.reports.variants import Variant

    family = Variant("model", arch, dict(options or {})).family
    return COMPARE_PRESETS[preset].get("family", {}).get(family, {})


def recipe(preset: str, stage: str, arch: str = "wave", options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training options of one stage of a compare preset (``nami train --recipe standard`` takes
    the ``finetune`` stage, ``nami pretrain --recipe standard`` the ``pretrain`` one): the exact
    settings of the reported runs and their time budget (a fine-tuning stage that starts from
    pretraining still needs ``--init-from``), without output paths."""
    if preset not in COMPARE_PRESETS:
        raise ValueError(f"--recipe {preset}: expected one of {', '.join(COMPARE_PRESETS)}")
    spec = COMPARE_PRESETS[preset]
    stages = {s["name"]: s for s in spec["stages"]}
    if stage not in stages:
        raise ValueError(f"--recipe {preset}: the preset has no {stage} stage (it has {', '.join(stages)})")
    values: dict[str, Any] = {"task": stages[stage]["task"], "max_minutes": stages[stage]["minutes"],
                              **stages[stage]["train"], **family_options(preset, arch, options).get(stage, {}),
                              **speed_options(preset, arch, options)}
    if stage == FINAL_STAGE and "data" in spec:
        values["train_data"] = [str(paths.default_data(name)) for name in spec["data"]]
    return values
