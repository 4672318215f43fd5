"""`pacsmigrate serve`, the server around the handlers: its catalogue (one that cannot be
written, scratch files of two writers, following the state, the newest file of a re-sent
instance, a state rebuilt from the store alone), and who may read (credentials and TLS on
other addresses, cross-origin viewers)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pydicom
import requests
import serve_support
from conftest import TEST_FILES, run_cli
from serve_support import Server, _start, _stop

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.devstore import make_tls_files
from pacsmigrate.dicomweb.catalog import ensure
from pacsmigrate.synth import make_tree

# The served migration: module-scoped fixtures defined once in serve_support; each test
# file that takes them migrates and serves its own copy.
migrated = serve_support.migrated
server = serve_support.server


def test_a_catalogue_that_cannot_be_written_is_one_line(migrated: tuple[Path, Path, Path],
                                                        tmp_path: Path) -> None:
    _, state, _ = migrated
    where = tmp_path / "no" / "such" / "dir" / "c.sqlite"
    proc = run_cli("serve", "--state", str(state), "--port", "0", "--catalog", str(where),
                   timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        (f"error: cannot write the catalogue {where}: unable to open database file; give "
         "--catalog a writable path")], proc.stderr


def test_two_writers_of_one_catalogue_never_share_a_scratch_file(tmp_path: Path) -> None:
    """Two servers on one state build its catalogue at once: each in a scratch file of its
    own, renamed whole; one a killed writer left is removed by the next."""
    from pacsmigrate.sqlitefile import scratch_db

    path = tmp_path / "c.sqlite"
    dead = tmp_path / ".c.sqlite.999999999.0badf00d.pacsmigrate-partial"  # past pid_max
    dead.write_bytes(b"half")
    with scratch_db(path) as a, scratch_db(path) as b:
        assert not dead.exists()
        a.execute("CREATE TABLE t (x)")
        b.execute("CREATE TABLE u (y)")
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("u",)] or tables == [("t",)]
    assert [p.name for p in tmp_path.iterdir()] == ["c.sqlite"]


def test_other_addresses_need_credentials_and_tls(migrated: tuple[Path, Path, Path],
                                                  tmp_path: Path) -> None:
    _src, state, _store = migrated
    # A documentation address (TEST-NET-1): never this machine, so nothing could listen.
    refused = run_cli("serve", "--state", str(state), "--host", "192.0.2.1", "--port", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "give --token-file or --basic-auth-file, and --certfile" in refused.stderr
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    ca, cert, key = make_tls_files(tmp_path / "tls")
    s = _start(state, "--token-file", str(token), "--certfile", str(cert), "--keyfile",
               str(key))
    try:
        assert s.url.startswith("https://")
        no = requests.get(f"{s.url}/studies", timeout=30, verify=str(ca))
        assert no.status_code == 401 and no.headers["WWW-Authenticate"] == "Bearer"
        bad = requests.get(f"{s.url}/studies", timeout=30, verify=str(ca),
                           headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        ok = requests.get(f"{s.url}/studies", timeout=30, verify=str(ca),
                          headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()
    finally:
        _stop(s)
    users = tmp_path / "basic"
    users.write_text("viewer:pass:word\n")
    s = _start(state, "--basic-auth-file", str(users), "--certfile", str(cert), "--keyfile",
               str(key))
    try:
        url = f"{s.url}/studies"
        no = requests.get(url, timeout=30, verify=str(ca), auth=("viewer", "wrong"))
        assert no.status_code == 401 and no.headers["WWW-Authenticate"].startswith("Basic")
        ok = requests.get(url, timeout=30, verify=str(ca), auth=("viewer", "pass:word"))
        assert ok.status_code == 200 and ok.json()
    finally:
        _stop(s)


def test_a_viewer_on_another_origin_may_read(server: Server,
                                             migrated: tuple[Path, Path, Path]) -> None:
    """--cors-origin: a browser viewer (OHIF) served from elsewhere passes its preflight and
    reads searches and streamed retrieves; other origins get no such header."""
    _src, state, _store = migrated
    viewer = "http://viewer.test:3000"
    s = _start(state, "--cors-origin", viewer)
    try:
        r = server.index()[0]
        pre = requests.options(f"{s.url}/studies/{r['study_uid']}", timeout=30, headers={
            "Origin": viewer, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept"})
        assert pre.status_code == 204
        assert pre.headers["Access-Control-Allow-Origin"] == viewer
        assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
        for path in ("/studies", f"/studies/{r['study_uid']}", "/studies/1.2.3.999"):
            got = requests.get(s.url + path, timeout=30, headers={"Origin": viewer})
            assert got.headers["Access-Control-Allow-Origin"] == viewer, path
        other = requests.get(f"{s.url}/studies", timeout=30,
                             headers={"Origin": "http://elsewhere.test"})
        assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
        refused = requests.options(f"{s.url}/studies", timeout=30, headers={
            "Origin": "http://elsewhere.test", "Access-Control-Request-Method": "GET"})
        assert refused.status_code == 403 and "--cors-origin" in refused.text
    finally:
        _stop(s)


def test_the_catalogue_follows_the_state(tmp_path: Path) -> None:
    """Made once; made again only when a migrate changed the state, also while serving."""
    src, store, copy = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    make_tree(src, studies=2, seed=4, scale=0.05)
    store.mkdir()
    run_cli("migrate", str(src), str(store), "--state", str(copy), "--no-progress", check=True)
    catalog = tmp_path / "c.sqlite"
    assert ensure(copy, catalog) and not ensure(copy, catalog)
    s = _start(copy, "--refresh", "1")
    try:
        before = {x["0020000D"]["Value"][0] for x in requests.get(
            f"{s.url}/studies", timeout=30).json()}
        more = tmp_path / "more"
        make_tree(more, studies=1, seed=9, scale=0.05)
        run_cli("migrate", str(src), str(more), str(store), "--state", str(copy),
                "--no-progress", check=True)
        new = {r["study_uid"] for _, r in Checkpoint(copy, readonly=True).iter_db("index")
               if str(more) in r["source_path"]}
        assert len(new) == 1 and not new & before
        assert _studies_become(s, before | new)
        # A compaction or a --workers merge puts another file in the state's place (a
        # rename): the server, which holds the state open, must see that one too.
        later, moved = tmp_path / "later", tmp_path / "moved"
        make_tree(later, studies=1, seed=11, scale=0.05)
        shutil.copytree(copy, moved)
        run_cli("migrate", str(src), str(more), str(later), str(store), "--state", str(moved),
                "--no-progress", check=True)
        newer = {r["study_uid"] for _, r in Checkpoint(moved, readonly=True).iter_db("index")
                 if str(later) in r["source_path"]}
        os.replace(moved / "checkpoint.lmdb" / "data.mdb", copy / "checkpoint.lmdb" / "data.mdb")
        assert len(newer) == 1 and _studies_become(s, before | new | newer)
    finally:
        _stop(s)
    assert not ensure(copy, copy / "dicomweb.sqlite")  # the server made it anew already


def _studies_become(s: Server, want: set[str]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = {x["0020000D"]["Value"][0] for x in requests.get(
            f"{s.url}/studies", timeout=30).json()}
        if now == want:
            return True
        time.sleep(0.2)
    return False


def test_a_re_sent_instance_is_served_as_its_newest_file(tmp_path: Path) -> None:
    """Two files with one SOPInstanceUID and other bytes (an edited, re-sent instance): the
    catalogue serves the newer one (mtime), and counts the instance once."""
    from pacsmigrate.dicomweb.catalog import Catalog

    src, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    src.mkdir()
    store.mkdir()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.save_as(src / "old.dcm")
    ds.InstitutionName = "edited"
    ds.save_as(src / "new.dcm")
    os.utime(src / "old.dcm", ns=(10**18, 10**18))
    os.utime(src / "new.dcm", ns=(2 * 10**18, 2 * 10**18))
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress",
            check=True)
    ensure(state, tmp_path / "c.sqlite")
    cp = Checkpoint(state, readonly=True)
    try:
        rows = {r["source_path"]: r for _, r in cp.iter_db("index")}
    finally:
        cp.close()
    cat = Catalog(tmp_path / "c.sqlite")
    try:
        found = cat.instances(ds.StudyInstanceUID)
        assert [i.blake3 for i in found] == [rows[str(src / "new.dcm")]["blake3"]]
        assert cat.query("SELECT instances FROM studies")[0][0] == 1
    finally:
        cat.close()


def test_a_store_alone_is_served_after_an_index_rebuild(migrated: tuple[Path, Path, Path],
                                                        tmp_path: Path) -> None:
    """The state lost: `index rebuild` makes one from the store's manifests, and the server
    on it finds and serves the same studies and bytes."""
    _src, state, store = migrated
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", str(store), "--state", str(rebuilt), "--no-progress",
            check=True)
    s = _start(rebuilt)
    try:
        original = Server("", s.proc, state, []).index()
        studies = requests.get(f"{s.url}/studies", timeout=30).json()
        assert {x["0020000D"]["Value"][0] for x in studies} == {
            r["study_uid"] for r in original}
        r = original[-1]
        uri = requests.get(f"{s.url}/wado", timeout=30, params={
            "requestType": "WADO", "studyUID": r["study_uid"], "seriesUID": r["series_uid"],
            "objectUID": r["sop_uid"], "contentType": "application/dicom"})
        assert uri.status_code == 200 and uri.content == Path(r["source_path"]).read_bytes()
    finally:
        _stop(s)
