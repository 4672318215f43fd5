"""Settings: sizes, destination URLs and the checks MigrateConfig makes up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsmigrate.config import (
    MIN_PART,
    Destination,
    GiB,
    KiB,
    MiB,
    MigrateConfig,
    S3Options,
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


@pytest.mark.parametrize("url, expected", [
    ("file:///srv/archive", ("file", "/srv/archive", "")),
    ("file:///srv/archive/", ("file", "/srv/archive", "")),
    ("/srv/archive", ("file", "/srv/archive", "")),
    ("/srv/with%20percent", ("file", "/srv/with%20percent", "")),  # a path is taken as typed
    ("file:///srv/with%20space", ("file", "/srv/with space", "")),  # a URL is decoded
    ("az://container/pacs/x", ("az", "container", "pacs/x")),
    ("https://acct.blob.core.windows.net/container/pacs", ("az", "container", "pacs")),
])
def test_destination_forms(url: str, expected: tuple[str, str, str]) -> None:
    d = Destination.parse(url)
    assert (d.scheme, d.bucket, d.prefix) == expected
    assert Destination.parse(str(d), endpoint_url=d.endpoint_url) == d  # the state keeps str(d)


def test_destination_local_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.chdir(tmp_path)
    d = Destination.parse("archive/")
    assert (d.scheme, d.bucket) == ("file", str(tmp_path / "archive"))
    assert str(d) == f"file://{tmp_path}/archive" and d.key("ab", "x.tar") == "ab/x.tar"


def test_destination_azure_url_carries_its_account() -> None:
    d = Destination.parse("https://acct.blob.core.windows.net/c/p")
    assert d.endpoint_url == "https://acct.blob.core.windows.net"
    assert Destination.parse("https://acct.blob.core.windows.net/c", endpoint_url="http://x"
                             ).endpoint_url == "http://x"  # --endpoint-url wins


@pytest.mark.parametrize("url, words", [
    ("s3://", "no bucket"),
    ("az://", "no container"),
    ("https://acct.blob.core.windows.net/", "no container"),
    ("gs://b", "s3://BUCKET"),
    ("https://example.org/b", "az://CONTAINER"),
    ("file://nas01/share", "mount a remote one first"),
    ("s3://b/site#1", "'?' and '#' are not taken"),  # else prefix 'site', shared unseen
    ("file:///archive/a#b", "'?' and '#' are not taken"),
])
def test_destination_rejects(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Destination.parse(url)
    msg = str(info.value)
    assert words in msg  # says what is expected or what is missing
    assert repr(url) in msg  # and quotes what was given


def test_a_sas_in_the_destination_is_refused_and_never_shown() -> None:
    with pytest.raises(ConfigError) as info:
        Destination.parse("https://acct.blob.core.windows.net/c/p?sv=2024&sig=SECRET")
    assert str(info.value) == (
        "destination 'https://acct.blob.core.windows.net/c/p?...': '?' and '#' are not taken "
        "in a destination URL (a SAS goes in AZURE_STORAGE_SAS_TOKEN); name a prefix "
        "without them (a local directory may be given as a plain path)")
    assert Destination.parse("/archive/a#b").bucket == "/archive/a#b"  # a path may hold them


def test_local_destination_must_not_overlap_a_source(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    (src / "inner").mkdir(parents=True)
    for dest in (src, src / "inner", tmp_path):
        with pytest.raises(ConfigError, match="overlap.*never written to"):
            MigrateConfig(sources=(src,), dest=Destination.parse(str(dest)),
                          state_dir=tmp_path / "state")
    MigrateConfig(sources=(src,), dest=Destination.parse(str(tmp_path / "archive")),
                  state_dir=tmp_path / "state")


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
    with pytest.raises(ConfigError, match=r"--large-file \(8388609B; 64MiB by default\) "
                       r"must not exceed --bundle-size \(8MiB\)"):
        config(tmp_path, bundle_size=8 * MiB, large_file=8 * MiB + 1)
    with pytest.raises(ConfigError, match="--bundle-size"):
        config(tmp_path, bundle_size=MiB - 1, large_file=1)
    with pytest.raises(ConfigError, match="--large-file must be positive"):
        config(tmp_path, large_file=0)


def test_transfer_config_checks() -> None:
    assert TransferConfig().part_size >= MIN_PART
    TransferConfig(part_size=2 * MiB)  # below S3's minimum: S3's backend raises it
    with pytest.raises(ConfigError, match="concurrency"):
        TransferConfig(concurrency=0)
    with pytest.raises(ConfigError, match="--part-size must be at least 1MiB"):
        TransferConfig(part_size=MIN_PART - 1)


@pytest.mark.parametrize("options, endpoint, expected", [
    (S3Options(), None, (None, "virtual")),  # AWS itself
    (S3Options(), "http://127.0.0.1:9000", ("http://127.0.0.1:9000", "path")),
    (S3Options(provider="aws", region="eu-central-1"), None, (None, "virtual")),
    (S3Options(provider="wasabi", region="eu-central-2"), None,
     ("https://s3.eu-central-2.wasabisys.com", "path")),
    (S3Options(provider="wasabi"), None, ("https://s3.us-east-1.wasabisys.com", "path")),
    (S3Options(provider="ceph"), "https://rgw:7480", ("https://rgw:7480", "path")),
    (S3Options(provider="minio", addressing_style="virtual"), "https://minio:9000",
     ("https://minio:9000", "virtual")),
])
def test_s3_provider_presets(options: S3Options, endpoint: str | None,
                             expected: tuple[str | None, str]) -> None:
    d = Destination.parse("s3://b/p", endpoint_url=endpoint).with_s3(options)
    assert (d.endpoint_url, d.s3.addressing_style if d.s3 else None) == expected
    wasabi = "us-east-1" if options.provider == "wasabi" else None
    assert d.s3 is not None and d.s3.region == (options.region or wasabi)
    assert S3Options.from_meta(d.s3.as_meta()) == d.s3  # kept in the state as it is


@pytest.mark.parametrize("options, words", [
    (S3Options(provider="ceph"), "--provider ceph needs --endpoint-url"),
    (S3Options(provider="other"), "--provider other needs --endpoint-url"),
    (S3Options(provider="gcs"), "--provider must be one of"),
])
def test_s3_provider_presets_refuse(options: S3Options, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Destination.parse("s3://b/p").with_s3(options)


def test_s3_options_are_for_s3_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="are for s3:// destinations"):
        Destination.parse(str(tmp_path)).with_s3(S3Options(region="eu-west-1"))
    assert Destination.parse(str(tmp_path)).with_s3(S3Options()).scheme == "file"


def test_crc32_is_refused_on_ceph(tmp_path: Path) -> None:
    dest = Destination.parse("s3://b", endpoint_url="https://rgw:7480").with_s3(
        S3Options(provider="ceph"))
    with pytest.raises(ConfigError, match="ignores x-amz-checksum-crc32"):
        MigrateConfig(sources=(tmp_path,), dest=dest, state_dir=tmp_path / "s",
                      transfer=TransferConfig(checksum="crc32"))
