"""Pick what a notebook's parameters name out of a query's frame, or say what is missing (pure).

A notebook's parameters (``PATIENT_ID``, ``MODALITY``, ``SLICE_INDEX``) name things that
may not exist on the system it runs against. These functions take the frame a query
returned and give the row (or slice) the parameters name; when there is none they raise
:class:`~kit.errors.InvalidInputError` with a sentence saying what was asked for and
what there is, never a bare ``IndexError`` from ``frame[...][0]``::

    study = pick_study(studies, patient_id="MRN1001", modality="CT", latest=True)
    index = pick_slice(volume.array.shape[0], SLICE_INDEX)   # None: the middle slice
"""

from __future__ import annotations

from typing import Any

import polars as pl

from kit.errors import InvalidInputError

__all__ = ["pick_row", "pick_slice", "pick_study", "require_rows"]


def _listing(values: list[Any], noun: str) -> str:
    shown = sorted({str(v) for v in values if v is not None and str(v)})
    if not shown:
        return f"no {noun}"
    more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
    return f"{', '.join(shown[:8])}{more}"


def require_rows(frame: pl.DataFrame, sentence: str, *, source: str | None = None) -> pl.DataFrame:
    """``frame`` when it has a row; else InvalidInputError with ``sentence``.

    Parameters
    ----------
    frame : polars.DataFrame
        A query's result.
    sentence : str
        What is missing, as a sentence (``"the PACS has no series of patient MRN9"``).
    source : str, optional
        The parameter or system to name in the error.
    """
    if frame.height == 0:
        raise InvalidInputError(sentence, source=source)
    return frame


def pick_row(frame: pl.DataFrame, what: str, *, source: str | None = None,
             **equal: Any) -> dict[str, Any]:
    """The first row of ``frame`` whose columns equal ``equal``; else a sentence naming ``what``.

    Parameters
    ----------
    frame : polars.DataFrame
        A query's result.
    what : str
        What the row is, for the message (``"patient"``, ``"FHIR Patient"``).
    source : str, optional
        Where the frame came from (``"the FHIR server"``).
    **equal
        Column = value conditions (all must hold).

    Returns
    -------
    dict
        The row, by column name.

    Raises
    ------
    InvalidInputError
        No row matches (the message names the conditions and, for one condition,
        the values there are); a condition names a column the frame lacks.
    """
    missing = [c for c in equal if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"the {what} frame has no column {', '.join(missing)}", source=source)
    matched = frame
    for column, value in equal.items():
        matched = matched.filter(pl.col(column) == value)
    if matched.height == 0:
        asked = ", ".join(f"{c} {v!r}" for c, v in equal.items()) or "any"
        where = f" in {source}" if source else ""
        there = ""
        if len(equal) == 1:
            column = next(iter(equal))
            there = f" ({column} there: {_listing(frame[column].to_list(), column)})" if frame.height else \
                " (there are none at all)"
        raise InvalidInputError(f"no {what} with {asked}{where}{there}")
    return matched.row(0, named=True)


def pick_study(studies: pl.DataFrame, *, modality: str | None = None, patient_id: str | None = None,
               latest: bool = False, source: str = "the PACS") -> dict[str, Any]:
    """One study of a study-level frame: of ``patient_id``, with ``modality``, the earliest or latest.

    Parameters
    ----------
    studies : polars.DataFrame
        A study-level C-FIND or QIDO-RS frame (``patient_id``, ``study_date``,
        ``modalities_in_study``, ``study_instance_uid``).
    modality : str, optional
        Keep studies whose ``modalities_in_study`` holds it (``"CT"``).
    patient_id : str, optional
        Keep that patient's studies.
    latest : bool
        The latest study by date (default: the earliest); ties by patient and UID.
    source : str
        The system the frame came from, for the message.

    Returns
    -------
    dict
        The study's row.

    Raises
    ------
    InvalidInputError
        No study matches, with a sentence saying which patient or modality is
        missing and what the frame does hold.
    """
    frame = studies
    who = f" of patient {patient_id}" if patient_id is not None else ""
    if patient_id is not None:
        frame = frame.filter(pl.col("patient_id") == patient_id)
        if frame.height == 0:
            there = (f"; it lists studies of {_listing(studies['patient_id'].to_list(), 'patient')}"
                     if studies.height else "")
            raise InvalidInputError(f"{source} lists no study{who}{there}", source="patient_id")
    if modality is not None:
        have = frame["modalities_in_study"].explode().to_list() if frame.height else []
        frame = frame.filter(pl.col("modalities_in_study").list.contains(modality))
        if frame.height == 0:
            there = f"; it lists {_listing(have, 'modality')} studies{who}" if have else \
                "; it lists no study at all"
            raise InvalidInputError(f"{source} lists no {modality} study{who}{there}", source="modality")
    if frame.height == 0:
        raise InvalidInputError(f"{source} lists no study", source="studies")
    order = ["study_date", "patient_id", "study_instance_uid"]
    frame = frame.sort([c for c in order if c in frame.columns], nulls_last=True)
    return frame.row(-1 if latest else 0, named=True)


def pick_slice(count: int, index: int | None = None) -> int:
    """The slice ``index`` names in a series of ``count`` slices; None: the middle one.

    Raises
    ------
    InvalidInputError
        ``count`` is not positive, or ``index`` is outside ``0..count-1``.
    """
    if count <= 0:
        raise InvalidInputError("the series has no slice to show", source="slice_index")
    if index is None:
        return count // 2
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise InvalidInputError(f"slice {index!r} is outside the series (0 to {count - 1})",
                                source="slice_index")
    return index
