"""Schemas of the DIMSE client's result frames (imported with polars, on first use).

They live apart from :mod:`kit.dicom.dimse` so that importing the client (and
``kit pacs echo``) does not import polars; ``kit.dicom.dimse.RECEIVED_SCHEMA`` and
``STORED_SCHEMA`` are these same dicts.
"""

from __future__ import annotations

import polars as pl

__all__ = ["RECEIVED_SCHEMA", "STORED_SCHEMA"]

#: Frame of received instances (get/move): one row per instance written.
RECEIVED_SCHEMA: dict[str, pl.DataType] = {
    "sop_instance_uid": pl.String(), "sop_class_uid": pl.String(),
    "transfer_syntax_uid": pl.String(), "study_instance_uid": pl.String(),
    "path": pl.String(), "size_bytes": pl.Int64(),
}
#: Frame of stored instances (store): one row per instance sent.
STORED_SCHEMA: dict[str, pl.DataType] = {
    "sop_instance_uid": pl.String(), "sop_class_uid": pl.String(),
    "transfer_syntax_uid": pl.String(), "path": pl.String(), "status": pl.Int32(),
}
