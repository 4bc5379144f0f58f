"""The embedded PACS: a pynetdicom SCP over the durable :mod:`kit.dicom.store`.

Services: C-ECHO; C-STORE of every storage SOP class in any transfer syntax;
C-FIND, C-GET and C-MOVE for the Patient Root and Study Root information
models; Modality Worklist C-FIND. pynetdicom does the protocol; this module
adds what it leaves to applications:

- C-STORE writes the bytes as received (``event.encoded_dataset``, never
  decoded; only the few index tags are parsed) and answers 0x0000 only after the
  file is fsync'ed, renamed into place and indexed; otherwise 0xA700 (out of
  resources) or 0xC000 (cannot understand), with no partial file left. Instances
  arriving on several associations at once share a group commit
  (:class:`~kit.dicom.store.InstanceStore`): one directory fsync and one index
  transaction per batch, each response still sent only once its own file is durable.
- C-FIND matching (:mod:`kit.dicom.matching`) over the SQLite index, reading a
  file's header only for keys the index does not hold.
- C-GET/C-MOVE of the instances matching the unique keys; C-MOVE destinations
  come from ``move_destinations`` (unknown AE title: 0xA801). Sub-operation
  failures are counted in the final response, never hidden.
- Speed: C-STORE and C-ECHO are served on the association's own thread straight
  from the socket (:mod:`kit.dicom._recvphase`, ``fast=True``); any other request,
  and the release or an abort, is handed to pynetdicom with the PDUs it came in.
  The supported contexts are made cheap to copy (pynetdicom deep-copies them for
  every association: ~90 ms re-validating ~5,000 UIDs), and a request proposing what
  an earlier one did is answered with pynetdicom's recorded answer
  (:mod:`kit.dicom._accept`: ~10 ms of CPU per storescu association -> ~2.5 ms). Each
  association's next temporary file is created while its sender sends the next
  instance, and the index's WAL is checkpointed after answering, never inside a commit.
- TCP_NODELAY on every connection (without it loopback DIMSE crawls at ~20
  images/s because of Nagle + delayed ACK); ACSE, DIMSE and idle network
  timeouts; an optional allow-list of calling AE titles (A-ASSOCIATE-RJ
  permanent, reason 3 "calling AE title not recognized"); the called AE title
  must be ours unless ``accept_any_called_aet`` (reason 7 "called AE title not
  recognized"), as a real PACS would answer a misconfigured client.
- Every peer is hostile (:mod:`kit.dicom._guard`): a connection gets no thread
  until its whole A-ASSOCIATE-RQ has arrived within ``request_timeout`` (idle
  sockets never count against ``max_associations``); PDUs over the negotiated
  maximum are aborted unread; a PDU must arrive whole within ``dimse_timeout``;
  a data set is checked (:mod:`kit.dicom.received`) before it is acknowledged;
  C-FIND keys are matched in linear time and unparsable date/time keys refused.
  A worker thread that dies stops the listener and sets :attr:`EmbeddedPACS.failure`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from kit.dicom._accept import AcceptCache, deliver_checked, fingerprint
from kit.dicom._association import keep_responses_for_the_sender, unbind_log_handlers
from kit.dicom._audit import served as _served
from kit.dicom._fastnet import hold_dul, share_context_uids
from kit.dicom._guard import GuardedServer, MemoryBudget, deliver_request, guard_dul
from kit.dicom._recvphase import ReceiverPhase
from kit.dicom._storeserve import serve_established
from kit.dicom.matching import (
    COMPUTED_KEYS,
    LEVEL_KEYS,
    MODALITY_WORKLIST_FIND,
    candidate_dataset,
    check_identifier,
    matches,
    query_level,
    response_identifier,
)
from kit.dicom.query import QueryLevel, QueryModel
from kit.dicom.received import check_received
from kit.dicom.store import INDEX_TAGS, InstanceStore, StoredInstance, verdict_attributes
from kit.errors import (
    ConfigError,
    DicomFileError,
    InvalidInputError,
    PeerError,
    StoreError,
)

__all__ = ["EmbeddedPACS"]

LOGGER = logging.getLogger(__name__)

# Status codes (PS3.4 annexes B, C, K)
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
IDENTIFIER_MISMATCH = 0xA900
UNKNOWN_MOVE_DESTINATION = 0xA801

_KNOWN_KEYS = frozenset(
    {k for keys in LEVEL_KEYS.values() for k in keys}
    | {k for keys in COMPUTED_KEYS.values() for k in keys}
    | {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}
)
#: File meta keywords a received instance's file gets (its ImplementationClassUID: the sender's
#: for pynetdicom's path, pynetdicom's for the fast path, as before).
_META_KEYS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID",
              "ImplementationClassUID", "ImplementationVersionName")
_UNIQUE = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _sub_association(event: Event, poll_interval: float | None = None) -> None:
    """EVT_CONN_OPEN of a C-MOVE sub-association: :func:`_nodelay`, and its C-STORE responses
    kept for pynetdicom's sender (:func:`~kit.dicom._guard.keep_responses_for_the_sender`)."""
    _nodelay(event, poll_interval)
    keep_responses_for_the_sender(event.assoc)


