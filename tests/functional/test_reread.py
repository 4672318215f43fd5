"""A file that changes once while it is read is read again and stored as it is now: in the
read stage (small files, read whole), when packed (larger members of a bundle), and while
streamed as an object of its own (its upload aborted, then packed after the walk)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import MiB, OsProxy, assert_complete, config, fd_path, index_rows

from pacsmigrate import bundle, pipeline
from pacsmigrate import read as read_module
from pacsmigrate.paths import from_fields
from pacsmigrate.read import KEPT_CHANGING

# name -> (size, the module whose closing fstat sees the change): read whole by the read
# stage (<= hold_max, 2 MiB), read again when its bundle is packed, streamed on its own.
VICTIMS = {"small": (0, read_module), "member": (3 * MiB, bundle),
           "large": (12 * MiB, bundle)}


def _changed_once(victim: bytes, new: bytes, mtime_ns: int, changes: list[bytes]
                  ) -> Callable[[int], os.stat_result]:
    """The fstat that ends the first read of `victim` sees it rewritten in place (same
    size, other bytes, a later mtime): the PACS wrote it once while it was read."""
    def fstat(fd: int) -> os.stat_result:
        if not changes and fd_path(fd) == victim:
            with open(victim, "r+b") as f:
                f.write(new)
            os.utime(victim, ns=(mtime_ns, mtime_ns))
            changes.append(victim)
        return os.fstat(fd)
    return fstat


@pytest.mark.parametrize("kind", list(VICTIMS))
def test_a_file_changed_once_during_its_read_is_stored_as_reread(
        kind: str, moto_s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size, module = VICTIMS[kind]
    tree = tmp_path / "nas"
    (tree / "a").mkdir(parents=True)
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")):
        shutil.copy(TEST_FILES / name, tree / "a" / f"f{i}.dcm")
    path = tree / "a" / "victim.dcm"
    base = (TEST_FILES / "CT_small.dcm").read_bytes()
    old = base + bytes(range(256)) * ((size - len(base)) // 256) if size else base
    path.write_bytes(old)
    # Other bytes in its tail (pixel data, or the padding after it), its header unchanged.
    new = old[:-4096] + bytes(b ^ 0xFF for b in old[-4096:])
    mtime_ns = path.stat().st_mtime_ns + 1_000_000_000
    victim = os.fsencode(path.resolve())
    changes: list[bytes] = []

    state, report = tmp_path / "state", tmp_path / "report.json"
    # The hook is in this process: so is the read (not a --read-process child).
    cfg = config([tree], moto_s3.url, state, moto_s3.info.endpoint_url, report_path=report,
                 bundle_size=16 * MiB, large_file=8 * MiB, read_process="off")
    with monkeypatch.context() as writer:
        writer.setattr(module, "os", OsProxy(fstat=_changed_once(victim, new, mtime_ns,
                                                                  changes)))
        stats = run(pipeline.migrate(cfg))
    assert changes == [victim], "the file was never read (the hook did not fire)"
    assert path.read_bytes() == new != old

    # Reported migrated, not "kept changing" or still to do.
    assert stats.not_migrated == 0 and stats.files_migrated == 4, stats
    # Past the read stage, packing saw it differ from what that stage read (a large file:
    # its upload aborted, then read again after the walk).
    assert (stats.reread_changed > 0) == (kind != "small"), stats.reread_changed
    doc = json.loads(report.read_text(encoding="ascii"))
    assert doc["not_migrated"] == [] and KEPT_CHANGING not in report.read_text()
    # The index holds the new bytes: their hash, size and mtime.
    rows = {from_fields(r["source_path"], r["source_path_b64"]): r for r in index_rows(state)}
    row = rows[victim]
    assert row["blake3"] == blake3.blake3(new).hexdigest() != blake3.blake3(old).hexdigest()
    assert (int(row["size"]), int(row["mtime_ns"])) == (len(new), mtime_ns)
    # Every row's range GET gives the file as it is now; nothing orphaned or left open.
    assert_complete(moto_s3, state, tree)
    # Read back as a user would: `get` by the original path, and a deep verify of the source.
    out = tmp_path / "got.dcm"
    got = run_cli("get", str(path), "--state", str(state), "-o", str(out), env=moto_s3.env())
    assert got.returncode == 0, got.stdout + got.stderr
    assert out.read_bytes() == new
    check = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert check.returncode == 0, check.stdout + check.stderr
