"""What the hostile-tree tests (test_hostile*.py) share: the source fingerprint ("the source
was never modified", checked byte for byte), the run report read by path, and the CLI
arguments of a migrate run."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from pathlib import Path
from typing import Any

from conftest import S3Target

from pacsmigrate.paths import from_fields

# ---------------------------------------------------------------------------------------
# Fingerprints: what "the source was never modified" means, checked byte for byte.


def _hash_at(name: bytes, dirfd: int) -> str:
    # O_NOATIME: taking the fingerprint must not itself move the atimes it records.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0), dir_fd=dirfd)
    try:
        h = hashlib.blake2b()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def fingerprint(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under root: kind, mode, size, mtime/ctime (files: atime and content hash
    too; links: their target; directories: their listing). Walks by directory fd, so it
    also reaches paths longer than PATH_MAX."""
    out: dict[bytes, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(os.fsencode(root), follow_symlinks=False):
        st = os.fstat(dirfd)
        # A directory's atime moves whenever anyone lists it; its mtime/ctime do not.
        out[dirpath] = ("dir", st.st_mode, st.st_mtime_ns, st.st_ctime_ns,
                        tuple(sorted(dirnames + filenames)))
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            path = os.path.join(dirpath, name)
            if stat.S_ISDIR(st.st_mode):
                continue  # its own entry, from its own dirfd
            if stat.S_ISLNK(st.st_mode):
                out[path] = ("link", st.st_mode, os.readlink(name, dir_fd=dirfd),
                             st.st_mtime_ns, st.st_ctime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[path] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                             st.st_atime_ns, st.st_nlink, _hash_at(name, dirfd))
            else:
                out[path] = ("special", st.st_mode, st.st_rdev, st.st_mtime_ns, st.st_ctime_ns)
    return out


def assert_untouched(before: dict[bytes, tuple[Any, ...]], root: Path, when: str) -> None:
    after = fingerprint(root)
    assert set(after) == set(before), f"{when}: entries appeared or vanished: " \
        f"{sorted(set(after) ^ set(before))[:5]}"
    changed = [p for p in before if before[p] != after[p]]
    assert not changed, f"{when}: source changed: " + "; ".join(
        f"{p!r}: {before[p]} -> {after[p]}" for p in changed[:3])


def _report(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="ascii"))
    return doc


def _by_path(items: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    return {from_fields(i["source_path"], i["source_path_b64"]): i for i in items}


def _abs(p: Path) -> bytes:
    return os.fsencode(os.path.abspath(p))


def _pydicom_data() -> Path | None:
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    return data if data.is_dir() else None


def _migrate_args(root: Path, target: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(root), target.url, "--endpoint-url", target.info.endpoint_url,
            "--state", str(state), "--bundle-size", "8MiB", "--large-file", "4MiB",
            "--part-size", "5MiB", "--concurrency", "3", "--no-progress", *extra]
