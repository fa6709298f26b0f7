"""`nami export` and the model that ships with nami: a compact directory the pipeline loads, with a card
whose numbers are measured on that very directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
WAVE = FIXTURES / "runs" / "wave"
DATA = FIXTURES / "tiny_qa.json"
CONTEXT = "富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。"
QUESTION = "富士山の標高は何メートル?"


def test_export_writes_a_half_size_directory_whose_card_predict_reproduces(tmp_path):
    from nami.pipelines import pipeline
    from nami.reports.export import export_model

    out = tmp_path / "model"
    card = export_model(WAVE, out, eval_data=str(DATA), quiet=True)
    assert json.loads((out / "card.json").read_text("utf-8")) == card
    assert f"| tiny_qa.json | {card['evaluation']['exact_match']:.2f} | {card['evaluation']['f1']:.2f} |" in \
        (out / "README.md").read_text("utf-8")
    # bf16 on disk: about half the run's weights
    assert (out / "model.safetensors").stat().st_size < 0.6 * (WAVE / "model.safetensors").stat().st_size
    # the card's scores are what `nami predict` gives on the exported directory
    summary = pipeline("question-answering", out).predict_file(str(DATA), tmp_path / "p.json", quiet=True)
    assert (round(summary["exact_match"], 2), round(summary["f1"], 2)) == \
        (card["evaluation"]["exact_match"], card["evaluation"]["f1"])
    # the pipeline applies the run's input settings; no path of the training machine is shipped
    saved = json.loads((out / "config.json").read_text("utf-8"))
    assert saved["train"]["max_length"] == 64 and saved["train"]["question_match"] is True
    assert "train_data" not in saved["train"] and "runs_dir" not in saved["train"]
    answer = pipeline("question-answering", out)(question=QUESTION, context=CONTEXT)
    assert CONTEXT[answer["start"]:answer["end"]] == answer["answer"]


def test_export_never_overwrites_and_leaves_nothing_half_written(tmp_path):
    from nami.reports.export import export_model

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        export_model(WAVE, taken, eval_data=str(DATA), quiet=True)
    assert (taken / "x").read_text() == "keep"
    with pytest.raises(Exception):
        export_model(WAVE, tmp_path / "bad", eval_data=str(tmp_path / "missing.json"), quiet=True)
    assert not (tmp_path / "bad").exists() and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_without_a_shipped_model_asking_without_a_model_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import nami.paths

    monkeypatch.setattr(nami.paths, "SHIPPED_QA", tmp_path / "none")
    from nami.cli import main

    assert main(["ask", "--question", QUESTION, "--context", CONTEXT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model named and no shipped model" in err[0] and str(tmp_path / "none") in err[0]
    with pytest.raises(FileNotFoundError, match="no shipped model"):
        from nami.pipelines import pipeline

        pipeline("question-answering")


def test_export_refuses_evaluation_data_it_cannot_score_before_building_anything(tmp_path):
    from nami.reports.export import export_model

    unanswered = tmp_path / "q.json"
    unanswered.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "1", "question": QUESTION, "answers": []}]}]}]}, ensure_ascii=False), "utf-8")
    for bad in (tmp_path, unanswered):  # a folder of shards; a file without answers
        with pytest.raises(ValueError):
            export_model(WAVE, tmp_path / "out", eval_data=str(bad), quiet=True)
        assert not (tmp_path / "out").exists()


def test_built_in_tasks_name_the_model_class_their_task_trains():
    from nami.runs.tasks import BUILTIN_TASKS, model_class, task_class

    for name in BUILTIN_TASKS:
        assert model_class(name) is task_class(name).model_class, name
