"""Outputs never destroy inputs, run directories are claimed once and locked while trained."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from nami.cli import main
from nami.io import check_output_path, write_json

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "runs" / "wave"
DATA = FIXTURES / "tiny_qa.json"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("nami: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_predict_refuses_to_overwrite_its_data_or_its_run(tmp_path, capsys):
    data = tmp_path / "v.json"
    shutil.copy(DATA, data)
    before = digest(data)
    assert main(["predict", "--checkpoint", str(RUN), "--data", str(data), "--output", str(data), "--quiet"]) == 2
    one_error_line(capsys, "--output", "would overwrite the input")
    assert digest(data) == before
    config_before = digest(RUN / "config.json")
    assert main(["predict", "--checkpoint", str(RUN), "--data", str(DATA), "--output", str(RUN / "config.json"),
                 "--quiet"]) == 2
    one_error_line(capsys, "inside the run directory")
    assert digest(RUN / "config.json") == config_before
    for size in ("0", "-1"):
        assert main(["predict", "--checkpoint", str(RUN), "--data", str(DATA), "--output", str(tmp_path / "p.json"),
                     "--batch-size", size, "--quiet"]) == 2
        one_error_line(capsys, "--batch-size")
    assert main(["predict", "--checkpoint", str(RUN), "--data", str(DATA), "--output", str(tmp_path), "--quiet"]) == 2
    one_error_line(capsys, "is a directory")


def test_baseline_refuses_to_overwrite_its_data(tmp_path, capsys):
    data = tmp_path / "v.json"
    shutil.copy(DATA, data)
    before = digest(data)
    assert main(["baseline", "lexical", "--data", str(data), "--output", str(data), "--quiet"]) == 2
    one_error_line(capsys, "would overwrite the input")
    assert main(["baseline", "lexical", "--data", str(data), "--window", "-5", "--quiet"]) == 2
    one_error_line(capsys, "--window")
    assert digest(data) == before


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    write_json(tmp_path / "out.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_output_path_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_output_path(tmp_path / "file" / "sub.json", "--output")
    shards = tmp_path / "shards"
    shards.mkdir()
    with pytest.raises(ValueError, match="would overwrite the input"):
        check_output_path(shards / "new.json", "--output", inputs=[shards])
    assert check_output_path(tmp_path / "new.json", "--output", inputs=[shards]) == tmp_path / "new.json"


def test_tokenizer_train_never_overwrites_a_directory(tmp_path, capsys):
    out = tmp_path / "tok"
    shutil.copytree(RUN / "tokenizer", out)
    before = digest(out / "spm.model")
    assert main(["tokenizer", "train", "--corpus", str(DATA), "--out", str(out), "--vocab-size", "300",
                 "--quiet"]) == 2
    one_error_line(capsys, "--out", "not an empty directory")
    assert digest(out / "spm.model") == before


def test_a_run_directory_without_config_is_reported_not_reused(tmp_path, capsys):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "metrics.jsonl").write_text('{"type": "start"}\n')
    args = ["train", "--preset", "tiny", "--tokenizer", str(RUN / "tokenizer"), "--train-data", str(DATA),
            "--eval-data", str(DATA), "--max-length", "64", "--max-steps", "1", "--runs-dir", str(tmp_path),
            "--run-name", "r1", "--quiet"]
    assert main(args) == 2
    one_error_line(capsys, "holds no run", "rm -r")
    assert (tmp_path / "r1" / "metrics.jsonl").read_text() == '{"type": "start"}\n'
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == ["metrics.jsonl"]


def test_a_run_being_trained_cannot_be_resumed_by_a_second_process(tmp_path):
    from nami.runs.config import TrainConfig
    from nami.training import checkpoint as ckpt
    from nami.training.loop import resume, train

    config = TrainConfig.from_dict(dict(
        preset="tiny", tokenizer=str(RUN / "tokenizer"), train_data=[str(DATA)], eval_data=str(DATA), max_length=64,
        max_steps=4, checkpoint_every_steps=2, eval_every_minutes=None, runs_dir=str(tmp_path), run_name="r",
        precision="fp32"))
    run = train(config, quiet=True).run_dir
    lock = ckpt.RunLock(run)  # as if another process were training it
    try:
        with pytest.raises(ckpt.CheckpointError, match="another process is training this run"):
            resume(run, quiet=True)
    finally:
        lock.release()
    assert ckpt.RunLock(run).release() is None  # released: the run can be locked again


def test_an_installed_copy_inside_another_repository_records_no_commit(tmp_path):
    """Provenance names nami's commit, never that of a user's project holding an installed copy."""
    import shutil
    import subprocess
    import sys

    project = tmp_path / "project"
    site = project / ".venv" / "lib" / "site-packages"
    shutil.copytree(Path(__file__).resolve().parents[1] / "src" / "nami", site / "nami",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=project, check=True)
    out = subprocess.run([sys.executable, "-c", "from nami.reports.environment import git_commit; print(git_commit())"],
                         cwd=project, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert out.stdout.strip() == "unknown", out.stderr


def test_loading_a_run_while_its_trainer_refreshes_the_weights_waits_for_the_manifest(tmp_path):
    """The trainer renames new weights in, then rewrites the manifest: a reader in between waits
    (the run is locked), a reader of an unlocked run with a modified file is refused at once."""
    import threading
    import time

    from nami.training import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    weights = run / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes() + b" ")  # new weights, the manifest not yet refreshed
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.verify_manifest(run)  # nobody is training it: a real mismatch
    lock = ckpt.RunLock(run)
    try:
        names = list(json.loads((run / ckpt.MANIFEST_FILE).read_text()))
        timer = threading.Timer(0.5, lambda: ckpt.write_manifest(run, names))
        started = time.perf_counter()
        timer.start()
        ckpt.verify_manifest(run)  # waits for the refreshed manifest, then passes
        assert time.perf_counter() - started >= 0.4
    finally:
        lock.release()


# Sizes within models/config.py:SIZE_LIMITS (beyond them a config is refused when read, before the
# weights are looked at: tests/test_hostile_runs.py) that still disagree with the weights.
@pytest.mark.parametrize("field, value, says", [("d_ff", 10**6, "ffn"), ("vocab_size", 10**6, "token"),
                                                ("n_layers", 4000, "n_layers=4000"),
                                                ("max_len", 10**6, "position")])
def test_a_config_that_does_not_fit_its_weights_is_refused_before_anything_is_allocated(tmp_path, field, value,
                                                                                          says):
    """An untrusted run whose config.json was edited (and its manifest regenerated) to sizes of ~1e9
    made from_pretrained allocate hundreds of GB; now the config is checked against the weights first."""
    import json
    import shutil
    from pathlib import Path

    from nami.io import write_manifest
    from nami.models import QAModel
    from nami.models.pretrained import root_files
    from nami.training import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "wave", run)
    saved = json.loads((run / "config.json").read_text())
    saved["model"][field] = value
    (run / "config.json").write_text(json.dumps(saved))
    write_manifest(run, root_files(run))
    with pytest.raises(ckpt.CheckpointError, match=says):
        QAModel.from_pretrained(run)


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside.txt", "tokenizer/../../outside.txt", "link"])
def test_manifest_entries_outside_the_run_are_refused_before_any_file_is_read(tmp_path, entry):
    """An entry naming a file outside the run (or a symlink leading out) is refused by its name alone,
    the same way whether that file exists or not (the error must not reveal it, nor read /proc files)."""
    import json

    from nami.io import MANIFEST_FILE, CheckpointError, verify_manifest

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    (run / "link").symlink_to(tmp_path / "outside.txt")
    (run / MANIFEST_FILE).write_text(json.dumps({entry: "0" * 64}))
    with pytest.raises(CheckpointError, match="not a plain relative path|leads outside"):
        verify_manifest(run)


def test_a_copy_tools_stray_files_in_the_tokenizer_folder_do_not_block_loading(tmp_path):
    import shutil
    from pathlib import Path

    from nami.pipelines import pipeline

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "wave", run)
    (run / "tokenizer" / ".DS_Store").write_bytes(b"\0\1")
    (run / "tokenizer" / "__MACOSX").mkdir()
    answer = pipeline("question-answering", run)(question="富士山の高さは?", context="富士山の高さは3776メートル。")
    assert answer["answer"]


@pytest.mark.parametrize("content", ["{}", "[]", '{"data": "x", "f1": "high", "exact_match": 1}', "not json"])
def test_a_malformed_final_eval_is_a_warning_not_a_traceback(tmp_path, content, capsys):
    import json
    import shutil
    from pathlib import Path

    from nami.pipelines import predict_file

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "wave", run)
    (run / "final_eval.json").write_text(content)
    data = Path(__file__).parent / "fixtures" / "tiny_qa.json"
    summary = predict_file(run, str(data), tmp_path / "pred.json", quiet=True)
    assert summary["matches_recorded"] is None and "f1" in summary
    assert "final_eval.json: unreadable" in capsys.readouterr().err
    assert json.loads((tmp_path / "pred.json").read_text())


@pytest.mark.parametrize("record, says", [({"rows": [1]}, "rows[0] is not a row"),
                                          ({"rows": [{"runs": []}]}, "rows[0] is not a row"),
                                          ({"rows": [{"name": "w", "runs": [{"run_dir": "x"}]}]}, "runs[0].seed"),
                                          ({"rows": [{"name": "w", "runs": [{"seed": 0, "run_dir": 5}]}]},
                                           "runs[0].run_dir")])
def test_a_malformed_reuse_file_names_its_field(tmp_path, record, says):
    import json

    from nami.reports.compare import adopt_ablation_runs

    path = tmp_path / "abl.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        adopt_ablation_runs([str(path)], tmp_path / "runs", {})


def test_a_read_only_output_folder_names_the_output_not_a_temporary_file(tmp_path, monkeypatch):
    """Where permissions hold (not root), the folder is made read-only; as root, which ignores them,
    the file system's refusal to create the temporary file is played by ``mkstemp``."""
    import errno
    import os
    import tempfile

    from nami.io import write_json

    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions
            def refuse(prefix="", suffix="", dir=None, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}x{suffix}"))

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(OSError) as raised:
            write_json(folder / "report.json", {"a": 1})
        assert str(folder / "report.json") in str(raised.value) and ".tmp" not in str(raised.value)
    finally:
        os.chmod(folder, 0o700)


