"""Demo: synthesise a PACS tree, migrate it into a local SeaweedFS, fetch one file back."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pacsmigrate.access import open_migration
from pacsmigrate.devstore import SeaweedFS, create_bucket
from pacsmigrate.retrieve import fetch

WORK = Path(os.environ.get("DEMO_DIR", "demo-work")).resolve()


def cli(*args: str, env: dict[str, str]) -> int:
    print("$ pacsmigrate " + " ".join(args), flush=True)
    return subprocess.call([sys.executable, "-m", "pacsmigrate", *args], env=env)


async def fetch_back(state: Path, path: Path) -> bytes:
    async with open_migration(state) as m:
        return await fetch(m.cp, m.backend, os.fsencode(path))


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    tree, state = WORK / "pacs", WORK / "state"
    env = dict(os.environ)
    if cli("synth", str(tree), "--studies", "12", "--layout", "mixed", "--scale", "0.1",
           env=env):
        return 1
    print("starting a local SeaweedFS S3 store on 127.0.0.1 ...", flush=True)
    with SeaweedFS(WORK / "store") as info:
        create_bucket(info, "pacs")
        env.update(info.env())
        os.environ.update(info.env())
        dest = "s3://pacs/hospital-a"
        code = cli("migrate", str(tree), dest, "--endpoint-url", info.endpoint_url,
                   "--state", str(state), "--report", str(WORK / "report.json"), env=env)
        if code:
            return code
        cli("status", "--state", str(state), env=env)
        sample = next(p for p in sorted(tree.rglob("*")) if p.is_file() and "DICOMDIR" not in p.name)
        got = asyncio.run(fetch_back(state, sample))
        same = got == sample.read_bytes()
        print(f"fetched {sample.relative_to(WORK)} back with one range GET: {len(got):,} bytes, "
              f"{'byte-identical' if same else 'DIFFERENT'} to the source")
        cli("index", "export", "--state", str(state), "--format", "csv", "-o",
            str(WORK / "index.csv"), env=env)
        print(f"index: {WORK / 'index.csv'}; report: {WORK / 'report.json'}")
        print("stopping the store")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
