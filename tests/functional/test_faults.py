"""The real CLI against SeaweedFS through a fault-injecting proxy: errors, resets, stalls,
truncated answers, SlowDown storms, refusals, and the --bwlimit / request-rate caps.

This file: random mixed faults, a SlowDown storm, retries shown on the progress line, and
the soaks. A fault at each critical request is in test_faults_targeted.py; permanent errors
and the caps in test_faults_caps.py; what they share in faults_support.py.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import faults_support
import pytest
from conftest import S3Target, run_cli
from faultproxy import BEFORE, DEFAULT_MIX, FaultProxy
from faults_support import CONCURRENCY, TIMEOUT, MiB, complete, explain, migrate_args, survived

from pacsmigrate.devstore import StoreInfo
from pacsmigrate.synth import make_tree

pytestmark = pytest.mark.seaweed

# Fixtures defined once in faults_support: small_tree (module-scoped: made once per test
# file that takes it) and proxy.
small_tree = faults_support.small_tree
proxy = faults_support.proxy


@pytest.fixture(scope="module")
def fault_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 MB, 149 files: single-PUT bundles, multipart bundles and raw large files."""
    root = tmp_path_factory.mktemp("faults") / "pacs"
    make_tree(root / "a", studies=12, seed=21, layout="mixed", scale=0.2)
    (root / "b").mkdir()
    (root / "b" / "cine.bin").write_bytes(random.Random(3).randbytes(7 * MiB + 321))
    return root


# -- mixed faults ---------------------------------------------------------------------
def test_mixed_faults_lose_nothing(seaweed_s3: S3Target, proxy: FaultProxy, fault_tree: Path,
                                   tmp_path: Path) -> None:
    """10% of requests fail (errors, resets, stalls, truncations; before and after the store
    acted): the run still completes, exactly, and says what it survived."""
    s3 = seaweed_s3
    proxy.configure(probability=0.10, after=0.5)
    state = tmp_path / "state"
    started = time.monotonic()
    proc = run_cli(*migrate_args(fault_tree, s3, proxy, state), env=s3.env(), timeout=240)
    elapsed = time.monotonic() - started
    injected = dict(proxy.injected)
    assert proc.returncode == 0, explain(proc, proxy)
    assert sum(injected.values()) >= 3, injected
    complete(s3, state, fault_tree, proxy, proc)

    total, causes = survived(proc.stdout)
    # Every error answer (500/503/429) reaches our retry layer; resets and truncations may
    # be retried by aiohttp itself on a fresh connection before we see them.
    answered = sum(injected.get(k, 0) for k in ("500", "503", "429"))
    assert total >= answered, (total, injected, proc.stdout)
    for kind in ("500", "503", "429"):
        if injected.get(kind):
            assert kind in causes, (kind, causes)
    report = json.loads((tmp_path / "report.json").read_text())
    retries = report["run"]["retries"]
    assert sum(retries.values()) == total and all(n > 0 for n in retries.values()), retries
    print(f"mixed faults: {elapsed:.1f} s, injected {injected}, survived {total} ({causes})")

    # Through the proxy (the state's endpoint), still failing 10% of requests.
    seen = proxy.requests
    check = run_cli("verify", "--state", str(state), "--deep", env=s3.env(), timeout=120)
    assert check.returncode == 0, explain(check, proxy)
    assert proxy.requests > seen, "verify did not go through the proxy"


