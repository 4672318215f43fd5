"""The one SeaweedFS of a bench run: endpoint, environment, fresh buckets, listings."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pacsmigrate.devstore import LOOPBACK, SeaweedFS, StoreInfo, create_bucket


class Store:
    """SeaweedFS (`weed mini`) on 127.0.0.1 for the whole run; one bucket per tool run."""

    def __init__(self, workdir: Path) -> None:
        self._weed = SeaweedFS(workdir)
        self.info: StoreInfo | None = None
        self.client: Any = None
        self.env: dict[str, str] = {}
        self.pid: int | None = None
        self.restarts: list[str] = []  # why, each time

    def __enter__(self) -> Self:
        info = self.info = self._weed.start()
        if not info.endpoint_url.startswith(f"http://{LOOPBACK}:"):
            raise SystemExit(f"bench: refusing a store that is not on loopback: {info}")
        proc = getattr(self._weed, "_proc", None)
        self.pid = proc.pid if proc is not None else None
        env = dict(os.environ)
        # Settings of whoever runs the bench must not steer the tools elsewhere.
        for name in ("AWS_PROFILE", "S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        env.update(info.env())
        env["AWS_REGION"] = info.region
        self.env = env
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "s3", endpoint_url=info.endpoint_url, aws_access_key_id=info.access_key,
            aws_secret_access_key=info.secret_key, region_name=info.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
        )
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._weed.stop()

    def restart(self, why: str) -> None:
        """A fresh SeaweedFS, its data wiped (its log kept): one that took millions of
        objects holds GBs of memory (weed was OOM-killed at 20 GB on a 2.5M-file stream
        section), and one that died must not fail every run after it."""
        print(f"  restarting SeaweedFS: {why}", flush=True)
        self.restarts.append(why)
        self._weed.stop()
        work = self._weed.workdir
        shutil.rmtree(work / "data", ignore_errors=True)
        if (work / "weed.log").exists():
            n = len(list(work.glob("weed.log.*"))) + 1
            (work / "weed.log").rename(work / f"weed.log.{n}")
        self.__enter__()

    @property
    def endpoint(self) -> str:
        assert self.info is not None
        return self.info.endpoint_url

    def own_pids(self) -> list[int]:
        return [self.pid] if self.pid is not None else []

    def fresh_bucket(self, name: str) -> str:
        assert self.info is not None
        bucket = bucket_name(name)
        self.drop(bucket)
        create_bucket(self.info, bucket)
        return bucket

    def listing(self, bucket: str) -> dict[str, int]:
        """Every key in the bucket and its size."""
        out: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def drop(self, bucket: str) -> None:
        """Delete a bucket with its objects: SeaweedFS drops the bucket's volumes at once,
        so the disk does not fill up over a run of many GB."""
        try:
            self.client.delete_bucket(Bucket=bucket)
        except self.client.exceptions.NoSuchBucket:
            pass
        except Exception as exc:  # noqa: BLE001 - a leftover bucket only costs disk space
            print(f"    note: could not delete bucket {bucket}: {exc}", flush=True)


def bucket_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-")
