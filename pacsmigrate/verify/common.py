"""What the verify passes share: the job's state and counters, sampling, batches."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from itertools import islice
from typing import Any, TypeVar

from ..access import Opened
from ..checkpoint import Checkpoint
from .config import VerifyConfig
from .findings import Findings
from .result import Counts
from .workspace import ByObject

T = TypeVar("T")

_BATCH = 2000


class Job:
    """One verify run over an opened migration; the counters fill as it goes."""

    def __init__(self, opened: Opened, cfg: VerifyConfig, findings: Findings, *,
                 progress: bool) -> None:
        self.cp = opened.cp
        self.dest = opened.dest
        self.backend = opened.backend
        self.cfg = cfg
        self.findings = findings
        self.progress = progress
        self.n: Counter[str] = Counter()
        self.by_object: ByObject | None = None
        self.use_list = cfg.use_list

    def counts(self) -> Counts:
        return Counts(**self.n)


class Sampler:
    """Exactly ceil(percent% of total) rows, chosen as they stream past (Knuth's Algorithm S).

    The same seed over the same index chooses the same rows, so --deep and --source check
    the same files, and a re-run with the same seed repeats the check.
    """

    def __init__(self, total: int, percent: float | None, seed: int) -> None:
        self.every = percent is None
        self.left = total
        self.need = total if percent is None else math.ceil(total * percent / 100)
        self.rng = random.Random(seed)

    def take(self) -> bool:
        if self.every:
            return True
        if self.left <= 0 or self.need <= 0:
            return False
        picked = self.rng.random() * self.left < self.need
        self.left -= 1
        self.need -= picked
        return picked


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(islice(it, n))


async def db_batches(cp: Checkpoint, name: str) -> AsyncIterator[list[tuple[bytes, Any]]]:
    """A checkpoint database in short batches, read on the checkpoint's own thread."""
    it = cp.iter_db(name, batch=_BATCH)
    while batch := await cp.call(_take, it, _BATCH):
        yield batch
