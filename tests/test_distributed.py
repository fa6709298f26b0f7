"""Multi-process training (``torchrun``, 2 CPU processes on gloo) is the single-process step with
the same global batch: same parameters, one run directory, every question scored once, an exact
resume, and a time budget that stops every rank on the same step."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nami.data.features import QAFeatures
from nami.runs.config import TrainConfig
from nami.training import checkpoint as ckpt
from nami.training.distributed import ShardedBatches, merge_answers, shard_examples
from nami.training.loop import train

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = [pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.slow]  # every test here starts processes (torchrun, DeepSpeed)


# --- the pieces --------------------------------------------------------------------------------


class ListSampler:
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches, self.epoch = batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_shards_of_a_global_batch_partition_it_and_tiny_batches_are_skipped_by_every_rank():
    batches = [[0, 1, 2, 3, 4], [5, 6, 7, 8], [9], [10, 11, 12]]
    shards = [list(ShardedBatches(ListSampler(batches), rank, 2)) for rank in range(2)]
    assert [len(s) for s in shards] == [3, 3]  # [9] is skipped on both ranks
    for step, batch in enumerate(b for b in batches if len(b) >= 2):
        assert sorted(shards[0][step] + shards[1][step]) == batch
    assert len(ShardedBatches(ListSampler(batches), 0, 2)) == 3
    assert list(ShardedBatches(ListSampler(batches))) == batches  # one process: unchanged


def test_a_command_closes_the_process_group_it_ran_in(monkeypatch):
    """A torchrun-launched command closes its process group before the interpreter exits (left open,
    its threads are torn down by the C++ runtime at exit: "terminate called without an active
    exception"); a single process has none to close."""
    from nami import cli

    calls = []

    class FakeDistributed:
        initialized = True

        @staticmethod
        def is_available():
            return True

        @classmethod
        def is_initialized(cls):
            return cls.initialized

        @classmethod
        def destroy_process_group(cls):
            calls.append("destroy")
            cls.initialized = False

    monkeypatch.setitem(sys.modules, "torch.distributed", FakeDistributed)
    assert cli.main(["evaluate", "--data", "/nonexistent.json", "--predictions", "/nonexistent.json"]) != 0
    assert calls == ["destroy"]  # also after a failed command
    assert cli.main(["evaluate", "--data", "/nonexistent.json", "--predictions", "/nonexistent.json"]) != 0
    assert calls == ["destroy"]  # nothing open: nothing closed


def test_evaluation_shards_cover_every_example_once_and_duplicates_are_refused():
    shards = [shard_examples(11, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert merge_answers([{"a": "x"}, {"b": "y"}], expected=2) == {"a": "x", "b": "y"}
    with pytest.raises(RuntimeError, match="more than one rank"):
        merge_answers([{"a": "x"}, {"a": "x"}], expected=1)
    with pytest.raises(RuntimeError, match="answered 1 questions, expected 2"):
        merge_answers([{"a": "x"}, {}], expected=2)


def test_features_for_examples_are_reindexed_to_the_shard():
    features = QAFeatures()
    for window, example in enumerate([0, 0, 1, 2, 2, 3]):
        features.input_ids.append(np.array([window]))
        features.context_offsets.append(np.zeros((1, 2), dtype=np.int64))
        features.word_starts.append(np.zeros(1, dtype=bool))
        features.word_ends.append(np.zeros(1, dtype=bool))
        features.question_match.append(np.zeros(1, dtype=bool))
        features.context_starts.append(1)
        features.start_positions.append(0)
        features.end_positions.append(0)
        features.example_index.append(example)
    shard = features.for_examples([2, 0])
    assert [int(x[0]) for x in shard.input_ids] == [0, 1, 3, 4]
    assert shard.example_index == [1, 1, 0, 0]


# --- 2 processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_squad(tiny_squad, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """The QA data of these tests: training windows that cut into global batches of 6 with a last batch
    of 5 (split 3 / 2 over two processes: uneven shards are what the loss weighting must get right),
    never a batch of 1 (no shard for the second process: every rank skips it, and a single process
    would not). ``tiny_squad`` on the real data (41 windows); on the committed fixture data its first
    questions, as many as give such a count (windows counted as training makes them)."""
    from nami.data.features import FeatureConfig, build_features
    from nami.text.tokenizer import JapaneseTokenizer
    from nami.training.tasks.base import load_qa_examples, select_windows

    tmp = tmp_path_factory.mktemp("ddp-data")
    tokenizer = JapaneseTokenizer.load(tiny_tokenizer_dir)
    data = json.loads(tiny_squad.read_text("utf-8"))
    ids = question_ids(tiny_squad)
    for count in range(len(ids), 0, -1):
        keep = set(ids[:count])
        path = tiny_squad if count == len(ids) else tmp / f"first-{count}.json"
        if path != tiny_squad:
            subset = {"data": [{**article, "paragraphs": [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in keep]}
                                                          for p in article["paragraphs"]]}
                               for article in data["data"]]}
            for article in subset["data"]:
                article["paragraphs"] = [p for p in article["paragraphs"] if p["qas"]]
            path.write_text(json.dumps(subset, ensure_ascii=False), "utf-8")
        config = TrainConfig.from_dict(config_dict(path, tiny_tokenizer_dir, tmp / "runs", "x"))
        train, _ = load_qa_examples(config, [str(path)], str(path))
        windows = len(select_windows(build_features(train, tokenizer, FeatureConfig.from_config(config),
                                                    show_progress=False), config.negative_fraction, config.seed))
        if windows % config.batch_size == config.batch_size - 1 and windows >= 2 * config.batch_size:
            return path
    raise AssertionError("no prefix of tiny_squad gives training windows of 6k + 5")


def config_dict(tiny_squad, tokenizer_dir, runs_dir, run_name, **overrides) -> dict:
    # 41 training windows: batches of 6 leave a last batch of 5 (a batch of 1 could not be split in two)
    values = dict(
        arch="wave", preset="tiny", train_data=[str(tiny_squad)], eval_data=str(tiny_squad),
        tokenizer=str(tokenizer_dir), max_length=64, doc_stride=32, batch_size=6, lr=3e-3, max_steps=6,
        eval_every_minutes=None, checkpoint_every_steps=3, checkpoint_every_minutes=None, keep_checkpoints=5,
        log_every=1, threads=1, runs_dir=str(runs_dir), run_name=run_name, precision="fp32", dropout=0.0,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values).to_dict()


def clean_env() -> dict[str, str]:
    """The environment without what earlier in-process runs may have left (Accelerate's settings)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))
            and k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}


def torchrun(args: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**clean_env(), "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def train_with_two_processes(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"{config['run_name']}.json"
    path.write_text(json.dumps(config), "utf-8")
    return torchrun(["-m", "nami", "train", "--config", str(path), "--quiet"], tmp_path)


def resumed_from(run_dir: Path) -> list[int]:
    """The steps the run's resume records continued from."""
    records = [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    return [r["step"] for r in records if r["type"] == "resume"]


def max_difference(a: Path, b: Path, skip: tuple[str, ...] = ()) -> float:
    wa, wb = load_file(str(a / ckpt.WEIGHTS_FILE)), load_file(str(b / ckpt.WEIGHTS_FILE))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa if k not in skip)


# The span head's bias adds one constant to every position's start (end) logit, and a softmax over
# positions is blind to that: its exact gradient is zero, the computed one is rounding noise, and
# Adam turns noise of either sign into steps of about ±lr. Any change of summation order (here
# DeepSpeed's bucketed reductions) moves it by up to lr per step; every other parameter is compared
# at 1e-5.
NOISE_ONLY = ("span_head.proj.bias",)


def question_ids(path: Path) -> list[str]:
    data = json.loads(path.read_text("utf-8"))["data"]
    return [qa["id"] for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


@pytest.fixture(scope="module")
def two_process_run(ddp_squad, tiny_tokenizer_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp / "runs", "two")
    proc = train_with_two_processes(config, tmp)
    return tmp / "runs" / "two", proc


@pytest.fixture(scope="module")
def single_run(ddp_squad, tiny_tokenizer_dir, tmp_path_factory):
    # the single-process step is compared with N processes' step: the data must give no global batch of
    # fewer windows than processes (those are skipped by every rank, see ShardedBatches): ddp_squad
    runs = tmp_path_factory.mktemp("single")
    return train(TrainConfig.from_dict(config_dict(ddp_squad, tiny_tokenizer_dir, runs, "one")), quiet=True).run_dir


def test_two_processes_take_the_single_process_step_with_the_same_global_batch(two_process_run, single_run):
    run_dir, _ = two_process_run
    single = single_run
    assert max_difference(single, run_dir, skip=NOISE_ONLY) < 1e-5
    assert max_difference(single, run_dir) <= 6 * 3e-3  # the noise-only bias: at most ±lr per step
    losses = {}
    for name, run in (("one", single), ("two", run_dir)):
        records = [json.loads(line) for line in (run / ckpt.METRICS_FILE).read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if r["type"] == "train"]
    assert len(losses["two"]) == 6
    assert np.allclose(losses["one"], losses["two"], atol=1e-5)  # the logged loss is the global batch's


def test_two_processes_write_one_run_directory_and_score_every_question_once(two_process_run, ddp_squad):
    run_dir, proc = two_process_run
    assert [p.name for p in run_dir.parent.iterdir()] == ["two"]
    assert proc.stdout.count(f"-> {run_dir}") == 2  # the start and final lines, from the main process only
    records = [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    assert [r["type"] for r in records].count("final_eval") == 1
    assert records[0]["processes"] == 2 and records[0]["global_batch"] == 6
    ids = question_ids(ddp_squad)
    final = json.loads((run_dir / ckpt.FINAL_EVAL_FILE).read_text())
    assert final["count"] == len(ids) and final["missing"] == 0 and final["processes"] == 2
    assert sorted(json.loads((run_dir / ckpt.PREDICTIONS_FILE).read_text())) == sorted(ids)


def test_a_two_process_run_resumes_exactly(ddp_squad, tiny_tokenizer_dir, tmp_path):
    # With dropout: every rank's random stream must be restored exactly (a DataLoader iterator drawing
    # its base seed from the global RNG once shifted the resumed run's dropout by one draw).
    config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", "full", dropout=0.1)
    train_with_two_processes(config, tmp_path)
    full = tmp_path / "runs" / "full"
    state = json.loads((ckpt.checkpoint_dirs(full)[0] / ckpt.STATE_FILE).read_text())
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 1

    cut = tmp_path / "runs" / "cut"  # the same run as if it had been killed after its step-3 checkpoint
    shutil.copytree(full, cut)
    for late in ckpt.checkpoint_dirs(cut)[1:]:
        shutil.rmtree(late)
    for name in (ckpt.FINAL_EVAL_FILE, ckpt.PREDICTIONS_FILE, ckpt.WEIGHTS_FILE):  # not written before the kill
        (cut / name).unlink(missing_ok=True)
    torchrun(["-m", "nami", "train", "--resume", str(cut), "--quiet"], tmp_path)
    assert resumed_from(cut) == [3]  # really resumed (a restart from 0 gives the same weights)
    assert max_difference(full, cut) == 0.0

    with pytest.raises(ckpt.CheckpointError, match="saved by 2 process"):  # one process cannot resume it exactly
        from nami.training.loop import resume

        shutil.rmtree(ckpt.checkpoint_dirs(cut)[-1])
        (cut / ckpt.FINAL_EVAL_FILE).unlink()
        resume(cut, quiet=True)


DRIVER = """
import json, os, sys
from nami.runs.config import TrainConfig
from nami.training.loop import train
config = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
result = train(config, quiet=True)
rank = os.environ["RANK"]
open(sys.argv[2] + f".rank{rank}", "w").write(json.dumps({"steps": result.steps, "run_dir": str(result.run_dir)}))
"""


def test_a_time_budget_stops_both_ranks_on_the_same_step(ddp_squad, tiny_tokenizer_dir, tmp_path):
    config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", "timed", max_steps=None,
                         max_minutes=0.04, checkpoint_every_steps=None)
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    (tmp_path / "driver.py").write_text(DRIVER, "utf-8")
    torchrun([str(tmp_path / "driver.py"), str(tmp_path / "config.json"), str(tmp_path / "result")], tmp_path)
    results = [json.loads((tmp_path / f"result.rank{r}").read_text()) for r in range(2)]
    assert results[0] == results[1] and results[0]["steps"] > 0
    final = json.loads((tmp_path / "runs" / "timed" / ckpt.FINAL_EVAL_FILE).read_text())
    assert final["step"] == results[0]["steps"]


def test_fsdp2_sharded_training_gathers_to_the_unsharded_parameters_and_resumes_exactly(single_run, ddp_squad,
                                                                                        tiny_tokenizer_dir, tmp_path):
    config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", "fsdp", sharding="fsdp2")
    train_with_two_processes(config, tmp_path)
    full = tmp_path / "runs" / "fsdp"
    assert max_difference(single_run, full, skip=NOISE_ONLY) < 1e-5  # the gathered parameters: the single run's
    assert max_difference(single_run, full) <= 6 * config["lr"]
    state = json.loads((ckpt.checkpoint_dirs(full)[0] / ckpt.STATE_FILE).read_text())
    assert state["sharding"] == "fsdp2" and state["world_size"] == 2
    final = json.loads((full / ckpt.FINAL_EVAL_FILE).read_text())
    assert final["count"] == len(question_ids(ddp_squad)) and final["missing"] == 0

    cut = tmp_path / "runs" / "fsdp-cut"  # killed after its step-3 checkpoint, then resumed
    shutil.copytree(full, cut)
    for late in ckpt.checkpoint_dirs(cut)[1:]:
        shutil.rmtree(late)
    for name in (ckpt.FINAL_EVAL_FILE, ckpt.PREDICTIONS_FILE, ckpt.WEIGHTS_FILE):  # not written before the kill
        (cut / name).unlink(missing_ok=True)
    torchrun(["-m", "nami", "train", "--resume", str(cut), "--quiet"], tmp_path)
    assert resumed_from(cut) == [3]  # really resumed (a restart from 0 gives the same weights)
    assert max_difference(full, cut) == 0.0


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_fsdp2_pretraining_takes_the_unsharded_step(task, ddp_squad, tiny_tokenizer_dir, tmp_path):
    """The vocabulary-layer loss multiplies by the output matrix, which FSDP2 gathers only inside the
    model's forward: the language-model tasks compute their loss there (``head_loss``), so sharded
    pretraining takes the same steps as unsharded (2-process DDP: the same per-rank masking streams)."""
    for name, sharding in (("ddp", "none"), ("fsdp", "fsdp2")):
        config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", f"{task}-{name}", task=task,
                             max_steps=3, checkpoint_every_steps=None, sharding=sharding)
        train_with_two_processes(config, tmp_path)
    assert max_difference(tmp_path / "runs" / f"{task}-ddp", tmp_path / "runs" / f"{task}-fsdp") < 1e-5


def test_fsdp2_without_a_launcher_is_one_clear_error(ddp_squad, tiny_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    config = TrainConfig.from_dict(config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", "alone",
                                               sharding="fsdp2"))
    with pytest.raises(ValueError, match="torchrun --nproc_per_node N"):
        train(config, quiet=True)
    assert not (tmp_path / "runs").exists()  # refused before any run directory was created


def test_the_gpu_check_training_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu_train_check.py is what gpu_check.sh runs on a GPU machine: keep it working."""
    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_check.py")
    env = {**clean_env(), "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, "steps", "--device", "cpu", "--preset", "tiny", "--batch", "2",
                    "--seq", "32", "--steps", "1", "--warmup", "0", "--repeats", "1", "--out",
                    str(tmp_path / "steps.json")], check=True, env=env, timeout=120, capture_output=True)
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps["wave"]["tokens_per_s"] > 0 and steps["transformer"]["tokens_per_s"] > 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", script,
               "fsdp2", "--device", "cpu", "--out", str(tmp_path / "fsdp2.json")]
    proc = subprocess.run(command, env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "fsdp2.json").read_text())["ok"] is True


# --- DeepSpeed ZeRO ----------------------------------------------------------------------------

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed (pip install deepspeed)")


def test_the_committed_deepspeed_configs_are_the_ones_nami_trains_with():
    from nami.runs.deepspeed import ZERO_CONFIGS

    root = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
    for stage in (2, 3):
        assert json.loads((root / f"zero{stage}.json").read_text("utf-8")) == ZERO_CONFIGS[stage]


def test_deepspeed_configs_are_filled_and_bad_ones_name_the_file_and_field(tmp_path):
    from nami.runs.deepspeed import deepspeed_config

    filled = deepspeed_config("zero3", None, global_batch=7, world=2, max_grad_norm=0.5)
    assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_clipping"] == 0.5
    assert filled["zero_optimization"]["stage"] == 3 and filled["bf16"]["enabled"] is False
    mine = tmp_path / "ds.json"
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 2.0}), "utf-8")
    assert deepspeed_config("zero2", str(mine), global_batch=4, world=2, max_grad_norm=1.0)["gradient_clipping"] == 2.0
    with pytest.raises(ValueError, match=r"ds\.json: zero_optimization\.stage is 2, but --sharding zero3"):
        deepspeed_config("zero3", str(mine), global_batch=4, world=2, max_grad_norm=1.0)
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}), "utf-8")
    with pytest.raises(ValueError, match=r"ds\.json: bf16\.enabled must be false"):
        deepspeed_config("zero2", str(mine), global_batch=4, world=2, max_grad_norm=1.0)
    # Hugging Face's form: train_batch_size "auto" is filled; an "auto" nami cannot fill is named
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}), "utf-8")
    assert deepspeed_config("zero2", str(mine), global_batch=6, world=2, max_grad_norm=1.0)["train_batch_size"] == 6
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}), "utf-8")
    with pytest.raises(ValueError, match=r"ds\.json: .*give a value for zero_optimization\.reduce_bucket_size"):
        deepspeed_config("zero2", str(mine), global_batch=4, world=2, max_grad_norm=1.0)
    mine.write_text("{", "utf-8")
    with pytest.raises(ValueError, match=r"ds\.json: not valid JSON"):
        deepspeed_config("zero2", str(mine), global_batch=4, world=2, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="grad_accum=2: not supported with --sharding zero2"):
        TrainConfig.from_dict({"sharding": "zero2", "grad_accum": 2}).validate()
    with pytest.raises(ValueError, match="needs --sharding zero2 or zero3"):
        TrainConfig.from_dict({"deepspeed_config": str(mine)}).validate()
    # checked with the other options, before any data is loaded
    with pytest.raises(ValueError, match=r"--deepspeed-config .*missing\.json: file not found"):
        TrainConfig.from_dict({"sharding": "zero3", "deepspeed_config": str(tmp_path / "missing.json")}).validate()
    with pytest.raises(ValueError, match=r"--deepspeed-config .*: is a directory"):
        TrainConfig.from_dict({"sharding": "zero3", "deepspeed_config": str(tmp_path)}).validate()
    with pytest.raises(ValueError, match=r"ds\.json: not valid JSON"):
        TrainConfig.from_dict({"sharding": "zero2", "deepspeed_config": str(mine)}).validate()


@needs_deepspeed
@pytest.mark.parametrize("sharding", ["zero2", "zero3"])
def test_deepspeed_zero_training_gathers_to_the_unsharded_parameters_and_resumes_exactly(
        sharding, single_run, ddp_squad, tiny_tokenizer_dir, tmp_path):
    config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", sharding, sharding=sharding)
    train_with_two_processes(config, tmp_path)
    full = tmp_path / "runs" / sharding
    assert max_difference(single_run, full, skip=NOISE_ONLY) < 1e-5  # the gathered parameters: the single run's
    assert max_difference(single_run, full) <= 6 * config["lr"]
    state = json.loads((ckpt.checkpoint_dirs(full)[0] / ckpt.STATE_FILE).read_text())
    assert state["sharding"] == sharding and state["world_size"] == 2
    final = json.loads((full / ckpt.FINAL_EVAL_FILE).read_text())
    assert final["count"] == len(question_ids(ddp_squad)) and final["missing"] == 0

    cut = tmp_path / "runs" / f"{sharding}-cut"  # killed after its step-3 checkpoint, then resumed
    shutil.copytree(full, cut)
    for late in ckpt.checkpoint_dirs(cut)[1:]:
        shutil.rmtree(late)
    for name in (ckpt.FINAL_EVAL_FILE, ckpt.PREDICTIONS_FILE, ckpt.WEIGHTS_FILE):  # not written before the kill
        (cut / name).unlink(missing_ok=True)
    torchrun(["-m", "nami", "train", "--resume", str(cut), "--quiet"], tmp_path)
    assert resumed_from(cut) == [3]  # really resumed (a restart from 0 gives the same weights)
    assert max_difference(full, cut) == 0.0


@needs_deepspeed
def test_deepspeed_zero3_pretraining_takes_the_unsharded_step(ddp_squad, tiny_tokenizer_dir, tmp_path):
    """The masked-LM loss multiplies by the tied token embedding inside the model's own forward:
    ZeRO-3 gathers it there (registered as an external parameter)."""
    for name, sharding in (("ddp", "none"), ("zero3", "zero3")):
        config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", f"mlm-{name}", task="mlm",
                             max_steps=3, checkpoint_every_steps=None, sharding=sharding)
        train_with_two_processes(config, tmp_path)
    assert max_difference(tmp_path / "runs" / "mlm-ddp", tmp_path / "runs" / "mlm-zero3") < 1e-5


def test_gradient_accumulation_over_two_processes_takes_the_single_process_step(ddp_squad, tiny_tokenizer_dir,
                                                                                 tmp_path):
    """Accumulated windows weigh every batch by its loss units on every process: two processes with
    --grad-accum 2 take the steps one process takes with the same global batches (the last batch of an
    epoch has 5 windows, the others 6)."""
    # the single-process step is compared with N processes' step: the data must give no global batch of
    # fewer windows than processes (those are skipped by every rank, see ShardedBatches): ddp_squad
    one = train(TrainConfig.from_dict(config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", "ga-one",
                                                  grad_accum=2)), quiet=True).run_dir
    config = config_dict(ddp_squad, tiny_tokenizer_dir, tmp_path / "runs", "ga-two", grad_accum=2)
    train_with_two_processes(config, tmp_path)
    assert max_difference(one, tmp_path / "runs" / "ga-two", skip=NOISE_ONLY) < 1e-5
