"""Checks shared by the end-to-end and kill tests: what a finished migration must satisfy."""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import blake3
import pydicom
import pytest

from pacsmigrate import manifest
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import Destination, MigrateConfig, TransferConfig
from pacsmigrate.encoding import decode
from pacsmigrate.index import export
from pacsmigrate.keys import RUN_DIR, study_group
from pacsmigrate.manifest import TAIL, read_trailer
from pacsmigrate.paths import from_fields
from pacsmigrate.records import Described
from pacsmigrate.synth import make_tree

MiB = 1 << 20
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def plain_manifests(mp: pytest.MonkeyPatch) -> None:
    """Bundles written with their manifest as plain JSON text (as before 1d14c42)."""
    made = manifest.Writer.__init__
    mp.setattr(manifest.Writer, "__init__", lambda self, plan, **kw: made(
        self, plan, **{**kw, "compressed": False}))
    mp.setattr(manifest.Writer, "finish_compressed", lambda self: bytes(self.finish()))


def config(sources: list[Path], url: str, state: Path, endpoint: str | None, **kw: Any
           ) -> MigrateConfig:
    transfer = kw.pop("transfer", TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB,
                                                 concurrency=4))
    return MigrateConfig(sources=tuple(sources), dest=Destination.parse(url, endpoint_url=endpoint),
                         state_dir=state, transfer=transfer, progress=False, **kw)


def cli_default_transfer() -> TransferConfig:
    """The transfer settings of `migrate SOURCE DEST` without options, as the CLI builds them."""
    from pacsmigrate.cli.common import transfer_config
    from pacsmigrate.cli.migrate import migrate

    params = migrate.make_context("migrate", ["src", "s3://b/x"]).params
    wanted = inspect.signature(transfer_config).parameters
    return transfer_config(**{k: v for k, v in params.items() if k in wanted})


def multipart_tree(root: Path) -> Path:
    """A few studies, big enough for multipart bundles (5 MiB parts, 8 MiB bundles)."""
    make_tree(root / "a", studies=3, seed=11, layout="patient", scale=0.25)
    make_tree(root / "b", studies=3, seed=12, layout="date", scale=0.05)
    return root


def source_files(*roots: Path) -> dict[bytes, Path]:
    """Every regular file (not symlinks) under the roots, by absolute path bytes."""
    out: dict[bytes, Path] = {}
    for root in roots:
        for dirpath, _, names in os.walk(os.fsencode(root.resolve())):
            for name in names:
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    out[p] = Path(os.fsdecode(p))
    return out


def index_rows(state: Path) -> list[dict[str, str]]:
    cp = Checkpoint(state, readonly=True)
    try:
        buf = io.StringIO()
        export(cp, buf, fmt="csv")
    finally:
        cp.close()
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def about_row(cp: Checkpoint, row: dict[str, str]) -> Described:
    """The header an index row (index_rows) describes, with its study's group (the
    state's secret): what a content lookup asks with."""
    secret = bytes.fromhex(cp.get_meta("key_secret"))
    return Described(study_group(secret, row["study_uid"]))


