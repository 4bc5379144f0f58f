"""Audit descriptions of DICOM accesses: the PACS and DICOMweb clients, the embedded PACS's handlers.

Each wrapper here is one decorator line at a client method or a server handler
(:func:`kit.audit.audited`); it names who, the peer, and the identifiers the
access touched: those asked for and those in the answer (a C-FIND by study date
records the patients it returned). Identifiers only: patient ids, study
instance UIDs, accession numbers; never names, dates or query patterns.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, cast

from pydicom import dcmread
from pydicom.dataset import Dataset

from kit import audit

__all__ = ["pacs", "served", "web"]

F = TypeVar("F", bound=Callable[..., Any])

_ID_COLUMNS = (("patient_ids", "patient_id"), ("study_uids", "study_instance_uid"),
               ("accessions", "accession_number"))
_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "AccessionNumber"]
_KEYWORDS = (("patient_ids", "PatientID"), ("study_uids", "StudyInstanceUID"),
             ("accessions", "AccessionNumber"))
_WORKLIST = "1.2.840.10008.5.1.4.31"
#: most stored/received files whose header is read for identifiers, per call
MAX_HEADERS = 10_000


def _exact(value: Any) -> list[str]:
    """The exact identifiers a filter value names (wildcards and ranges are query text: none)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [str(v) for v in values if isinstance(v, str) and v and not any(c in v for c in "*?\\")]


def _from_frame(frame: Any, ids: dict[str, list[str]]) -> None:
    columns = getattr(frame, "columns", ())
    for name, column in _ID_COLUMNS:
        if column in columns:
            ids[name] += [v for v in frame.get_column(column).unique(maintain_order=True).to_list() if v]


def _from_headers(paths: Iterable[Any], ids: dict[str, list[str]]) -> None:
    for count, path in enumerate(p for p in paths if p):
        if count >= MAX_HEADERS:
            return
        try:
            ds = dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except Exception:  # noqa: BLE001 - an unreadable header names no identifier
            continue
        _from_dataset(ds, ids)


def _from_dataset(ds: Any, ids: dict[str, list[str]]) -> None:
    for name, keyword in _KEYWORDS:
        value = ds.get(keyword) if isinstance(ds, Dataset) else None
        if value:
            ids[name].append(str(value))


def _new_ids() -> dict[str, list[str]]:
    return {"patient_ids": [], "study_uids": [], "accessions": []}


_RETRIEVE = ("pacs.get", "pacs.move", "dicomweb.wado")
_STORE = ("pacs.store", "dicomweb.stow")


def _describer(action: str) -> audit.Describe:
    def describe(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any,
                 error: BaseException | None) -> dict[str, Any]:
        client = args[0]
        aet = getattr(client, "aet", None)
        notes = [f"as AE {aet}"] if aet else []
        ids = _new_ids()
        for name, column in _ID_COLUMNS:
            ids[name] += _exact(kwargs.get(column))
        if action in ("pacs.find", "dicomweb.qido"):
            level = kwargs.get("level", args[1] if len(args) > 1 else "STUDY")
            notes.append(f"level {getattr(level, 'value', level)}")
        study = kwargs.get("study_uid", args[1] if action == "dicomweb.wado" and len(args) > 1 else None)
        ids["study_uids"] += _exact(study)
        frame = result if result is not None else getattr(error, "received", None)
        fields: dict[str, Any] = {}
        if frame is not None and hasattr(frame, "columns"):
            fields["count"] = frame.height
            _from_frame(frame, ids)
            if "path" in frame.columns and action in _RETRIEVE + _STORE:
                paths = frame.get_column("path").to_list()
                _from_headers(paths[:1] if action in _RETRIEVE else paths, ids)  # a retrieve is one study
        if action in _STORE:
            items = args[1] if len(args) > 1 else kwargs.get("items")
            if isinstance(items, list | tuple):  # datasets handed to store(): their identifiers
                for item in items[:MAX_HEADERS]:
                    _from_dataset(item, ids)
        target = getattr(client, "address", None) or getattr(client, "base", "")
        return {"target": target, "detail": "; ".join(notes), **fields, **ids}

    return describe


def pacs(action: str) -> Callable[[F], F]:
    """Audit a :class:`~kit.dicom.dimse.PacsClient` method (``pacs.find``, ``pacs.get``...)."""
    return audit.audited(action, _describer(action))


