"""`pacsmigrate serve`, WADO-RS and WADO-URI reads: every instance comes back
byte-identical in its stored transfer syntax; renditions and syntaxes it does not offer are
refused; missing or altered objects are said and the server goes on; archived instances
answer 503; an instance or a header larger than one read comes back whole."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
import serve_support
from conftest import TEST_FILES, S3Target, run_cli
from helpers import index_rows
from serve_support import Server, _parts, _start, _stop

from pacsmigrate.checkpoint import Checkpoint

# The served migration: module-scoped fixtures defined once in serve_support; each test
# file that takes them migrates and serves its own copy.
migrated = serve_support.migrated
server = serve_support.server


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
