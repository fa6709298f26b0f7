"""Hostile run directories, fuzzed: random edits of config.json, manifest.json and final_eval.json, with
the manifest regenerated as an attacker would. Loading, predicting and asking must end in a clear
error (CheckpointError / ValueError naming a file) or a normal answer: no other exception, no
allocation beyond the weights' own size, no hang."""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nami.io import CheckpointError, write_manifest
from nami.models.pretrained import root_files
from nami.pipelines import ask

RUN = Path(__file__).parent / "fixtures" / "runs" / "wave"
SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MODEL_FIELDS = ["d_model", "n_layers", "d_ff", "n_heads", "vocab_size", "max_len", "type_vocab_size", "proxy_tokens",
                "conv_kernel", "local_window", "pad_id", "norm_eps", "wave_eps", "rope_base", "arch", "mixers",
                "branches", "position_embedding", "exit_layers"]
VALUES = st.one_of(st.integers(min_value=-3, max_value=10**12), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.none(), st.booleans(), st.lists(st.integers(-2, 5), max_size=3),
                   st.sampled_from(["conv", "wave", "attention", ["conv"], ["wave", "wave"], {"a": 1}]))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture()
def run(tmp_path):
    target = tmp_path / "run"
    shutil.copytree(RUN, target)
    return target


def _load_or_refuse(run: Path) -> None:
    before = _peak_mb()
    started = time.monotonic()
    try:
        ask(run, context="富士山の標高は3776メートルである。", question="富士山の標高は?")
    except (CheckpointError, ValueError):
        pass  # a clear error naming the file is the expected outcome for most edits
    assert time.monotonic() - started < 60, "loading a hostile run must not hang"
    assert _peak_mb() - before < 2_000, "loading a hostile run must not allocate beyond its weights' size"


@SETTINGS
@given(edits=st.dictionaries(st.sampled_from(MODEL_FIELDS), VALUES, min_size=1, max_size=3))
@pytest.mark.slow
def test_random_model_config_edits_are_refused_or_harmless(tmp_path_factory, edits):
    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(RUN, run)
    config = json.loads((run / "config.json").read_text())
    config["model"].update(edits)
    (run / "config.json").write_text(json.dumps(config))
    write_manifest(run, root_files(run))
    _load_or_refuse(run)


@SETTINGS
@given(entries=st.dictionaries(st.one_of(st.sampled_from(["/etc/hostname", "../x", "config.json/..", "", ".",
                                                          "tokenizer", "/proc/self/pagemap", "a\\b"]),
                                         st.text(max_size=12)),
                               st.one_of(st.text(max_size=64), st.integers(), st.none()), max_size=4))
@pytest.mark.slow
def test_random_manifest_entries_are_refused_without_reading_outside(tmp_path_factory, entries):
    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(RUN, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(entries)
    (run / "manifest.json").write_text(json.dumps(manifest))
    _load_or_refuse(run)


@SETTINGS
@given(content=st.one_of(st.just("{}"), st.just("[]"), st.just("null"), st.text(max_size=30),
                         st.dictionaries(st.sampled_from(["data", "f1", "exact_match", "step"]), VALUES, max_size=4)
                         .map(json.dumps)))
@pytest.mark.slow
def test_random_final_eval_files_never_break_predict(tmp_path_factory, content):
    from nami.pipelines import predict_file

    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(RUN, run)
    (run / "final_eval.json").write_text(content)
    data = Path(__file__).parent / "fixtures" / "tiny_qa.json"
    summary = predict_file(run, str(data), run.parent / "pred.json", quiet=True)
    assert "f1" in summary


@pytest.mark.parametrize("field", ["d_model", "n_layers", "d_ff", "n_heads", "vocab_size", "max_len"])
@pytest.mark.parametrize("value", [10**9, 10**12])
def test_huge_sizes_in_a_run_config_are_refused_before_anything_is_built(run, field, value):
    """Found by the fuzz above: n_layers = 1e9 made a per-layer list of 1e9 names (24 GB, the machine's
    OOM killer), d_model = 1e12 overflowed even a meta tensor (a RuntimeError, no file named). Sizes
    beyond any model nami trains are refused when the config is read."""
    config = json.loads((run / "config.json").read_text())
    config["model"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    write_manifest(run, root_files(run))
    before = _peak_mb()
    with pytest.raises((CheckpointError, ValueError), match=field):
        ask(run, context="富士山の標高は3776メートルである。", question="富士山の標高は?")
    assert _peak_mb() - before < 500
