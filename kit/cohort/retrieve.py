"""One unit of a cohort pull against the PACS: resolve one item, fetch one study (I/O).

These functions hold no job state: they take a :class:`Source` (where and how),
a :class:`~kit.cohort.limiter.Limiter` (the politeness caps) and one item or
study, and return what happened or raise a :class:`~kit.errors.KitError`. The
job (:mod:`kit.cohort.pull`) records the outcome in its journal; a Dask worker
runs the same functions with a shared limiter (:mod:`kit.cohort.dask`).
:func:`attempt` turns a call into an :class:`Attempt`: its value, or why it
failed, as plain data that crosses a process boundary (a KitError itself may
not unpickle).

A study is fetched into ``<partial>/<study UID>.<random>/`` (C-GET, C-MOVE or WADO-RS,
each instance written to a temporary name and renamed), every file and the
folder are fsync'ed, and only then is the folder renamed to
``<out>/<study UID>/``: a reader never sees half a study, and a crash leaves
only a partial folder that the next run removes. Two attempts at one study
(a killed job's task still running on a Dask worker, and the resumed job's)
never share a folder, and either may publish last.

Each arriving instance asks :meth:`Limiter.images` before it is answered: the
PACS sends a C-GET/C-MOVE sub-operation only after our answer to the last
one, so the rate cap holds at the PACS (WADO-RS: TCP holds the server back
once our buffers are full). A :class:`~kit.cohort.limiter.Stopped` raised there ends the
retrieve (C-CANCEL, or the WADO-RS answer's connection closed) and reaches the job,
which leaves the study to be fetched whole by the next run.

Written by hand: the glue. The protocols are :class:`kit.dicom.dimse.PacsClient`'s
and :class:`kit.dicom.web.DicomWebClient`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import kit.errors as errors
from kit.cohort.limiter import Limiter, Stopped
from kit.cohort.plan import CohortItem, Failure, FoundStudy, classify, matching_studies
from kit.config import DicomWebSettings, PacsSettings, Settings
from kit.dicom.dimse import PacsClient
from kit.dicom.web import DicomWebClient
from kit.errors import InvalidInputError, KitError, NotFoundError, StoreError

__all__ = ["Attempt", "Fetched", "Method", "Source", "attempt", "fetch", "probe", "resolve"]

log = logging.getLogger("kit.cohort")

Method = Literal["c-get", "c-move", "wado"]

#: The study-level keys a resolution asks for.
RESOLVE_KEYS = ("study_instance_uid", "accession_number", "patient_id", "study_date",
                "number_of_study_related_instances")

# A C-MOVE's storage SCP listens on one fixed port: one C-MOVE at a time per process.
_MOVE_LOCK = threading.Lock()
# One DICOMweb client (one kept-alive HTTP connection) per thread and endpoint: a job's
# connections to the server never outnumber its workers.
_WEB = threading.local()


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a pull reads from and how it retrieves.

    Parameters
    ----------
    method : {"c-get", "c-move", "wado"}
        ``wado`` resolves by QIDO-RS and fetches by WADO-RS from ``dicomweb``;
        the others resolve by C-FIND and fetch from ``pacs``.
    pacs, dicomweb : settings
    """

    method: Method = "c-get"
    pacs: PacsSettings = dataclasses.field(default_factory=PacsSettings)
    dicomweb: DicomWebSettings = dataclasses.field(default_factory=DicomWebSettings)

    def __post_init__(self) -> None:
        if self.method not in ("c-get", "c-move", "wado"):
            raise InvalidInputError(f"unknown retrieve method {self.method!r}: c-get, c-move or wado")

    @classmethod
    def from_settings(cls, settings: Settings, method: Method | None = None) -> Source:
        """The ``[pacs]``/``[dicomweb]`` source with ``method`` (default ``[cohort] retrieve``)."""
        return cls(method or settings.cohort.retrieve, settings.pacs, settings.dicomweb)

    @property
    def web(self) -> bool:
        """Whether the source is DICOMweb."""
        return self.method == "wado"

    @property
    def address(self) -> str:
        """The PACS's address (what a journal remembers): ``dicom://AET@host:port`` or the DICOMweb root."""
        if self.web:
            return self.dicomweb.base.rstrip("/")
        return f"dicom://{self.pacs.called_aet}@{self.pacs.host}:{self.pacs.port}"

    @property
    def credentials(self) -> tuple[str, ...]:
        """The names of the ``[dicomweb]`` secrets this source holds (``password``, ``token``)."""
        return tuple(n for n in ("password", "token") if getattr(self.dicomweb, n) is not None)

    def without_secrets(self) -> Source:
        """This source with no :class:`~kit.config.Secret` in it (one that can be pickled)."""
        return dataclasses.replace(self, dicomweb=dataclasses.replace(self.dicomweb, password=None,
                                                                      token=None))

    def dimse(self, on_instance: Callable[[], None] | None = None) -> PacsClient:
        """A DIMSE client for ``pacs`` that calls ``on_instance`` as each instance arrives."""
        client = _MeteredPacsClient.from_settings(self.pacs)
        assert isinstance(client, _MeteredPacsClient)
        client.on_instance = on_instance
        return client

    def dicomweb_client(self) -> DicomWebClient:
        """This thread's DICOMweb client for ``dicomweb`` (made on first use, then kept)."""
        clients: dict[DicomWebSettings, DicomWebClient] = _WEB.__dict__.setdefault("clients", {})
        client = clients.get(self.dicomweb)
        if client is None:
            client = clients[self.dicomweb] = DicomWebClient.from_settings(self.dicomweb)
        return client


