"""The real CLI against SeaweedFS through the fault-injecting proxy, one fault at each
request where "did it happen?" matters (the store acted but the client saw an error, or
the other way round), and a store that goes silent mid-request: each ends in exactly one
committed object, no orphan and no unfinished upload."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import faults_support
import pytest
from conftest import S3Target, run_cli
from faultproxy import AFTER, BEFORE, FaultProxy, Request
from faults_support import TIMEOUT, MiB, complete, explain, migrate_args

from pacsmigrate.devstore import StoreInfo

pytestmark = pytest.mark.seaweed

# Fixtures defined once in faults_support: small_tree (module-scoped: made once per test
# file that takes it) and proxy.
small_tree = faults_support.small_tree
proxy = faults_support.proxy


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
