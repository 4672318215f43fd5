"""Crash points for the kill-and-resume tests: SIGKILL ourselves at a named moment.

Set PACSMIGRATE_CRASH_AT=name:n to die the n-th time the run reaches `name`. Unset (the
normal case) every call is one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_TARGET = os.environ.get("PACSMIGRATE_CRASH_AT", "")
_seen: Counter[str] = Counter()

POINTS = ("after-intent", "mid-upload", "part-uploaded", "after-upload", "after-sidecar",
          "after-commit", "mid-catalogue")


def point(name: str) -> None:
    """Die here if the environment asked for it (tests only)."""
    if not _TARGET:
        return
    _seen[name] += 1
    if _TARGET == f"{name}:{_seen[name]}":
        os.kill(os.getpid(), signal.SIGKILL)
