"""Each store's limits on objects written in parts, and the requests a plan will cost there:
known without contacting the store, so a dry run counts them too."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PermanentBackendError

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """A store's limits on objects written in parts."""

    min_part: int  # every part but the last at least this
    max_part: int
    max_parts: int
    max_object: int = 1 << 62  # the largest object the store keeps


def adjust_part_size(limits: Limits, wanted: int, size_hint: int) -> int:
    """The part size for an object of about size_hint bytes: the wanted size, kept within
    the store's range and grown (doubling) until the object fits in its part count
    (s3transfer's adjuster, for any store). An object the store cannot hold is refused here,
    before any byte is sent."""
    if size_hint > limits.max_object:
        raise PermanentBackendError(f"an object of {size_hint:,} bytes is larger than this "
                                    f"store allows ({limits.max_object:,})")
    size = min(max(wanted, limits.min_part), limits.max_part)
    while size_hint / size > limits.max_parts and size < limits.max_part:
        size *= 2
    return min(size, limits.max_part)


@dataclass(frozen=True)
class Upload:
    """How a store writes in parts: its limits, and its requests besides the parts: the
    create where the store has one, the completion; and the ones pacsmigrate adds
    (multipart.py): the store's unfinished uploads of the key listed before the create (to
    resume one) and, where a create is a request (a retried one can leave a twin), after it."""

    limits: Limits
    extra_requests: int
    lookups: int


TiB = 1 << 40
# S3: 2 listings + create + parts + complete; objects up to 5 TiB.
S3 = Upload(Limits(min_part=5 * MiB, max_part=5 * GiB, max_parts=10_000, max_object=5 * TiB),
            2, 2)
# Azure block blobs: a block listing + blocks + the commit; 50,000 blocks of 4,000 MiB.
AZURE = Upload(Limits(min_part=1 * MiB, max_part=4000 * MiB, max_parts=50_000,
                      max_object=50_000 * 4000 * MiB), 1, 1)
# A directory: 2 listings + create + parts as files + one join; the filesystem sets the
# largest file.
LOCAL = Upload(Limits(min_part=1 * MiB, max_part=5 * GiB, max_parts=10_000), 2, 2)
UPLOADS = {"s3": S3, "az": AZURE, "file": LOCAL}


def planned_requests(scheme: str, size: int, *, part_size: int, ours: bool = True,
                     length: int | None = None) -> int:
    """Requests storing `size` bytes will take: one PUT, or the parts and the extra ones
    (`ours`: with the listings pacsmigrate adds; not for a per-file copier's). `length`:
    the object's own when it differs (a tar's); the part size is chosen from `size`, as
    the upload chooses it."""
    upload = UPLOADS.get(scheme, S3)
    part = adjust_part_size(upload.limits, part_size, size)
    extra = upload.extra_requests + (upload.lookups if ours else 0)
    n = size if length is None else length
    return 1 if n <= part else extra + -(-n // part)
