"""The endoscopy suite's procedure list: the Modality Worklist and the ES studies in the PACS (I/O).

:func:`worklist` asks the worklist (Modality Worklist C-FIND through
:class:`kit.dicom.dimse.PacsClient`) for the scheduled endoscopies: today, on
a date or a range, for a room (Scheduled Station AE Title), a patient or an
accession number. :func:`performed` asks the PACS (study-level C-FIND) for the
endoscopy studies it already holds. :func:`find_procedure` picks the one
worklist item a capture goes into, as a :class:`~kit.endoscopy.capture.Procedure`.

Every frame has the columns of the other kit frames (``patient_id``,
``accession_number``, ``study_instance_uid``, ...): worklist frames those of
:func:`kit.dicom.query.worklist_to_frame`, study frames those of a
study-level :meth:`~kit.dicom.dimse.PacsClient.find`. Every query is bounded
by ``limit`` like the other finds (the rest is cancelled, with a
:class:`~kit.errors.TruncatedResultWarning`). No match is an empty frame;
:func:`find_procedure` without a match raises :class:`~kit.errors.NotFoundError`.

Written by hand: only the choice of filters; the queries are the DIMSE client's.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import polars as pl

from kit.endoscopy.capture import Procedure
from kit.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from kit.dicom.dimse import PacsClient

__all__ = ["STUDY_COLUMNS", "find_procedure", "performed", "worklist"]

#: Columns of :func:`performed` (a study-level C-FIND), in order.
STUDY_COLUMNS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex", "study_instance_uid",
                 "study_date", "study_time", "accession_number", "study_id", "study_description",
                 "referring_physician_name", "modalities_in_study", "number_of_study_related_series",
                 "number_of_study_related_instances")


def _date(value: Any, *, today: dt.date | None = None) -> Any:
    """``"today"`` as today's date; anything else as given (checked by the query builder)."""
    if isinstance(value, str) and value.strip().lower() == "today":
        return today or dt.date.today()
    return value


def _filters(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ""}


def worklist(pacs: PacsClient, *, date: Any = None, station: str | None = None,
             patient_id: str | None = None, accession: str | None = None, modality: str | None = "ES",
             limit: int | None = None) -> pl.DataFrame:
    """Scheduled endoscopies from the Modality Worklist; one row per Scheduled Procedure Step.

    Parameters
    ----------
    pacs : PacsClient
        The worklist provider (the PACS, RIS or a broker).
    date : str, date or (start, end), optional
        Scheduled date: ``"today"``, a :class:`datetime.date`, ``"20260203"``,
        a range ``"20260201-20260228"`` or a tuple; default any date.
    station : str, optional
        Scheduled Station AE Title (the room's tower), e.g. the vendor
        profile's ``station_aet``.
    patient_id, accession : str, optional
        Patient ID (MRN) and Accession Number; wildcards ``*`` and ``?`` allowed.
    modality : str
        Scheduled modality; ``ES`` (endoscopy) by default, ``None`` for any.
    limit : int, optional
        At most this many items (the rest cancelled, with a warning).

    Returns
    -------
    polars.DataFrame
        Columns :data:`kit.dicom.query.WORKLIST_RETURN_KEYS`; no match gives
        an empty frame with that schema.

    Raises
    ------
    kit.errors.PeerError
        The worklist provider cannot be reached, refuses or fails the query.
    kit.errors.InvalidInputError
        A bad date.
    """
    filters = _filters(modality=modality, scheduled_procedure_step_start_date=_date(date),
                       scheduled_station_ae_title=station, patient_id=patient_id,
                       accession_number=accession)
    return pacs.worklist(limit=limit, **filters)


def performed(pacs: PacsClient, *, date: Any = None, patient_id: str | None = None,
              accession: str | None = None, limit: int | None = None) -> pl.DataFrame:
    """Endoscopy studies already in the PACS (study-level C-FIND, Modalities in Study ``ES``).

    Parameters
    ----------
    pacs : PacsClient
    date : optional
        Study date, as for :func:`worklist` (``"today"`` too).
    patient_id, accession : str, optional
    limit : int, optional
        At most this many studies.

    Returns
    -------
    polars.DataFrame
        Columns :data:`STUDY_COLUMNS`.
    """
    filters = _filters(modalities_in_study="ES", study_date=_date(date), patient_id=patient_id,
                       accession_number=accession)
    return pacs.find("STUDY", return_keys=STUDY_COLUMNS, limit=limit, **filters)


def find_procedure(pacs: PacsClient, accession: str, *, station: str | None = None,
                   modality: str | None = "ES") -> Procedure:
    """The worklist item with this accession number, as a :class:`Procedure` to capture into.

    Parameters
    ----------
    pacs : PacsClient
        The worklist provider.
    accession : str
        The Accession Number (no wildcards).
    station : str, optional
        Only items scheduled on this station AE title.
    modality : str, optional
        Only items of this modality (``ES`` by default; ``None`` for any).

    Raises
    ------
    kit.errors.NotFoundError
        No worklist item has this accession number.
    kit.errors.InvalidInputError
        An empty accession or one with wildcards, or items of this accession
        in different studies (the worklist contradicts itself).
    """
    if not isinstance(accession, str) or not accession.strip() or any(c in accession for c in "*?\\"):
        raise InvalidInputError(f"an accession number without wildcards, not {accession!r}",
                                source="accession")
    found = worklist(pacs, accession=accession, station=station, modality=modality, limit=50)
    found = found.filter(pl.col("accession_number") == accession)  # a worklist SCP may match loosely
    if found.height == 0:
        query = _filters(accession_number=accession, scheduled_station_ae_title=station, modality=modality)
        raise NotFoundError(f"no worklist item with accession number {accession!r}"
                            + (f" on station {station}" if station else "")
                            + (f" for modality {modality}" if modality else ""),
                            query=query, peer=pacs.address)
    studies = found["study_instance_uid"].unique().to_list()
    if len(studies) != 1:
        raise InvalidInputError(f"accession {accession!r} is in {len(studies)} studies in the worklist: "
                                f"{studies[:3]}", source="worklist")
    return Procedure.from_row(found.row(0, named=True))
