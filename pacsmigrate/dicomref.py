"""What the header scan takes from pydicom, importing pydicom only when a file needs it.

Importing pydicom costs a process about 0.2 CPU-s (its pixel handlers pull in
numpy, its data dictionary is large), a few per cent of a small-file run and again in every
Dask worker. Most headers are scanned without it: only its data dictionary (for implicit
VR and empty elements), its settings once something has imported it, and the fallback
parser (header.py) need the import. The VR sets below are pydicom's; a test checks them
against the pydicom installed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# pydicom.valuerep.VR, the two-letter and the ambiguous ("US or SS") names.
VR_NAMES = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OB or OW",
    "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
    "UL", "UN", "UR", "US", "US or OW", "US or SS", "US or SS or OW", "UT", "UV"})
# pydicom.valuerep.EXPLICIT_VR_LENGTH_32: explicit VRs with the 4-byte length.
LONG_VR_NAMES = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                           "UT", "UV"})
# pydicom.valuerep.AMBIGUOUS_VR: resolved from other elements' values.
AMBIGUOUS_VR_NAMES = frozenset({"OB or OW", "US or OW", "US or SS", "US or SS or OW"})
# Two-letter VRs for which pydicom.dataelem.empty_value_for_VR(vr, raw=True) is None.
NONE_WHEN_EMPTY_NAMES = frozenset({"AT", "DS", "FD", "FL", "IS", "OB", "OD", "OF", "OL", "OV",
                                   "OW", "SL", "SS", "SV", "UL", "UN", "US", "UV"})

_ref: dict[str, Any] = {}
# Read once: pydicom reads it once too, when it is imported (the scan runs per file).
_FUTURE = bool(os.environ.get("PYDICOM_FUTURE"))


def _load() -> dict[str, Any]:
    if not _ref:
        from pydicom import config, uid
        from pydicom.datadict import _dictionary_vr_fast
        from pydicom.hooks import hooks, raw_element_value, raw_element_vr
        _ref.update(config=config, uid=uid, vr=_dictionary_vr_fast, hooks=hooks,
                    raw_element_value=raw_element_value, raw_element_vr=raw_element_vr)
    return _ref


def _untouched() -> bool:
    """pydicom is not loaded, so its settings are the defaults it will start with."""
    return not _FUTURE and "pydicom" not in sys.modules


def dictionary_vr(tag: int) -> str:
    """The VR pydicom's data dictionary gives `tag` (group << 16 | element); KeyError when
    the dictionary does not know it."""
    vr: str = _load()["vr"](tag)
    return vr


def defaults() -> bool:
    """Whether pydicom reads under the default settings the scan copies."""
    if _untouched():
        return True
    ref = _load()
    config, hooks = ref["config"], ref["hooks"]
    return bool(config.settings.reading_validation_mode != config.RAISE
                and config.settings.infer_sq_for_un_vr and not config.datetime_conversion
                and not config.use_none_as_empty_text_VR_value
                and config.data_element_callback is None and not hooks.raw_element_kwargs
                and hooks.raw_element_vr is ref["raw_element_vr"]
                and hooks.raw_element_value is ref["raw_element_value"])


def replace_un_with_known_vr() -> bool:
    """pydicom's config.replace_un_with_known_vr (True by default)."""
    return True if _untouched() else bool(_load()["config"].replace_un_with_known_vr)


def private_syntax(ts: str) -> bool:
    """Whether `ts` was registered with pydicom as a private transfer syntax (none can have
    been before pydicom is loaded)."""
    return not _untouched() and ts in _load()["uid"].PrivateTransferSyntaxes
