"""DIMSE client: C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE and Modality Worklist over pynetdicom.

:class:`PacsClient` opens one association per call (pynetdicom's
:class:`~pynetdicom.ae.ApplicationEntity`), returns results as polars frames
(see :mod:`kit.dicom.query` for the query columns) and converts every failure
into the kit's error tree:

=====================================  ===========================================
what happened                          raised
=====================================  ===========================================
nothing listens, host name unknown     :class:`~kit.errors.PeerUnreachableError`
no answer within ``timeout``           :class:`~kit.errors.PeerTimeoutError`
A-ASSOCIATE-RJ (e.g. wrong AE title)   :class:`~kit.errors.AssociationRejectedError`
A-ABORT / connection lost mid-request  :class:`~kit.errors.AssociationAbortedError`
peer broke a bound or the protocol     :class:`~kit.errors.DicomProtocolError` (an
                                       AssociationAbortedError the kit sent: a C-FIND
                                       response or PDU over its bound, an answer to
                                       another message; final, not retried)
C-FIND matches over the total bound    :class:`~kit.errors.DicomError` (C-CANCEL)
failure or warning DIMSE status        :class:`~kit.errors.DimseStatusError`
partial C-GET / C-MOVE                 :class:`RetrieveError` (a DimseStatusError
                                       with the sub-operation counts and the frame
                                       of what did arrive)
C-GET / C-MOVE that delivers nothing   :class:`RetrieveError` (no such study/series)
C-MOVE destination unknown (0xA801)    :class:`RetrieveError` naming what to register
C-GET / C-MOVE ``cancel`` set          :class:`RetrieveCancelledError` (after C-CANCEL)
not DICOM / truncated file to store    :class:`~kit.errors.DicomFileError`
TLS handshake failure                  :class:`~kit.errors.TLSError`
=====================================  ===========================================

Speed. Stock pynetdicom is several times slower than dcmtk on loopback
(every PDU crosses two reactor threads and four queues polled with 1 ms
sleeps, every command set is encoded by pydicom). pynetdicom negotiates and
releases the association; for :meth:`PacsClient.store` and
:meth:`PacsClient.get` the kit then reads and writes the PDUs itself on the
calling thread (:mod:`kit.dicom._fastnet`), sending files' bytes as they are
and writing received instances straight from the encoded bytes (never
decoded) to a temporary file renamed into place. Every association socket
gets ``TCP_NODELAY`` (pynetdicom never sets it; Nagle plus delayed ACK stalls
each small PDU), large PDUs are asked for, and pynetdicom's per-PDU logging
handlers are unbound before the request (unless its logger is on DEBUG). The
A-ASSOCIATE-RQ is encoded by hand (:mod:`kit.dicom._assoc_rq`, byte-equal to
pynetdicom's), the release skips pynetdicom's 10 ms polls, the data phase runs
on a blocking socket with kernel timeouts, reading PDUs in chunks
(:mod:`kit.dicom._clientphase`), and a store reads each file once (the checked
bytes are sent, up to :data:`KEEP_CHECKED_BYTES`) and sends each request as
soon as the previous answer is in. A C-GET answers each instance as soon as its
file is at its final path, with the files made ahead on a helper thread where
making them proves slow (:mod:`kit.dicom._getphase`).

C-MOVE needs the PACS to know our AE title as a move destination (the PACS
connects back to us): register ``aet`` (or ``move_aet``) with our host and
``store_port`` in the PACS's modality table first. C-GET needs no setup and
is the better choice where the PACS supports it.

Written by hand here: the frame building; the association set-up and its
error mapping are in :mod:`kit.dicom._association`, the association protocol
is pynetdicom's, the C-STORE/C-GET data phase :mod:`kit.dicom._fastnet`'s (a
hand-written fast path, tested byte for byte against pynetdicom's in
tests/integration/pacs_perf). polars and :mod:`kit.dicom.query` are imported on
first use, so a C-ECHO (``kit pacs echo``) loads neither.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext, build_context

from kit._truncate import check_bytes, check_limit
from kit.config import PacsSettings, Settings
from kit.dicom._association import AssociationClient
from kit.dicom._association import nodelay as _nodelay
from kit.dicom._audit import pacs as _audited
from kit.dicom._cancel import RetrieveCancel, cancel_move
from kit.dicom._cfind import MAX_FIND_BYTES, MAX_IDENTIFIER_BYTES, IdentifierBound, collect_find
from kit.dicom._cfind import final_status as _final
from kit.dicom._cfind import status_int as _status_int
from kit.dicom._clientphase import ClientPhase, store_all
from kit.dicom._contexts import storage_contexts
from kit.dicom._fastnet import FileReceiver, hold_dul, share_context_uids
from kit.dicom._getphase import Expected, PooledReceiver, get_loop
from kit.dicom._outgoing import Outgoing
from kit.errors import (
    AssociationAbortedError,
    ConfigError,
    DicomError,
    DimseStatusError,
    InvalidInputError,
    PeerTimeoutError,
    TLSError,
)

if TYPE_CHECKING:  # polars, the frame schemas and the query module load on first use (not for echo)
    import polars as pl

    from kit.dicom._frames import RECEIVED_SCHEMA, STORED_SCHEMA
    from kit.dicom.query import QueryLevel, QueryModel

__all__ = ["RECEIVED_SCHEMA", "STORED_SCHEMA", "PacsClient", "RetrieveCancelledError", "RetrieveError"]


VERIFICATION = "1.2.840.10008.1.1"
#: C-MOVE status: the destination AE title is unknown to the PACS
UNKNOWN_MOVE_DESTINATION = 0xA801
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Bytes of checked files :meth:`PacsClient.store` keeps to send from memory (the rest are read again).
KEEP_CHECKED_BYTES = 256 * 1024 * 1024


def __getattr__(name: str) -> Any:
    # RECEIVED_SCHEMA, STORED_SCHEMA (kit.dicom._frames): built with polars on first use
    if name in ("RECEIVED_SCHEMA", "STORED_SCHEMA"):
        from kit.dicom import _frames

        return getattr(_frames, name)
    raise AttributeError(f"module 'kit.dicom.dimse' has no attribute {name!r}")


class RetrieveError(DimseStatusError):
    """A C-GET/C-MOVE (or batch C-STORE) that did not fully succeed.

    Attributes
    ----------
    completed, failed, warning : int or None
        Sub-operation counts from the final response (None if not sent).
    received : polars.DataFrame
        What did arrive (or was stored) before the failure.
    """

    def __init__(self, message: str, *, status: int | None, peer: str | None = None,
                 completed: int | None = None, failed: int | None = None,
                 warning: int | None = None, received: pl.DataFrame | None = None) -> None:
        self.completed, self.failed, self.warning = completed, failed, warning
        if received is None:
            import polars as pl

            from kit.dicom._frames import RECEIVED_SCHEMA

            received = pl.DataFrame(schema=RECEIVED_SCHEMA)
        self.received = received
        counts = f" (completed {completed}, failed {failed}, warning {warning})" \
            if completed is not None or failed is not None else ""
        super().__init__(message + counts, status=status, peer=peer)


class RetrieveCancelledError(RetrieveError):
    """A C-GET/C-MOVE stopped part-way because its ``cancel`` was set: C-CANCEL was sent and the
    association released (aborted if the PACS went on). ``received`` holds what had arrived: an
    incomplete retrieve."""

    @classmethod
    def of(cls, what: str, receiver: FileReceiver, peer: str) -> RetrieveCancelledError:
        """The error for a cancelled ``what`` (C-GET, C-MOVE) with what ``receiver`` wrote."""
        with receiver.lock:
            rows = sorted(receiver.rows, key=_by_instance)
        received = _rows_frame(rows)
        return cls(f"{what} cancelled after {received.height} instance(s)", status=0xFE00, peer=peer,
                   received=received)


@functools.cache
def _default_storage_contexts() -> tuple[PresentationContext, ...]:
    """The default C-GET storage contexts, built once and cheap to copy: building 120
    contexts of 21 syntaxes validates ~2,500 UIDs and pynetdicom deep-copies them on every
    association (~75 ms per C-GET on a busy machine; the copies share the UIDs instead)."""
    contexts = storage_contexts(None)
    share_context_uids(contexts)
    return tuple(contexts)


@functools.cache
def _default_roles() -> tuple[Any, ...]:
    """SCP role selection for every default storage context (built once; read-only for pynetdicom)."""
    return tuple(build_role(str(cx.abstract_syntax), scp_role=True)
                 for cx in _default_storage_contexts()[:127])


def _asked(study_uid: str | None, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid:
        return f"instance {sop_uid}"
    return f"series {series_uid}" if series_uid else f"study {study_uid}"


def _rows_frame(rows: list[tuple[str, str, str, str | None, str, int]]) -> pl.DataFrame:
    """The received frame: one row per file, the last instance written to it (a PACS that sends
    an instance twice replaced the first copy's file: its row would list the path twice)."""
    import polars as pl

    from kit.dicom._frames import RECEIVED_SCHEMA

    if not rows:
        return pl.DataFrame(schema=RECEIVED_SCHEMA)
    last = list({row[4]: row for row in rows}.values())  # by path: the last row of each
    return pl.DataFrame(last, schema=RECEIVED_SCHEMA, orient="row")


def _by_instance(row: tuple[Any, ...]) -> str:
    return str(row[0])


class PacsClient(AssociationClient):
    """A DICOM DIMSE client (SCU) for one PACS.

    Parameters
    ----------
    host, port : str, int
        The PACS's address.
    called_aet : str
        The PACS's AE title.
    aet : str
        Our (calling) AE title; also the default C-MOVE destination.
    timeout : float
        Seconds for connecting, association negotiation and each DIMSE
        response (a C-GET/C-MOVE waits up to this long between sub-operations).
    tls : ssl.SSLContext, optional
        Client TLS context (see :meth:`from_settings` for building one).
    max_pdu : int
        Largest PDU we accept, in bytes (0 = unlimited). Large PDUs mean fewer
        round trips.
    max_identifier_bytes : int
        Largest data set of one C-FIND (or worklist) response, in bytes (default 16 MiB; a real
        one is a few KB): a PACS sending more gets A-ABORT as it does, raising
        :class:`~kit.errors.DicomProtocolError`. Not applied to C-GET's instances.
    max_find_bytes : int
        Largest total of the data sets of one C-FIND's matches, in bytes (default 512 MiB): past
        it, C-CANCEL and :class:`~kit.errors.DicomError` (narrow the query or raise this).

    Examples
    --------
    >>> pacs = PacsClient("127.0.0.1", 4242, called_aet="ORTHANC")  # doctest: +SKIP
    >>> studies = pacs.find("STUDY", patient_id="MRN1001")  # doctest: +SKIP
    >>> files = pacs.get(study_uid=studies["study_instance_uid"][0], dest=Path("data"))  # doctest: +SKIP
    """

    def __init__(self, host: str, port: int, *, called_aet: str, aet: str = "KITSCU",
                 timeout: float = 30.0, tls: ssl.SSLContext | None = None,
                 max_pdu: int = 4 * 1024 * 1024, max_identifier_bytes: int = MAX_IDENTIFIER_BYTES,
                 max_find_bytes: int = MAX_FIND_BYTES) -> None:
        if not host:
            raise InvalidInputError("host must not be empty")
        if not 0 < int(port) < 65536:
            raise InvalidInputError(f"port {port} is out of range")
        for name, title in (("called_aet", called_aet), ("aet", aet)):
            if not title or len(title) > 16 or "\\" in title or not title.strip():
                raise InvalidInputError(f"{name} {title!r} is not a valid AE title (1-16 characters)")
        if timeout <= 0:
            raise InvalidInputError("timeout must be positive")
        self.host, self.port = host, int(port)
        self.called_aet, self.aet = called_aet, aet
        self.timeout = float(timeout)
        self.tls = tls
        self.max_pdu = int(max_pdu)
        self.max_identifier_bytes = check_bytes("max_identifier_bytes", max_identifier_bytes)
        self.max_find_bytes = check_bytes("max_find_bytes", max_find_bytes)

    @classmethod
    def from_settings(cls, settings: Settings | PacsSettings) -> PacsClient:
        """A client for the ``[pacs]`` settings (TLS context from tls_ca/tls_cert/tls_key)."""
        pacs = settings.pacs if isinstance(settings, Settings) else settings
        context: ssl.SSLContext | None = None
        if pacs.tls:
            try:
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pacs.tls_ca)
                if pacs.tls_cert:
                    context.load_cert_chain(pacs.tls_cert, pacs.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise TLSError(f"cannot build the TLS context: {exc}") from exc
        client = cls(pacs.host, pacs.port, called_aet=pacs.called_aet, aet=pacs.aet,
                     timeout=pacs.timeout, tls=context)
        client.store_port = pacs.store_port
        return client

    store_port: int = 0

    def __repr__(self) -> str:
        return f"PacsClient({self.address!r}, aet={self.aet!r})"


    @_audited("pacs.echo")
    def echo(self) -> float:
        """C-ECHO the PACS.

        Returns
        -------
        float
            Round-trip seconds of the C-ECHO itself (association excluded).
        """
        with self._associate([build_context(VERIFICATION)]) as assoc:
            start = time.perf_counter()
            status = assoc.send_c_echo()
            took = time.perf_counter() - start
            code = _status_int(status)
            if code is None:
                raise self._lost(assoc, "C-ECHO", took)
            if code != 0:
                raise DimseStatusError("C-ECHO", status=code, peer=self.address)
            return took

    def _find(self, identifier: Dataset, sop_class: str, what: str,
              limit: int | None = None) -> list[Dataset]:
        if check_limit(limit) == 0:
            return []
        bound = IdentifierBound(self.max_identifier_bytes)  # read as the PDUs arrive (kit.dicom._cfind)
        with self._associate([build_context(sop_class)], bound=bound) as assoc:
            return collect_find(assoc, identifier, sop_class, what, limit=limit, peer=self.address,
                                lost=self._lost, bound=bound, max_bytes=self.max_find_bytes)

    @_audited("pacs.find")
    def find(self, level: QueryLevel | str = "STUDY", *,
             model: QueryModel | str | None = None, return_keys: Iterable[str] | None = None,
             limit: int | None = None, **filters: Any) -> pl.DataFrame:
        """C-FIND at ``level``; one row per match.

        Parameters
        ----------
        level : QueryLevel or str
            PATIENT, STUDY, SERIES or IMAGE.
        model : QueryModel or str, optional
            Default: study root, patient root for PATIENT level.
        return_keys : iterable of str, optional
            Columns to ask for (default :data:`kit.dicom.query.DEFAULT_RETURN_KEYS`).
        limit : int, optional
            Stop after this many matches: C-CANCEL the rest, with a
            :class:`~kit.errors.TruncatedResultWarning` (and a log line) when
            the PACS had more. Default: every match (the whole archive, unfiltered).
        **filters
            See :func:`kit.dicom.query.find_identifier`.

        Returns
        -------
        polars.DataFrame
            Columns as in :func:`kit.dicom.query.responses_to_frame`; no
            match gives an empty frame with the schema.
        """
        from kit.dicom.query import QueryLevel, QueryModel, find_identifier, responses_to_frame

        level = QueryLevel.of(level)
        if model is None:
            model = QueryModel.PATIENT_ROOT if level is QueryLevel.PATIENT else QueryModel.STUDY_ROOT
        model = QueryModel.of(model)
        keys = None if return_keys is None else list(return_keys)
        identifier = find_identifier(level, model=model, return_keys=keys, **filters)
        matches = self._find(identifier, model.find_uid, f"C-FIND {level.value}", limit)
        columns = keys if keys is not None else None
        if columns is None:
            from kit.dicom.query import DEFAULT_RETURN_KEYS
            columns = list(DEFAULT_RETURN_KEYS[level])
            columns += [f for f in filters if f not in columns]
        return responses_to_frame(level, matches, columns=columns)

    @_audited("pacs.worklist")
    def worklist(self, *, limit: int | None = None, **filters: Any) -> pl.DataFrame:
        """Modality Worklist C-FIND; one row per Scheduled Procedure Step.

        Parameters
        ----------
        **filters
            See :func:`kit.dicom.query.worklist_identifier` (``modality``,
            ``scheduled_procedure_step_start_date``, ``scheduled_station_ae_title``...).
        limit : int, optional
            At most this many items, as for :meth:`find`.

        Returns
        -------
        polars.DataFrame
            Columns :data:`kit.dicom.query.WORKLIST_RETURN_KEYS`.
        """
        from kit.dicom.query import worklist_identifier, worklist_to_frame

        identifier = worklist_identifier(**filters)
        return worklist_to_frame(self._find(identifier, MODALITY_WORKLIST_FIND, "C-FIND worklist",
                                            limit))

    @staticmethod
    def _retrieve_identifier(study_uid: str | None, series_uid: str | None,
                             sop_uid: str | None) -> tuple[Dataset, QueryLevel]:
        if not study_uid:
            raise InvalidInputError("a retrieve needs study_uid (and optionally series_uid, sop_uid)")
        if sop_uid and not series_uid:
            raise InvalidInputError("sop_uid needs series_uid as well")
        from kit.dicom.query import QueryLevel

        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        level = QueryLevel.STUDY
        if series_uid:
            ds.SeriesInstanceUID = series_uid
            level = QueryLevel.SERIES
        if sop_uid:
            ds.SOPInstanceUID = sop_uid
            level = QueryLevel.IMAGE
        ds.QueryRetrieveLevel = level.value
        return ds, level

    def _check_retrieve(self, what: str, last: Dataset | None, receiver: FileReceiver,
                        assoc: Association, waited: float, *, asked: str = "",
                        move_to: tuple[str, str] | None = None,
                        called_back: bool = False) -> pl.DataFrame:
        """The received frame of a finished C-GET/C-MOVE; raise unless it fully succeeded.

        Nothing received for a successful status is a failure too: the PACS
        has no instances for what was asked (``asked`` names it); so are instances
        ``receiver.expect`` refused (counted, the first reason given), and more completed
        sub-operations counted than arrived (or a C-MOVE's none while some did). ``move_to``
        is a C-MOVE's destination AE title and how to register it; ``called_back``
        whether the PACS connected to our storage SCP at all.
        """
        with receiver.lock:
            rows = list(receiver.rows)
        refused = list(receiver.expect.refused) if isinstance(receiver.expect, Expected) else []
        code = _status_int(last)
        if code is None:
            err = self._lost(assoc, what, waited)
            if move_to and not rows and not called_back:
                raise type(err)(f"{what}: no answer within {self.timeout:g}s and the PACS never connected "
                                f"back to our storage SCP; it must know our AE as a move destination "
                                f"exactly: {move_to[1]}", peer=self.address)
            raise type(err)(f"{err} after {len(rows)} instance(s)", peer=None)
        assert last is not None
        completed = last.get("NumberOfCompletedSuboperations")
        failed = last.get("NumberOfFailedSuboperations")
        warning = last.get("NumberOfWarningSuboperations")
        if refused:
            raise RetrieveError(f"{what}: {len(refused)} instance(s) refused, not what was asked "
                                f"({asked or 'the instances asked'}): {refused[0]}"
                                f"{f' (and {len(refused) - 1} more)' if len(refused) > 1 else ''}",
                                status=code, peer=self.address, completed=completed,
                                failed=max(failed or 0, len(refused)), warning=warning,
                                received=_rows_frame(rows))
        if code == 0x0000 and completed is not None and (completed > len(rows) or (
                move_to and not completed and rows)):
            raise RetrieveError(f"{what}: the PACS reports {completed} completed sub-operation(s) but "
                                f"{len(rows)} instance(s) arrived: the retrieve of "
                                f"{asked or 'what was asked'} is incomplete or unaccounted for",
                                status=code, peer=self.address, completed=completed, failed=failed,
                                warning=warning, received=_rows_frame(rows))
        if code == UNKNOWN_MOVE_DESTINATION and move_to:
            raise RetrieveError(f"{what}: the PACS does not know the move destination {move_to[0]!r} or "
                                f"cannot reach it (Move Destination unknown"
                                f"{'' if called_back else '; it never connected back to our storage SCP'}"
                                f"): {move_to[1]}", status=code, peer=self.address,
                                completed=completed, failed=failed, warning=warning,
                                received=_rows_frame(rows))
        if code != 0x0000 or receiver.errors or (failed or 0) > 0:
            detail = f"; {receiver.errors[0]}" if receiver.errors else ""
            comment = str(last.get("ErrorComment", "") or "").strip()
            detail += f"; the PACS says: {comment}" if comment else ""
            if move_to and not rows and not failed:
                # e.g. Orthanc answers an unknown destination with 0xC000 and no sub-operations
                detail += ("; the PACS never connected back to our storage SCP" if not called_back else "")
                detail += f"; if the PACS does not know the move destination {move_to[0]!r}: {move_to[1]}"
            raise RetrieveError(f"{what} did not complete{detail}", status=code, peer=self.address,
                                completed=completed, failed=failed, warning=warning,
                                received=_rows_frame(rows))
        if not rows:
            raise RetrieveError(f"{what}: the PACS has no instances of {asked or 'what was asked'} "
                                f"(is the UID right? `kit pacs find` lists what it holds)",
                                status=code, peer=self.address, completed=completed, failed=failed,
                                warning=warning, received=_rows_frame(rows))
        # by SOP Instance UID, sorted here as polars would (its first sort in a process starts
        # its thread pool, ~50 ms)
        return _rows_frame(sorted(rows, key=_by_instance))

    @_audited("pacs.get")
    def get(self, *, study_uid: str | None = None, series_uid: str | None = None,
            sop_uid: str | None = None, dest: str | os.PathLike[str],
            sop_classes: Iterable[str] | None = None, progress: bool = False,
            cancel: threading.Event | Callable[[], bool] | None = None) -> pl.DataFrame:
        """C-GET a study, series or instance into ``dest`` (``<SOPInstanceUID>.dcm`` files).

        Parameters
        ----------
        study_uid, series_uid, sop_uid : str
            What to retrieve (study root model).
        dest : path
            Folder for the files (created if missing). Files are written
            as sent (no decoding) to a temporary name, then renamed.
        sop_classes : iterable of str, optional
            Storage SOP classes to negotiate (default: pynetdicom's 120
            common storage classes, for which the PACS may have to transcode).
            Naming them lets the PACS send each instance as stored: needed
            for video (e.g. Video Endoscopic), which no PACS can transcode.
        progress : bool
            Show a progress bar on stderr.
        cancel : threading.Event or callable, optional
            Checked after each instance: once set (or True), the C-GET is
            cancelled (C-CANCEL, then release; abort if the PACS goes on) and
            :class:`RetrieveCancelledError` raised (:mod:`kit.dicom._cancel`).

        Returns
        -------
        polars.DataFrame
            :data:`RECEIVED_SCHEMA`, one row per instance, sorted by SOP
            Instance UID.

        Raises
        ------
        RetrieveError
            Non-success final status, failed sub-operations or a local
            write failure; carries the counts and what did arrive. Also
            when nothing arrives (the PACS holds no such study/series), when
            the PACS counts more completed sub-operations than arrived, and when
            an instance was refused: of another study (series, instance) than
            asked, or its data set not the instance its C-STORE-RQ names (answered
            0xA900, never written).
        RetrieveCancelledError
            ``cancel`` was set; what had arrived is in ``received``.
        AssociationAbortedError, PeerTimeoutError
            The association broke off mid-retrieve.
        """
        identifier, _ = self._retrieve_identifier(study_uid, series_uid, sop_uid)
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        from kit.dicom.query import QueryModel

        model = QueryModel.STUDY_ROOT
        storage = _default_storage_contexts() if sop_classes is None else storage_contexts(sop_classes)
        contexts = [build_context(model.get_uid), *storage][:128]
        roles = _default_roles() if sop_classes is None else \
            [build_role(str(cx.abstract_syntax), scp_role=True) for cx in contexts[1:]]
        with self._progress(progress, "C-GET") as tick:
            stop = RetrieveCancel(cancel, tick)  # cancel: checked per instance (kit.dicom._cancel)
            receiver = PooledReceiver(folder, study_uid, stop.tick)
            receiver.expect = Expected(str(study_uid), series_uid, sop_uid)
            with stop.raising(lambda: RetrieveCancelledError.of("C-GET", receiver, self.address)):
                stop.requested()  # already set: the PACS is not asked
            with self._associate(contexts, roles=roles,
                                 handlers=[(evt.EVT_C_STORE, receiver)]) as assoc:
                with stop.raising(lambda: RetrieveCancelledError.of("C-GET", receiver, self.address)):
                    last = self._get_direct(assoc, identifier, model.get_uid, receiver, stop.requested)
                return self._check_retrieve("C-GET", last, receiver, assoc, 0.0,
                                            asked=_asked(study_uid, series_uid, sop_uid))

    def _get_direct(self, assoc: Association, identifier: Dataset, sop_class: str,
                    receiver: PooledReceiver, cancelled: Callable[[], bool] | None = None) -> Dataset:
        """Send the C-GET-RQ and answer its C-STORE sub-operations on the calling thread
        (:class:`~kit.dicom._clientphase.ClientPhase`); the final C-GET-RSP status as a dataset."""
        accepted = {cx.context_id: cx for cx in assoc.accepted_contexts if cx.context_id is not None}
        syntaxes = {int(i): str(cx.transfer_syntax[0]) for i, cx in accepted.items()}
        classes = {int(i): str(cx.abstract_syntax) for i, cx in accepted.items()}
        get_cx = next((cx for cx in assoc.accepted_contexts
                       if str(cx.abstract_syntax) == sop_class), None)
        if get_cx is None or get_cx.context_id is None:
            raise DicomError(f"the peer accepted no presentation context for C-GET ({sop_class})",
                             peer=self.address)
        ts = UID(str(get_cx.transfer_syntax[0]))
        encoded = encode(identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if encoded is None:
            raise InvalidInputError("pydicom could not encode the C-GET identifier")
        receiver.prepare()  # files made as instances come, or ahead if that is slow (kit.dicom._getphase)
        try:
            with ClientPhase(assoc, self.timeout, self.address, spill_dir=receiver.dest) as phase:
                fields = get_loop(phase, int(get_cx.context_id), sop_class, encoded, syntaxes,
                                  receiver, cancelled, classes)
        except (AssociationAbortedError, PeerTimeoutError) as err:
            raise self._broke_off(err, "C-GET", len(receiver.rows)) from err
        finally:
            receiver.discard()
        last = Dataset()
        for keyword, value in fields.items():
            if value is not None:
                setattr(last, keyword, value)
        return last

    @_audited("pacs.move")
    def move(self, *, study_uid: str | None = None, series_uid: str | None = None,
             sop_uid: str | None = None, dest: str | os.PathLike[str], move_aet: str | None = None,
             store_port: int | None = None, store_host: str = "",
             progress: bool = False,
             cancel: threading.Event | Callable[[], bool] | None = None) -> pl.DataFrame:
        """C-MOVE a study, series or instance to a temporary storage SCP writing into ``dest``.

        The PACS must know ``move_aet`` (default: our ``aet``) as a
        destination at this host and ``store_port``: add it to the PACS's
        modality table first. The storage SCP runs only for the duration of
        the call; it keeps an instance past 8 MiB on disk as it arrives.

        Parameters
        ----------
        study_uid, series_uid, sop_uid : str
            What to retrieve.
        dest : path
            Folder for the files (``<SOPInstanceUID>.dcm``).
        move_aet : str, optional
            Destination AE title (default ``aet``).
        store_port : int, optional
            Port of the temporary storage SCP (default: settings'
            ``store_port``; 0 = ephemeral, only useful if the PACS can learn it).
        store_host : str
            Interface the storage SCP binds to (default all).
        progress : bool
            Show a progress bar on stderr.
        cancel : threading.Event or callable, optional
            As for :meth:`get`: checked as each instance arrives; once set, C-CANCEL
            and :class:`RetrieveCancelledError`.

        Returns
        -------
        polars.DataFrame
            :data:`RECEIVED_SCHEMA`, as for :meth:`get`.

        Raises
        ------
        RetrieveError
            As for :meth:`get` (instances of another study, series or instance than
            asked are refused, whichever AE sends them); for status 0xA801 (the PACS does not know
            ``move_aet``) the message says what to register: the AE title,
            our address as the PACS reaches it and the store port.
        PeerTimeoutError
            No answer within ``timeout`` and the PACS never connected back (it
            knows our AE title at another host or port): the message says
            which AE title, host and store port the PACS must have.
        RetrieveCancelledError
            ``cancel`` was set; what had arrived is in ``received``.
        """
        from kit.dicom._guard import guard_storage_scp  # the storage SCP's PDU bounds (not for echo)
        from kit.dicom._recvphase import ReceiverPhase
        from kit.dicom._storeserve import serve_established

        identifier, _ = self._retrieve_identifier(study_uid, series_uid, sop_uid)
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        destination = move_aet or self.aet
        port = self.store_port if store_port is None else store_port
        from kit.dicom.query import QueryModel

        model = QueryModel.STUDY_ROOT
        with self._progress(progress, "C-MOVE") as tick:
            stop = RetrieveCancel(cancel, tick)  # cancel: checked per instance (kit.dicom._cancel)
            receiver = FileReceiver(folder, study_uid, stop.tick)
            # only what was asked, and only from the PACS asked (its AE title calls back)
            receiver.expect = Expected(str(study_uid), series_uid, sop_uid)
            with stop.raising(lambda: RetrieveCancelledError.of("C-MOVE", receiver, self.address)):
                stop.requested()  # already set: the PACS is not asked
            connections: list[str] = []
            scp_ae = self._ae()
            scp_ae.ae_title = destination
            scp_ae.supported_contexts = storage_contexts(None)

            def serve(event: evt.Event) -> None:  # each instance kept on disk as it arrives, if large
                assoc = event.assoc
                serve_established(assoc, lambda: ReceiverPhase(
                    assoc, self.timeout, f"dicom://{assoc.requestor.ae_title}@{assoc.requestor.address}",
                    pdu_timeout=self.timeout, spill_dir=folder), receiver.store)

            try:
                server = scp_ae.start_server(
                    (store_host, port), block=False,
                    evt_handlers=[(evt.EVT_C_STORE, receiver), (evt.EVT_CONN_OPEN, _nodelay),
                                  (evt.EVT_CONN_OPEN, guard_storage_scp, [self.max_pdu, self.timeout]),
                                  (evt.EVT_CONN_OPEN, lambda e: connections.append(str(e.address))),
                                  (evt.EVT_ACCEPTED, lambda e: hold_dul(e.assoc)),
                                  (evt.EVT_ESTABLISHED, serve)])
            except OSError as exc:  # the port is taken or not ours to bind: a setting to change
                raise ConfigError("pacs.store_port", f"cannot start the storage SCP on port {port}: "
                                                     f"{exc.strerror or exc}") from exc
            try:
                with self._associate([build_context(model.move_uid)]) as assoc:
                    bound = int(server.server_address[1]) if server is not None else port
                    register = self._register_hint(assoc, destination, bound, ephemeral=port == 0)
                    timers: list[threading.Timer] = []  # C-CANCEL from the storage thread on cancel
                    stop.arm(lambda: timers.append(cancel_move(assoc, model.move_uid)))
                    try:
                        with stop.raising(lambda: RetrieveCancelledError.of("C-MOVE", receiver,
                                                                            self.address)):
                            last, waited = _final(assoc.send_c_move(identifier, destination,
                                                                    model.move_uid))
                    finally:
                        for timer in timers:
                            timer.cancel()
                    return self._check_retrieve("C-MOVE", last, receiver, assoc, waited,
                                                asked=_asked(study_uid, series_uid, sop_uid),
                                                move_to=(destination, register),
                                                called_back=bool(connections))
            finally:
                if server is not None:
                    server.shutdown()

    def _register_hint(self, assoc: Association, destination: str, store_port: int, *,
                       ephemeral: bool) -> str:
        """How to make ``destination`` known to the PACS (for a failed C-MOVE), in one line."""
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        try:
            our_host = str(sock.getsockname()[0]) if sock is not None else "this machine's address"
        except OSError:
            our_host = "this machine's address"
        hint = (f"register AE title {destination}, host {our_host}, port {store_port} in the PACS's "
                f"list of DICOM nodes (for `kit serve`: [stack] move_destinations = "
                f"{{ {destination} = \"{our_host}:{store_port}\" }})")
        if ephemeral:
            hint += "; this store port was ephemeral: fix one first (--store-port, [pacs] store_port)"
        return hint

    @_audited("pacs.store")
    def store(self, items: Iterable[str | os.PathLike[str] | Dataset], *,
              progress: bool = False) -> pl.DataFrame:
        """C-STORE files or datasets on one association.

        Every file is checked (Part 10 header, every element's length against
        the file) before the association opens. Files in Explicit/Implicit VR
        Little Endian or an encapsulated (compressed) syntax are sent as
        their raw bytes, without decoding; other files and datasets are
        encoded by pydicom. Transfer syntaxes are kept (no conversion).

        Parameters
        ----------
        items : iterable of path or Dataset
            DICOM files (Part 10) or datasets with file meta.
        progress : bool
            Show a progress bar on stderr.

        Returns
        -------
        polars.DataFrame
            :data:`STORED_SCHEMA`, one row per instance in input order
            (``status`` 0 for success, a warning code otherwise).

        Raises
        ------
        DicomFileError
            A file is not DICOM or is truncated (nothing is sent).
        RetrieveError
            Some instances got a failure status; ``received`` holds the
            per-instance frame and the message names the first failure.
        """
        import polars as pl

        from kit.dicom._frames import STORED_SCHEMA

        outgoing: list[Outgoing] = []
        held = 0
        for entry in items:  # every file read once: checked here, sent from memory within the budget
            checked = Outgoing.of(entry, keep=held < KEEP_CHECKED_BYTES)
            held += checked.size
            outgoing.append(checked)
        if not outgoing:
            return pl.DataFrame(schema=STORED_SCHEMA)
        pairs = sorted({(o.sop_class, o.transfer_syntax) for o in outgoing})
        if len(pairs) > 128:
            raise InvalidInputError("more than 128 SOP class/transfer syntax pairs in one store")
        contexts = [build_context(uid, ts) for uid, ts in pairs]
        rows: list[tuple[str, str, str, str | None, int]] = []
        failures: list[tuple[str, int]] = []
        with self._associate(contexts) as assoc, self._progress(progress, "C-STORE",
                                                                 total=len(outgoing)) as tick:
            accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id)
                        for cx in assoc.accepted_contexts if cx.context_id is not None}
            for item in outgoing:  # before anything is sent
                if (item.sop_class, item.transfer_syntax) not in accepted:
                    raise DicomError(f"the peer accepted no presentation context for "
                                     f"{item.sop_class} in {item.transfer_syntax}", peer=self.address)

            def answered(item: Outgoing, code: int) -> None:
                rows.append((item.sop_instance, item.sop_class, item.transfer_syntax, item.source, code))
                if code != 0 and not (0xB000 <= code <= 0xBFFF) and code not in (0x0107, 0x0116):
                    failures.append((item.source or item.sop_instance, code))
                if tick is not None:
                    tick()

            try:
                with ClientPhase(assoc, self.timeout, self.address) as phase:
                    store_all(phase, outgoing, accepted, answered)
            except (AssociationAbortedError, PeerTimeoutError) as err:
                raise self._broke_off(err, "C-STORE", len(rows)) from err
        frame = pl.DataFrame(rows, schema=STORED_SCHEMA, orient="row")
        if failures:
            first, code = failures[0]
            raise RetrieveError(f"C-STORE failed for {len(failures)} of {len(rows)} instance(s), "
                                f"first {first}", status=code, peer=self.address,
                                completed=len(rows) - len(failures), failed=len(failures),
                                received=frame)
        return frame

    @staticmethod
    @contextlib.contextmanager
    def _progress(enabled: bool, desc: str,
                  total: int | None = None) -> Iterator[Callable[[], None] | None]:
        if not enabled:
            yield None
            return
        import sys

        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty())
        lock = threading.Lock()

        def tick() -> None:
            with lock:
                bar.update(1)

        try:
            yield tick
        finally:
            bar.close()