# -- SlowDown storm -------------------------------------------------------------------
def test_slowdown_storm_slows_down_and_loses_nothing(seaweed_s3: S3Target, proxy: FaultProxy,
                                                     fault_tree: Path, tmp_path: Path) -> None:
    s3 = seaweed_s3
    state = tmp_path / "state"
    args = [sys.executable, "-m", "pacsmigrate",
            *migrate_args(fault_tree, s3, proxy, state, "--bwlimit", "16MiB")]
    started = time.monotonic()
    with subprocess.Popen(args, env=s3.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as run:
        # Mid-run: once uploads are under way, every request gets 503 SlowDown for 2.5 s.
        assert proxy.wait_for(lambda p: sum(e.method == "PUT" for e in p.log()) >= 4, 60)
        proxy.storm(2.5, "503")
        storm_at = time.monotonic() - started
        out, err = run.communicate(timeout=180)
    elapsed = time.monotonic() - started
    proc = subprocess.CompletedProcess(args, run.returncode, out, err)
    assert proc.returncode == 0, explain(proc, proxy)
    assert proxy.injected["503"] >= 2, dict(proxy.injected)
    m = re.search(r"throttled by the store: slowed down (\d+) times \(concurrency went as low "
                  r"as (\d+)\)", out)
    assert m, out
    assert int(m.group(1)) >= 1 and int(m.group(2)) < CONCURRENCY, m.group(0)
    total, causes = survived(out)
    assert "503" in causes and total >= proxy.injected["503"], (total, causes)
    complete(s3, state, fault_tree, proxy, proc)
    print(f"storm at {storm_at:.1f} s; run {elapsed:.1f} s; {m.group(0)}; "
          f"injected {dict(proxy.injected)}")


def test_retries_show_on_the_progress_line(seaweed_s3: S3Target, proxy: FaultProxy,
                                           small_tree: Path, tmp_path: Path) -> None:
    """Network trouble is visible at once: a warning, and the store bar counts the retried
    requests."""
    proxy.inject("503", phase=BEFORE, times=2,
                 match=lambda r: r.method == "PUT" and r.path.endswith(".tar"))
    state = tmp_path / "state"
    proc = run_cli(*migrate_args(small_tree, seaweed_s3, proxy, state, "--progress"),
                   env=seaweed_s3.env(), timeout=120)
    assert proc.returncode == 0, explain(proc, proxy)
    assert proxy.injected["503"] == 2
    assert "store trouble: retrying a request after" in proc.stderr
    shown = re.findall(r"store: .*?files/s[^|\r\n]*?, (\d+) requests retried", proc.stderr)
    assert shown and int(shown[-1]) == 2, proc.stderr[-2000:]
    complete(seaweed_s3, state, small_tree, proxy, proc)


# -- soak -----------------------------------------------------------------------------
@pytest.mark.soak
@pytest.mark.parametrize("seed", range(1, 6))
def test_soak_heavy_mixed_faults(seed: int, seaweed_s3: S3Target, seaweed_server: StoreInfo,
                                 tmp_path: Path) -> None:
    """20% faults of every kind on a larger tree, and a storm; then a calm re-run is a no-op
    and a deep verify through the faults passes."""
    tree = tmp_path / "pacs"
    make_tree(tree / "a", studies=24, seed=seed, layout="mixed", scale=0.3)
    (tree / "b").mkdir()
    (tree / "b" / "cine.bin").write_bytes(random.Random(seed).randbytes(17 * MiB + seed))
    state = tmp_path / "state"
    with FaultProxy(seaweed_server.endpoint_url, seed=seed, probability=0.2,
                    kinds={**DEFAULT_MIX, "blackhole": 1}, stall_seconds=TIMEOUT + 3) as proxy:
        args = [sys.executable, "-m", "pacsmigrate",
                *migrate_args(tree, seaweed_s3, proxy, state, "--retries", "15")]
        with subprocess.Popen(args, env=seaweed_s3.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as run:
            proxy.wait_for(lambda p: p.requests >= 40, 120)
            proxy.storm(3, random.Random(seed).choice(["503", "500", "reset"]))
            out, err = run.communicate(timeout=900)
        proc = subprocess.CompletedProcess(args, run.returncode, out, err)
        assert proc.returncode == 0, explain(proc, proxy)
        complete(seaweed_s3, state, tree, proxy, proc)
        proxy.calm()
        again = run_cli(*migrate_args(tree, seaweed_s3, proxy, state), env=seaweed_s3.env())
        assert again.returncode == 0 and "migrated now: 0 files" in again.stdout, again.stdout
        proxy.configure(probability=0.2)
        seen = proxy.requests
        check = run_cli("verify", "--state", str(state), "--deep", env=seaweed_s3.env())
        assert check.returncode == 0, explain(check, proxy)
        assert proxy.requests > seen, "verify did not go through the proxy"
