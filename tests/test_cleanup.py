"""`cleanup` lists and aborts stale multipart uploads under the prefix, and only those."""

from __future__ import annotations

from conftest import S3Target, run_cli


def test_cleanup_aborts_stale_uploads_under_the_prefix(s3: S3Target) -> None:
    mine = [s3.client.create_multipart_upload(Bucket=s3.bucket, Key=f"archive/ab/cd/{i}.tar")
            for i in range(2)]
    for up in mine:
        s3.client.upload_part(Bucket=s3.bucket, Key=up["Key"], UploadId=up["UploadId"],
                              PartNumber=1, Body=b"x" * 1024)
    s3.client.create_multipart_upload(Bucket=s3.bucket, Key="elsewhere/keep.tar")
    base = ["cleanup", s3.url, "--endpoint-url", s3.info.endpoint_url]

    listed = run_cli(*base, "--older-than", "0", "--dry-run", env=s3.env(), check=True)
    assert "2 unfinished uploads found" in listed.stdout
    assert "archive/ab/cd/0.tar" in listed.stdout and "keep.tar" not in listed.stdout
    assert len(s3.pending_uploads()) == 3

    if s3.kind == "seaweed":  # moto reports every upload as started in 2010
        young = run_cli(*base, env=s3.env(), check=True)  # default: only older than 24h
        assert "0 unfinished uploads aborted" in young.stdout
        assert len(s3.pending_uploads()) == 3

    done = run_cli(*base, "--older-than", "0", env=s3.env(), check=True)
    assert "2 unfinished uploads aborted" in done.stdout
    assert [u["Key"] for u in s3.pending_uploads()] == ["elsewhere/keep.tar"]


def test_cleanup_rejects_a_bad_age(moto_s3: S3Target) -> None:
    proc = run_cli("cleanup", moto_s3.url, "--older-than", "soon", env=moto_s3.env())
    assert proc.returncode == 2 and "not an age" in proc.stderr