def _nodelay(event: Event, poll_interval: float | None = None) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket and
    shorten the DUL reactor's idle sleep (``_run_loop_delay``, 1 ms by default, the knob
    pynetdicom's source names for latency versus idle CPU)."""
    if poll_interval is not None:
        event.assoc.dul._run_loop_delay = poll_interval
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - socket already closed
            pass


def _status(code: int, comment: str = "") -> Dataset:
    """A response status with its ErrorComment (LO, 64 characters at most)."""
    rsp = Dataset()
    rsp.Status = code
    if comment:
        rsp.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return rsp


def _exact_values(identifier: Dataset, keyword: str) -> list[str] | None:
    """The identifier's values for a key if they can prefilter exactly (no wildcards), else None."""
    element = identifier[keyword] if keyword in identifier else None
    if element is None or element.value in (None, ""):
        return None
    raw = list(element.value) if isinstance(element.value, MultiValue | list | tuple) else [element.value]
    values = [str(v).strip() for v in raw if str(v).strip()]
    if not values or any("*" in v or "?" in v for v in values):
        return None
    return values


class EmbeddedPACS:
    """A small PACS with a modality worklist, for the embedded stack and for tests.

    Parameters
    ----------
    storage_dir : path-like
        Where files and the index live; reopening it finds everything stored before.
    host : str
        Address to listen on.
    port : int
        TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    aet : str
        Our AE title (the called AE title clients must use).
    allowed_aets : iterable of str
        If not empty, only these calling AE titles may associate.
    move_destinations : mapping of str to (host, port)
        C-MOVE destinations by AE title.
    worklist : iterable of Dataset, or path-like, optional
        Modality Worklist items, or a folder of ``.json`` (DICOM JSON) and
        ``.wl`` / ``.dcm`` files re-read on every worklist query.
    max_pdu : int
        Maximum PDU size we receive (0 = unlimited).
    acse_timeout, dimse_timeout, network_timeout : float
        Seconds to wait for association messages, DIMSE messages, and on an
        idle connection before it is closed.
    poll_interval : float or None
        Idle sleep of pynetdicom's per-association network loop (its default,
        1 ms, adds up to 2 ms of latency to every request); None keeps pynetdicom's.
    fast : bool
        Serve C-STORE and C-ECHO on the association's thread straight from the
        socket (:mod:`kit.dicom._fastnet`), handing other requests and the
        release to pynetdicom; False leaves every message to pynetdicom.
    accept_any_called_aet : bool
        Accept associations whatever called AE title they name; by default one
        that is not ``aet`` is rejected (A-ASSOCIATE-RJ permanent, service user,
        "called AE title not recognized"), as a real PACS does.
    request_timeout : float
        Seconds a new connection has to deliver its whole A-ASSOCIATE-RQ.
    max_associations : int
        Associations served at once (more are rejected, transient, "local limit
        exceeded"); connections still waiting for their request do not count.
    max_pending : int
        Connections that may wait for their A-ASSOCIATE-RQ at once; a new one
        closes the one that has waited longest.
    max_dataset_size : int
        Bytes one received data set may have (default 4 GiB); a peer sending more is
        answered with A-ABORT. The fast path keeps a data set past 8 MiB on disk
        while it arrives, so memory does not grow with it. Requests that pynetdicom
        serves (on an association after a query, or with ``fast=False``) are held in
        memory whole and bounded to :data:`~kit.dicom._guard.IN_MEMORY_MESSAGE`
        (256 MiB) too.
    max_in_memory : int
        Bytes of received messages pynetdicom may hold at once, across associations
        (default 1 GiB; :attr:`in_memory`), else A-ABORT. A peer that sends without
        waiting for the answers has at most two read: one served, one waiting.

    Examples
    --------
    >>> with EmbeddedPACS("/tmp/pacs") as pacs:  # doctest: +SKIP
    ...     print(pacs.address)
    dicom://KIT@127.0.0.1:40123
    """

    name = "pacs"

    def __init__(
        self,
        storage_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        aet: str = "KIT",
        allowed_aets: Iterable[str] = (),
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        worklist: Iterable[Dataset] | str | os.PathLike[str] | None = None,
        max_pdu: int = 262_144,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 30.0,
        network_timeout: float = 60.0,
        poll_interval: float | None = 0.0002,
        fast: bool = True,
        accept_any_called_aet: bool = False,
        request_timeout: float = 5.0,
        max_associations: int = 64,
        max_pending: int = 128,
        max_dataset_size: int = 4 << 30,
        max_in_memory: int = 1 << 30,
    ) -> None:
        if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise ConfigError("stack.pacs_aet", f"not a valid AE title: {aet!r}")
        if not 0 <= port <= 65535:
            raise ConfigError("stack.pacs_port", f"not a TCP port: {port}")
        if max_pdu < 0:
            raise ConfigError("pacs.max_pdu", "must be >= 0")
        if (request_timeout <= 0 or max_associations < 1 or max_pending < 1 or max_dataset_size < 1
                or max_in_memory < 1):
            raise ConfigError("pacs", "request_timeout, max_associations, max_pending, "
                                      "max_dataset_size and max_in_memory must be > 0")
        self.host = host
        self.port = port
        self.aet = aet
        self.allowed_aets = tuple(allowed_aets)
        self.move_destinations: dict[str, tuple[str, int]] = {
            k.strip(): (str(v[0]), int(v[1])) for k, v in (move_destinations or {}).items()}
        self.max_pdu = max_pdu
        self.timeouts = (acse_timeout, dimse_timeout, network_timeout)
        self.poll_interval = poll_interval
        self.fast = fast
        self.accept_any_called_aet = accept_any_called_aet
        self.request_timeout = request_timeout
        self.max_associations, self.max_pending = max_associations, max_pending
        self.max_dataset_size = max_dataset_size
        #: the bytes of received messages pynetdicom holds, across associations (max_in_memory)
        self.in_memory = MemoryBudget(max_in_memory)
        self._worklist_dir: Path | None = None
        self._worklist: list[Dataset] = []
        if isinstance(worklist, str | os.PathLike):
            self._worklist_dir = Path(worklist)
        elif worklist is not None:
            self._worklist = list(worklist)
        self.store = InstanceStore(storage_dir)
        self._ae: AE | None = None
        self._server: GuardedServer | None = None
        #: A-ASSOCIATE-RQs answered with pynetdicom's earlier answer to the same proposal (fast only).
        self._accept: AcceptCache | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``dicom://AET@host:port``."""
        return f"dicom://{self.aet}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting associations (False once a worker thread died)."""
        server = self._server
        return server is not None and server.failure is None

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the service, if a worker thread died (health: red)."""
        server = self._server
        return None if server is None else server.failure

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = self.max_pdu
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = self.timeouts
        # pynetdicom counts acceptor threads; the gate starts them only for whole requests
        ae.maximum_associations = self.max_associations
        ae.require_called_aet = not self.accept_any_called_aet
        if self.allowed_aets:
            ae.require_calling_aet = list(self.allowed_aets)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # scp_role: a C-GET requestor may act as Storage SCP on this association
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES,
                                     scp_role=True, scu_role=False)
        for sop in (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
                    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove,
                    ModalityWorklistInformationFind):
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Bind and serve in a background thread; returns once accepting connections.

        Raises
        ------
        PeerError
            The port cannot be bound (already in use, no permission).
        """
        with self._lock:
            if self._server is not None:
                return
            ae = self._make_ae()
            handlers: list[Any] = [
                (evt.EVT_CONN_OPEN, self._on_conn_open),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_ESTABLISHED, self._on_established),
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_FIND, self._on_find),
                (evt.EVT_C_GET, self._on_get),
                (evt.EVT_C_MOVE, self._on_move),
            ]
            try:
                server = ae.make_server((self.host, self.port), evt_handlers=handlers,
                                        server_class=GuardedServer, request_timeout=self.request_timeout,
                                        max_pending=self.max_pending, on_failure=self._on_failure)
            except OSError as exc:
                raise PeerError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                                peer=self.address) from exc
            assert isinstance(server, GuardedServer)
            share_context_uids(server.contexts)
            # answers recorded by any PACS of this process whose AE answers alike (same contexts, PDU size)
            self._accept = AcceptCache.shared(fingerprint(ae, server.contexts)) if self.fast else None
            ae._servers.append(server)
            self._ae, self._server = ae, server
            self.port = int(server.server_address[1])
            server.start_workers(f"pacs-{self.port}")
            LOGGER.info("embedded PACS listening on %s", self.address)

    def stop(self) -> None:
        """Stop serving and close open associations (idempotent). The store stays usable."""
        with self._lock:
            server, ae = self._server, self._ae
            self._server = self._ae = None
        if server is None or ae is None:
            return
        for assoc in list(server.active_associations):
            assoc.abort()
        server.shutdown()
        ae.shutdown()
        self.store.release_spares()  # the files made ahead for receivers (a restart makes more)

    def _on_failure(self, exc: BaseException) -> None:
        LOGGER.critical("embedded PACS on %s is down: %r", self.address, exc)

    def close(self) -> None:
        """Stop and close the store's index."""
        self.stop()
        self.store.close()

    def __enter__(self) -> EmbeddedPACS:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPACS({self.address!r}, storage_dir={str(self.store.root)!r})"

    # -- content --------------------------------------------------------------------

    def import_files(self, paths: Iterable[str | os.PathLike[str]], *, skip_existing: bool = False) -> int:
        """Store DICOM files or folders without the network (e.g. the sample cohort).

        ``skip_existing`` leaves instances the store already holds untouched.

        Returns
        -------
        int
            How many instances were stored.
        """
        return self.store.import_files(paths, skip_existing=skip_existing)

    def worklist_items(self) -> list[Dataset]:
        """The current Modality Worklist items (a worklist folder is re-read each call).

        Raises
        ------
        InvalidInputError
            A file in the worklist folder is neither DICOM JSON nor DICOM.
        """
        if self._worklist_dir is None:
            return list(self._worklist)
        items: list[Dataset] = []
        for f in sorted(self._worklist_dir.glob("*")):
            suffix = f.suffix.lower()
            try:
                if suffix == ".json":
                    data = json.loads(f.read_text())
                    items.extend(Dataset.from_json(d) for d in (data if isinstance(data, list) else [data]))
                elif suffix in (".wl", ".dcm"):
                    items.append(dcmread(f, force=True))
            except (OSError, ValueError, InvalidDicomError, EOFError, TypeError) as exc:
                raise InvalidInputError(f"not a worklist item: {exc}", source=str(f)) from exc
        return items

    # -- handlers -------------------------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        return SUCCESS

    def _on_store(self, event: Event) -> Dataset:
        request: Any = event.request
        try:
            meta = event.file_meta
            status, comment = self._store(
                {k: str(meta.get(k, "") or "") for k in _META_KEYS},
                event.encoded_dataset(include_meta=False),
                str(event.assoc.requestor.ae_title or ""), str(request.AffectedSOPClassUID or ""),
                str(request.AffectedSOPInstanceUID or ""))
        except Exception as exc:  # noqa: BLE001 - one message never stops the service
            LOGGER.exception("C-STORE failed: %s", exc)
            status, comment = CANNOT_UNDERSTAND, f"cannot process: {type(exc).__name__}"
        self.store.checkpoint()  # pynetdicom's path (fast=False): before its answer, as SQLite did
        return _status(status, comment)

    @_served("pacs.store")
    def _store(self, meta: dict[str, str], encoded: bytes | memoryview, calling: str, sop_class: str,
               sop_uid: str) -> tuple[int, str]:
        """Check and store one received data set; (C-STORE status, error comment).

        ``meta`` holds the file meta keywords (:data:`_META_KEYS`). 0x0000 only once the
        data set has passed :func:`~kit.dicom.received.check_received` and is durable
        (group-committed with what other associations store meanwhile, see
        :class:`~kit.dicom.store.InstanceStore`); otherwise its failure status (nothing
        kept), 0xA700 if it could not be written, 0xC000 if anything else went wrong.
        """
        calling = calling.strip()
        verdict = check_received(encoded, meta["TransferSyntaxUID"], sop_class, sop_uid,
                                 keep=INDEX_TAGS)
        if not verdict.ok:
            LOGGER.warning("C-STORE of %s from %s refused (0x%04X): %s", sop_uid, calling,
                           verdict.status, verdict.reason)
            return verdict.status, verdict.reason
        try:
            if calling:
                meta["SourceApplicationEntityTitle"] = calling
            self.store.store_encoded(meta, encoded, verdict_attributes(verdict),
                                     checkpoint=False)  # after the answer (_after_store)
        except DicomFileError as exc:
            LOGGER.warning("C-STORE from %s refused: %s", calling, exc)
            return CANNOT_UNDERSTAND, str(exc)
        except StoreError as exc:
            LOGGER.error("C-STORE could not be stored: %s", exc)
            return OUT_OF_RESOURCES, "the PACS could not store it"
        return SUCCESS, ""

    # -- the fast data phase (kit.dicom._fastnet) -------------------------------------

    def _on_conn_open(self, event: Event) -> None:
        """EVT_CONN_OPEN (before the association's threads start): TCP_NODELAY, the gate's
        A-ASSOCIATE-RQ, and pynetdicom's DUL guarded (:func:`~kit.dicom._guard.guard_dul`)."""
        assoc = event.assoc
        dul = assoc.dul
        server = assoc._server
        unbind_log_handlers(assoc)  # they format the whole A-ASSOCIATE-RQ/AC (unless pynetdicom logs DEBUG)
        guard_dul(dul, self.max_pdu, self.timeouts[1], self.max_dataset_size, self.in_memory)  # innermost
        if isinstance(server, GuardedServer):
            deliver_request(server, dul, deliver_checked if self._accept is None else self._accept.deliver)
        _nodelay(event, self.poll_interval)

    def _on_accepted(self, event: Event) -> None:
        """EVT_ACCEPTED: keep pynetdicom's network loop off the socket from the A-ASSOCIATE-AC on."""
        if event.assoc.is_acceptor and self.fast:
            hold_dul(event.assoc)

    def _on_established(self, event: Event) -> None:
        """EVT_ESTABLISHED (on the association's thread, before pynetdicom's reactor starts):
        serve C-STORE and C-ECHO directly on the socket (:mod:`kit.dicom._storeserve`); hand
        anything else, and the release, to pynetdicom."""
        assoc = event.assoc
        if not assoc.is_acceptor or not self.fast:
            return
        serve_established(
            assoc, lambda: ReceiverPhase(assoc, self.timeouts[2], f"dicom://{assoc.requestor.ae_title}@"
                                         f"{assoc.requestor.address}:{assoc.requestor.port}",
                                         pdu_timeout=self.timeouts[1], spill_dir=self.store.tmp_dir,
                                         max_dataset=self.max_dataset_size),
            self._store_fast, after=self._after_store, cleanup=self.store.discard_prepared)

    def _store_fast(self, sop_class: str, sop_uid: str, transfer_syntax: str, dataset: bytes | memoryview,
                    calling: str) -> tuple[int, str]:
        meta = {"MediaStorageSOPClassUID": sop_class, "MediaStorageSOPInstanceUID": sop_uid,
                "TransferSyntaxUID": transfer_syntax, "ImplementationClassUID": PYNETDICOM_IMPLEMENTATION_UID,
                "ImplementationVersionName": PYNETDICOM_IMPLEMENTATION_VERSION}
        return self._store(meta, dataset, calling, sop_class, sop_uid)

    def _after_store(self) -> None:
        self.store.prepare()  # the next instance's file, made while the peer sends it
        self.store.checkpoint()  # the index's WAL, if due: off every acknowledgement's path

    def _records(self, identifier: Dataset, level: QueryLevel) -> Iterator[Dataset]:
        """Candidates at ``level`` (prefiltered in SQL on exact unique keys), as datasets."""
        where: dict[str, list[str]] = {}
        for keyword in (*_UNIQUE[: level.depth + 1], *(("AccessionNumber",) if level.depth >= 1 else ())):
            values = _exact_values(identifier, keyword)
            if values is not None:
                where[keyword] = values
        extra = [e.keyword for e in identifier if e.keyword and e.keyword not in _KNOWN_KEYS
                 and e.tag.group != 0x0002]
        for record in self.store.records(level, where):
            candidate = candidate_dataset(record)
            if extra:
                try:
                    header = dcmread(record["_path"], stop_before_pixels=True)
                    for keyword in extra:
                        if keyword in header and keyword not in candidate:
                            candidate.add(header[keyword])
                except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
                    LOGGER.warning("cannot read %s for extra keys: %s", record["_path"], exc)
            yield candidate

    @_served("pacs.find")
    def _on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            identifier = event.identifier
            check_identifier(identifier)
        except InvalidInputError as exc:
            LOGGER.warning("C-FIND refused: %s", exc)
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception:  # pydicom raises many types on a garbage identifier
            yield _status(CANNOT_UNDERSTAND, "identifier cannot be decoded"), None
            return
        if sop_class == MODALITY_WORKLIST_FIND:
            try:
                items = self.worklist_items()
            except InvalidInputError as exc:
                LOGGER.error("worklist unreadable: %s", exc)
                yield OUT_OF_RESOURCES, None
                return
            for item in items:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                if matches(identifier, item):
                    yield PENDING, response_identifier(identifier, item, level=None)
            return
        try:
            model = QueryModel.from_sop_class(sop_class)
            level = query_level(identifier, model)
        except InvalidInputError as exc:
            LOGGER.warning("C-FIND refused: %s", exc)
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None
            return
        below = [k for lv in QueryLevel if lv.depth > level.depth
                 for k in (*LEVEL_KEYS[lv], *COMPUTED_KEYS[lv])]
        try:
            for candidate in self._records(identifier, level):
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                if matches(identifier, candidate, ignore=below):
                    yield PENDING, response_identifier(identifier, candidate, level=level,
                                                       retrieve_aet=self.aet)
        except StoreError as exc:
            LOGGER.error("C-FIND failed: %s", exc)
            yield _status(OUT_OF_RESOURCES, "the PACS index is unavailable"), None
        except InvalidInputError as exc:
            LOGGER.warning("C-FIND refused: %s", exc)
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None

    def _matching_instances(self, event: Event) -> list[StoredInstance]:
        """Instances a C-GET/C-MOVE identifier selects (InvalidInputError if it selects nothing definite)."""
        identifier = event.identifier
        check_identifier(identifier)
        model = QueryModel.from_sop_class(str(event.request.AffectedSOPClassUID))
        level = query_level(identifier, model)
        unique = _exact_values(identifier, level.unique_key)
        accession = _exact_values(identifier, "AccessionNumber") if level is QueryLevel.STUDY else None
        if unique is None and accession is None:
            raise InvalidInputError(f"a {level.value} retrieve needs a value for {level.unique_key}")
        where: dict[str, list[str]] = {}
        for keyword in (*_UNIQUE[: level.depth + 1], "AccessionNumber"):
            values = _exact_values(identifier, keyword)
            if values is not None:
                where[keyword] = values
        below = [k for lv in QueryLevel if lv.depth > level.depth for k in LEVEL_KEYS[lv]]
        keys = Dataset()
        for element in identifier:  # match on every key given a value, at or above the level
            if element.keyword not in below and element.value not in (None, ""):
                keys.add(element)
        wanted = {str(r["SOPInstanceUID"]) for r in self.store.records(QueryLevel.IMAGE, where)
                  if matches(keys, candidate_dataset(r))}
        return [i for i in self.store.instances(where) if i.sop_instance_uid in wanted]

    def _read(self, instance: StoredInstance, accepted: Mapping[str, set[str]] | None = None
              ) -> Dataset | str:
        """The stored dataset, or (unreadable) a non-Dataset, which pynetdicom counts as a failed sub-op.

        With ``accepted`` (SOP class -> transfer syntaxes the peer accepted, for C-GET), a
        compressed instance the peer cannot take as stored is decompressed to an uncompressed
        syntax the peer accepted, as a PACS such as Orthanc transcodes.
        """
        try:
            ds = dcmread(instance.path)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            LOGGER.error("cannot read stored instance %s: %s", instance.path, exc)
            return f"unreadable:{instance.sop_instance_uid}"
        if accepted is None:
            return ds
        syntaxes = accepted.get(instance.sop_class_uid, set())
        stored = str(ds.file_meta.get("TransferSyntaxUID", ""))
        native = [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts in syntaxes]
        if stored in syntaxes or not stored or not UID(stored).is_compressed or not native:
            return ds  # as stored; pynetdicom fails the sub-operation if no context fits
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - any codec failure is a failed sub-operation
            LOGGER.error("cannot decompress %s for the retriever: %s", instance.path, exc)
            return f"undecodable:{instance.sop_instance_uid}"
        ds.file_meta.TransferSyntaxUID = native[0]
        ds.set_original_encoding(native[0].is_implicit_VR, True, ds.original_character_set)
        return ds

    @staticmethod
    def _accepted_syntaxes(event: Event) -> dict[str, set[str]]:
        """SOP class -> transfer syntaxes accepted for the peer's storage SCP role."""
        accepted: dict[str, set[str]] = {}
        for cx in event.assoc.accepted_contexts:
            if cx.as_scp or cx.as_scu:
                accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        return accepted

    def _failed(self) -> Dataset:
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = ""
        return ds

    @_served("pacs.get")
    def _on_get(self, event: Event) -> Iterator[Any]:
        try:
            instances = self._matching_instances(event)
        except (InvalidInputError, StoreError, AttributeError, ValueError) as exc:
            LOGGER.warning("C-GET refused: %s", exc)
            yield 1
            yield _status(OUT_OF_RESOURCES if isinstance(exc, StoreError) else IDENTIFIER_MISMATCH,
                          str(exc)), self._failed()
            return
        accepted = self._accepted_syntaxes(event)
        yield len(instances)
        for instance in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, self._read(instance, accepted)

    @_served("pacs.move")
    def _on_move(self, event: Event) -> Iterator[Any]:
        destination = str(event.move_destination or "").strip()
        if destination not in self.move_destinations:
            LOGGER.warning("C-MOVE to unknown destination %r", destination)
            yield None, None
            return
        host, port = self.move_destinations[destination]
        try:
            instances = self._matching_instances(event)
        except (InvalidInputError, StoreError, AttributeError, ValueError) as exc:
            LOGGER.warning("C-MOVE refused: %s", exc)
            yield host, port
            yield 1
            yield _status(OUT_OF_RESOURCES if isinstance(exc, StoreError) else IDENTIFIER_MISMATCH,
                          str(exc)), self._failed()
            return
        syntaxes: dict[str, list[str]] = {}
        for instance in instances:
            ts = syntaxes.setdefault(instance.sop_class_uid, [])
            if instance.transfer_syntax_uid and instance.transfer_syntax_uid not in ts:
                ts.append(instance.transfer_syntax_uid)
        # One context per stored (class, syntax), so the destination can accept each as stored
        # (it picks one syntax per context), then an uncompressed one per class as the fallback.
        contexts = [build_context(sop_class, t) for sop_class, ts in syntaxes.items() for t in ts
                    if t not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
        contexts += [build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                     for sop_class in syntaxes]
        contexts = contexts[:128]
        yield host, port, {"contexts": contexts or None, "max_pdu": self.max_pdu,
                           "evt_handlers": [(evt.EVT_CONN_OPEN, _sub_association, [self.poll_interval])]}
        yield len(instances)
        for instance in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, self._read(instance)
