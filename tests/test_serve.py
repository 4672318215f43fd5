"""`pacsmigrate serve`: a real DICOMweb client (dicomweb-client) searches and retrieves a
served migration; QIDO-RS searches match dates, modalities and UIDs and page; bad requests
get the right status and a reason, and none stops the server.

WADO reads are in test_serve_wado.py; the catalogue, credentials and cross-origin rules in
test_serve_server.py; the server process and the served migration in serve_support.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import serve_support
from dicomweb_client.api import DICOMwebClient
from serve_support import Server

# The served migration: module-scoped fixtures defined once in serve_support; each test
# file that takes them migrates and serves its own copy.
migrated = serve_support.migrated
server = serve_support.server


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
