"""The real CLI against SeaweedFS through a fault-injecting proxy: errors, resets, stalls,
truncated answers, SlowDown storms, refusals, and the --bwlimit / request-rate caps."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import S3Target, run_cli
from faultproxy import AFTER, BEFORE, DEFAULT_MIX, FaultProxy, Request
from helpers import assert_complete

from pacsmigrate.devstore import StoreInfo
from pacsmigrate.synth import make_tree

pytestmark = pytest.mark.seaweed

MiB = 1 << 20
TIMEOUT = 3  # --timeout: a stall costs this much, not minutes
CONCURRENCY = 4
SEED = int(os.environ.get("PACSMIGRATE_FAULT_SEED", "11"))


@pytest.fixture(scope="module")
def fault_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 MB, 149 files: single-PUT bundles, multipart bundles and raw large files."""
    root = tmp_path_factory.mktemp("faults") / "pacs"
    make_tree(root / "a", studies=12, seed=21, layout="mixed", scale=0.2)
    (root / "b").mkdir()
    (root / "b" / "cine.bin").write_bytes(random.Random(3).randbytes(7 * MiB + 321))
    return root


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


# -- targeted: a fault at each point where "did it happen?" matters -------------------
def _is(method: str, *, query: str | None = None, suffix: str | None = None,
        no_query: bool = False) -> Callable[[Request], bool]:
    def match(r: Request) -> bool:
        return (r.method == method
                and (query is None or query in r.query)
                and (not no_query or not r.query)
                and (suffix is None or r.path.endswith(suffix)))
    return match


CREATE = _is("POST", query="uploads")
COMPLETE = _is("POST", query="uploadId=")
Fault = tuple[str, str, Callable[[Request], bool]]

IDEMPOTENCY: dict[str, list[Fault]] = {
    # name: faults injected in turn, each once (kind, phase, which request)
    "bundle-put-done-but-500": [("500", AFTER, _is("PUT", suffix=".tar", no_query=True))],
    "bundle-put-done-but-reset": [("reset", AFTER, _is("PUT", suffix=".tar", no_query=True))],
    "sidecar-put-done-but-503": [("503", AFTER, _is("PUT", suffix=".json", no_query=True))],
    "descriptor-put-done-but-500": [("500", AFTER, _is("PUT", suffix="pacsmigrate.json"))],
    "create-multipart-done-but-500": [("500", AFTER, CREATE)],
    "part-done-but-truncated": [("truncate", AFTER, _is("PUT", query="partNumber="))],
    "complete-multipart-done-but-500": [("500", AFTER, COMPLETE)],
    "complete-multipart-done-but-stall": [("stall", AFTER, COMPLETE)],
    "complete-multipart-refused-503": [("503", BEFORE, COMPLETE)],
    # A twin upload from the lost create, then the object adopted after a lost complete.
    "create-and-complete-done-but-500": [("500", AFTER, CREATE), ("500", AFTER, COMPLETE)],
    # A twin upload from the lost create, then the upload fails for good (403 on a part).
    "create-done-but-500-then-part-refused": [("500", AFTER, CREATE),
                                              ("403", BEFORE, _is("PUT", query="partNumber="))],
    "head-truncated": [("truncate", AFTER, _is("HEAD"))],
    "list-uploads-reset": [("reset", BEFORE, _is("GET", query="uploads"))],
}


