"""`nami data fetch` against a local HTTP server on 127.0.0.1: good, truncated, wrong checksum, 404, slow."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest

from nami.cli import main
from nami.data.fetch import DATASETS, DataFile, fetch
from nami.io import CommandFailed

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_qa.json"


@pytest.fixture()
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; /slow/... answers after 3 s; bounded, stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/slow/"):
                time.sleep(3)
            try:
                return super().do_GET()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout case)
                return None

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _entry(sha: str, path: str = "tiny.json") -> DataFile:
    return DataFile("jsquad/tiny.json", "http://unused.invalid", path, sha)


def test_a_good_file_is_fetched_verified_and_not_fetched_again(server, tmp_path):
    www, url = server
    (www / "tiny.json").write_bytes(FIXTURE.read_bytes())
    sha = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    out = tmp_path / "data"
    assert fetch("x", out, base_url=url, files=[_entry(sha)]) == [out / "jsquad" / "tiny.json"]
    assert (out / "jsquad" / "tiny.json").read_bytes() == FIXTURE.read_bytes()
    (www / "tiny.json").unlink()  # already in place with the right checksum: no request
    fetch("x", out, base_url=url, files=[_entry(sha)])


@pytest.mark.parametrize("case", ["truncated", "wrong", "missing", "slow"])
def test_a_bad_answer_writes_nothing_and_names_the_file(server, tmp_path, case):
    www, url = server
    data = FIXTURE.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (www / "slow").mkdir()
    (www / "tiny.json").write_bytes(data[: len(data) // 2] if case == "truncated" else data)
    (www / "slow" / "tiny.json").write_bytes(data)
    entry = {"truncated": _entry(sha), "wrong": _entry("0" * 64), "missing": _entry(sha, "nope.json"),
             "slow": _entry(sha, "slow/tiny.json")}[case]
    says = {"truncated": "is not the expected", "wrong": "is not the expected", "missing": "HTTP 404",
            "slow": "cannot fetch it"}[case]
    out = tmp_path / "data"
    with pytest.raises(CommandFailed, match=says):
        fetch("x", out, base_url=url, files=[entry], timeout=1.0)
    assert not (out / "jsquad" / "tiny.json").exists()
    assert not list((out / "jsquad").glob("*.part")) if (out / "jsquad").exists() else True


def test_the_command_is_one_line_offline_and_the_real_checksums_are_committed(tmp_path, capsys):
    assert main(["data", "fetch", "jsquad", "--dir", str(tmp_path), "--base-url", "http://127.0.0.1:9",
                 "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "cannot fetch it" in err and "nothing written" in err and "Traceback" not in err
    assert len(DATASETS["jaquad"]) == 34 and len(DATASETS["jsquad"]) == 1
    assert DATASETS["jsquad"][0].sha256 == "fb0a57a35281ff03bbe7f0e878cff5b577985fbe6fcb242e7e8ddb63d1c0ab11"
    assert all(len(f.sha256) == 64 for files in DATASETS.values() for f in files)
