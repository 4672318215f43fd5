"""Repair: verify names the files behind damage in the store and leaves them for the next
migrate, which stores exactly those again (new objects, new keys); then verify passes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import S3Target, run_cli
from helpers import about_row, assert_complete, index_rows

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.paths import from_fields
from pacsmigrate.staterepair import REPAIR_FILE, Damaged
from pacsmigrate.synth import make_tree


def _migrate(root: Path, s3: S3Target, state: Path) -> list[str]:
    return ["migrate", str(root), s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(state), "--no-progress"]


def test_verify_then_migrate_repairs_exactly_the_damaged_files(s3: S3Target,
                                                               tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=4, seed=31, layout="patient", scale=0.03)
    state = tmp_path / "state"
    run_cli(*_migrate(root, s3, state), env=s3.env(), check=True)
    rows = index_rows(state)
    by_key: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    lost, altered, *_ = sorted(by_key, key=lambda k: (-len(by_key[k]), k))
    # One object deleted, another's bytes changed (the store's ETag no longer the one
    # committed): every file of both is damaged.
    s3.client.delete_object(Bucket=s3.bucket, Key=lost)
    body = bytearray(s3.get(altered))
    body[len(body) // 2] ^= 0xFF
    s3.client.put_object(Bucket=s3.bucket, Key=altered, Body=bytes(body))
    expected = {r["source_path"] for r in by_key[lost] + by_key[altered]}

    report = tmp_path / "verify.json"
    check = run_cli("verify", "--state", str(state), "--deep", "--report", str(report),
                    env=s3.env())
    assert check.returncode == 1, check.stdout + check.stderr
    assert (f"damaged: {len(expected)} source files are behind these findings, listed in "
            f"{REPAIR_FILE} of the state") in check.stdout
    doc = json.loads(report.read_text())
    assert {d["source_path"] for d in doc["damaged_files"]} == expected
    listed = [json.loads(line) for line in (state / REPAIR_FILE).read_text().splitlines()]
    assert {d["source_path"] for d in listed} == expected

    fixed = run_cli(*_migrate(root, s3, state), env=s3.env())
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"migrated now: {len(expected)} files" in fixed.stdout  # exactly those
    assert (f"repair: {len(expected)} files a verify found damaged were taken to be stored "
            "again (counted above); 2 damaged objects are no longer indexed") in fixed.stdout
    assert lost in fixed.stdout and altered in fixed.stdout
    assert not (state / REPAIR_FILE).exists()
    assert list(state.glob("repair-applied-*.jsonl"))  # kept for the record
    now = {r["source_path"]: r for r in index_rows(state)}
    assert len(now) == len(rows)
    assert all(now[p]["key"] not in (lost, altered) for p in expected)  # new objects
    untouched = {r["source_path"]: r["key"] for r in rows if r["source_path"] not in expected}
    assert all(now[p]["key"] == k for p, k in untouched.items())

    again = run_cli("verify", "--state", str(state), "--deep", "--source", env=s3.env())
    assert again.returncode == 0, again.stdout + again.stderr
    calm = run_cli(*_migrate(root, s3, state), env=s3.env())
    assert "migrated now: 0 files" in calm.stdout  # the list was applied once
    # What the operator does with the damaged object once its lock allows: delete it.
    s3.client.delete_object(Bucket=s3.bucket, Key=altered)
    assert_complete(s3, state, root)


def test_forget_drops_only_rows_still_at_the_damaged_place(moto_s3: S3Target,
                                                          tmp_path: Path) -> None:
    """A member altered inside a good object (bit rot the ETag cannot see): only its row is
    dropped, with the content entry that would deduplicate into it; applying the same
    list again changes nothing."""
    root = tmp_path / "pacs"
    make_tree(root, studies=1, seed=32, layout="patient", scale=0.03)
    state = tmp_path / "state"
    run_cli(*_migrate(root, moto_s3, state), env=moto_s3.env(), check=True)
    rows = index_rows(state)
    victim = rows[0]
    path = from_fields(victim["source_path"], victim["source_path_b64"])
    cp = Checkpoint(state)
    try:
        damaged = cp.damaged_rows([], [(path, victim["key"])])
        assert damaged == [Damaged(path, victim["key"], int(victim["offset"]))]
        assert cp.stored_content(about_row(cp, victim), victim["blake3"]) is not None
        # Another damaged member whose source is gone: its row stays (the last copy).
        other = rows[1]
        other_path = from_fields(other["source_path"], other["source_path_b64"])
        os.unlink(other_path)
        gone = Damaged(other_path, other["key"], int(other["offset"]))
        done = cp.forget(damaged + [Damaged(path, victim["key"], 1), gone])
        assert (done.dropped, done.objects, done.source_gone) == (1, [], [other_path])
        assert cp.index_row(path) is None and cp.index_row(other_path) is not None
        assert cp.stored_content(about_row(cp, victim), victim["blake3"]) is None  # no dedup
        assert cp.has_object(victim["key"])  # its other members stay indexed there
        salt = cp.key_salt()
        assert salt  # new bundles get keys of their own
        again = cp.forget(damaged)  # applied twice: nothing more
        assert (again.dropped, again.objects) == (0, []) and cp.key_salt() == salt
    finally:
        cp.close()
    assert len(index_rows(state)) == len(rows) - 1


def test_a_second_repair_gets_a_salt_of_its_own(moto_s3: S3Target, tmp_path: Path) -> None:
    """Each repair salts later bundle ids anew: a bundle stored by one repair and damaged
    later is never met (and adopted) by the next."""
    root = tmp_path / "pacs"
    make_tree(root, studies=1, seed=33, layout="patient", scale=0.03)
    state = tmp_path / "state"
    run_cli(*_migrate(root, moto_s3, state), env=moto_s3.env(), check=True)
    keys = []
    for _ in range(2):
        key = index_rows(state)[0]["key"]
        moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key=key)
        assert run_cli("verify", "--state", str(state), env=moto_s3.env()).returncode == 1
        run_cli(*_migrate(root, moto_s3, state), env=moto_s3.env(), check=True)
        keys.append(key)
    final = {r["key"] for r in index_rows(state)}
    assert not final & set(keys)
    assert run_cli("verify", "--state", str(state), "--deep", env=moto_s3.env()
                   ).returncode == 0