def test_a_lock_file_a_reader_cannot_open_does_not_hide_the_real_error(tmp_path):
    """An unreadable .lock (an immutable or foreign file) made verification report the lock instead of the
    modified file; the checksum mismatch is named."""
    import shutil
    from pathlib import Path

    from nami.io import verify_manifest

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "wave", run)
    (run / ".lock").mkdir()  # cannot be opened as a file by anyone, root included
    (run / "config.json").write_text((run / "config.json").read_text() + " ")
    from nami.io import CheckpointError

    with pytest.raises(CheckpointError, match="config.json: checksum mismatch"):
        verify_manifest(run)


@pytest.mark.parametrize("readable", [True, False], ids=["read-only-lock", "unopenable-lock"])
def test_a_lock_this_process_may_not_write_does_not_hide_the_real_error(tmp_path, monkeypatch, readable):
    """An immutable ``.lock`` (``chattr +i``: no write access even for root) or a foreign one (no access
    at all): a reader of the run must not need to write the lock, and when it cannot open it, the
    verification's own error is the one shown. Permissions cannot be taken from root here, so the
    file system's answer is played by ``open`` (before: ``R/.lock: Operation not permitted``)."""
    import builtins
    import errno
    import shutil
    from pathlib import Path

    import nami.io
    from nami.io import CheckpointError, verify_manifest

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "wave", run)
    (run / ".lock").write_text("")
    (run / "config.json").write_text((run / "config.json").read_text() + " ")
    real_open = builtins.open

    def file_system(file, mode="r", *args, **kwargs):
        if Path(str(file)).name == ".lock" and (not readable or set(mode) & set("wa+x")):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(nami.io, "open", file_system, raising=False)
    with pytest.raises(CheckpointError, match="config.json: checksum mismatch"):
        verify_manifest(run)
