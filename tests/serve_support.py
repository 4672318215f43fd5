"""What the `pacsmigrate serve` tests (test_serve*.py) share: a server process started on a
state (`_start`, `_stop`, its index), the parts of a multipart/related answer, and the served
migration of pydicom's samples and a synthetic tree (the module-scoped fixtures `migrated`
and `server`).

A test file takes those fixtures by assignment (`server = serve_support.server`): pytest
finds them in that file's namespace, so each file that does gets its own migration and
server, made once for the file (as when the tests were one file).
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from conftest import TEST_FILES, run_cli

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.synth import make_tree


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    state: Path
    log: list[str]

    def index(self) -> list[dict[str, str]]:
        """The index rows of every migrated DICOM instance."""
        cp = Checkpoint(self.state, readonly=True)
        try:
            return [r for _, r in cp.iter_db("index")
                    if r["status"] == "dicom" and r["study_uid"] and r["series_uid"]
                    and r["sop_uid"]]
        finally:
            cp.close()


def _start(state: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    proc = subprocess.Popen([sys.executable, "-m", "pacsmigrate", "serve", "--state",
                             str(state), "--port", "0", *extra], stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r" at (https?://127\.0\.0\.1:\d+\S*) ", line)
        if m:
            break
    else:
        raise AssertionError("".join(lines))
    # Keep reading stderr (access log lines), so the server never blocks on a full pipe.
    threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True).start()
    return Server(m.group(1), proc, state, lines)


def _stop(server: Server) -> None:
    server.proc.terminate()
    server.proc.wait(timeout=30)


def _unique_samples(to: Path) -> None:
    """pydicom's sample files whose SOPInstanceUID no other sample has (many are one image
    in several transfer syntaxes: which the server serves is tested apart)."""
    by_sop: dict[str, list[Path]] = {}
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file() or path.suffix == ".py":
            continue
        try:
            sop = pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID
        except Exception:  # noqa: BLE001, S112 - not DICOM, or no SOPInstanceUID
            continue
        by_sop.setdefault(str(sop), []).append(path)
    for paths in by_sop.values():
        if len(paths) == 1:
            target = to / paths[0].relative_to(TEST_FILES)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(paths[0], target)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """pydicom's sample files and a synthetic tree (3 studies, a study over two day folders),
    migrated into a local directory: (source, state, store)."""
    base = tmp_path_factory.mktemp("served")
    src = base / "pacs"
    _unique_samples(src / "samples")
    make_tree(src / "synth", studies=4, seed=5, layout="date", scale=0.05)
    store = base / "store"
    store.mkdir()
    state = base / "state"
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress", check=True)
    return src, state, store


@pytest.fixture(scope="module")
def server(migrated: tuple[Path, Path, Path]) -> Iterator[Server]:
    _src, state, _store = migrated
    s = _start(state, "--prefix", "/dicom-web")
    yield s
    _stop(s)


def _parts(resp: requests.Response) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related answer: (type; transfer-syntax, body)."""
    raw = (f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n").encode() + resp.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    return [(f"{p.get_content_type()}; transfer-syntax={p.get_param('transfer-syntax')}",
             p.get_payload(decode=True)) for p in msg.iter_parts()]
