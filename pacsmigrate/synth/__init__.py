"""Deterministic synthetic PACS trees of valid DICOM files for demos, tests and benchmarks.

`make_tree` and `SynthSummary` are loaded on first use: they need pydicom, which the
command line imports only when a command needs it (dicomref.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

LAYOUTS = ("patient", "date", "cd", "hashed", "storescp", "mixed")

if TYPE_CHECKING:
    from .tree import SynthSummary, make_tree


def __getattr__(name: str) -> Any:
    if name in ("SynthSummary", "make_tree"):
        from . import tree
        return getattr(tree, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LAYOUTS", "SynthSummary", "make_tree"]
