"""The restructure's guarantees: saved runs reproduce exactly, a mixer is one registration, the
Python API (``save_pretrained`` / ``from_pretrained`` / ``pipeline``) and the import layers."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nami.cli import main
from nami.models import ARCHITECTURES, MIXERS, MaskedLMModel, MixerInputs, ModelConfig, QAModel, register_mixer
from nami.models.registry import unregister_mixer
from nami.pipelines import pipeline
from nami.runs.config import TrainConfig
from nami.training import checkpoint as ckpt
from nami.training.loop import train

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_RUNS = {"wave": FIXTURES / "runs" / "wave", "transformer": FIXTURES / "runs" / "transformer"}
FIXTURE_DATA = FIXTURES / "tiny_qa.json"


# --- runs saved before the restructure (tests/fixtures/make_fixture.sh at d069830) ----------------


@pytest.mark.parametrize("arch", sorted(FIXTURE_RUNS))
def test_fixture_runs_give_the_same_logits_through_from_pretrained(arch):
    run = FIXTURE_RUNS[arch]
    saved = json.loads((run / ckpt.CONFIG_FILE).read_text())
    assert "model" not in saved["train"]  # really an old-format run: model fields flat, mixer named wave/attn
    assert any(".wave." in k or ".attn." in k for k in load_file(str(run / ckpt.WEIGHTS_FILE)))
    model = QAModel.from_pretrained(run)
    expected = load_file(str(run / "expected_logits.safetensors"))
    with torch.no_grad():
        logits = model(expected["input_ids"], expected["attention_mask"].bool(), expected["token_type_ids"])
    # Bit-identical on the host class that made the fixture; other CPUs' kernels round differently
    # (Intel Xeon vs AMD EPYC: up to 3e-6 here), so the check is to float32 rounding.
    torch.testing.assert_close(logits.start, expected["start"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.end, expected["end"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(FIXTURE_RUNS))
def test_nami_predict_reproduces_the_fixture_predictions(arch, tmp_path, capsys):
    run = FIXTURE_RUNS[arch]
    out = tmp_path / "pred.json"
    assert main(["predict", "--checkpoint", str(run), "--data", str(FIXTURE_DATA), "--output", str(out),
                 "--quiet"]) == 0
    expected = json.loads((run / "expected_predictions.json").read_text())
    assert json.loads(out.read_text()) == expected
    assert len(set(expected.values())) > 5  # the fixture model answers differently per question


@pytest.mark.parametrize("arch", sorted(FIXTURE_RUNS))
def test_pipeline_answers_like_nami_predict(arch):
    run = FIXTURE_RUNS[arch]
    expected = json.loads((run / "expected_predictions.json").read_text())
    data = json.loads(FIXTURE_DATA.read_text())["data"]
    items, ids = [], []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                # the run trained on JSQuAD's "<title> [SEP] <paragraph>" contexts; predict reads them as given
                items.append({"question": qa["question"], "context": paragraph["context"]})
                ids.append(qa["id"])
    qa = pipeline("question-answering", model=run)
    answers = qa(items)
    assert [a["answer"] for a in answers] == [expected[i] for i in ids]
    for item, answer in zip(items, answers):
        assert item["context"][answer["start"]:answer["end"]] == answer["answer"]
    single = qa(question=items[0]["question"], context=items[0]["context"])
    assert single == answers[0]
    top = qa(question=items[0]["question"], context=items[0]["context"], top_k=3)
    assert top[0] == single and len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    assert len({(c["start"], c["end"]) for c in top}) == 3


def test_pipeline_owns_the_runs_settings_and_refuses_bad_calls():
    qa = pipeline("question-answering", model=FIXTURE_RUNS["wave"])
    assert qa.config.question_match is True and qa.model.config.type_vocab_size == 3
    with pytest.raises(ValueError, match="question is empty"):
        qa(question="", context="東京")
    with pytest.raises(ValueError, match="top_k"):
        qa(question="どこ?", context="東京", top_k=0)
    with pytest.raises(ValueError, match=r"inputs\[1\]\.context"):
        qa([{"question": "どこ?", "context": "東京"}, {"question": "どこ?", "context": "  "}])
    assert qa(question="何?", context="[SEP]") == {"answer": "", "score": None, "start": 0, "end": 0}
    with pytest.raises(ValueError, match="unknown pipeline task"):
        pipeline("summarization", model=FIXTURE_RUNS["wave"])


def test_readme_pipeline_example_runs_as_written():
    readme = (ROOT / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = next(b for b in blocks if "from nami import pipeline" in b)
    proc = subprocess.run([sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "'answer'" in proc.stdout and "'start'" in proc.stdout


# --- save_pretrained / from_pretrained -------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("model_cls", [QAModel, MaskedLMModel])
def test_save_pretrained_round_trip(arch, model_cls, tmp_path):
    torch.manual_seed(0)
    kwargs = {"tie_embeddings": False} if model_cls is MaskedLMModel else {}
    model = model_cls(ModelConfig.from_name("tiny", arch, vocab_size=60, max_len=32, type_vocab_size=2), **kwargs)
    model.save_pretrained(tmp_path / "m", tokenizer=False)  # config and weights alone
    loaded = model_cls.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    if model_cls is MaskedLMModel:
        assert loaded.untied_output is not None  # tie_embeddings read back from the weights
    other = QAModel if model_cls is MaskedLMModel else MaskedLMModel
    with pytest.raises(ckpt.CheckpointError, match="holds a"):
        other.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / ckpt.WEIGHTS_FILE).write_bytes(b"corrupt")
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        model_cls.from_pretrained(tmp_path / "m")


def test_a_model_saved_again_keeps_the_inputs_of_its_run(tmp_path):
    """save_pretrained of a model loaded from a run writes the run's input settings, so the pipeline
    decodes it as the run (once it windowed a 64-position model to 384 tokens and crashed)."""
    run = FIXTURE_RUNS["wave"]
    model = QAModel.from_pretrained(run)
    tokenizer = pipeline("question-answering", run).tokenizer
    model.save_pretrained(tmp_path / "again", tokenizer=tokenizer)
    original, again = pipeline("question-answering", run), pipeline("question-answering", tmp_path / "again")
    assert again.config.max_length == original.config.max_length == 64
    assert again.config.answer_boundaries == original.config.answer_boundaries
    question = {"question": "富士山の標高は何メートル?", "context": "富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。"}
    assert again(**question) == original(**question)
    # a model built by hand records no settings: the inputs follow the model (its 64 positions)
    fresh = QAModel(ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, max_len=64, type_vocab_size=3))
    fresh.save_pretrained(tmp_path / "fresh", tokenizer=tokenizer)
    qa = pipeline("question-answering", tmp_path / "fresh")
    assert qa.config.max_length == 64 and qa.config.question_match and qa.config.answer_boundaries == "word"
    assert set(qa(**question)) == {"answer", "score", "start", "end"}


def test_save_pretrained_writes_a_directory_the_pipeline_loads_or_refuses(tmp_path):
    """Without tokenizer=, a model loaded from a run takes that run's tokenizer along; a model built by
    hand is refused with the reason (before: a directory the pipeline could not load, `missing spm.model`)."""
    question = {"question": "富士山の標高は何メートル?", "context": "富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。"}
    model = QAModel.from_pretrained(FIXTURE_RUNS["wave"])
    model.save_pretrained(tmp_path / "copy")
    assert pipeline("question-answering", tmp_path / "copy")(**question) == \
        pipeline("question-answering", FIXTURE_RUNS["wave"])(**question)
    fresh = QAModel(ModelConfig.from_name("tiny", vocab_size=60, max_len=32))
    with pytest.raises(ValueError, match="give tokenizer="):
        fresh.save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # refused before anything is written


def test_manifest_must_list_the_weights(tmp_path):
    model = QAModel(ModelConfig.from_name("tiny", vocab_size=60, max_len=32))
    model.save_pretrained(tmp_path / "m", tokenizer=False)
    (tmp_path / "m" / "manifest.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="does not list config.json"):
        QAModel.from_pretrained(tmp_path / "m")


# --- a new mixer is one registration ------------------------------------------------------------


class ToyMixer(nn.Module):
    """Each token plus the mean of the sequence's real tokens (a cheap global mixer)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        mask = inputs.padding_mask.unsqueeze(-1).to(x.dtype)
        mean = (x * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return self.proj(x + mean)


@pytest.fixture
def toy_mixer():
    register_mixer("toy", ToyMixer)
    try:
        yield "toy"
    finally:
        unregister_mixer("toy")
    assert "toy" not in MIXERS and "toy" not in ARCHITECTURES


def test_a_mixer_registered_in_a_test_trains_through_nami_training(toy_mixer, tmp_path):
    config = TrainConfig.from_dict(dict(
        arch=toy_mixer, preset="tiny", tokenizer=str(FIXTURE_RUNS["wave"] / "tokenizer"),
        train_data=[str(FIXTURE_DATA)], eval_data=str(FIXTURE_DATA), max_length=64, doc_stride=32,
        max_question_tokens=24, batch_size=8, max_steps=6, lr=3e-3, eval_every_minutes=None, precision="fp32",
        runs_dir=str(tmp_path), run_name="toy", log_every=1,
    ))
    result = train(config, quiet=True)
    model, _, saved = ckpt.load_run(result.run_dir)
    assert saved.arch == "toy" and all(isinstance(b.mixer, ToyMixer) for b in model.encoder.blocks)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / ckpt.METRICS_FILE).read_text().splitlines()
              if json.loads(line)["type"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_hybrid_stack_names_a_mixer_per_layer():
    config = ModelConfig.from_name("tiny", "wave", vocab_size=50, max_len=32, mixers=["wave", "attention"])
    model = QAModel(config)
    assert [type(b.mixer).__name__ for b in model.encoder.blocks] == ["WaveLayer", "SelfAttention"]
    with pytest.raises(ValueError, match="mixers"):
        ModelConfig.from_name("tiny", "wave", mixers=["wave"])  # tiny has 2 layers
    with pytest.raises(ValueError, match="unknown mixer 'rnn'"):
        ModelConfig.from_name("tiny", "wave", mixers=["wave", "rnn"])


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("wave", ToyMixer)


# --- configs ------------------------------------------------------------------------------------------


def test_train_config_nests_the_model_and_takes_flat_shortcuts():
    config = TrainConfig.from_dict({"arch": "transformer", "preset": "tiny", "dropout": 0.1, "d_ff": 96})
    assert config.model == ModelConfig.from_name("tiny", "transformer", dropout=0.1, d_ff=96)
    assert config.arch == "transformer" and config.preset == "tiny"
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.short_hash() == config.short_hash()
    assert TrainConfig().model == ModelConfig.from_name("small")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_dict({"preset": "huge"})
    with pytest.raises(ValueError, match="arch"):
        TrainConfig.from_dict({"arch": "lstm"})


def test_old_run_configs_load_with_their_saved_model():
    train_config, model_config, _ = ckpt.read_run_config(FIXTURE_RUNS["transformer"])
    assert train_config.model == model_config  # the saved model config, not the preset's placeholders
    assert model_config.arch == "transformer" and model_config.vocab_size == 298


# --- layers ------------------------------------------------------------------------------------------

RANK = {"io": 0, "paths": 0, "checks": 0, "resources": 0, "text": 1, "data": 2, "models": 3, "losses": 3, "evaluation": 4,
        "runs": 5, "training": 6, "pipelines": 7, "reports": 8, "serve": 8, "serve_page": 8, "bench": 9, "cli": 10,
        "__main__": 10}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_a_layer_above_it():
    src = ROOT / "src" / "nami"
    violations = []
    for path in src.rglob("*.py"):
        module = "nami." + ".".join(path.relative_to(src).with_suffix("").parts)
        own = _layer(module.removesuffix(".__init__"))
        if own == "__init__":
            continue  # the package's lazy exports
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("nami.") and RANK[_layer(name)] > RANK[own]:
                    violations.append(f"{module} imports {name}")
    assert not violations, violations


def test_import_nami_does_not_import_torch():
    code = "import sys, nami; assert 'torch' not in sys.modules, 'torch imported'; print(nami.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_command_line_parses_and_answers_help_without_torch():
    """`nami --help`, `--version` and argument errors must be fast: torch is imported only when a
    command runs (the CLI, nami.models and the config dataclasses are torch-free at import)."""
    code = ("import sys, contextlib, io\n"
            "from nami.cli import build_parser, main\n"
            "import nami.models, nami.models.config, nami.runs.config\n"
            "parser = build_parser()\n"
            "for argv in (['--help'], ['train', '--help'], ['--version'], ['train', '--lr', 'x'],\n"
            "             ['train', '--lr', '-1'], ['pretrain', '--batch-size', '0']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "from nami.models import ARCHITECTURES\n"
            "assert list(ARCHITECTURES)[:2] == ['wave', 'transformer'], ARCHITECTURES\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_builtin_mixers_keep_their_order_whichever_module_is_imported_first():
    for first in ("nami.models.hierarchy", "nami.models.wave", "nami.models.attention", "nami.models.block"):
        code = (f"import {first}\n"
                "from nami.models import ARCHITECTURES, MIXERS, ModelConfig\n"
                "ModelConfig.from_name('tiny', arch='transformer')\n"
                "print(list(ARCHITECTURES), list(MIXERS)[:2])\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, (first, proc.stderr)
        assert proc.stdout.startswith("['wave', 'transformer'] ['wave', 'attention']"), (first, proc.stdout)


def test_the_command_line_imports_neither_numpy_nor_tqdm_before_a_command_runs():
    """`nami --help` and argument errors answer at once: numpy, tqdm and torch load only when a command runs."""
    code = ("import sys\nfrom nami.cli import build_parser\nbuild_parser()\n"
            "heavy = [m for m in ('numpy', 'tqdm', 'torch') if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
