"""Group stage: gather each study's files into bundles as the walk finds them, in bounded memory.

Deterministic: decisions depend only on the order files arrive in (the walk's), never on
time or thread timing, so a dry run plans exactly what the run will store.

A study's bundle stays open while its files keep coming. It closes when
- it is full (`bundle_size`), or the walk ends;
- the walk has left the directory of its last file and `patience` other studies have
  started since (a study whose series trickled in over days, dcm4chee-style, gets the
  chance to be whole; a finished patient/study folder closes soon after);
- memory is short: the least recently fed open bundles close first.
A bundle closed early and small (idle, or for memory) is *spilled* where the layout
scatters studies: its files' records go to the checkpoint and are packed by study after the
walk (re-read then), so Orthanc's hashed folders still give one bundle per study. Whether
it scatters, the walk itself says: a bundle whose folder held other studies' files is
spilled (a hashed or flat layout); one alone in its folder is spilled only while the
recent small early closes often had shared folders or were of studies that came back (a
small hashed archive has a file a folder).
Otherwise (dcm4chee's date folders, patient folders: most small early closes are whole
small studies) it is stored at once: each of its files is read once, and the few studies
that come back later get one more bundle. Files above `large_file` are objects of their
own.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .records import FILE, TAR, BundlePlan, Member, member_bound

SPILL_FILES = 8  # an early-closed bundle with fewer members is spilled...
SPILL_BYTES = 8 << 20  # ...when it is also smaller than this
# Whether the layout scatters studies: of the last SPILL_WINDOW small early closes, at
# least SPILL_SIGNS had a shared folder or were of a study closed so before (among the last
# SPILL_REMEMBER such studies); the first SPILL_WARMUP spill whatever. Measured on the
# bench's date tree: 17 % came back, none shared; a synthetic hashed (Orthanc) tree: 96 %.
SPILL_WINDOW = 1024
SPILL_SIGNS = 1 / 3
SPILL_REMEMBER = 16_384
SPILL_WARMUP = 256
# What a member held costs beside its bytes: its Member, Described and their strings (path,
# digest, UIDs). Measured (tracemalloc) on files of 1.2 KiB: 1.2 KiB, as much as their
# bytes; a budget of file bytes alone let open studies of tiny files hold twice as much.
MEMBER_HELD = 1280


@dataclass(slots=True)
class _Open:
    plan: BundlePlan
    held: int = 0  # bytes its members hold in memory (data and MEMBER_HELD each)
    last_dir: bytes = b""
    touched: int = 0  # `started` when its last member arrived
    exited: bool = False
    shared: bool = False  # a folder it has files in held other studies' files too


@dataclass
class Closed:
    """What one step of grouping produced: plans to store, members to spill."""

    plans: list[BundlePlan] = field(default_factory=list)
    spill: list[Member] = field(default_factory=list)


class Grouper:
    """Files in walk order in, bundle plans (and spilled members) out."""

    def __init__(self, *, bundle_size: int, large_file: int, memory: int,
                 patience: int = 8) -> None:
        self.bundle_size = bundle_size
        self.large_file = large_file
        self.memory = memory
        self.patience = patience
        self.open: OrderedDict[str, _Open] = OrderedDict()  # least recently fed first
        self.by_dir: dict[bytes, set[str]] = {}
        self.exits: list[tuple[int, str]] = []  # (touched, group) of bundles whose dir was left
        self.held = 0
        self.started = 0  # groups opened so far: the clock of patience
        self.here = b""
        self.here_shared = False  # the walk's folder has files of more than one study
        # Small early closes: the studies of the last ones, and whether each was a sign of
        # a scattering layout (its folder shared, or its study closed so before).
        self.closed_small: OrderedDict[str, None] = OrderedDict()
        self.signs: deque[bool] = deque(maxlen=SPILL_WINDOW)
        self.signs_seen = 0  # True in signs
        self.small_closes = 0
        # The bundle the last file joined, while the walk is still in its folder: the next
        # file of the same group (most files) only needs adding (add's fast path).
        self.last: _Open | None = None

    # -- the walk moves ----------------------------------------------------------------
    def enter(self, directory: bytes, out: Closed) -> None:
        """The walk is now in `directory`: mark bundles whose last directory it has left."""
        here = self.here
        if directory == here:
            return
        self.here = directory
        self.last = None
        self.here_shared = False
        while here and not _within(directory, here):
            for group in self.by_dir.pop(here, ()):
                b = self.open[group]
                b.exited = True
                heapq.heappush(self.exits, (b.touched, group))
            parent = here.rpartition(b"/")[0]
            here = parent
        self._close_idle(out)

    def _close_idle(self, out: Closed) -> None:
        while self.exits and self.started - self.exits[0][0] >= self.patience:
            touched, group = heapq.heappop(self.exits)
            b = self.open.get(group)
            if b is not None and b.exited and b.touched == touched:
                self._close(group, out, early=True)

    # -- files arrive -------------------------------------------------------------------
    def add(self, m: Member, out: Closed) -> None:
        size = m.size
        if size > self.large_file:
            out.plans.append(BundlePlan(m.group, FILE, [m], size=size))
            return
        group = m.about.group
        bound = member_bound(m)
        b = self.last
        if b is not None and b.plan.group == group and b.plan.bound + bound <= self.bundle_size:
            # The same group as the file before, in the same folder: it is the most recently
            # fed bundle already, its folder and sharing are noted, no clock moved (nothing
            # new can be idle): only the member and the memory it holds are new.
            b.plan.add(m, bound)
            self._hold(b, m, out)
            return
        b = self.open.get(group)
        if b is not None and b.plan.bound + bound > self.bundle_size and b.plan.members:
            self._close(group, out, early=False)
            b = None
        if b is None:
            self.started += 1
            b = self.open[group] = _Open(BundlePlan(group, TAR))
        else:
            self.open.move_to_end(group)
            if not b.exited:
                self.by_dir[b.last_dir].discard(group)
        b.plan.add(m, bound)
        b.exited = False
        b.touched = self.started
        b.last_dir = self.here
        peers = self.by_dir.get(self.here)
        if peers is None:
            peers = self.by_dir[self.here] = set()
        peers.add(group)
        if self.here_shared:
            b.shared = True
        elif len(peers) > 1:
            self.here_shared = True
            for g in peers:
                self.open[g].shared = True
        self.last = b
        self._hold(b, m, out)
        self._close_idle(out)

    def _hold(self, b: _Open, m: Member, out: Closed) -> None:
        """Count what a member added to `b` holds; close the least recently fed bundles
        while memory is short (never the last one open)."""
        cost = MEMBER_HELD + (m.size if m.data is not None else 0)
        b.held += cost
        self.held += cost
        while self.held > self.memory and len(self.open) > 1:
            self._close(next(iter(self.open)), out, early=True)

    def finish(self, out: Closed, *, spilled: Callable[[str], bool]) -> None:
        """The walk is over: every open bundle closes; one whose study has spilled files
        is spilled too, so the study's stragglers are packed together."""
        for group in list(self.open):
            self._close(group, out, early=False, spill=spilled(group))

    def _close(self, group: str, out: Closed, *, early: bool, spill: bool = False) -> None:
        b = self.open.pop(group)
        if b is self.last:
            self.last = None
        if not b.exited:
            self.by_dir.get(b.last_dir, set()).discard(group)
        self.held -= b.held
        plan = b.plan
        if spill or (early and len(plan.members) < SPILL_FILES and plan.size < SPILL_BYTES
                     and self._scattered(group, b.shared)):
            out.spill.extend(plan.members)
            return
        out.plans.append(plan)

    def _scattered(self, group: str, shared: bool) -> bool:
        """Whether a small early close should spill: its folder was shared, or the recent
        ones often showed a scattering layout (see the module's docstring)."""
        sign = shared or group in self.closed_small
        self.closed_small[group] = None
        self.closed_small.move_to_end(group)
        if len(self.closed_small) > SPILL_REMEMBER:
            self.closed_small.popitem(last=False)
        if len(self.signs) == self.signs.maxlen:
            self.signs_seen -= self.signs[0]
        self.signs.append(sign)
        self.signs_seen += sign
        self.small_closes += 1
        return (shared or self.small_closes <= SPILL_WARMUP
                or self.signs_seen >= SPILL_SIGNS * len(self.signs))


def _within(path: bytes, directory: bytes) -> bool:
    return path == directory or path.startswith(directory + b"/")
