"""Settings: sizes, destination URLs and the checks MigrateConfig makes up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsmigrate.config import (
    S3_MIN_PART,
    Destination,
    GiB,
    KiB,
    MiB,
    MigrateConfig,
    TransferConfig,
    parse_size,
)
from pacsmigrate.errors import ConfigError, PacsMigrateError


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096),
    ("64MiB", 64 * MiB),
    ("64M", 64 * MiB),
    ("64mb", 64 * MiB),
    ("1.5G", 3 * GiB // 2),
    ("1g", GiB),
    ("8k", 8 * KiB),
    (" 2 GiB ", 2 * GiB),
    ("1T", 1024 * GiB),
    ("0", 0),
    (123, 123),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "64X", "-1", "1.5.5G", "M64", "64 M B", "1e6",
                                  "64MiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="not a size") as info:
        parse_size(text)
    assert repr(text) in str(info.value)  # the message quotes what the user typed
    assert isinstance(info.value, PacsMigrateError)


def test_destination_parse_and_key() -> None:
    d = Destination.parse("s3://b/p/q")
    assert (d.scheme, d.bucket, d.prefix, d.endpoint_url) == ("s3", "b", "p/q", None)
    assert d.key("ab", "cd", "x.tar") == "p/q/ab/cd/x.tar"
    assert str(d) == "s3://b/p/q"
    bare = Destination.parse("s3://bucket", endpoint_url="http://127.0.0.1:9000")
    assert (bare.bucket, bare.prefix, bare.endpoint_url) == (
        "bucket", "", "http://127.0.0.1:9000")
    assert bare.key("ab", "x.tar") == "ab/x.tar"  # no leading slash without a prefix
    assert str(bare) == "s3://bucket"
    assert Destination.parse("s3://b/p/").prefix == "p"


@pytest.mark.parametrize("url, words", [
    ("/tmp/x", "s3://bucket"),
    ("s3://", "no bucket"),
    ("gs://b", "s3://bucket"),
    ("b/p", "s3://bucket"),
])
def test_destination_rejects(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Destination.parse(url)
    msg = str(info.value)
    assert words in msg  # says what is expected or what is missing
    assert repr(url) in msg  # and quotes what was given


def config(tmp_path: Path, **kwargs: object) -> MigrateConfig:
    return MigrateConfig(sources=kwargs.pop("sources", (tmp_path,)),  # type: ignore[arg-type]
                         dest=Destination.parse("s3://b/p"), state_dir=tmp_path / "state",
                         **kwargs)  # type: ignore[arg-type]


def test_migrate_config_accepts_good_values(tmp_path: Path) -> None:
    cfg = config(tmp_path, bundle_size=8 * MiB, large_file=8 * MiB)
    assert cfg.sources == (tmp_path,) and cfg.large_file == cfg.bundle_size


def test_migrate_config_rejects_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="source is not a directory") as info:
        config(tmp_path, sources=(tmp_path, missing))
    assert str(missing) in str(info.value)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        config(tmp_path, sources=(afile,))
    with pytest.raises(ConfigError, match="at least one SOURCE"):
        config(tmp_path, sources=())


def test_migrate_config_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--large-file must not exceed --bundle-size"):
        config(tmp_path, bundle_size=8 * MiB, large_file=8 * MiB + 1)
    with pytest.raises(ConfigError, match="--bundle-size"):
        config(tmp_path, bundle_size=MiB - 1, large_file=1)
    with pytest.raises(ConfigError, match="--large-file must be positive"):
        config(tmp_path, large_file=0)


def test_transfer_config_checks() -> None:
    assert TransferConfig().part_size >= S3_MIN_PART
    with pytest.raises(ConfigError, match="concurrency"):
        TransferConfig(concurrency=0)
    with pytest.raises(ConfigError, match="part size"):
        TransferConfig(part_size=S3_MIN_PART - 1)
