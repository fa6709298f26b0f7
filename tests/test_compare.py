"""``nami compare`` end to end on a tiny data set: stages, report directory, provenance."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nami.reports.compare import COMPARE_PRESETS, stage_configs


def test_stage_plan_chains_pretraining_into_finetuning(tmp_path):
    stages = stage_configs("standard", "wave", minutes=None, pretrain_minutes=None, runs_dir=str(tmp_path),
                           stamp="S", train_data=None, eval_data=None)
    assert list(stages) == ["pretrain", "finetune"]
    pretrain, finetune = stages["pretrain"], stages["finetune"]
    assert pretrain.task == "mlm" and finetune.task == "qa"
    assert finetune.init_from == str(tmp_path / pretrain.run_name)
    assert pretrain.train_data is None  # JaQuAD train contexts only: JaQuAD dev stays held out
    assert pretrain.max_minutes + finetune.max_minutes == 55.0
    assert pretrain.max_length == finetune.max_length and pretrain.preset == finetune.preset
    assert finetune.question_match and finetune.answer_boundaries == "word"  # the reported QA settings
    # The control: the same 55 minutes, all on QA.
    scratch = stage_configs("scratch", "wave", minutes=None, pretrain_minutes=None, runs_dir=str(tmp_path),
                            stamp="S", train_data=None, eval_data=None)
    assert list(scratch) == ["finetune"] and scratch["finetune"].max_minutes == 55.0
    qa_stage = {stage["name"]: stage for stage in COMPARE_PRESETS["standard"]["stages"]}["finetune"]
    assert COMPARE_PRESETS["scratch"]["stages"][-1]["train"] == qa_stage["train"]
    # Wave runs compile their element-wise maths in both stages; the Transformer has none to compile.
    assert pretrain.compile_wave and finetune.compile_wave and scratch["finetune"].compile_wave
    transformer = stage_configs("standard", "transformer", minutes=None, pretrain_minutes=None,
                                runs_dir=str(tmp_path), stamp="S", train_data=None, eval_data=None)
    assert not any(config.compile_wave for config in transformer.values())
    # QA fine-tuning regularises with dropout on hidden states only (no attention dropout, costly on
    # CPU); masked-LM pretraining runs without dropout.
    for finetune_config in (finetune, transformer["finetune"], scratch["finetune"]):
        assert finetune_config.model.dropout == 0.1 and finetune_config.model.attention_dropout == 0.0
    assert pretrain.model.dropout == 0.0 and transformer["pretrain"].model.dropout == 0.0
    # The plan names the precision its runs train in ("auto" decided for this hardware), so a plan
    # recorded on a host with native bf16 is not reused where auto chooses fp32, and vice versa.
    from nami.resources import resolve_precision

    assert {c.precision for c in (pretrain, finetune)} == {resolve_precision("auto")}
    # --pretrain-minutes 0 drops the stage; a preset without one refuses it.
    assert list(stage_configs("standard", "wave", minutes=None, pretrain_minutes=0, runs_dir="r", stamp="S",
                              train_data=None, eval_data=None)) == ["finetune"]
    with pytest.raises(ValueError, match="no pretraining stage"):
        stage_configs("scratch", "wave", minutes=None, pretrain_minutes=5, runs_dir="r", stamp="S",
                      train_data=None, eval_data=None)


@pytest.mark.slow
def test_compare_writes_a_report_whose_numbers_come_from_results_json(tiny_squad, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "nami", "compare", "--preset", "smoke-pretrain", "--out", str(out),
           "--train-data", str(tiny_squad), "--eval-data", str(tiny_squad), "--tokenizer", str(tiny_tokenizer_dir),
           "--parallel", "--quiet", "--results", str(tmp_path / "results" / "compare.json")]
    began = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    measured_minutes = (time.time() - began) / 60
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text("utf-8"))
    # An honest clock: the reported wall time is the whole command (evaluation, re-scoring and the
    # baseline included), not only its training chains.
    # 5 % of the command; at least 1.5 s, which interpreter exit (torch loaded) alone can take on a 20-s command
    assert abs(result["wall_minutes"] - measured_minutes) <= max(0.05 * measured_minutes, 1.5 / 60), \
        (result["wall_minutes"], measured_minutes)
    assert result["training_wall_minutes"] < result["wall_minutes"]
    # --results: the same record at the requested path, with the fields the README documents.
    assert json.loads((tmp_path / "results" / "compare.json").read_text("utf-8")) == result
    for key in ("command", "commit", "machine", "date", "budget_minutes", "train_data", "eval_data"):
        assert result[key], key
    assert "--results" in result["command"]
    for m in result["models"].values():
        for key in ("exact_match", "f1", "params", "train_tokens_per_s", "eval_questions_per_s", "run_dir"):
            assert m[key] is not None, key
    report = (out / "report.md").read_text("utf-8")
    assert set(result["models"]) == {"wave", "transformer"}
    for arch, m in result["models"].items():
        assert m["pretrain"] is not None and m["pretrain"]["steps"] > 0
        assert m["rescored_matches_recorded"] and m["rescored_f1"] == m["f1"]
        assert m["train_peak_mb"] > 50 and m["infer_peak_mb"] > 50
        assert m["minutes_to_final_f1"] >= m["train_minutes"]
        config = json.loads((out / "runs" / f"{arch}.finetune.json").read_text("utf-8"))
        assert config["init_from"] == m["pretrain"]["run_dir"]
        assert f"{m['f1']:.2f}" in report and f"{m['infer_peak_mb']:,.0f}" in report
        assert m["answer_boundaries"] == config["answer_boundaries"] == "word"
    assert "- answers begin and end on: wave MeCab word boundaries, transformer MeCab word boundaries" in report
    assert all(m["question_match"] is False for m in result["models"].values())  # the smoke preset leaves it off
    assert "- question-match token type (context words found in the question get segment id 2): wave off, " \
           "transformer off" in report
    assert result["baselines"]["lexical"]["count"] == 16
    assert f"{result['baselines']['lexical']['f1']:.2f}" in report
    assert "87.1" not in report  # published JSQuAD dev references appear only when the evaluation file is JSQuAD dev
    for name in result["plots"].values():
        assert (out / name).stat().st_size > 10_000 and f"]({name})" in report
    # `nami report` renders the same report again from results.json alone.
    (out / "report.md").unlink()
    assert subprocess.run([sys.executable, "-m", "nami", "report", str(out)], capture_output=True).returncode == 0
    assert (out / "report.md").read_text("utf-8") == report
    again = tmp_path / "again.json"
    assert subprocess.run([sys.executable, "-m", "nami", "report", str(out), "--results", str(again)],
                          capture_output=True).returncode == 0
    assert json.loads(again.read_text("utf-8")) == json.loads((out / "results.json").read_text("utf-8"))


def test_report_on_a_directory_without_results_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nami", "report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no results.json" in proc.stderr and "Traceback" not in proc.stderr


def test_results_path_that_is_a_directory_is_refused_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nami", "compare", "--preset", "smoke", "--out", str(tmp_path / "o"),
                           "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--results" in proc.stderr and "directory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_results_path_under_a_file_is_refused(tmp_path):
    from nami.reports.compare import check_results_path

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile is a file"):
        check_results_path(tmp_path / "afile" / "compare.json")
    check_results_path(tmp_path / "new" / "compare.json")  # a missing parent is created later: fine


@pytest.mark.slow
def test_ablate_writes_one_row_per_variant_with_every_field(tmp_path):
    from nami.reports.ablate import run_ablation
    from nami.reports.variants import VARIANTS

    fixtures = Path(__file__).parent / "fixtures"
    data = str(fixtures / "tiny_qa.json")
    record = run_ablation(variants=["wave", "wave+conv"], preset="smoke", minutes=0.03, seeds=[0],
                          out=str(tmp_path / "abl"), train_data=[data], eval_data=data,
                          tokenizer=str(fixtures / "runs" / "wave" / "tokenizer"), quiet=True, allow_dirty=True)
    saved = json.loads((tmp_path / "abl.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert [row["name"] for row in saved["rows"]] == ["wave", "wave+conv"]
    for row in saved["rows"]:
        assert {"name", "family", "options", "params", "train_tokens_per_s", "eval_questions_per_s", "train_peak_mb",
                "exact_match", "f1", "runs", "budget_minutes"} == set(row)
        assert row["runs"][0]["count"] == 24 and row["runs"][0]["steps"] >= 1 and row["family"] == "wave"
        assert row["options"] == {"arch": VARIANTS[row["name"]].arch, **VARIANTS[row["name"]].options}
    conv_run = json.loads((Path(saved["rows"][1]["runs"][0]["run_dir"]) / "config.json").read_text())
    assert conv_run["model"]["branches"] == ["conv"]  # the variant's options reached the trained model
    assert saved["rows"][1]["params"] > saved["rows"][0]["params"]
    assert "| wave+conv | wave | branches=['conv'] |" in (tmp_path / "abl.md").read_text()
    again = run_ablation(variants=["wave"], preset="smoke", minutes=0.03, seeds=[0], out=str(tmp_path / "abl"),
                         train_data=[data], eval_data=data, tokenizer=str(fixtures / "runs" / "wave" / "tokenizer"),
                         quiet=True, allow_dirty=True)  # already recorded: nothing trained, the file unchanged
    assert again["nothing_trained"] and [r["name"] for r in again["rows"]] == ["wave", "wave+conv"]
    assert json.loads((tmp_path / "abl.json").read_text()) == saved
    # a row of a variant nami no longer defines is kept when the file is written again
    retired = {**saved, "rows": [*saved["rows"], {**saved["rows"][0], "name": "wave+retired"}]}
    (tmp_path / "abl.json").write_text(json.dumps(retired))
    run_ablation(variants=["transformer"], preset="smoke", minutes=0.03, seeds=[0], out=str(tmp_path / "abl"),
                 train_data=[data], eval_data=data, tokenizer=str(fixtures / "runs" / "wave" / "tokenizer"), quiet=True,
                 allow_dirty=True)
    rows = json.loads((tmp_path / "abl.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["wave", "wave+conv", "wave+retired", "transformer"]
    assert rows[2]["runs"][0]["f1"] == saved["rows"][0]["runs"][0]["f1"]  # kept as recorded
    # a name that now means other options than its recorded runs is refused, not mixed into one row
    changed = {**saved, "rows": [{**saved["rows"][0], "options": {"arch": "wave", "proxy_tokens": 2}}]}
    (tmp_path / "abl.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="other options"):
        run_ablation(variants=["wave"], preset="smoke", minutes=0.03, seeds=[1], out=str(tmp_path / "abl"),
                     train_data=[data], eval_data=data, tokenizer=str(fixtures / "runs" / "wave" / "tokenizer"),
                     quiet=True, allow_dirty=True)
    with pytest.raises(ValueError, match="unknown variant"):
        run_ablation(variants=["wave+lstm"], out=str(tmp_path / "x"))


COMMITTED_REPORTS = sorted((Path(__file__).resolve().parents[1] / "results").glob("*/results.json"))


@pytest.mark.parametrize("results", COMMITTED_REPORTS, ids=lambda p: p.parent.name)
def test_every_committed_report_renders_again_without_its_runs(results, tmp_path):
    """A fresh clone has no runs/ (not committed): `nami report DIR` still works on every committed report."""
    import shutil

    from nami.cli import main

    copy = tmp_path / results.parent.name
    shutil.copytree(results.parent, copy, ignore=shutil.ignore_patterns("runs"))
    assert main(["report", str(copy)]) == 0
    rendered = (copy / "report.md").read_text("utf-8")
    for plot in json.loads((copy / "results.json").read_text("utf-8")).get("plots", {}).values():
        assert (copy / plot).is_file() and plot in rendered


def test_report_states_the_inference_precision_and_names_models_and_stages():
    """The precision line comes from the runs (it once said bf16 for fp32 runs); names are readable."""
    from nami.reports.report import render_markdown

    result = json.loads((COMMITTED_REPORTS[0].parents[1] / "compare-generative-30" / "results.json").read_text())
    text = render_markdown(result)
    assert text.startswith("# Wave vs Transformer on JSQuAD dev")
    assert "all threads, fp32, batch 64" in text  # its stages ran fp32
    assert "(10 causal-LM pretraining + 20 generative QA fine-tuning)" in text
    for model in result["models"].values():
        model["infer_precision"] = "bf16"
    assert "all threads, bf16, batch 64" in render_markdown(result)
    for model in result["models"].values():
        del model["infer_precision"], model["stages"]
    assert "not recorded" in render_markdown(result)
    # what the report says of data, machine and decoding comes from the results, not fixed strings
    assert "(JaQuAD; the official JSQuAD train split" in text and "here on 2 CPU cores" in text
    assert "(greedy, up to 16 tokens + [SEP])" in text
    result["train_data"], result["machine"] = ["mine.json"], "AMD EPYC, 16 CPUs, CUDA NVIDIA H200; Linux"
    for model in result["models"].values():
        model["stages"] = {"finetune": {"num_beams": 4, "max_answer_tokens": 24, "eval_batch_size": 32}}
    text = render_markdown(result)
    assert "JaQuAD;" not in text and "here on a GPU" in text and "batch 32" in text
    assert "(beam search, 4 beams, up to 24 tokens + [SEP])" in text
    for model in result["models"].values():  # a continued comparison that reused every model
        model["trained"] = {"reused": True, "commit": "abc1234", "date": "2026-12-01", "machine": "m"}
    assert "every model reused from an earlier invocation" in render_markdown(result)


def test_report_keeps_the_curves_it_draws_so_it_renders_without_runs(tmp_path):
    import shutil

    from nami.reports.report import CURVES_FILE, rerender, write_report

    result = json.loads(COMMITTED_REPORTS[0].read_text("utf-8"))
    result.pop("plots", None)
    for arch, model in result["models"].items():
        run = tmp_path / "runs" / arch
        run.mkdir(parents=True)
        records = [{"type": "train", "step": s, "train_seconds": 60.0 * s, "loss": 5.0 - s} for s in range(1, 5)]
        records += [{"type": "eval", "step": 4, "train_seconds": 240.0, "f1": 20.0},
                    {"type": "final_eval", "step": 4, "train_seconds": 240.0, "f1": model["f1"]}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        model["run_dir"] = str(run)
        model["pretrain"] = None
    out = tmp_path / "report"
    write_report(result, out)
    stored = json.loads((out / CURVES_FILE).read_text())
    assert set(stored["finetune"]) == set(result["models"]) and stored["finetune"][arch][-1]["f1"] == model["f1"]
    shutil.rmtree(tmp_path / "runs")
    (out / "curves.png").unlink()
    rerender(out)
    assert (out / "curves.png").is_file()  # redrawn from curves.json


@pytest.mark.slow
def test_a_continued_compare_trains_only_the_models_it_lacks(tiny_squad, tiny_tokenizer_dir, tmp_path):
    """A comparison longer than one sitting is finished model by model into the same --out."""
    out = tmp_path / "report"
    base = [sys.executable, "-m", "nami", "compare", "--preset", "smoke", "--out", str(out), "--train-data",
            str(tiny_squad), "--eval-data", str(tiny_squad), "--tokenizer", str(tiny_tokenizer_dir), "--quiet"]
    first = subprocess.run([*base, "--models", "wave"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    wave_run = json.loads((out / "results.json").read_text("utf-8"))["models"]["wave"]["run_dir"]
    second = subprocess.run([*base, "--models", "wave", "transformer"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads((out / "results.json").read_text("utf-8"))
    wave, transformer = result["models"]["wave"], result["models"]["transformer"]
    assert wave["run_dir"] == wave_run and wave["trained"]["reused"] is True  # not trained again
    assert transformer["trained"]["reused"] is False
    assert wave["trained"]["date"] != "unknown" and wave["trained"]["commit"] == transformer["trained"]["commit"]
    assert len([p for p in (out / "runs").iterdir() if p.is_dir()]) == 2  # one run per model
    assert "separate invocations" in (out / "report.md").read_text("utf-8")
    summary = [line for line in second.stdout.splitlines() if line.startswith("[nami] compare smoke:")]
    assert summary and f"wave EM {wave['exact_match']:.1f}" in summary[0]  # --quiet still prints one line
    assert summary[0].endswith(str(out / "report.md")) and wave["infer_precision"] in ("fp32", "bf16")
    # A different plan (another budget) is not a continuation: the model is trained again.
    third = subprocess.run([*base, "--models", "wave", "--minutes", "0.2"], capture_output=True, text=True,
                           timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((out / "results.json").read_text("utf-8"))["models"]["wave"]["trained"]["reused"] is False


@pytest.mark.slow
def test_compare_reuse_adopts_ablation_runs_with_the_same_plan_only(tmp_path):
    """`nami compare --reuse ABLATION.json` reuses a run `nami ablate` trained with exactly a model's plan
    (ablate's wave+conv seed 0 is compare's wave_plus), records where it came from, and trains the rest."""
    from nami.reports.ablate import run_ablation
    from nami.reports.compare import run_compare

    fixtures = Path(__file__).parent / "fixtures"
    data = str(fixtures / "tiny_qa.json")
    common = dict(preset="smoke", minutes=0.03, train_data=[data], eval_data=data,
                  tokenizer=str(fixtures / "runs" / "wave" / "tokenizer"), quiet=True)
    ablation = run_ablation(variants=["wave+conv"], seeds=[0], out=str(tmp_path / "abl"), allow_dirty=True, **common)
    ablated = ablation["rows"][0]["runs"][0]
    result = run_compare(models=("wave_plus", "transformer"), out_dir=str(tmp_path / "cmp"),
                         reuse=(str(tmp_path / "abl.json"),), lexical_baseline=False, **common)
    plus, transformer = result["models"]["wave_plus"], result["models"]["transformer"]
    assert plus["run_dir"] == ablated["run_dir"] and plus["f1"] == ablated["f1"]  # not trained again
    assert plus["trained"]["reused"] is True and plus["trained"]["date"] == ablated["date"]
    assert plus["trained"]["adopted_from"].endswith("abl.json: wave+conv seed 0")
    assert transformer["trained"]["reused"] is False  # no ablation row has its plan: trained
    assert "adopted from" in (tmp_path / "cmp" / "report.md").read_text("utf-8")
    # Another plan (a different budget) is not adopted.
    again = run_compare(models=("wave_plus",), out_dir=str(tmp_path / "cmp2"), reuse=(str(tmp_path / "abl.json"),),
                        lexical_baseline=False, **{**common, "minutes": 0.02})
    assert again["models"]["wave_plus"]["trained"]["reused"] is False
    with pytest.raises(ValueError, match="--reuse .*no such file"):
        run_compare(models=("wave",), out_dir=str(tmp_path / "cmp3"), reuse=(str(tmp_path / "none.json"),), **common)
    assert not (tmp_path / "cmp3").exists()  # refused before anything is written


@pytest.mark.slow
def test_a_compare_continues_in_a_fresh_checkout_from_its_recorded_results(tmp_path):
    """A later session has the committed results.json and curves.json but not runs/ (ignored by git):
    models recorded there with the same plan are reported as recorded, the others are trained."""
    import shutil

    from nami.reports.compare import run_compare

    fixtures = Path(__file__).parent / "fixtures"
    data = str(fixtures / "tiny_qa.json")
    common = dict(preset="smoke", minutes=0.03, train_data=[data], eval_data=data,
                  tokenizer=str(fixtures / "runs" / "wave" / "tokenizer"), quiet=True, lexical_baseline=False)
    out = tmp_path / "cmp"
    first = run_compare(models=("wave",), out_dir=str(out), **common)["models"]["wave"]
    assert first["trained"]["host_gflops"] > 0  # every invocation stamps its host's speed, fp32 and bf16
    assert first["trained"]["host_gflops_bf16"] > 0
    shutil.rmtree(out / "runs")  # a fresh clone: runs/ is not committed
    result = run_compare(models=("wave", "transformer"), out_dir=str(out), **common)
    wave, transformer = result["models"]["wave"], result["models"]["transformer"]
    assert wave["trained"]["from_results"] is True and wave["trained"]["reused"] is True
    assert {k: wave[k] for k in ("f1", "exact_match", "train_tokens_per_s", "run_dir", "stages")} == \
        {k: first[k] for k in ("f1", "exact_match", "train_tokens_per_s", "run_dir", "stages")}
    assert wave["trained"]["date"] == first["trained"]["date"]
    assert transformer["trained"]["reused"] is False
    report = (out / "report.md").read_text("utf-8")
    assert "its recorded results" in report and "measured speeds" in report
    assert (out / "curves.png").is_file()  # drawn from curves.json for the model without runs
    # Another plan (a different budget) is not a continuation: the model is trained again.
    again = run_compare(models=("wave",), out_dir=str(out), **{**common, "minutes": 0.02})
    assert again["models"]["wave"]["trained"].get("from_results") is None
    assert again["models"]["wave"]["trained"]["reused"] is False


def test_report_warns_when_hosts_differ_in_bf16_speed_alone():
    """A CPU without native bf16 has an ordinary fp32 GEMM speed but runs bf16 several times slower:
    the fp32 stamps agree, the bf16 stamps do not, and the report must say tokens/s do not compare."""
    from nami.reports.report import trained_lines

    def trained(fp32: float, bf16: float | None, reused: bool) -> dict:
        record = {"commit": "abc1234", "date": "2026-12-01", "machine": "Xeon", "host_gflops": fp32, "reused": reused}
        return {**record, "host_gflops_bf16": bf16} if bf16 is not None else record

    result = {"models": {"wave": {"trained": trained(100.0, 290.0, True)},
                         "transformer": {"trained": trained(105.0, 31.0, False)}}}
    text = "\n".join(trained_lines(result))
    assert "fp32 GEMM GFLOP/s at the start of each invocation) agree within 10 %" in text
    assert "differ by more than 10 % (bf16 GEMM" in text and "transformer: 31.0" in text
    result["models"]["transformer"]["trained"] = trained(105.0, None, False)  # stamped before bf16 stamps existed
    assert "bf16 GEMM" not in "\n".join(trained_lines(result))


def test_ablation_files_keep_dotted_names_and_their_training_data_in_the_protocol():
    from nami.reports.ablate import _protocol_differences, with_extension

    assert with_extension(Path("results/abl-1.5min"), ".json") == Path("results/abl-1.5min.json")
    base = {"preset": "standard", "budget_minutes": 8, "stages": {}, "eval_data": "dev.json"}
    ours = {**base, "train_data": ["a.json"], "tokenizer": None}
    assert _protocol_differences({**base, "train_data": ["b.json"], "tokenizer": None}, ours) == ["train_data"]
    assert _protocol_differences(base, ours) == []  # a file written before train_data was recorded


@pytest.mark.parametrize("field, value", [("wall_minutes", "x"), ("f1", float("nan")), ("f1", float("inf"))])
def test_report_on_an_edited_results_file_names_the_field(tmp_path, field, value):
    import shutil

    from nami.reports.report import rerender

    source = Path(__file__).resolve().parents[1] / "results" / "compare-quick"
    out = tmp_path / "cmp"
    shutil.copytree(source, out)
    result = json.loads((out / "results.json").read_text())
    if field == "wall_minutes":
        result["wall_minutes"] = value
        where = "wall_minutes"
    else:
        name = next(iter(result["models"]))
        result["models"][name]["f1"] = value
        where = f"models.{name}.f1"
    (out / "results.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match=f"{where}=.*expected a finite number"):
        rerender(out)
