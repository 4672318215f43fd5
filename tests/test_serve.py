"""`pacsmigrate serve`: a real DICOMweb client (dicomweb-client) searches and retrieves a
served migration; every instance comes back byte-identical; bad requests get the right
status and a reason, and none stops the server."""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from conftest import TEST_FILES, S3Target, run_cli
from dicomweb_client.api import DICOMwebClient
from helpers import index_rows

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.devstore import make_tls_files
from pacsmigrate.dicomweb.catalog import ensure
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


def test_a_dicomweb_client_searches_and_retrieves_everything(server: Server,
                                                               migrated: tuple[Path, Path, Path]
                                                               ) -> None:
    rows = server.index()
    studies = {r["study_uid"] for r in rows}
    client = DICOMwebClient(server.url)
    found = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in found} == studies
    for s in found:  # the counts are the index's
        uid = s["0020000D"]["Value"][0]
        mine = [r for r in rows if r["study_uid"] == uid]
        assert s["00201208"]["Value"] == [len({r["sop_uid"] for r in mine})]
        assert s["00201206"]["Value"] == [len({r["series_uid"] for r in mine})]
    # A study of the synthetic tree: series, instances, metadata, the study itself.
    synth = next(r for r in rows if "/synth/" in r["source_path"])
    study = synth["study_uid"]
    series = client.search_for_series(study_instance_uid=study)
    assert {s["0020000E"]["Value"][0] for s in series} == {
        r["series_uid"] for r in rows if r["study_uid"] == study}
    one = series[0]["0020000E"]["Value"][0]
    insts = client.search_for_instances(study_instance_uid=study, series_instance_uid=one)
    expected = {r["sop_uid"] for r in rows if r["series_uid"] == one}
    assert {i["00080018"]["Value"][0] for i in insts} == expected
    got = client.retrieve_study(study)
    assert {ds.SOPInstanceUID for ds in got} == {r["sop_uid"] for r in rows
                                                  if r["study_uid"] == study}
    meta = client.retrieve_series_metadata(study, one)
    assert {m["00080018"]["Value"][0] for m in meta} == expected
    assert all("7FE00010" not in m for m in meta)  # bulk data left out
    sop = min(expected)
    ds = client.retrieve_instance(study, one, sop)
    assert ds.SOPInstanceUID == sop and ds.PatientID  # a whole dataset, pixels included
    assert "PixelData" in ds


