"""The real CLI against SeaweedFS through the fault-injecting proxy: permanent errors (403
AccessDenied, a store failing for good) stop the run quickly with one line; --bwlimit and
--max-requests-per-second cap bytes and requests."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import faults_support
import pytest
from conftest import S3Target, run_cli
from faultproxy import BEFORE, FaultProxy
from faults_support import CONCURRENCY, MiB, explain, migrate_args
from helpers import assert_complete

from pacsmigrate.devstore import StoreInfo

pytestmark = pytest.mark.seaweed

# Fixtures defined once in faults_support: small_tree (module-scoped: made once per test
# file that takes it) and proxy.
small_tree = faults_support.small_tree
proxy = faults_support.proxy


# -- permanent errors -----------------------------------------------------------------
@pytest.mark.parametrize("scope", ["everything", "writes"])
def test_access_denied_stops_quickly(scope: str, seaweed_s3: S3Target, proxy: FaultProxy,
                                     small_tree: Path, tmp_path: Path) -> None:
    """403 AccessDenied is not retried: exit 2 with one clear line, within seconds."""
    if scope == "everything":
        proxy.configure(probability=1.0, kinds={"403": 1}, after=0.0)
    else:
        proxy.inject("403", phase=BEFORE, match=lambda r: r.method in ("PUT", "POST"),
                     times=10_000)
    started = time.monotonic()
    proc = run_cli(*migrate_args(small_tree, seaweed_s3, proxy, tmp_path / "state"),
                   env=seaweed_s3.env(), timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, explain(proc, proxy)
    assert elapsed < 30
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    # It names the credentials, where they came from, and the bucket (s3_errors._FIXES).
    assert lines[0].startswith(
        "error: store refused (AccessDenied): the credentials from AWS_ACCESS_KEY_ID / "
        f"AWS_SECRET_ACCESS_KEY may not do this on bucket {seaweed_s3.bucket!r}"), lines[0]
    denied = proxy.injected["403"]
    # Never retried: at most one refused request per request in flight.
    assert 1 <= denied <= CONCURRENCY + 1, (denied, explain(proc, proxy))
    assert proxy.requests <= denied + 10, proxy.requests
    print(f"{scope}: exit 2 after {elapsed:.1f} s, {proxy.requests} requests, {denied} refused")


def test_store_failing_for_good_gives_up_after_retries(seaweed_s3: S3Target, proxy: FaultProxy,
                                                       small_tree: Path, tmp_path: Path) -> None:
    """Every write of the run answered 500 (the pre-flight's probe passes): each is tried
    --retries times, then the run stops (exit 2, one line), well before a retry could go on
    forever."""
    proxy.inject("500", phase=BEFORE, times=10_000, match=lambda r: r.method in ("PUT", "POST")
                 and "/pacsmigrate-run/preflight-" not in r.target)
    started = time.monotonic()
    proc = run_cli(*migrate_args(small_tree, seaweed_s3, proxy, tmp_path / "state",
                                 "--retries", "3"), env=seaweed_s3.env(), timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, explain(proc, proxy)
    lines = proc.stderr.strip().splitlines()
    # Store trouble is shown at once (one warning), then the error stops the run.
    assert lines[0].startswith("store trouble: retrying a request after 500"), proc.stderr
    assert len(lines) == 2 and lines[1].startswith("error:") and "500" in lines[1], proc.stderr
    assert elapsed < 30
    doc = json.loads((tmp_path / "report.json").read_text())  # stopped, yet reported
    assert doc["run"]["files_migrated"] == 0
    probe = 4  # the pre-flight's put, get, head and delete
    assert 3 <= proxy.injected["500"] <= 3 * (CONCURRENCY + 1), proxy.injected
    assert proxy.requests <= probe + 3 * (CONCURRENCY + 1) + 5, proxy.requests


# -- caps -----------------------------------------------------------------------------
def _upload_window(proxy: FaultProxy) -> tuple[float, int]:
    """Seconds from the first request to the last request body, and body bytes sent."""
    log = proxy.log()
    return (max(e.body_done for e in log) - min(e.started for e in log),
            sum(e.bytes_in for e in log))


@pytest.fixture(scope="module")
def six_mib_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("caps") / "pacs"
    rng = random.Random(9)
    for i in range(6):
        d = root / f"d{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(rng.randbytes(MiB))
    return root


def test_bwlimit_caps_bytes_per_second(seaweed_s3: S3Target, seaweed_server: StoreInfo,
                                       six_mib_tree: Path, tmp_path: Path) -> None:
    """The capped run cannot be faster than its bytes allow: a lower bound on time, which a
    slow or loaded machine cannot break. (That a run without --bwlimit is not paced at all is
    test_policy's, on a fake clock: an upper bound on time here would flake.)"""
    rate = 2 * MiB
    with FaultProxy(seaweed_server.endpoint_url) as proxy:
        proc = run_cli(*migrate_args(six_mib_tree, seaweed_s3, proxy, tmp_path / "state",
                                     "--bwlimit", "2MiB"), env=seaweed_s3.env(), timeout=120)
        assert proc.returncode == 0, explain(proc, proxy)
        seconds, nbytes = _upload_window(proxy)
    assert_complete(seaweed_s3, tmp_path / "state", six_mib_tree)
    assert nbytes >= 6 * MiB
    # The bucket starts full (one second's worth), then refills at the rate.
    assert seconds >= (nbytes - rate) / rate * 0.9, (seconds, nbytes)
    print(f"--bwlimit 2MiB: {nbytes / MiB:.1f} MiB in {seconds:.2f} s "
          f"({nbytes / MiB / seconds:.2f} MiB/s)")


def test_max_requests_per_second_caps_requests(seaweed_s3: S3Target, proxy: FaultProxy,
                                               small_tree: Path, tmp_path: Path) -> None:
    rps = 4.0
    proc = run_cli(*migrate_args(small_tree, seaweed_s3, proxy, tmp_path / "state",
                                 "--max-requests-per-second", str(rps)),
                   env=seaweed_s3.env(), timeout=120)
    assert proc.returncode == 0, explain(proc, proxy)
    # The pre-flight's probes (put, get, head, delete; then --checksum auto's put with a
    # wrong CRC32, which SeaweedFS refuses, and its delete) come first, paced by a policy
    # of their own: the cap is measured on the run's requests.
    log = sorted(proxy.log(), key=lambda e: e.started)
    probe = [e for e in log if "/pacsmigrate-run/preflight-" in e.path]
    assert [(e.method, e.status) for e in probe[4:]] == [("PUT", 400), ("DELETE", 204)], probe
    assert [e.method for e in probe] == ["PUT", "GET", "HEAD", "DELETE", "PUT", "DELETE"], probe
    assert log[:6] == probe
    log = log[6:]
    seconds = max(e.started for e in log) - min(e.started for e in log)
    n = len(log)
    assert n >= 2 * rps, f"too few requests ({n}) to measure a cap"
    # A burst of `rps` at once, then `rps` per second: no second holds more than both.
    assert seconds >= (n - rps) / rps * 0.9, (n, seconds)
    starts = sorted(e.started for e in log)
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert busiest <= 2 * rps + 1, busiest
    print(f"--max-requests-per-second {rps:g}: {n} requests in {seconds:.2f} s")
    assert_complete(seaweed_s3, tmp_path / "state", small_tree)
