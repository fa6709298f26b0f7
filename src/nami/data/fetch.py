"""``nami data fetch``: the public QA data from its official homes, verified, where nami looks for it.

JSQuAD's dev split comes from JGLUE's repository (yahoojapan/JGLUE, CC BY-SA 4.0) and JaQuAD's train /
dev shards from SkelterLabsInc/JaQuAD (CC BY-SA 3.0). Every file's sha256 is committed below (taken
from the files nami was developed with): a download that does not match is refused and never
written, so a changed or truncated file cannot slip into an experiment. Files are written atomically
into the data layout the defaults read (``DIR/jsquad/valid-v1.3.json``, ``DIR/jaquad/train/*.json``;
default ``DIR``: ``$NAMI_DATA``, else ``../shared/data`` beside the current directory), and files
already present with the right checksum are not fetched again. JSQuAD's train split is not
fetched: its checksum is not known here (give the file by path with ``--train-data``).

Offline, or with a host that refuses, the command says so in one line and writes nothing.
``--base-url`` fetches from a mirror with the same layout (the tests serve fixture files on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nami.io import CommandFailed, sha256_file

JSQUAD_BASE = "https://raw.githubusercontent.com/yahoojapan/JGLUE/main/datasets/jsquad-v1.3"
JAQUAD_BASE = "https://raw.githubusercontent.com/SkelterLabsInc/JaQuAD/main/data"
MAX_BYTES = 256 * 2**20  # a larger answer is not one of these files


@dataclass(frozen=True)
class DataFile:
    """One file: where it goes (relative to the data folder), where it comes from, its sha256."""

    relative: str
    base: str
    path: str
    sha256: str

    def url(self, base_url: str | None = None) -> str:
        return f"{(base_url or self.base).rstrip('/')}/{self.path}"


DATASETS: dict[str, tuple[DataFile, ...]] = {
    "jsquad": (
    DataFile("jsquad/valid-v1.3.json", JSQUAD_BASE, "valid-v1.3.json",
             "fb0a57a35281ff03bbe7f0e878cff5b577985fbe6fcb242e7e8ddb63d1c0ab11"),
    ),
    "jaquad": (
    DataFile("jaquad/dev/jaquad_dev_0000.json", JAQUAD_BASE, "dev/jaquad_dev_0000.json",
             "8712bc34623c6fec856f170ff0b8566421c3c261752b1797b94938f48c1f7bc4"),
    DataFile("jaquad/dev/jaquad_dev_0001.json", JAQUAD_BASE, "dev/jaquad_dev_0001.json",
             "6d777275f61b0250eb2d8f595bf6c602afecb7b7406e7c0c9c3b9d763027068d"),
    DataFile("jaquad/dev/jaquad_dev_0002.json", JAQUAD_BASE, "dev/jaquad_dev_0002.json",
             "b9c6cc23e5ae647eba6286189bac293a16a28b01ca707e1dc956bfcb13a04389"),
    DataFile("jaquad/dev/jaquad_dev_0003.json", JAQUAD_BASE, "dev/jaquad_dev_0003.json",
             "041fe1fdcb32d95974afaae0fb151aed8ee9394889349bb0b5a1c921391cb1d0"),
    DataFile("jaquad/train/jaquad_train_0000.json", JAQUAD_BASE, "train/jaquad_train_0000.json",
             "7c76df56ad78b2e083eddfa79d0d2af216b9ef6f7d8d5f9cf58104319cbdbabd"),
    DataFile("jaquad/train/jaquad_train_0001.json", JAQUAD_BASE, "train/jaquad_train_0001.json",
             "e1228d84518af8d818eb904a4b24ac1469859b966d6ef1ad531c327da016be55"),
    DataFile("jaquad/train/jaquad_train_0002.json", JAQUAD_BASE, "train/jaquad_train_0002.json",
             "fb6184f5e935f56176de4ee5d8fd8792eca857fdcf60307d8a547a868bd215bd"),
    DataFile("jaquad/train/jaquad_train_0003.json", JAQUAD_BASE, "train/jaquad_train_0003.json",
             "7671092aa3ff751757ed98fb702c2c2a16453d70ff309e21d5314a3e84c83f61"),
    DataFile("jaquad/train/jaquad_train_0004.json", JAQUAD_BASE, "train/jaquad_train_0004.json",
             "c62b1b1a1fb074aff496db6005a5b7786bb52509765d9ad20c6478d8d14a8bb3"),
    DataFile("jaquad/train/jaquad_train_0005.json", JAQUAD_BASE, "train/jaquad_train_0005.json",
             "ec9e0d43eb689581e081248ee9ac231900b517a77950ec4a36705e6f981f9618"),
    DataFile("jaquad/train/jaquad_train_0006.json", JAQUAD_BASE, "train/jaquad_train_0006.json",
             "d88329741cf61424795b9a29a1cce891a2db53c4336a2cfbb6fc8f03da6a602f"),
    DataFile("jaquad/train/jaquad_train_0007.json", JAQUAD_BASE, "train/jaquad_train_0007.json",
             "f12f859043a9c83b1079ff82922b7e3b1a329022524f39a123519f45c8fe7a25"),
    DataFile("jaquad/train/jaquad_train_0008.json", JAQUAD_BASE, "train/jaquad_train_0008.json",
             "2a302ed2cb0ed592530b9ea7875cdee66025086ec86fe60d7aa7ae3426230b39"),
    DataFile("jaquad/train/jaquad_train_0009.json", JAQUAD_BASE, "train/jaquad_train_0009.json",
             "4531612d3164d72f3c0f9ad935157f3e4ff79ef7647268c80b615a9a8b0a3ff7"),
    DataFile("jaquad/train/jaquad_train_0010.json", JAQUAD_BASE, "train/jaquad_train_0010.json",
             "dec81ba04ff3fe719e51f8fb4fd9d0eec276963a639e38de3007ad47fc7c1947"),
    DataFile("jaquad/train/jaquad_train_0011.json", JAQUAD_BASE, "train/jaquad_train_0011.json",
             "1af7da9c0643e29360f0611ff42e74ec7bb477110c891a833e7ea8fb876d9892"),
    DataFile("jaquad/train/jaquad_train_0012.json", JAQUAD_BASE, "train/jaquad_train_0012.json",
             "9af2a3a32100323d5fcb71183d4b0c31600e36d4bfca278f29764d40a881b853"),
    DataFile("jaquad/train/jaquad_train_0013.json", JAQUAD_BASE, "train/jaquad_train_0013.json",
             "9ef3c3c8b2af358edaa59a909224a68b9ad7548d07190f2298c137d075601365"),
    DataFile("jaquad/train/jaquad_train_0014.json", JAQUAD_BASE, "train/jaquad_train_0014.json",
             "4b2ed95653f64b724879c091710360b72e9c93b40c71b4281d64e7a56a3ae3f7"),
    DataFile("jaquad/train/jaquad_train_0015.json", JAQUAD_BASE, "train/jaquad_train_0015.json",
             "0ac78419e6196fb9fd0cfb690a6fb9cf5ab7c95ceb509cbdc02947d926952a60"),
    DataFile("jaquad/train/jaquad_train_0016.json", JAQUAD_BASE, "train/jaquad_train_0016.json",
             "a64b45cf5b2c080dbd6ecbc6c9e8f41ddeb5411f1b1b690cce4b8537a1003819"),
    DataFile("jaquad/train/jaquad_train_0017.json", JAQUAD_BASE, "train/jaquad_train_0017.json",
             "b4cd902d2c85417369e83990f48d87f60191c2444b9747160f9f89d3a2943c96"),
    DataFile("jaquad/train/jaquad_train_0018.json", JAQUAD_BASE, "train/jaquad_train_0018.json",
             "5c9b12ec323ecd5156bab3babc2538db9d822ab58d08ad30a35833f1e3052aab"),
    DataFile("jaquad/train/jaquad_train_0019.json", JAQUAD_BASE, "train/jaquad_train_0019.json",
             "c034bf47fab11ac6619f6778416d93397b25492691d2b81872159e7431ff123d"),
    DataFile("jaquad/train/jaquad_train_0020.json", JAQUAD_BASE, "train/jaquad_train_0020.json",
             "72b68f6eb8a6ca80ee0d9b8c55577720c8b105249764b1307222caea84bcaf20"),
    DataFile("jaquad/train/jaquad_train_0021.json", JAQUAD_BASE, "train/jaquad_train_0021.json",
             "be072517a36dbf5ccce7d47960e577ca64f4687de5a8f1a075f033c551fe3c39"),
    DataFile("jaquad/train/jaquad_train_0022.json", JAQUAD_BASE, "train/jaquad_train_0022.json",
             "9ca6aa5628dc299f9f4071779051f3218aba896f6c5f4688d2a1770f8997813e"),
    DataFile("jaquad/train/jaquad_train_0023.json", JAQUAD_BASE, "train/jaquad_train_0023.json",
             "a32c64bdd7860dd47a2aef47316443cf5d3b0c5e2fd472c4ef1058f70ebdd968"),
    DataFile("jaquad/train/jaquad_train_0024.json", JAQUAD_BASE, "train/jaquad_train_0024.json",
             "25051484c69c99bcd8eb2ce4687599a40d070e544a672231b935cdeb048d6b4d"),
    DataFile("jaquad/train/jaquad_train_0025.json", JAQUAD_BASE, "train/jaquad_train_0025.json",
             "98b5c1320d3626eef8a312186b04695fce476a73f90877ffdaccf66d22cf9b8a"),
    DataFile("jaquad/train/jaquad_train_0026.json", JAQUAD_BASE, "train/jaquad_train_0026.json",
             "fa3f3207aa6835b80ed60f0c82a1ab610e91d318bb722460a99d38cf872b73b4"),
    DataFile("jaquad/train/jaquad_train_0027.json", JAQUAD_BASE, "train/jaquad_train_0027.json",
             "10eb3445245974b2eb667ece0aeae7a3d60430c179bc5517b2988eb71ae8e3c4"),
    DataFile("jaquad/train/jaquad_train_0028.json", JAQUAD_BASE, "train/jaquad_train_0028.json",
             "c814d1818ded64be1489982d06860bd1f530b6a5d33341895d93645762758908"),
    DataFile("jaquad/train/jaquad_train_0029.json", JAQUAD_BASE, "train/jaquad_train_0029.json",
             "ec85984d650271cd2ca697058ec8c26fca306dfab2249b505efd727c5e959232"),
    ),
}


def default_dir() -> Path:
    """Where the defaults read data: ``$NAMI_DATA``, else ``../shared/data`` beside the current directory."""
    env = os.environ.get("NAMI_DATA")
    return Path(env).expanduser() if env else Path.cwd() / ".." / "shared" / "data"


def _download(url: str, target: Path, timeout: float) -> tuple[str, str]:
    """``url`` into a temporary file beside ``target``; its sha256 (the caller decides whether to keep it)."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                size += len(block)
                if size > MAX_BYTES:
                    raise CommandFailed(f"{url}: larger than {MAX_BYTES >> 20} MB: not the expected file")
                digest.update(block)
                out.write(block)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), tmp


