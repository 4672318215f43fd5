"""Deterministic synthetic PACS trees of valid DICOM files for demos, tests and benchmarks."""

from .layouts import LAYOUTS
from .tree import SynthSummary, make_tree

__all__ = ["LAYOUTS", "SynthSummary", "make_tree"]