@pytest.mark.parametrize("name", list(IDEMPOTENCY))
def test_fault_at_a_critical_request(name: str, seaweed_s3: S3Target, proxy: FaultProxy,
                                     small_tree: Path, tmp_path: Path) -> None:
    """The store did it (or not) but the client saw an error: the retry must still end in
    exactly one committed object, no orphan and no unfinished upload (or, after a refusal,
    exit 2 and still no unfinished upload)."""
    rules = [proxy.inject(kind, phase=phase, match=match)
             for kind, phase, match in IDEMPOTENCY[name]]
    state = tmp_path / "state"
    proc = run_cli(*migrate_args(small_tree, seaweed_s3, proxy, state), env=seaweed_s3.env(),
                   timeout=120)
    assert [r.hits for r in rules] == [1] * len(rules), f"a fault was never injected: {name}"
    if any(r.kind == "403" for r in rules):
        assert proc.returncode == 2, explain(proc, proxy)
        pending = seaweed_s3.pending_uploads()
        assert pending == [], f"unfinished uploads left: {len(pending)}\n" + explain(proc, proxy)
        return
    assert proc.returncode == 0, explain(proc, proxy)
    complete(seaweed_s3, state, small_tree, proxy, proc)


def test_completed_upload_answered_no_such_upload_on_retry(
        seaweed_s3: S3Target, proxy: FaultProxy, small_tree: Path, tmp_path: Path) -> None:
    """CompleteMultipartUpload succeeded but the answer was lost; the retry is told
    NoSuchUpload ("aborted or completed", as AWS documents it; SeaweedFS says 412 instead).
    The object is in the store: it must be adopted, not reported as a failure."""
    complete_req = _is("POST", query="uploadId=")
    lost = proxy.inject("500", phase=AFTER, match=complete_req)
    gone = proxy.inject("NoSuchUpload", phase=BEFORE, match=complete_req)
    state = tmp_path / "state"
    proc = run_cli(*migrate_args(small_tree, seaweed_s3, proxy, state), env=seaweed_s3.env(),
                   timeout=120)
    assert (lost.hits, gone.hits) == (1, 1)
    assert proc.returncode == 0, explain(proc, proxy)
    complete(seaweed_s3, state, small_tree, proxy, proc)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One raw object bigger than the socket buffers can swallow: 17 MiB, 16 MiB parts."""
    root = tmp_path_factory.mktemp("faults-big") / "pacs"
    root.mkdir()
    (root / "cine.bin").write_bytes(random.Random(5).randbytes(17 * MiB))
    return root


SILENCES = {
    # A store that takes the headers of a PUT (which carries `Expect: 100-continue`) and
    # then says nothing: no `100 Continue`, no answer.
    "no-100-continue": ("stall", _is("PUT", suffix=".tar", no_query=True), "small"),
    # A store that stops reading a 16 MiB part: the client blocks writing the body.
    "body-not-read": ("blackhole", _is("PUT", query="partNumber="), "big"),
}


@pytest.mark.parametrize("name", list(SILENCES))
def test_silent_store_is_abandoned_after_timeout(name: str, seaweed_s3: S3Target,
                                                 seaweed_server: StoreInfo, small_tree: Path,
                                                 big_tree: Path, tmp_path: Path) -> None:
    """--timeout is "seconds without an answer before a request is retried": a store that
    goes silent mid-request is retried after about that long, not when it hangs up."""
    kind, match, which = SILENCES[name]
    tree = small_tree if which == "small" else big_tree
    extra = ["--part-size", "16MiB", "--large-file", "8MiB"] if which == "big" else []
    with FaultProxy(seaweed_server.endpoint_url, stall_seconds=15.0) as proxy:
        rule = proxy.inject(kind, phase=BEFORE, match=match)
        state = tmp_path / "state"
        proc = run_cli(*migrate_args(tree, seaweed_s3, proxy, state, *extra),
                       env=seaweed_s3.env(), timeout=120)
    log = proxy.log()  # after stop: a request still held silent is logged then
    assert rule.hits == 1
    assert proc.returncode == 0, explain(proc, proxy)
    silent = next(e for e in log if e.fault == kind)
    retry = min((e for e in log if e.target == silent.target and e.started > silent.started),
                key=lambda e: e.started)
    waited = retry.started - silent.started
    assert waited < TIMEOUT + 3, (
        f"the client retried only after {waited:.1f} s (--timeout {TIMEOUT}); the store "
        f"stayed silent for {proxy.stall_seconds:g} s")
    complete(seaweed_s3, state, tree, proxy, proc)


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
