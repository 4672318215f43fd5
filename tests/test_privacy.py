"""Patient data never reaches logs, progress, command output or object keys.

In scope (searched for every patient name and its parts, patient ID, accession number and
instance UID of the tree): everything `pacsmigrate -vv migrate` (with --progress, --dry-run,
on re-runs, after a kill, and on its error paths) and `pacsmigrate -vv status` print on
stdout and stderr, and every object key and object metadata value in the bucket. The
credentials (secret key and access key id) never appear in that output either.

Out of scope, on purpose: the --report file, `index export`, `locate` and the manifests
(sidecar JSON and the tar member names). They are the deliverables that map source paths
(which contain PatientIDs in the `patient` layout) and UIDs to objects; they are written
where the operator asks, not logged. The first test checks they do hold that data, so the
search below is known to find it when it is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run_cli

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.synth import make_tree

SECRET = "privacySecret-Zq81vX4m"
ACCESS_KEY = "privacyAccessKey-77QF"
STANDARD_UID_ROOT = "1.2.840.10008."  # transfer syntaxes, SOP classes: not patient data
ID_KEYWORDS = {"PatientID", "OtherPatientIDs", "AccessionNumber", "IssuerOfPatientID"}


def _pn_parts(value: str) -> set[str]:
    """A person name and its parts (family, given, ... in each of its three groups)."""
    out = {value}
    for group in value.split("="):
        out.add(group)
        out.update(group.split("^"))
    return {v.strip() for v in out if len(v.strip()) >= 4}


def _values(elem: pydicom.DataElement) -> list[str]:
    value = elem.value
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) \
        else [value]
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def patient_data_in(root: Path) -> set[str]:
    """Names (and parts), IDs and instance UIDs read from every file under root by pydicom."""
    found: set[str] = set()
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                ds = pydicom.dcmread(os.path.join(dirpath, name), force=True)
            except Exception:  # noqa: BLE001, S112 - not DICOM (or hostile): nothing to collect
                continue
            elements = list(ds.iterall())
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                elements += list(meta.iterall())
            for elem in elements:
                try:
                    values = _values(elem)
                except Exception:  # noqa: BLE001, S112 - a value that does not decode
                    continue
                for v in values:
                    if elem.VR == "PN":
                        found |= _pn_parts(v)
                    elif _identifies(elem, v):
                        found.add(v)
    return found


def _identifies(elem: pydicom.DataElement, value: str) -> bool:
    """An instance UID (not a standard one), or an ID of the patient or the request."""
    if elem.VR == "UI":
        return not value.startswith(STANDARD_UID_ROOT) and len(value) > 8
    return elem.keyword in ID_KEYWORDS and len(value) >= 4


def leaks(text: str, values: Iterable[str]) -> list[str]:
    return sorted(v for v in values if v in text)


@pytest.fixture(scope="module")
def phi_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, frozenset[str]]:
    """A `patient` layout (paths are PatientID/StudyDate/StudyUID/SeriesUID/SOPUID.dcm) and a
    `mixed` one (all layouts, storescp names hold SOP UIDs, a CD has a DICOMDIR), plus files
    that are not DICOM in folders named after patients."""
    root = tmp_path_factory.mktemp("privacy") / "pacs"
    a = make_tree(root / "patient", studies=3, seed=41, layout="patient", scale=0.02)
    b = make_tree(root / "mixed", studies=5, seed=42, layout="mixed", scale=0.02)
    for pid_dir in sorted((root / "patient").iterdir())[:2]:
        (pid_dir / f"{pid_dir.name}-notes.txt").write_text("scanned request form\n")
        (pid_dir / "empty.dcm").write_bytes(b"")
        shutil.copy(TEST_FILES / "MR_truncated.dcm", pid_dir / f"{pid_dir.name}-trunc.dcm")
    values = set(patient_data_in(root))
    for summary in (a, b):
        values.update(summary.patient_ids, summary.study_uids)
        for name in summary.patient_names:
            values |= _pn_parts(name)
    # The sample file's own identifiers are in the tree too (the truncated copies).
    assert set(a.patient_ids) <= values and set(a.study_uids) <= values
    assert any(a.patient_ids[0] in str(p) for p in (root / "patient").iterdir())
    return root, frozenset(values)


def _env(target: S3Target) -> dict[str, str]:
    # moto accepts any credentials: unmistakable ones show whether they are ever printed.
    return {**target.env(), "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET}


def _migrate(root: Path, target: S3Target, state: Path, *extra: str) -> list[str]:
    return ["-vv", "migrate", str(root), target.url, "--endpoint-url", target.info.endpoint_url,
            "--state", str(state), "--bundle-size", "1MiB", "--large-file", "256KiB", *extra]


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + "\n" + proc.stderr


def _assert_clean(outputs: dict[str, str], values: frozenset[str]) -> None:
    for what, text in outputs.items():
        assert not leaks(text, values), f"{what} shows patient data: {leaks(text, values)[:5]}"
        assert SECRET not in text and ACCESS_KEY not in text, f"{what} shows credentials"
        assert "Traceback" not in text, f"{what}:\n{text}"


def _keys_and_metadata(target: S3Target) -> str:
    keys = target.object_keys()
    meta = [f"{k}={v}" for key in keys
            for k, v in target.client.head_object(Bucket=target.bucket, Key=key)
            .get("Metadata", {}).items()]
    return "\n".join(keys + meta)


def test_logs_progress_output_and_keys_carry_no_patient_data(
        moto_s3: S3Target, phi_tree: tuple[Path, frozenset[str]], tmp_path: Path) -> None:
    root, values = phi_tree
    state, report = tmp_path / "state", tmp_path / "report.json"
    env = _env(moto_s3)
    outputs: dict[str, str] = {}

    first = run_cli(*_migrate(root, moto_s3, state, "--progress", "--report", str(report)),
                    env=env)
    assert first.returncode == 0, _output(first)
    assert "store" in first.stderr and "INFO" in first.stderr  # bars and logs were on
    outputs["migrate -vv --progress"] = _output(first)
    again = run_cli(*_migrate(root, moto_s3, state, "--progress"), env=env)
    assert again.returncode == 0 and "already migrated" in again.stdout, _output(again)
    outputs["re-run"] = _output(again)
    for args in (["-vv", "status", "--state", str(state)],
                 ["-vv", "status", "--state", str(state), "--json"]):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, _output(proc)
        outputs[" ".join(args[:2] + args[4:])] = _output(proc)
    dry = run_cli(*_migrate(root, moto_s3, tmp_path / "dry", "--dry-run", "--progress"), env=env)
    assert dry.returncode == 0, _output(dry)
    outputs["dry run"] = _output(dry)
    outputs["object keys and metadata"] = _keys_and_metadata(moto_s3)
    _assert_clean(outputs, values)

    # Positive control: the deliverables hold paths and UIDs, and the search finds them.
    assert leaks(report.read_text(), values)
    export = run_cli("index", "export", "--state", str(state), "--format", "jsonl", env=env)
    assert export.returncode == 0 and leaks(export.stdout, values)


def test_error_paths_carry_no_patient_data(moto_s3: S3Target,
                                           phi_tree: tuple[Path, frozenset[str]],
                                           tmp_path: Path) -> None:
    """Files that vanish, stop being files, change study, change in place behind an unchanged
    size and mtime, or keep growing; a kill and its resume; a missing bucket; an unreachable
    store; a state directory in use. All with -vv."""
    src, values = phi_tree
    root = tmp_path / "pacs"
    shutil.copytree(src, root, symlinks=True)
    env = _env(moto_s3)
    outputs: dict[str, str] = {}
    state = tmp_path / "state"
    dry = run_cli(*_migrate(root, moto_s3, state, "--dry-run"), env=env)
    assert dry.returncode == 0, _output(dry)
    outputs["dry run"] = _output(dry)

    files = sorted(p for p in (root / "patient").rglob("*.dcm")
                   if p.stat().st_size and not p.name.endswith("-trunc.dcm"))
    files[0].unlink()                                             # gone: not walked
    files[1].unlink()
    os.mkfifo(files[1])                                           # not a regular file any more
    other = pydicom.dcmread(files[3])
    other.StudyInstanceUID = pydicom.uid.generate_uid()           # now another study
    values = values | {str(other.StudyInstanceUID)}
    other.save_as(files[2])
    st = files[4].stat()                                          # same size and mtime,
    data = bytearray(files[4].read_bytes())                       # other bytes: the dry run's
    data[-1] ^= 0xFF                                              # blake3 disagrees
    files[4].write_bytes(bytes(data))
    os.utime(files[4], ns=(st.st_atime_ns, st.st_mtime_ns))
    run_ = run_cli(*_migrate(root, moto_s3, state, "--report", str(tmp_path / "r.json")),
                   env=env)
    assert run_.returncode in (0, 1), _output(run_)
    assert "WARNING" in run_.stdout and "fifo skipped" in run_.stdout, run_.stdout
    outputs["migrate after changes"] = _output(run_)

    killed_target = S3Target(moto_s3.info, moto_s3.bucket + "-k", "moto")
    killed_target.client.create_bucket(Bucket=killed_target.bucket)
    for crash in ("after-upload:2", "after-sidecar:3"):
        killed = run_cli(*_migrate(root, killed_target, tmp_path / "killed"),
                         env={**_env(killed_target), "PACSMIGRATE_CRASH_AT": crash})
        assert killed.returncode < 0, _output(killed)
        outputs[f"killed at {crash}"] = _output(killed)
    resumed = run_cli(*_migrate(root, killed_target, tmp_path / "killed"), env=_env(killed_target))
    assert resumed.returncode == 0 and "adopted" in resumed.stderr, _output(resumed)
    outputs["resumed"] = _output(resumed)

    nobucket = run_cli("-vv", "migrate", str(root), "s3://no-such-bucket-privacy/x",
                       "--endpoint-url", moto_s3.info.endpoint_url,
                       "--state", str(tmp_path / "nobucket"), env=env)
    assert nobucket.returncode == 2, _output(nobucket)
    outputs["missing bucket"] = _output(nobucket)
    unreachable = run_cli("-vv", "migrate", str(root), moto_s3.url, "--endpoint-url",
                          "http://127.0.0.1:9", "--retries", "2", "--timeout", "2",
                          "--state", str(tmp_path / "unreachable"), env=env, timeout=120)
    assert unreachable.returncode == 2, _output(unreachable)
    outputs["unreachable store"] = _output(unreachable)
    holder = Checkpoint(state)
    try:
        locked = run_cli(*_migrate(root, moto_s3, state), env=env)
    finally:
        holder.close()
    assert locked.returncode == 2, _output(locked)
    outputs["state in use"] = _output(locked)
    outputs["object keys and metadata"] = _keys_and_metadata(moto_s3) + _keys_and_metadata(
        killed_target)
    _assert_clean(outputs, values)


@pytest.mark.seaweed
def test_refused_credentials_are_not_printed(seaweed_s3: S3Target,
                                             phi_tree: tuple[Path, frozenset[str]],
                                             tmp_path: Path) -> None:
    root, values = phi_tree
    env = {**seaweed_s3.env(), "AWS_SECRET_ACCESS_KEY": SECRET}
    proc = run_cli(*_migrate(root, seaweed_s3, tmp_path / "state"), env=env, timeout=120)
    assert proc.returncode == 2 and "store refused" in proc.stderr, _output(proc)
    right = seaweed_s3.info.secret_key
    assert right not in _output(proc)
    _assert_clean({"refused credentials": _output(proc).replace(seaweed_s3.info.access_key,
                                                                "<access key>")}, values)


def _odd_values_tree(root: Path) -> frozenset[str]:
    """DICOM files whose identifying values are malformed, so pydicom warns about them, quoting
    the value: a UID with letters, an over-long patient ID, a name with a control character."""
    root.mkdir(parents=True)
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.PatientName = "Leaky^Person^Middle"
    ds.PatientID = "LEAKY-PID-" + "7" * 70  # LO allows 64 characters
    ds.StudyInstanceUID = "1.2.826.0.1.LEAKYSTUDY.9"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.LEAKYSERIES"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.LEAKYSOP"
    ds.save_as(root / "odd.dcm")
    ds.PatientName = "Other\x1bLeak^Name"
    ds.SpecificCharacterSet = "ISO_IR 999"  # unknown: pydicom falls back and warns
    ds.save_as(root / "odd-charset.dcm")
    return frozenset({"Leaky^Person^Middle", "Leaky", "Person", "Middle", "LEAKY-PID-777",
                      "LEAKYSTUDY", "LEAKYSERIES", "LEAKYSOP", "Other\x1bLeak"})


@pytest.mark.parametrize("verbosity", [[], ["-v"], ["-vv"]], ids=["quiet", "-v", "-vv"])
def test_values_pydicom_warns_about_never_reach_the_output(
        verbosity: list[str], moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    values = _odd_values_tree(root)
    args = _migrate(root, moto_s3, tmp_path / "state")[1:]  # without the default -vv
    proc = run_cli(*verbosity, *args, env=_env(moto_s3))
    assert proc.returncode == 0, _output(proc)
    _assert_clean({f"migrate {' '.join(verbosity)}": _output(proc)}, values)