def test_every_instance_comes_back_byte_identical(server: Server) -> None:
    """Each study retrieved as multipart/related: each part is its source file's bytes, in
    the stored transfer syntax; WADO-URI gives the same bytes."""
    rows = server.index()
    by_sop: dict[str, bytes] = {}
    for r in rows:
        by_sop.setdefault(r["sop_uid"], Path(r["source_path"]).read_bytes())
    seen = 0
    for study in {r["study_uid"] for r in rows}:
        resp = requests.get(f"{server.url}/studies/{study}", timeout=30,
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert resp.status_code == 200, resp.text
        for ctype, body in _parts(resp):
            sop = pydicom.dcmread(pydicom.filebase.DicomBytesIO(body), force=True,
                                  stop_before_pixels=True).SOPInstanceUID
            assert body == by_sop[sop], sop
            ts = next(r["transfer_syntax"] for r in rows if r["sop_uid"] == sop)
            assert ctype == f"application/dicom; transfer-syntax={ts or None}"
            seen += 1
    assert seen == len({r["sop_uid"] for r in rows})
    r = rows[0]
    uri = requests.get(f"{server.url}/wado", timeout=30, params={
        "requestType": "WADO", "studyUID": r["study_uid"], "seriesUID": r["series_uid"],
        "objectUID": r["sop_uid"], "contentType": "application/dicom"})
    assert uri.status_code == 200 and uri.content == by_sop[r["sop_uid"]]
    assert uri.headers["Content-Type"] == "application/dicom"


def test_searches_match_dates_modalities_and_page(server: Server) -> None:
    rows = server.index()
    dated = sorted({r["study_date"] for r in rows if r["study_date"]})
    low, high = dated[0], dated[-1]

    def studies(**params: str) -> set[str]:
        resp = requests.get(f"{server.url}/studies", params=params, timeout=30)
        assert resp.status_code in (200, 204), resp.text
        return {s["0020000D"]["Value"][0] for s in resp.json()} if resp.content else set()

    on_low = {r["study_uid"] for r in rows if r["study_date"] == low}
    assert studies(StudyDate=low) == on_low
    iso = f"{low[:4]}-{low[4:6]}-{low[6:]}"
    assert studies(StudyDate=f"{iso}-{iso}") == on_low
    assert studies(StudyDate=f"-{low}") == on_low
    assert studies(StudyDate=f"{high}-") == {r["study_uid"] for r in rows
                                             if r["study_date"] == high}
    mr = {r["study_uid"] for r in rows if r["modality"] == "MR"}
    assert mr and studies(ModalitiesInStudy="MR") == mr
    # Keys by tag as well as by keyword; includefield is accepted (all we hold comes back).
    assert studies(**{"00080061": "MR", "includefield": "all"}) == mr
    one = min(mr)
    assert studies(**{"0020000D": one}) == {one}
    assert studies(StudyInstanceUID=f"{one},1.2.3.999") == {one}
    assert studies(ModalitiesInStudy="M*") == {r["study_uid"] for r in rows
                                               if r["modality"].startswith("M")}
    every = studies()
    pages = [studies(limit="2", offset=str(k)) for k in range(0, len(every), 2)]
    assert set().union(*pages) == every and sum(map(len, pages)) == len(every)
    assert studies(StudyDate="19000101") == set()  # no match: 204
    resp = requests.get(f"{server.url}/studies", params={"PatientName": "Doe*"}, timeout=30)
    assert "not supported for matching: PatientName" in resp.headers["Warning"]
    sop = rows[0]["sop_uid"]
    flat = requests.get(f"{server.url}/instances", params={"SOPInstanceUID": sop}, timeout=30)
    assert [i["00080018"]["Value"][0] for i in flat.json()] == [sop]


@pytest.mark.parametrize("path,params,headers,status,reason", [
    ("/studies/1.2.3.999", {}, {}, 404, "no such study"),
    ("/studies/1.2.3.999/series", {}, {}, 404, "no such study"),
    ("/studies/not-a-uid", {}, {}, 400, "not a UID"),
    ("/studies", {"limit": "many"}, {}, 400, "limit must be a whole number"),
    ("/studies", {"offset": "9" * 20}, {}, 400, f"offset must be at most {2**63 - 1}"),
    ("/studies", {"StudyDate": "2020"}, {}, 400, "StudyDate must be a date"),
    ("/studies", {"StudyDate": "20051301"}, {}, 400, "StudyDate must be a date"),  # month 13
    ("/studies", {"StudyDate": "20050101-20050132"}, {}, 400, "StudyDate must be a date"),
    ("/studies", {"StudyInstanceUID": "x;drop"}, {}, 400, "must be one or more UIDs"),
    ("/studies", {}, {"Accept": "application/dicom+xml"}, 406, "application/dicom+json"),
    ("/wado", {"requestType": "WADO", "studyUID": "1.2", "seriesUID": "1.2",
               "objectUID": "1.2"}, {}, 406, "contentType=application/dicom"),
    ("/wado", {"requestType": "WADO"}, {}, 400, "missing studyUID"),
    ("/nothing/here", {}, {}, 404, ""),
])
def test_bad_requests_get_a_status_and_a_reason(server: Server, path: str,
                                                 params: dict[str, str],
                                                 headers: dict[str, str], status: int,
                                                 reason: str) -> None:
    resp = requests.get(server.url + path, params=params, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert reason in resp.text
    if reason:
        assert reason in resp.headers["Warning"]


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


def test_unsupported_renditions_and_syntaxes_are_refused(server: Server) -> None:
    r = server.index()[0]
    inst = f"{server.url}/studies/{r['study_uid']}/series/{r['series_uid']}/instances/" \
           f"{r['sop_uid']}"
    frames = requests.get(f"{inst}/frames/1", timeout=30)
    assert frames.status_code == 501 and "frames are not offered" in frames.text
    other = "1.2.840.10008.1.2.4.90" if r["transfer_syntax"] != "1.2.840.10008.1.2.4.90" \
        else "1.2.840.10008.1.2.1"
    resp = requests.get(inst, timeout=30, headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={other}'})
    assert resp.status_code == 406 and "does not transcode" in resp.text
    ok = requests.get(inst, timeout=30, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert ok.status_code == 200 and len(_parts(ok)) == 1


def test_a_study_of_two_syntaxes_is_served_to_an_accept_naming_each(tmp_path: Path) -> None:
    """PS3.18: one media range a transfer syntax; a study stored in two is served to an
    Accept that names both (it was a 406), refused to one that names only one."""
    from pydicom.uid import ImplicitVRLittleEndian

    src, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    src.mkdir()
    store.mkdir()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.save_as(src / "explicit.dcm")
    ds.SOPInstanceUID += ".2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(src / "implicit.dcm", implicit_vr=True, little_endian=True)
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress",
            check=True)
    syntaxes = sorted({r["transfer_syntax"] for r in index_rows(state)})
    assert len(syntaxes) == 2, syntaxes
    s = _start(state)
    try:
        url = f"{s.url}/studies/{ds.StudyInstanceUID}"
        ranges = [f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
                  for ts in syntaxes]
        both = requests.get(url, timeout=30, headers={"Accept": ", ".join(ranges)})
        assert both.status_code == 200 and len(_parts(both)) == 2
        one = requests.get(url, timeout=30, headers={"Accept": ranges[0]})
        assert one.status_code == 406 and "does not transcode" in one.text
    finally:
        _stop(s)


def test_missing_or_altered_objects_are_said_and_the_server_goes_on(tmp_path: Path) -> None:
    # Studies in several 1 MiB bundles: a retrieve reads one object, then the next.
    src, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    src.mkdir()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")  # 39 KB; 60 instances of one study
    for n in range(60):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{n + 1}"
        ds.save_as(src / f"IM{n:03d}.dcm")
    store.mkdir()
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress",
            "--bundle-size", "1MiB", "--large-file", "1MiB", check=True)
    cp = Checkpoint(state, readonly=True)
    rows = [r for _, r in cp.iter_db("index")]
    cp.close()
    study = rows[0]["study_uid"]
    keys = sorted({r["key"] for r in rows if r["study_uid"] == study})
    assert len(keys) >= 3, keys
    _first, altered, gone = keys[0], keys[1], keys[2]
    s = _start(state)
    saved = {k: (store / k).read_bytes() for k in (altered, gone)}
    try:
        # One object removed, one byte of another changed, in the store itself.
        (store / gone).unlink()
        data = bytearray(saved[altered])
        hit = min((r for r in rows if r["key"] == altered), key=lambda r: int(r["offset"]))
        data[int(hit["offset"]) + int(hit["length"]) // 2] ^= 0xFF
        (store / altered).write_bytes(bytes(data))
        lost = next(r for r in rows if r["key"] == gone)
        for r, reason in ((lost, "no longer holds the object"),
                          (hit, "do not match their blake3")):
            inst = (f"{s.url}/studies/{r['study_uid']}/series/{r['series_uid']}/"
                    f"instances/{r['sop_uid']}")
            resp = requests.get(inst, timeout=30)
            assert resp.status_code == 502 and reason in resp.text, resp.text
            # The fix names commands that exist: verify lists the files, migrate stores them.
            assert "then `pacsmigrate migrate` again" in resp.text, resp.text
            assert "--repair" not in resp.text and "--repair" not in resp.headers["Warning"]
            uri = requests.get(f"{s.url}/wado", timeout=30, params={
                "requestType": "WADO", "studyUID": r["study_uid"],
                "seriesUID": r["series_uid"], "objectUID": r["sop_uid"],
                "contentType": "application/dicom"})
            assert uri.status_code == 502 and reason in uri.text
        # The whole study: its first object is sound and is sent, then the damaged one is
        # reached: the answer is cut (no closing boundary), never taken for whole.
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{s.url}/studies/{study}", timeout=30)
        for k, v in saved.items():
            (store / k).write_bytes(v)
        assert s.proc.poll() is None  # still serving
        again = requests.get(f"{s.url}/studies/{study}", timeout=30)
        assert again.status_code == 200
        assert len(_parts(again)) == len({r["sop_uid"] for r in rows if r["study_uid"] == study})
    finally:
        _stop(s)
    log = "".join(s.log)
    assert "Traceback" not in log
    # Access lines name the route, never a UID.
    assert "GET /studies/{study}/series/{series}/instances/{sop} 502" in log
    assert "a retrieve was cut: IntegrityError" in log
    assert all(uid not in log for x in rows for uid in (x["study_uid"], x["sop_uid"]))


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


def test_archived_instances_answer_503_and_can_ask_for_a_restore(moto_s3: S3Target,
                                                                 tmp_path: Path) -> None:
    src, state = tmp_path / "pacs", tmp_path / "state"
    src.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", src / "ct.dcm")
    run_cli("migrate", str(src), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(state), "--storage-class", "GLACIER", "--no-progress",
            env=moto_s3.env(), check=True)
    ds = pydicom.dcmread(src / "ct.dcm", stop_before_pixels=True)
    path = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
            f"{ds.SOPInstanceUID}")
    for extra, said in (((), "ask for a restore (pacsmigrate restore --request-restore)"),
                        (("--request-restore",), "a restore was asked for")):
        s = _start(state, *extra, env=moto_s3.env())
        try:
            cold = requests.get(s.url + path, timeout=30)
            assert cold.status_code == 503 and cold.headers["Retry-After"] == "3600"
            assert "lies in an archived object" in cold.text and said in cold.text, cold.text
            if extra:  # moto restores at once: the retry is served
                warm = requests.get(s.url + path, timeout=30)
                assert warm.status_code == 200
                assert _parts(warm)[0][1] == (src / "ct.dcm").read_bytes()
        finally:
            _stop(s)


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


def test_an_instance_larger_than_a_read_is_streamed_whole(tmp_path: Path) -> None:
    """A member larger than one range read (16 MiB) goes out in chunks, its blake3 checked
    before the last; the client gets the file's bytes."""
    from pacsmigrate.dicomweb.wado import RUN_BYTES

    src, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    src.mkdir()
    store.mkdir()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.PixelData = os.urandom(RUN_BYTES + 3 * 1024 * 1024)  # more than one read
    ds.save_as(src / "big.dcm")
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress",
            check=True)
    s = _start(state)
    try:
        resp = requests.get(f"{s.url}/studies/{ds.StudyInstanceUID}/series/"
                            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}", timeout=60)
        assert resp.status_code == 200
        assert [body for _, body in _parts(resp)] == [(src / "big.dcm").read_bytes()]
        # WADO-URI streams it too, within the shared budget (it was read whole before).
        uri = requests.get(f"{s.url}/wado", timeout=60, params={
            "requestType": "WADO", "studyUID": ds.StudyInstanceUID,
            "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID,
            "contentType": "application/dicom"})
        assert uri.status_code == 200 and uri.content == (src / "big.dcm").read_bytes()
        assert uri.headers["Content-Type"] == "application/dicom"
        # Clients gone mid-way give back what their answers held at once: more of them
        # than the budget holds such answers (4), then a retrieve that must still answer.
        host, port = s.url.split("//")[1].split(":")

        def gone_mid_way() -> None:
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(f"GET /studies/{ds.StudyInstanceUID} HTTP/1.1\r\nHost: x\r\n"
                             "\r\n".encode())
                got = 0
                while got < 3 << 20:
                    got += len(sock.recv(1 << 16))

        clients = [threading.Thread(target=gone_mid_way) for _ in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        time.sleep(2)  # an idle server: nothing else makes the garbage collector run
        again = requests.get(f"{s.url}/studies/{ds.StudyInstanceUID}", timeout=30)
        assert [body for _, body in _parts(again)] == [(src / "big.dcm").read_bytes()]
    finally:
        _stop(s)


def test_a_header_longer_than_the_first_read_comes_back_whole(tmp_path: Path) -> None:
    """/metadata reads the first 64 KiB of an instance; a header longer than that (a long
    sequence before the UIDs) must not come back cut where the read ended."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from pacsmigrate.dicomweb.wado import HEADER_BYTES

    src, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    src.mkdir()
    store.mkdir()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    items = []
    for i in range(1500):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = f"C{i:05d}", "99LOCAL"
        item.CodeMeaning = f"procedure code number {i}"
        items.append(item)
    ds.ProcedureCodeSequence = Sequence(items)
    ds.ImageComments = "after the long sequence"
    ds.save_as(src / "long.dcm")
    raw = (src / "long.dcm").read_bytes()
    assert raw.find(b"\xe0\x7f\x10\x00") > HEADER_BYTES  # the pixels start past the read
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress",
            check=True)
    s = _start(state)
    try:
        resp = requests.get(f"{s.url}/studies/{ds.StudyInstanceUID}/series/"
                            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata",
                            timeout=60)
        assert resp.status_code == 200, resp.text
        [meta] = resp.json()
    finally:
        _stop(s)
    assert len(meta["00081032"]["Value"]) == 1500
    assert meta["0020000D"]["Value"] == [ds.StudyInstanceUID]
    assert meta["00204000"]["Value"] == ["after the long sequence"]
    whole = pydicom.dcmread(src / "long.dcm", stop_before_pixels=True).to_json_dict(
        bulk_data_threshold=1024, bulk_data_element_handler=lambda _el: "")
    assert set(meta) == {tag for tag, v in whole.items() if v.get("BulkDataURI") != ""}
