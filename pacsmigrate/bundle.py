"""Pack a plan into its object's bytes: a consistent tar bundle, or one large file, in parts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from . import manifest
from .classify import describe
from .encoding import ZSTD, Compressor, stored_name
from .errors import SourceChangedError
from .header import header_from_bytes, parse
from .paths import member_name
from .records import BundlePlan, Described, Entry, Member, Problem, Stored, now_iso
from .retention import Lock, covers, lock_of
from .source import open_regular, read_exact, read_whole
from .tarheader import BLOCK, ZEROS, pad, tar_header

READ_ATTEMPTS = 3
HEADER_BYTES = 32 << 10
VANISHED = "vanished before packing"


@dataclass
class Built:
    """What packing wrote (the entries) and what it could not (problems, changed files)."""

    entries: list[Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Read again because they changed since the read stage, now in another group: they
    # go back to the run to be packed with their new study.
    moved: list[Member] = field(default_factory=list)
    again: list[Member] = field(default_factory=list)  # upload aborted: read again later
    reread: int = 0
    reread_bytes: int = 0
    # Other bytes than the dry run read although size and mtime are the same.
    dry_run_mismatch: list[bytes] = field(default_factory=list)
    compressed: int = 0  # members stored as zstd frames, and their bytes before and after
    compressed_from: int = 0
    compressed_to: int = 0
    duplicates: int = 0  # members whose content was stored before: not stored again
    duplicate_bytes: int = 0
    size: int = 0
    # As stored: in a tar, gzip-compressed (manifest.Writer.finish_compressed); beside a
    # raw file (its sidecar), plain JSON.
    manifest: bytes | bytearray = b""
    created: str = field(default_factory=now_iso)
    retention: dict[str, Any] | None = None  # the object's lock, for its manifest


class _Parts:
    """Cuts a stream of buffers into part_size parts, copying each byte once, into the
    part's own buffer as it comes: a piece is let go at once, so a member's bytes are never
    held twice (joining a part's pieces kept them all alive beside the joined part).

    `bound`: how long the object can grow (BundlePlan.bound); a part's buffer is never larger than
    what is left of it. A yielded part is never written again (a retry sends it again).
    `take(n)`: a buffer for a part (partbuf: one used before only once nothing refers to it).
    """

    def __init__(self, part_size: int, bound: int,
                 take: Callable[[int], bytearray] = bytearray) -> None:
        self.part_size = part_size
        self.bound = bound
        self.take = take
        self.buf = bytearray()
        self.filled = 0
        self.offset = 0

    def add(self, data: bytes | bytearray | memoryview) -> Iterator[bytearray | memoryview]:
        end = self.filled + len(data)
        if self.buf and end < self.part_size:  # the common case: the part goes on
            self._copy(data, end)
            return
        view = memoryview(data)
        while view:
            if not self.buf:
                self.buf = self.take(min(self.part_size, max(self.bound - self.offset, BLOCK)))
            take = view[:self.part_size - self.filled]
            self._copy(take, self.filled + len(take))
            view = view[len(take):]
            if self.filled == self.part_size:
                yield self._take()

    def put(self, header: bytes, data: bytes | bytearray | memoryview, padding: bytes
            ) -> bool:
        """A member's header, bytes and padding into the current part when they fit
        without filling it (the usual case: one call, no generator); else False (add())."""
        start = self.filled
        at = start + len(header)
        end = at + len(data)
        stop = end + len(padding)
        if not self.buf or stop >= self.part_size:
            return False
        buf = self.buf
        buf[start:at] = header
        buf[at:end] = data
        buf[end:stop] = padding
        self.offset += stop - start
        self.filled = stop
        return True

    def _copy(self, data: bytes | bytearray | memoryview, end: int) -> None:
        # Past the buffer's end (a name that outran the bound, which assumes ASCII paths)
        # the slice assignment grows it.
        self.buf[self.filled:end] = data
        self.offset += end - self.filled
        self.filled = end

    def _take(self) -> bytearray | memoryview:
        buf, filled = self.buf, self.filled
        self.buf, self.filled = bytearray(), 0
        return buf if filled == len(buf) else memoryview(buf)[:filled]

    def rest(self) -> Iterator[bytearray | memoryview]:
        if self.filled:
            yield self._take()


def stable_read(path: bytes) -> tuple[bytes, os.stat_result] | Problem:
    """The whole file, read between two identical fstat()s, or why that was impossible."""
    for _ in range(READ_ATTEMPTS):
        opened = open_regular(path, vanished=VANISHED)
        if isinstance(opened, Problem):
            return opened
        f, before = opened
        try:
            with f:
                data = read_whole(f.fileno(), before.st_size)
                after = os.fstat(f.fileno())
        except OSError as exc:
            return Problem(path, "unreadable", exc.strerror or str(exc), final=False)
        if (len(data) == before.st_size == after.st_size
                and before.st_mtime_ns == after.st_mtime_ns):
            return data, after
    return Problem(path, "kept changing while being read", final=False)


def _member_bytes(m: Member, plan: BundlePlan, built: Built, secret: bytes
                  ) -> tuple[Member, bytes] | None:
    """The member's bytes now: those read by the read stage, else read again and checked."""
    if m.data is not None:
        return m, m.data
    got = stable_read(m.path)
    if isinstance(got, Problem):
        built.problems.append(got)
        return None
    data, st = got
    if st.st_size == m.size and st.st_mtime_ns == m.mtime_ns:
        return Member(m.path, m.size, m.mtime_ns, m.about, "", data), data
    # Changed since the read stage: what it is now decides where it goes.
    built.reread += 1
    built.reread_bytes += len(data)
    about = describe(m.path, header_from_bytes(data), secret=secret)
    now = Member(m.path, len(data), st.st_mtime_ns, about, "", data)
    if about.group != m.group:  # another study now (a pack holds several)
        built.moved.append(Member(m.path, len(data), st.st_mtime_ns, about))
        return None
    return now, data


# (a file's header, its blake3) -> where committed content with it is, or None.
Known = Callable[[Described, str], "Stored | None"]


def _stored_at(about: Described, digest: str, here: dict[str, tuple[int, int, str]],
               known: Known, key: str, need: Lock) -> tuple[str, int, int, str] | None:
    """Where this content is stored already: in this bundle, else in a committed object
    locked at least as long and as strictly as this one must be."""
    if digest in here:
        return key, *here[digest]
    found = known(about, digest)
    if found is None or not covers(found.lock, need):
        return None
    return found.key, found.offset, found.length, found.encoding


def _unchanged(m: Member) -> bool:
    try:
        st = os.stat(m.path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (m.size, m.mtime_ns)


def _copied(lines: manifest.Writer, m: Member, now: Member, where: tuple[str, int, int, str],
            group: str) -> Entry:
    """A member that is a copy of stored content: its entry, and its manifest line added
    (it is not in the tar)."""
    key, offset, length, enc = where
    entry = Entry(m.path, offset, length, now.blake3, now.size, now.mtime_ns, now.about, key,
                  enc)
    lines.add(manifest.member_line(entry, member_name(m.path), group))
    return entry


def _placed(lines: manifest.Writer, m: Member, now: Member, digest: str, length: int,
            enc: str, offset: int, group: str) -> tuple[bytes, Entry]:
    """A member whose `length` stored bytes follow its tar header at `offset`: the header,
    its entry, and its manifest line added."""
    name = member_name(m.path)
    header = tar_header(stored_name(name, enc), length, now.mtime_ns // 1_000_000_000)
    entry = Entry(m.path, offset + len(header), length, digest, now.size, now.mtime_ns,
                  now.about, "", enc)
    lines.add(manifest.member_line(entry, name, group))
    return header, entry


def _copy(built: Built, lines: manifest.Writer, m: Member, now: Member,
          where: tuple[str, int, int, str], group: str) -> None:
    """Record a member as a copy of stored content: in the manifest, not in the tar."""
    built.entries.append(_copied(lines, m, now, where, group))
    built.duplicates += 1
    built.duplicate_bytes += now.size
    m.data = None


def tar_parts(plan: BundlePlan, built: Built, *, part_size: int, secret: bytes,
              expect: dict[bytes, str] | None = None, known: Known | None = None,
              compress: str = "", take: Callable[[int], bytearray] = bytearray
              ) -> Iterator[bytearray | memoryview]:
    """Yield the bundle in part_size pieces; fill `built` as members are written.

    Each member's bytes were read whole between two equal fstat()s before its header goes
    out, so a member is never half-old. `expect`: blake3 per path from a dry run.
    `known`: where committed content is stored (deduplication; None: store every member).
    A member whose content is known, or is in this bundle already, is not written again:
    its manifest line names the object that holds it (`duplicate_of`). `compress` "zstd":
    members with uncompressed pixels stored as zstd frames where smaller (encoding.py).
    `take(n)`: a buffer for a part of about n bytes (partbuf.Lease.take: used again).
    """
    parts = _Parts(part_size, plan.bound, take)
    lines = manifest.Writer(plan, created=built.created, retention=built.retention,
                            compressed=True)
    here: dict[str, tuple[int, int, str]] = {}  # content here: blake3 -> offset, length, enc
    packer = Compressor() if compress else None
    need = lock_of(built.retention)
    for m in plan.members:
        if known is not None and m.data is None and m.blake3:
            # Hashed already: stored already and unchanged since, a copy needs no read (a
            # large file's copy). Looked up first: most contents are new, and need no stat.
            where = _stored_at(m.about, m.blake3, here, known, plan.key, need)
            if where is not None and _unchanged(m):
                _copy(built, lines, m, m, where, plan.group)
                continue
        got = _member_bytes(m, plan, built, secret)
        if got is None:
            continue
        now, data = got
        digest = now.blake3 or blake3.blake3(data).hexdigest()
        if expect and expect.get(m.path, digest) != digest:
            built.dry_run_mismatch.append(m.path)
        if known is not None and data:
            where = _stored_at(now.about, digest, here, known, plan.key, need)
            if where is not None:
                _copy(built, lines, m, Member(m.path, now.size, now.mtime_ns, now.about,
                                              digest), where, plan.group)
                continue
        frame = packer.encode(data, now.about.transfer_syntax) if packer else None
        if frame is not None:
            built.compressed += 1
            built.compressed_from += len(data)
            built.compressed_to += len(frame)
            data = frame
        enc = ZSTD if frame is not None else ""
        header, entry = _placed(lines, m, now, digest, len(data), enc, parts.offset,
                                plan.group)
        built.entries.append(entry)
        if known is not None and data:
            here[digest] = entry.offset, entry.length, enc
        padding = pad(len(data))
        if not parts.put(header, data, padding):  # a part ends within this member
            yield from parts.add(header)
            yield from parts.add(data)
            yield from parts.add(padding)
        m.data = None  # in a part now: the member's own copy can go (a retry reads it again)
    if not built.entries:
        return
    built.manifest = lines.finish_compressed()
    for piece in _closing(plan.bundle_id, built.manifest, parts.offset):
        yield from parts.add(piece)
    built.size = parts.offset
    yield from parts.rest()


def _closing(bundle_id: str, doc: bytes | bytearray, offset: int
             ) -> tuple[bytes | bytearray, ...]:
    """A bundle's end, after members that end at `offset`: the manifest member, the
    trailer that locates it, the two zero blocks."""
    head = tar_header(manifest.manifest_name(bundle_id), len(doc), 0)
    return (head, doc, pad(len(doc)), tar_header(manifest.trailer_name(bundle_id), BLOCK, 0),
            manifest.trailer(offset + len(head), len(doc)), ZEROS)


def tar_length(plan: BundlePlan, *, created: str, retention: dict[str, Any] | None = None,
               known: Known | None = None) -> int:
    """The length tar_parts gives `plan` when its members are as they were read (hashed,
    unchanged) and not compressed: for a dry run to count an object's parts exactly where
    the files' bytes and the bound disagree. `known` as for tar_parts (deduplication)."""
    lines = manifest.Writer(plan, created=created, retention=retention, compressed=True)
    here: dict[str, tuple[int, int, str]] = {}
    need = lock_of(retention)
    offset = 0
    for m in plan.members:
        copies = known if m.size and m.blake3 else None  # (a dry run hashed every file)
        if copies is not None:
            where = _stored_at(m.about, m.blake3, here, copies, plan.key, need)
            if where is not None:  # a copy: a manifest line only
                _copied(lines, m, m, where, plan.group)
                continue
        header, entry = _placed(lines, m, m, m.blake3, m.size, "", offset, plan.group)
        if copies is not None:
            here[m.blake3] = entry.offset, entry.length, ""
        offset += len(header) + m.size + len(pad(m.size))
    if not lines.members:
        return 0
    return offset + sum(map(len, _closing(plan.bundle_id, lines.finish_compressed(), offset)))


def file_parts(plan: BundlePlan, built: Built, *, part_size: int, secret: bytes,
               expect: dict[bytes, str] | None = None) -> Iterator[bytes | bytearray | memoryview]:
    """Stream one large file as its own object, hashing as it goes.

    A change during the read raises SourceChangedError, so the upload is aborted and the
    file is read again, never stored half-old.
    """
    m = plan.members[0]
    opened = open_regular(m.path, vanished=VANISHED)
    if isinstance(opened, Problem):
        built.problems.append(opened)
        return
    f, before = opened
    with f:
        now = m
        if (before.st_size, before.st_mtime_ns) != (m.size, m.mtime_ns):
            built.reread += 1
            built.reread_bytes += before.st_size
            head = read_exact(f.fileno(), HEADER_BYTES)
            about = describe(m.path, parse(head, before.st_size, f), secret=secret)
            f.seek(0)
            now = Member(m.path, before.st_size, before.st_mtime_ns, about)
            if about.group != m.group:  # another study now (a pack holds several)
                built.moved.append(now)
                return
        h = blake3.blake3()
        total = 0
        while chunk := read_exact(f.fileno(), part_size):
            h.update(chunk)
            total += len(chunk)
            if total > before.st_size:
                break
            yield chunk
        after = os.fstat(f.fileno())
        if total != before.st_size or (after.st_size, after.st_mtime_ns) != (
                before.st_size, before.st_mtime_ns):
            raise SourceChangedError("file changed while being uploaded", path=m.path)
    digest = h.hexdigest()
    if expect and expect.get(m.path, digest) != digest:
        built.dry_run_mismatch.append(m.path)
    entry = Entry(m.path, 0, total, digest, now.size, now.mtime_ns, now.about)
    built.entries.append(entry)
    built.manifest = manifest.build(plan, [manifest.member_line(entry, member_name(m.path))],
                                    created=built.created, retention=built.retention)
    built.size = total
