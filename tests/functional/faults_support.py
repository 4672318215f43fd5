"""What the fault tests (test_faults*.py: the real CLI against SeaweedFS through the
fault-injecting proxy) share: the timeout and concurrency they run with, the small tree
(module-scoped), the proxy, the migrate arguments, and the checks that say which faults led
to a failure."""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import S3Target
from faultproxy import FaultProxy
from helpers import assert_complete

from pacsmigrate.devstore import StoreInfo
from pacsmigrate.synth import make_tree

MiB = 1 << 20
TIMEOUT = 3  # --timeout: a stall costs this much, not minutes
CONCURRENCY = 4
SEED = int(os.environ.get("PACSMIGRATE_FAULT_SEED", "11"))


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Few objects but every kind: bundles (one PUT), a raw large file (multipart)."""
    root = tmp_path_factory.mktemp("faults-small") / "pacs"
    make_tree(root / "a", studies=2, seed=5, layout="patient", scale=0.05)
    (root / "b").mkdir()
    (root / "b" / "cine.bin").write_bytes(random.Random(4).randbytes(6 * MiB + 77))
    return root


@pytest.fixture
def proxy(seaweed_server: StoreInfo) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed_server.endpoint_url, seed=SEED, stall_seconds=TIMEOUT + 3) as p:
        yield p


def migrate_args(tree: Path, s3: S3Target, proxy: FaultProxy, state: Path, *extra: str
                 ) -> list[str]:
    return ["migrate", str(tree), s3.url, "--endpoint-url", proxy.url, "--state", str(state),
            "--bundle-size", "8MiB", "--large-file", "3MiB", "--part-size", "5MiB",
            "--concurrency", str(CONCURRENCY), "--timeout", str(TIMEOUT), "--no-progress",
            "--report", str(state.parent / "report.json"), *extra]


def explain(proc: subprocess.CompletedProcess[str], proxy: FaultProxy) -> str:
    faults = [f"{e.method} ...{e.path[-45:]}{'?' if e.query else ''}{e.query[:20]} "
              f"{e.fault}/{e.phase} -> {e.status}" for e in proxy.log() if e.fault]
    return (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}\n"
            f"injected {dict(proxy.injected)}:\n" + "\n".join(faults))


def survived(stdout: str) -> tuple[int, str]:
    m = re.search(r"store faults survived \(retried\): ([\d,]+) \((.*)\)", stdout)
    assert m, stdout
    return int(m.group(1).replace(",", "")), m.group(2)


def complete(target: S3Target, state: Path, tree: Path, proxy: FaultProxy,
             proc: subprocess.CompletedProcess[str]) -> None:
    """assert_complete, saying which faults led to a failure."""
    try:
        assert_complete(target, state, tree)
    except AssertionError as exc:
        pending = [(u["Key"][-40:], u["UploadId"][-12:]) for u in target.pending_uploads()]
        raise AssertionError(f"{exc!r}\nunfinished uploads: {pending}\n"
                             + explain(proc, proxy)) from exc