def assert_complete(target: Any, state: Path, *roots: Path,
                    expect_missing: frozenset[bytes] = frozenset()
                    ) -> list[dict[str, str]]:
    """Every source file exactly once in the index and in exactly one stored manifest; every
    row's range GET gives the file's bytes; no orphan objects; no unfinished uploads."""
    files = source_files(*roots)
    rows = index_rows(state)
    paths = [from_fields(r["source_path"], r["source_path_b64"]) for r in rows]
    assert len(paths) == len(set(paths)), "a path appears twice in the index"
    assert set(paths) == set(files) - set(expect_missing)
    # The first member of each object by a range GET; the others cut from one GET of the
    # whole object (a bundle of thousands of members would be thousands of requests).
    whole: dict[str, bytes] = {}
    ranged: set[str] = set()
    for r, p in zip(rows, paths):
        # A zero-length member has no byte range to ask for (HTTP ranges are inclusive).
        offset, length = int(r["offset"]), int(r["length"])
        if not length:
            data = b""
        elif r["key"] not in ranged:
            ranged.add(r["key"])
            data = target.get(r["key"], offset, length)
        else:
            if r["key"] not in whole:
                whole[r["key"]] = target.get(r["key"])
            data = whole[r["key"]][offset:offset + length]
        data = decode(data, r["encoding"], size=int(r["size"]))  # a zstd frame: the file
        assert data == files[p].read_bytes(), f"range GET differs for {files[p]}"
        assert blake3.blake3(data).hexdigest() == r["blake3"]
    keys = [k for k in target.object_keys() if RUN_DIR not in k.split("/")]  # our records
    data_keys = {k for k in keys if not k.endswith(".json")}
    sidecars = {k for k in keys if k.endswith(".json") and not k.endswith("pacsmigrate.json")}
    referenced = {r["key"] for r in rows}
    # A bundle of copies only (deduplicated) holds just its manifest: it names its members,
    # whose rows point at the objects holding their bytes.
    only_copies = {k for k in data_keys - referenced if k.endswith(".tar") and all(
        m.get("duplicate_of") for m in bundle_manifest(target.get(k))["members"])}
    assert data_keys - only_copies == referenced, f"orphans: {data_keys - referenced}"
    # A raw large file has its manifest beside it; a tar bundle has it inside (no sidecar).
    raw_keys = {k for k in data_keys if not k.endswith(".tar")}
    assert {k.rsplit(".", 1)[0] for k in sidecars} == {k.rsplit(".", 1)[0] for k in raw_keys}
    seen: dict[str, int] = {}
    for doc in [json.loads(target.get(k)) for k in sidecars] + [
            bundle_manifest(whole.get(k) or target.get(k)) for k in data_keys - raw_keys]:
        for m in doc["members"]:
            seen[m["source_path"] + m["source_path_b64"]] = seen.get(
                m["source_path"] + m["source_path_b64"], 0) + 1
    assert all(v == 1 for v in seen.values()), "a file was stored in two objects"
    assert len(seen) == len(rows)
    assert target.pending_uploads() == []
    return rows


def bundle_manifest(data: bytes) -> dict[str, Any]:
    """The manifest a tar bundle's trailer points at."""
    where = read_trailer(data[-TAIL:])
    assert where is not None, "bundle without a trailer"
    offset, length = where
    return manifest.parse(data[offset:offset + length])


class OsProxy:
    """Stands in for the `os` module inside one pacsmigrate module; hooks one function:
    races made deterministic (the tree changes at a chosen moment of the real code)."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        self._hooks = hooks

    def __getattr__(self, name: str) -> Any:
        return self._hooks.get(name) or getattr(os, name)


def fd_path(fd: int) -> bytes:
    """The path an open descriptor was opened by (Linux)."""
    return os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))


def call_unblocked(fn: Any, fifo: Path, *, what: str) -> Any:
    """Call fn in a thread; fail (and free the thread) if it blocks opening `fifo`."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(1)
    blocked = t.is_alive()
    if blocked:  # release the reader so no thread outlives the test
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
    assert not blocked, f"{what} blocked opening a FIFO"
    return out[0]


def aged_tree(root: Path) -> dict[str, str]:
    """One study per age band (and one without a date), plus a large non-DICOM file: the
    StudyInstanceUID -> StudyDate of each study."""
    today = datetime.now(UTC).date()
    dates = {"new": today - timedelta(days=10), "mid": today - timedelta(days=400),
             "old": today - timedelta(days=3000), "undated": None}
    studies = {}
    for i, (name, day) in enumerate(dates.items()):
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{900 + i}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{950 + i}"
        ds.StudyDate = f"{day:%Y%m%d}" if day else ""
        (root / name).mkdir(parents=True)
        ds.save_as(root / name / "img.dcm")
        studies[ds.StudyInstanceUID] = ds.StudyDate
    (root / "scan.bin").write_bytes(b"\0" * (6 << 20))  # an object of its own, in parts
    return studies
