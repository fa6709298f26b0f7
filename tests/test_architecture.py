"""The code's shape, checked: no import cycles, task names only in the task registry, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nami"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("nami", *parts)).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """nami modules ``path`` imports anywhere in the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nami"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nami"))
    return {m for m in found if m in modules}


def test_no_import_cycle():
    """Following every import (a package's ``__init__`` excepted: its lazy re-exports point down into
    the package by design), no module reaches itself again."""
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()
             if not path.name == "__init__.py"}
    graph = {name: {m for m in deps if m in graph} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


# The model classes record which task's runs hold them: that is the saved format their
# from_pretrained checks without importing the training package (a lower layer cannot ask the registry).
_TASK_NAME_EXCEPTIONS = {"models/qa.py", "models/mlm.py", "models/clm.py", "models/pretrained.py"}


def test_task_names_are_written_only_in_the_task_registry():
    from nami.runs.tasks import INFOS

    names = set(INFOS)
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("training/tasks/") or rel == "runs/tasks.py" or rel in _TASK_NAME_EXCEPTIONS:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, found


def test_adding_a_task_is_one_registration_and_the_cli_offers_its_options():
    from nami.runs.config import TrainConfig
    from nami.training.tasks import QATask, TaskInfo, register_task, task_names, unregister_task

    class ToyTask(QATask):
        name = "toy-qa"
        info = TaskInfo("toy-qa", __name__, "train", label="toy QA")

    register_task(ToyTask)
    try:
        assert "toy-qa" in task_names("train") and "toy-qa" not in task_names("pretrain")
        assert TrainConfig.from_dict({"task": "toy-qa"}).task == "toy-qa"
    finally:
        unregister_task("toy-qa")
    assert "toy-qa" not in task_names()


def test_inference_does_not_import_training():
    """The pipelines (and so `nami ask` / `predict` / `serve`) load runs through nami.runs: loading a
    run and answering imports nothing from nami.training, statically or at run time."""
    import subprocess
    import sys

    modules = _modules()
    assert not {m for m in _imports(SRC / "pipelines.py", modules) if m.startswith("nami.training")}
    code = ("import sys\nfrom nami import pipeline\n"
            f"qa = pipeline('question-answering', model={str(SRC.parents[1] / 'tests/fixtures/runs/wave')!r})\n"
            "assert qa(question='梅雨がないのは北海道とどこ?', context='梅雨は、北海道と小笠原諸島を除く日本で見られる。')\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('nami.training'))\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_function_is_over_100_lines():
    """A reader finds each piece of the code in one screen or two (docs/architecture.md lists exceptions:
    none at present)."""
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long


import pytest  # noqa: E402


@pytest.mark.slow
def test_a_toy_task_in_one_module_trains_and_predicts_through_the_command_line(tmp_path):
    """docs/architecture.md: a task is one module + one registration. This one (extractive QA whose loss
    also pulls the start and end logits together) is found through $NAMI_PLUGINS by `nami train --task`
    and answered by `nami predict` through the question-answering pipeline its registry entry names."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "toy_task.py").write_text(
        "from nami.training.tasks import QATask, TaskInfo, register_task\n"
        "from nami.runs.tasks import INFOS, QA\n\n\n"
        "@register_task\n"
        "class ToyTask(QATask):\n"
        "    name = 'toy-qa'\n"
        "    info = TaskInfo('toy-qa', __name__, 'train', INFOS[QA].options, 'toy QA',\n"
        "                    pipeline='question-answering', answers='extract')\n\n"
        "    def loss(self, model, batch):\n"
        "        return super().loss(model, batch) * 1.0\n", "utf-8")
    fixtures = Path(__file__).parent / "fixtures"
    data = str(fixtures / "tiny_qa.json")
    env = {**os.environ, "NAMI_PLUGINS": "toy_task", "PYTHONPATH": str(tmp_path)}
    run = [sys.executable, "-m", "nami"]
    trained = subprocess.run([*run, "train", "--task", "toy-qa", "--preset", "tiny", "--train-data", data,
                              "--eval-data", data, "--tokenizer", str(fixtures / "runs/wave/tokenizer"),
                              "--max-length", "64", "--max-steps", "2", "--eval-every-minutes", "none",
                              "--runs-dir", str(tmp_path / "runs"), "--run-name", "t", "--quiet"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "runs" / "t" / "config.json").read_text())["train"]["task"] == "toy-qa"
    predicted = subprocess.run([*run, "predict", "--checkpoint", str(tmp_path / "runs" / "t"), "--data", data,
                                "--output", str(tmp_path / "pred.json"), "--quiet"],
                               capture_output=True, text=True, env=env, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["matches_recorded"] is True