def fetch(name: str, directory: str | Path | None = None, *, base_url: str | None = None, timeout: float = 60.0,
          files: Sequence[DataFile] | None = None, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Fetch dataset ``name`` (``jsquad`` / ``jaquad``) into ``directory``; the files written or found.

    Raises :class:`~nami.io.CommandFailed` naming the file: unreachable host, HTTP error, timeout,
    checksum mismatch (nothing is written for that file; files fetched before it stay, verified)."""
    if files is None:
        if name not in DATASETS:
            raise ValueError(f"nami data fetch {name}: expected one of {', '.join(DATASETS)}")
        files = DATASETS[name]
    root = Path(directory) if directory is not None else default_dir()
    done = []
    for entry in files:
        target = root / entry.relative
        if target.is_file() and sha256_file(target) == entry.sha256:
            done.append(target)
            if progress:
                progress(f"{target}: already here (checksum matches)")
            continue
        url = entry.url(base_url)
        try:
            sha, tmp = _download(url, target, timeout)
        except urllib.error.HTTPError as err:
            raise CommandFailed(f"{url}: HTTP {err.code} {err.reason}; nothing written for {entry.relative}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CommandFailed(f"{url}: cannot fetch it ({reason}); offline? nothing written for "
                                f"{entry.relative}") from None
        if sha != entry.sha256:
            Path(tmp).unlink(missing_ok=True)
            raise CommandFailed(f"{url}: sha256 {sha[:16]}… is not the expected {entry.sha256[:16]}… (a changed or "
                                f"truncated file); nothing written for {entry.relative}")
        os.replace(tmp, target)
        done.append(target)
        if progress:
            progress(f"{target}: fetched and verified")
    return done
