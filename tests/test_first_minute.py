"""README's first block, run as written: the shipped reader answers through `nami ask` and the pipeline
(outputs as README shows them), `--preset tiny` trains, and the reader's card states what `nami predict`
measures on JSQuAD dev."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "nami" / "shipped" / "reader"


def first_minute_blocks() -> list[tuple[str, str]]:
    """(language, text) of each code block of README's "The first minute" section."""
    text = (REPO / "README.md").read_text("utf-8")
    section = text.split("## The first minute", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def _command_and_output(block: str) -> tuple[str, list[str]]:
    lines = block.strip().splitlines()
    return lines[0].split("  #")[0].strip(), [line[2:] for line in lines[1:] if line.startswith("# ")]


def _no_scores(line: str) -> str:
    """Scores are logits: equal on one host, within rounding across hosts; spans and texts are exact."""
    return re.sub(r"(score:? )-?\d+\.\d+", r"\1<score>", re.sub(r"'score': -?\d+\.\d+", "'score': <score>", line))


def test_the_shipped_reader_exists_with_its_card():
    for name in ("config.json", "manifest.json", "model.safetensors", "card.json", "README.md", "tokenizer"):
        assert (SHIPPED / name).exists(), name
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 30e6, size


def test_readme_first_minute_ask_prints_what_readme_shows_in_under_10_s():
    command, expected = _command_and_output(first_minute_blocks()[0][1])
    assert command.startswith("nami ask ") and "--checkpoint" not in command and expected
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nami", *shlex.split(command)[1:]], capture_output=True, text=True,
                          cwd=REPO)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert [_no_scores(line) for line in proc.stdout.strip().splitlines()] == [_no_scores(line) for line in expected]
    assert "3776" in expected[0]  # README's example is answered correctly
    assert seconds < 10, seconds


def test_readme_first_minute_pipeline_prints_what_readme_shows():
    language, block = first_minute_blocks()[1]
    assert language == "python"
    code = "\n".join(line for line in block.splitlines() if not line.startswith("# "))
    expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    printed = ast.literal_eval(proc.stdout.strip())
    shown = ast.literal_eval(_no_scores(expected[0]).replace("<score>", "None"))
    assert {k: printed[k] for k in ("answer", "start", "end")} == {k: shown[k] for k in ("answer", "start", "end")}


@pytest.mark.slow
def test_readme_first_minute_tiny_training_runs_as_written(tmp_path, monkeypatch):
    """README's tiny run as written (on the fixture data without ../shared: the same command and output shape)."""
    command, expected = _command_and_output(first_minute_blocks()[2][1])
    assert command.startswith("nami train ") and "--preset tiny" in command
    proc = subprocess.run([sys.executable, "-m", "nami", *shlex.split(command)[1:], "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = proc.stdout.strip().splitlines()[-1]
    pattern = re.escape(expected[-1].split(" -> ")[0])
    pattern = re.sub(r"\d[\d,]*\\\.\d+|\d[\d,]*", r"[\\d,.]+", pattern)  # the numbers vary by host; the shape does not
    assert re.match(pattern, final), (final, expected[-1])


@pytest.mark.slow
def test_the_shipped_readers_card_is_what_nami_predict_measures_on_jsquad_dev(tmp_path):
    """The card's EM / F1 on the full JSQuAD dev set, re-measured (same data file by sha256)."""
    from conftest import skip_on_fixture_data

    from nami.io import sha256_file
    from nami.paths import JSQUAD_DEV, default_data

    skip_on_fixture_data("the real JSQuAD dev (the shipped reader's card is measured on it)")
    card = json.loads((SHIPPED / "card.json").read_text("utf-8"))["evaluation"]
    data = default_data(JSQUAD_DEV)
    assert sha256_file(data) == card["data_sha256"]
    proc = subprocess.run([sys.executable, "-m", "nami", "predict", "--checkpoint", str(SHIPPED), "--data", str(data),
                           "--output", str(tmp_path / "p.json"), "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["count"] == card["count"]
    from nami.resources import resolve_precision

    if resolve_precision("auto", "cpu") == card["precision"]:  # the card's own arithmetic: the same numbers
        assert (round(summary["exact_match"], 2), round(summary["f1"], 2)) == (card["exact_match"], card["f1"])
    else:  # bf16 vs fp32 inference rounds differently: the same model, within half a point
        assert abs(summary["f1"] - card["f1"]) < 0.5