def web(action: str) -> Callable[[F], F]:
    """Audit a :class:`~kit.dicom.web.DicomWebClient` method (``dicomweb.qido``...)."""
    return audit.audited(action, _describer(action))


# -- the embedded PACS (served) -------------------------------------------------------------------

def _peer(event: Any) -> tuple[str, str]:
    """(who, target) of a pynetdicom event: the calling AE and the PACS itself."""
    assoc = event.assoc
    requestor = assoc.requestor
    acceptor = assoc.acceptor
    who = f"ae:{str(requestor.ae_title or '').strip()}@{requestor.address}"
    return who, f"dicom://{str(acceptor.ae_title or '').strip()}@{acceptor.address}:{acceptor.port}"


def served(action: str) -> Callable[[F], F]:
    """Audit an embedded-PACS handler: a C-STORE method or a C-FIND/C-GET/C-MOVE generator.

    For the generators, the identifiers of every dataset yielded (matches, instances
    sent) are recorded when the handler finishes; a failure status yielded, or an
    unknown C-MOVE destination, is a failed access.
    """

    def decorate(fn: F) -> F:
        if action == "pacs.store":
            return cast(F, _served_store(fn))

        @functools.wraps(fn)
        def wrapper(self: Any, event: Any) -> Iterator[Any]:
            if not audit.enabled():
                yield from fn(self, event)
                return
            ids = _new_ids()
            failed = ""
            count = 0
            try:
                asked = event.identifier
                for name, keyword in _KEYWORDS:
                    ids[name] += _exact(str(asked.get(keyword, "") or ""))
            except Exception:  # noqa: BLE001 - the handler reports an undecodable identifier itself
                pass
            try:
                for item in fn(self, event):
                    if isinstance(item, tuple) and len(item) == 2 and item == (None, None):
                        failed = "UnknownMoveDestination"
                    elif isinstance(item, tuple) and len(item) == 2:
                        status, ds = item
                        code = status if isinstance(status, int) else getattr(status, "Status", 0)
                        if code in (0xFF00, 0xFF01):
                            count += 1
                            _from_dataset(ds, ids)
                        elif code not in (0, 0xFE00) and isinstance(status, Dataset):
                            failed = f"DimseStatus{int(code):04X}"
                    yield item
            except GeneratorExit:  # pynetdicom stops asking once it has what it was told to expect
                raise
            except BaseException as exc:
                failed = type(exc).__name__
                raise
            finally:
                worklist = str(getattr(event.request, "AffectedSOPClassUID", "")) == _WORKLIST
                _record_served("pacs.worklist" if worklist else action, event, ids, count, failed)

        return cast(F, wrapper)

    return decorate


def _record_served(action: str, event: Any, ids: Mapping[str, list[str]], count: int, failed: str) -> None:
    try:
        who, target = _peer(event)
    except Exception:  # noqa: BLE001
        who, target = "ae:unknown", ""
    audit.record(action, who=who, target=target, side="server", count=count,
                 outcome="failed" if failed else "ok", error=failed, **ids)


def _served_store(fn: Callable[..., tuple[int, str]]) -> Callable[..., tuple[int, str]]:
    """``EmbeddedPACS._store(meta, encoded, calling, sop_class, sop_uid) -> (status, comment)``."""

    @functools.wraps(fn)
    def wrapper(self: Any, meta: Any, encoded: bytes, calling: str, sop_class: str,
                sop_uid: str) -> tuple[int, str]:
        status, comment = fn(self, meta, encoded, calling, sop_class, sop_uid)
        if audit.enabled():
            ids = _new_ids()
            if status == 0:
                try:
                    for instance in self.store.instances({"SOPInstanceUID": [sop_uid]}):
                        ids["patient_ids"].append(instance.patient_id)
                        ids["study_uids"].append(instance.study_instance_uid)
                except Exception:  # noqa: BLE001 - stored, but its identifiers unknown
                    pass
            audit.record("pacs.store", who=f"ae:{calling.strip()}", target=self.address, side="server",
                         count=1 if status == 0 else 0, outcome="ok" if status == 0 else "failed",
                         error="" if status == 0 else f"DimseStatus{status:04X}", **ids)
        return status, comment

    return wrapper