class _MeteredPacsClient(PacsClient):
    """A PacsClient whose per-instance progress hook is ours (the rate cap and the counter).

    :meth:`PacsClient.get`/:meth:`~PacsClient.move` call the tick of ``_progress``
    after each instance is written and before it is answered.
    """

    on_instance: Callable[[], None] | None = None

    @contextlib.contextmanager
    def _progress(self, enabled: bool, desc: str,  # type: ignore[override]
                  total: int | None = None) -> Iterator[Callable[[], None] | None]:
        yield self.on_instance


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A study on disk: its folder, instances, bytes and the seconds the retrieve took."""

    study_instance_uid: str
    path: str
    instances: int
    size: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class Attempt:
    """What one call of :func:`probe`, :func:`resolve` or :func:`fetch` came to, as plain data.

    Exactly one of: ``value`` (it worked), ``failure`` (a KitError or a surprise,
    classified by :func:`kit.cohort.plan.classify`; ``internal`` for a surprise),
    ``stopped`` (the limiter said the job stops), ``store_error`` (a local write
    failed: the job stops). ``error_type`` names the KitError class, so
    :meth:`raise_error` can raise its like again in another process.
    """

    value: Any = None
    failure: Failure | None = None
    internal: bool = False
    stopped: str | None = None
    store_error: str | None = None
    error_type: str | None = None
    message: str = ""

    def raise_error(self) -> None:
        """Raise the error this attempt ended with (a KitError of the same class where possible)."""
        if self.stopped is not None:
            raise Stopped(self.stopped)
        if self.store_error is not None:
            raise StoreError(self.store_error)
        if self.failure is None:
            return
        cls = getattr(errors, self.error_type or "", None)
        if not (isinstance(cls, type) and issubclass(cls, KitError)):
            cls = KitError
        for klass in cls.__mro__:  # the class itself, or the nearest one built from a message alone
            if issubclass(klass, KitError):
                try:
                    error = klass(self.message or self.failure.reason)
                except TypeError:
                    continue
                raise error


def _error_type(exc: BaseException) -> str:
    """The name of the nearest class of ``exc`` that :mod:`kit.errors` defines (what
    :meth:`Attempt.raise_error` rebuilds: a client's own subclass, such as the DICOMweb client's
    ``ResponseTooLargeError``, comes back as its ``DicomWebError``, not as a bare KitError)."""
    for klass in type(exc).__mro__:
        if getattr(errors, klass.__name__, None) is klass:
            return klass.__name__
    return type(exc).__name__


def attempt(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Attempt:
    """Run ``call(*args, **kwargs)``; its :class:`Attempt` (never raises an Exception).

    A surprise (not a KitError) is logged here, with its traceback, in the
    process it happened in.
    """
    try:
        return Attempt(value=call(*args, **kwargs))
    except Stopped as exc:
        return Attempt(stopped=str(exc) or "stopped")
    except StoreError as exc:
        return Attempt(store_error=str(exc), error_type=_error_type(exc))
    except KitError as exc:
        return Attempt(failure=classify(exc), error_type=_error_type(exc), message=str(exc))
    except Exception as exc:  # noqa: BLE001 - one study's surprise fails that study, not the job
        log.exception("cohort: %s failed unexpectedly", getattr(call, "__name__", call))
        return Attempt(failure=classify(exc), internal=True, message=str(exc))


def probe(source: Source, limiter: Limiter) -> None:
    """Check that the PACS answers (C-ECHO, or a one-study QIDO-RS), within the caps.

    Raises
    ------
    PeerError
        Unreachable, refused (wrong AE title), TLS, no answer.
    """
    with limiter.association():
        if source.web:
            source.dicomweb_client().ping()
        else:
            source.dimse().echo()


def resolve(source: Source, item: CohortItem, limiter: Limiter, *,
            max_studies: int = 1000) -> tuple[list[FoundStudy], int]:
    """The studies the PACS holds for ``item`` (C-FIND or QIDO-RS at study level).

    Returns
    -------
    (list of FoundStudy, int)
        The matching studies, and how many answers were dropped because they
        did not match the item (see :func:`kit.cohort.plan.matching_studies`).

    Raises
    ------
    NotFoundError
        No study matches.
    InvalidInputError
        More than ``max_studies`` match (narrow the item with a date range).
    PeerError
        The query failed.
    """
    with limiter.association():
        client = source.dicomweb_client() if source.web else source.dimse()
        frame = client.find("STUDY", return_keys=list(RESOLVE_KEYS), limit=max_studies + 1,
                            **item.filters())
    found, dropped = matching_studies(item, frame.iter_rows(named=True))
    if len(found) > max_studies:
        raise InvalidInputError(f"{item.key} matches more than {max_studies} studies: narrow it with a "
                                f"study_date range, or raise [cohort] max_studies_per_item")
    if not found:
        extra = f" (the PACS answered {dropped} that do not match it)" if dropped else ""
        raise NotFoundError(f"not found: the PACS has no study for {item.key}{extra}",
                            query=item.filters(), peer=source.address)
    return found, dropped


def fetch(source: Source, study_uid: str, out_dir: Path, limiter: Limiter, *, partial_dir: Path,
          on_instance: Callable[[], None] | None = None) -> Fetched:
    """Retrieve one study into ``out_dir/<study UID>/``, durably, or raise.

    Parameters
    ----------
    source : Source
    study_uid : str
        A valid UID (it names the folder).
    out_dir : Path
        Where finished studies go.
    limiter : Limiter
        One association is held for the retrieve; each instance waits for the rate cap.
    partial_dir : Path
        Where the study is assembled (same file system as ``out_dir``).
    on_instance : callable, optional
        Called after each instance arrived (progress).

    Raises
    ------
    KitError
        The retrieve failed (:class:`~kit.dicom.dimse.RetrieveError`, a
        PeerError, DicomWebError); nothing of the study is left in
        ``partial_dir`` and ``out_dir`` is unchanged.
    StoreError
        A local write, fsync or rename failed.
    """
    def arrived() -> None:
        limiter.images(1)
        if on_instance is not None:
            on_instance()

    folder = partial_dir / f"{study_uid}.{uuid.uuid4().hex[:12]}"
    final = out_dir / study_uid
    started = time.monotonic()
    try:
        _fresh(folder)
        with limiter.association():
            if source.web:
                received = source.dicomweb_client().get(study_uid, dest=folder, on_instance=arrived)
            else:
                client = source.dimse(arrived)
                if source.method == "c-move":
                    with _MOVE_LOCK:
                        received = client.move(study_uid=study_uid, dest=folder)
                else:
                    received = client.get(study_uid=study_uid, dest=folder)
        seconds = time.monotonic() - started
        names = {f"{sop}.dcm" for sop in received["sop_instance_uid"]}
        size = 0
        for name in names:
            size += _fsync(folder / name)
        _fsync(folder)
        _publish(folder, final)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise StoreError(f"cannot write study {study_uid} under {out_dir}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Fetched(study_uid, str(final), len(names), size, seconds)


def _fresh(folder: Path) -> None:
    """An empty ``folder`` (what an earlier, cut-off attempt left is removed)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _fsync(path: Path) -> int:
    """fsync a file or folder; the file's size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size if not path.is_dir() else 0
    finally:
        os.close(fd)


def _publish(folder: Path, final: Path) -> None:
    """Rename the complete ``folder`` to ``final`` (replacing an earlier copy) and fsync the parent.

    Another attempt at the same study may publish at the same moment (a killed
    job's task still running on a Dask worker): each moves what is in the way
    aside and tries again; the last rename wins, and both copies are complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    olds: list[Path] = []
    for tries in range(8):
        if final.exists():  # published by a run that died before its journal said so
            old = folder.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
            try:
                os.replace(final, old)
                olds.append(old)
            except FileNotFoundError:
                pass  # the other attempt moved it first
        try:
            os.replace(folder, final)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or tries == 7:
                raise  # the other attempt published in between: move it aside again
    _fsync(final.parent)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)

