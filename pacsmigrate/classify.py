"""Where a file goes: its study's group when its header names a study, else its folder's."""

from __future__ import annotations

import os

from .header import Header
from .keys import study_group, unsorted_group
from .records import DICOM, UNSORTED, Described


def describe(path: bytes, header: Header, *, secret: bytes) -> Described:
    """The file's place and what the index records about it (keys reveal no UID)."""
    if header.reason:
        return Described(unsorted_group(secret, os.path.dirname(path)), UNSORTED, header.reason,
                         header.study_uid, header.series_uid, header.sop_uid, header.modality,
                         header.study_date, header.transfer_syntax, header.accession)
    return Described(study_group(secret, header.study_uid), DICOM, "", header.study_uid,
                     header.series_uid, header.sop_uid, header.modality, header.study_date,
                     header.transfer_syntax, header.accession)
