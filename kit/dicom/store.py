"""The embedded PACS's durable instance store: Part 10 files plus a SQLite index.

Layout under ``root``::

    index.sqlite                      WAL-mode index, one row per SOP instance
    files/<study>/<series>/<sop>.dcm  DICOM Part 10 files (preamble + file meta)
    tmp/                              in-flight writes, emptied on open

A write is durable before it is acknowledged: the bytes go to a temporary file in
``tmp/`` and are fdatasync'ed (on the caller's thread, so concurrent associations'
fsyncs overlap), then the file joins a *group commit*
(:mod:`kit.dicom._groupcommit`): the batch's files are renamed over their final
paths with ``os.replace`` (atomic; a duplicate SOP Instance UID replaces the old
file), each directory touched is fsync'ed once for the whole batch (with the parents
of a folder made for it, until a commit has synced them: :mod:`kit.dicom._storefs`),
and all the index rows are committed in one transaction with the look-up of the
versions they replace; only then does any caller of the batch return (and the PACS
answer its C-STORE with success). A failure in a batch step fails exactly the
instances it concerns, leaving no file behind. The files are the truth: the index
(WAL, ``synchronous = NORMAL``) is reconciled with them on every open, so a row lost
to a power cut is re-created; when a crash left both versions of a replaced
instance, the committed one wins and the other is removed. The WAL is checkpointed
off the commit path (:class:`kit._sqlite.WalCheckpointer`,
:meth:`InstanceStore.checkpoint`), and a receiver may create its next temporary file
ahead (:meth:`InstanceStore.prepare`). :meth:`InstanceStore.store_encoded` stores
only data sets that pass :func:`kit.dicom.received.check_received`. Any failure
removes the temporary file and raises :class:`~kit.errors.StoreError`, so no partial
file is ever left behind. A missing index is rebuilt from the files
(:meth:`InstanceStore.rebuild`).

SQLite with a lock is written by hand here: pydicom and pynetdicom store files
but keep no index (pynetdicom's qrscp app needs SQLAlchemy and decodes every
dataset).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from kit._sqlite import WalCheckpointer
from kit.dicom._filemeta import PREAMBLE, encode_file_meta
from kit.dicom._groupcommit import GroupCommit, Pending
from kit.dicom._spares import Spare, SparePool
from kit.dicom._spares import create as create_spare
from kit.dicom._spares import maker as spare_maker
from kit.dicom._spares import names as spare_names
from kit.dicom._storefs import Folders
from kit.dicom._storefs import fdatasync as _fdatasync
from kit.dicom._storefs import fsync_dir as _fsync_dir
from kit.dicom._storefs import make_dirs as _make_dirs
from kit.dicom._storefs import unlink as _unlink
from kit.dicom._storefs import write_all as _write_all
from kit.dicom.matching import LEVEL_KEYS
from kit.dicom.query import QueryLevel
from kit.dicom.received import Verdict, check_received
from kit.errors import DicomFileError, StoreError

if TYPE_CHECKING:  # polars is imported by frame(): the DIMSE client and `kit pacs echo` load no polars
    import polars as pl

__all__ = [
    "INDEXED_KEYWORDS",
    "INDEX_TAGS",
    "InstanceStore",
    "StoredInstance",
    "column_name",
    "encode_file_meta",
    "index_attributes",
    "verdict_attributes",
]

LOGGER = logging.getLogger(__name__)

#: DICOM keywords kept in the index (the matching module's LEVEL_KEYS).
INDEXED_KEYWORDS: tuple[str, ...] = tuple(k for level in QueryLevel for k in LEVEL_KEYS[level])
_INT_KEYWORDS = frozenset({"SeriesNumber", "InstanceNumber"})
_TAGS = [Tag(k) for k in (*INDEXED_KEYWORDS, "SpecificCharacterSet")]
_SAFE_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def column_name(keyword: str) -> str:
    """snake_case column name of a DICOM keyword (``SOPInstanceUID`` -> ``sop_instance_uid``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


_COLUMNS = {k: column_name(k) for k in INDEXED_KEYWORDS}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS instances ("
    + ", ".join(f"{c} {'INTEGER' if k in _INT_KEYWORDS else 'TEXT'}"
                + (" PRIMARY KEY" if k == "SOPInstanceUID" else "") for k, c in _COLUMNS.items())
    + ", transfer_syntax_uid TEXT, path TEXT NOT NULL, size INTEGER, stored_at TEXT)"
)
_INSERT_COLUMNS = [*_COLUMNS.values(), "transfer_syntax_uid", "path", "size", "stored_at"]
_INSERT = (f"INSERT OR REPLACE INTO instances ({', '.join(_INSERT_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})")
_INDEXES = [f"CREATE INDEX IF NOT EXISTS ix_{c} ON instances ({c})"
            for c in ("patient_id", "study_instance_uid", "series_instance_uid", "accession_number")]


@dataclasses.dataclass(frozen=True)
class StoredInstance:
    """One stored SOP instance: its identifiers and the Part 10 file holding it."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    path: Path

    def __post_init__(self) -> None:
        if not self.sop_instance_uid:
            raise ValueError("sop_instance_uid must not be empty")


def index_attributes(ds: Dataset) -> dict[str, Any]:
    """The indexed attributes of a dataset as ``{keyword: value}`` (text or int, None if absent)."""
    out: dict[str, Any] = {}
    for keyword, tag in zip(INDEXED_KEYWORDS, _TAGS, strict=False):
        element = ds.get(tag)
        value = None if element is None else element.value
        if value is None or value == "":
            out[keyword] = None
        elif keyword in _INT_KEYWORDS:
            try:
                out[keyword] = int(str(value).strip())
            except ValueError:
                out[keyword] = None
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            out[keyword] = "\\".join(str(v) for v in value)
        else:
            out[keyword] = str(value).strip()
    return out


_TAG_KEYWORD = {int(t): k for t, k in zip(_TAGS, INDEXED_KEYWORDS, strict=False)}
#: Top-level tags the receive check returns for the index (with the character set).
INDEX_TAGS = frozenset(int(t) for t in _TAGS)
_SIMPLE_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def verdict_attributes(verdict: Verdict) -> dict[str, Any]:
    """The index attributes from an accepted :class:`~kit.dicom.received.Verdict`'s raw values
    (checked with ``keep=INDEX_TAGS``), decoded in the data set's character set."""
    raw = verdict.values
    charset = raw[0x00080005][1] if 0x00080005 in raw else b""
    codec = _SIMPLE_CHARSETS.get(charset.decode("ascii", "replace").strip(" \x00"))
    if codec is None:  # ISO 2022 and friends: pydicom's decoder on the raw elements
        elements: dict[BaseTag, DataElement | RawDataElement] = {
            Tag(t): RawDataElement(Tag(t), vr, len(v), v, 0, verdict.implicit_vr, verdict.little_endian)
            for t, (vr, v) in raw.items() if t in INDEX_TAGS}
        try:
            return index_attributes(Dataset(elements))
        except Exception as exc:  # pydicom raises many types on bad values
            raise DicomFileError(f"cannot decode the indexed attributes: {exc}") from exc
    out: dict[str, Any] = {}
    for tag, keyword in _TAG_KEYWORD.items():
        text = raw[tag][1].decode(codec, "replace").strip(" \x00") if tag in raw else ""
        if not text:
            out[keyword] = None
        elif keyword in _INT_KEYWORDS:
            try:
                out[keyword] = int(text)
            except ValueError:
                out[keyword] = None
        else:
            out[keyword] = text
    return out


def _dirname(uid: str | None) -> str:
    uid = uid or "unknown"
    return uid if _SAFE_UID.match(uid) else hashlib.sha1(uid.encode()).hexdigest()


class InstanceStore:
    """A folder of DICOM files with a SQLite index; safe to share between threads.

    Parameters
    ----------
    root : path-like
        The store folder (created if missing). Reopening the same folder finds
        everything stored before; a missing index is rebuilt from the files.

    Raises
    ------
    StoreError
        The folder or the index cannot be created or opened.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.files_dir = self.root / "files"
        self.tmp_dir = self.root / "tmp"
        self.db_path = self.root / "index.sqlite"
        self._lock = threading.RLock()
        self._group: GroupCommit[_Write] = GroupCommit(self._commit_batch)
        self._new_tmp = spare_names(os.path.join(self.tmp_dir, f"{os.getpid()}-{uuid.uuid4().hex[:12]}-"))
        self._spares = threading.local()  # each thread's temporary file made ahead (prepare())
        self._pool: SparePool | None = None  # files made ahead by a thread (started by prepare())
        self._pool_lock = threading.Lock()
        self._files = str(self.files_dir)
        self._folders = Folders()  # series folders known to exist; new ones' parents to fsync
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            for leftover in self.tmp_dir.iterdir():  # writes interrupted by a crash
                leftover.unlink(missing_ok=True)
            self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL, exactly: a commit is atomic and survives a crash of the process (it
            # is in the OS's cache), but is fsync'ed only at checkpoints, so a power cut may undo
            # the last commits (never corrupting the index). FULL would fsync the WAL on every
            # commit: a second flush on each acknowledgement's path, for nothing, since an
            # acknowledged file was fdatasync'ed and its directory fsync'ed before the ack, and
            # _reconcile() indexes on open any file whose row a power cut undid.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # checkpoints off the commit path: run by an idle caller (checkpoint()), or by the
            # writer only once overdue (the WAL stays bounded)
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = WalCheckpointer(self.db_path)
            self._db.execute(_SCHEMA)
            for statement in _INDEXES:
                self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the instance store in {self.root}: {exc}") from exc
        self._reconcile()

    # -- writing --------------------------------------------------------------------

    def store_encoded(self, file_meta: FileMetaDataset | Mapping[str, Any], encoded: bytes | memoryview,
                      attributes: Mapping[str, Any] | None = None, *,
                      checkpoint: bool = True) -> StoredInstance:
        """Durably store a dataset received encoded (e.g. a C-STORE's bytes), without decoding it.

        Parameters
        ----------
        file_meta : FileMetaDataset or mapping of keyword to str
            File meta information (MediaStorageSOPClassUID/InstanceUID, TransferSyntaxUID,
            optionally ImplementationClassUID, ImplementationVersionName,
            SourceApplicationEntityTitle).
        encoded : bytes or memoryview
            The dataset encoded in ``file_meta.TransferSyntaxUID``, without preamble or meta.
        attributes : mapping, optional
            The indexed attributes if already known (:func:`verdict_attributes` of a
            :func:`~kit.dicom.received.check_received` verdict); otherwise the data set
            is checked here the same way (whole, readable, identifiers as in the meta).
        checkpoint : bool
            Checkpoint the index afterwards if due; False leaves it to the caller's
            :meth:`checkpoint` (e.g. once it has acknowledged the instance).

        Raises
        ------
        DicomFileError
            The data set fails the check (nothing is written).
        StoreError
            The file or the index row could not be durably written.
        """
        syntax = str(file_meta.get("TransferSyntaxUID", "") or "")
        if attributes is None:
            verdict = check_received(encoded, syntax,
                                     str(file_meta.get("MediaStorageSOPClassUID", "")),
                                     str(file_meta.get("MediaStorageSOPInstanceUID", "")), keep=INDEX_TAGS)
            if not verdict.ok:
                raise DicomFileError(f"data set refused: {verdict.reason}")
            attributes = verdict_attributes(verdict)
        stored = self._commit([PREAMBLE, encode_file_meta(file_meta), encoded], attributes, syntax)
        if checkpoint:
            self.checkpoint()
        return stored

    def store_dataset(self, ds: Dataset) -> StoredInstance:
        """Durably store a decoded dataset (file meta added if missing)."""
        buf = BytesIO()
        ds = _with_meta(ds)
        try:
            ds.save_as(buf, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError) as exc:
            raise DicomFileError(f"cannot encode dataset: {exc}") from exc
        stored = self._commit([buf.getvalue()], index_attributes(ds), str(ds.file_meta.TransferSyntaxUID))
        self.checkpoint()
        return stored

    def import_file(self, path: str | os.PathLike[str]) -> StoredInstance:
        """Copy one DICOM file into the store (bytes kept as they are when it has file meta)."""
        path = Path(path)
        try:
            data = path.read_bytes()
            ds = dcmread(BytesIO(data), stop_before_pixels=True, force=True)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            raise DicomFileError(f"cannot read DICOM file: {exc}", source=str(path)) from exc
        meta = getattr(ds, "file_meta", None)
        if data[128:132] != b"DICM" or meta is None or "TransferSyntaxUID" not in meta:
            try:
                return self.store_dataset(dcmread(path, force=True))
            except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
                raise DicomFileError(f"cannot read DICOM file: {exc}", source=str(path)) from exc
        stored = self._commit([data], index_attributes(ds), str(meta.TransferSyntaxUID))
        self.checkpoint()
        return stored

    def import_files(self, paths: Iterable[str | os.PathLike[str]], *, skip_existing: bool = False) -> int:
        """Import files and folders (recursively; ``DICOMDIR`` skipped); returns how many were stored.

        With ``skip_existing``, files whose SOP Instance UID the store already holds are left
        alone (a preload on every start then writes nothing twice); otherwise they replace it.

        Raises
        ------
        DicomFileError
            A file is not DICOM (nothing after it is imported).
        """
        count = 0
        held = {s.sop_instance_uid for s in self.instances()} if skip_existing else set()
        for item in paths:
            p = Path(item)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                if f.name.upper() == "DICOMDIR" or f.name.startswith("."):
                    continue
                if held and _sop_instance_uid(f) in held:
                    continue
                self.import_file(f)
                count += 1
        return count

    def _commit(self, parts: Sequence[bytes | memoryview], attrs: Mapping[str, Any],
                transfer_syntax: str) -> StoredInstance:
        sop = attrs.get("SOPInstanceUID")
        if not sop:
            raise DicomFileError("dataset has no SOPInstanceUID")
        study, series = _dirname(attrs.get("StudyInstanceUID")), _dirname(attrs.get("SeriesInstanceUID"))
        name = f"{_dirname(sop)}.dcm"
        rel = f"files{os.sep}{study}{os.sep}{series}{os.sep}{name}"
        folder = os.path.join(self._files, study, series)
        final = os.path.join(folder, name)
        size = sum(len(p) for p in parts)
        # the index row, prepared here rather than under the commit lock (stored_at is added there)
        row = [attrs.get(k) for k in _COLUMNS]
        row += (transfer_syntax, rel, size)
        spare: Spare | None = getattr(self._spares, "file", None)
        if spare is not None:  # made by prepare() while the peer sent this instance
            self._spares.file = None
            tmp, fd = spare.take()
        else:
            tmp, fd = self._new_tmp(), -1
        try:
            with self._group.coming() as submit:  # a batch being committed may wait for this one
                if fd < 0:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # O_EXCL guards
                _write_all(fd, parts)
                # fsync'ed on the caller's thread: the associations' fdatasyncs run concurrently and
                # share the device's cache flushes (measured faster than the leader syncing the
                # batch, serially or from a thread pool)
                _fdatasync(fd)
                self._folders.need(folder, _make_dirs)  # a known folder: no stat
                submit(_Write(sop, tmp, final, rel, row))
        except BaseException as exc:
            _unlink(tmp)  # normally renamed away already
            if isinstance(exc, OSError | sqlite3.Error):
                raise StoreError(f"cannot store {sop}: {exc}") from exc
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return StoredInstance(sop, str(attrs.get("SOPClassUID") or ""), transfer_syntax,
                              str(attrs.get("StudyInstanceUID") or ""),
                              str(attrs.get("SeriesInstanceUID") or ""),
                              str(attrs.get("PatientID") or ""), Path(final))

    def prepare(self) -> None:
        """Have the calling thread's next temporary file ready for its next write.

        A receiver calls this once it has answered an instance, while its peer sends the
        next one, so creating the file (a journalled metadata operation: ~1 ms on a busy
        disk) is neither between receiving an instance and acknowledging it nor, mostly,
        on the receiver's thread at all: a pool thread (:mod:`kit.dicom._spares`) keeps a
        few ready (refilled once half are taken), and only when it has none is one made
        here. A failure here is left to the write to meet and report. Idempotent;
        :meth:`discard_prepared` removes an unused file (a thread ending with one removes it
        too); :meth:`release_spares` stops the pool.
        """
        if getattr(self._spares, "file", None) is not None:
            return
        pool = self._pool
        if pool is None:
            with self._pool_lock:  # the pool's make holds the namer only: never the store
                pool = self._pool = self._pool or SparePool(spare_maker(self._new_tmp),
                                                            name="kit-store-spares")
        made = pool.take()
        if pool.outstanding <= pool.size // 2:  # refilled in bursts: its thread wakes once per
            pool.top_up()  # size/2 files taken, not for each (starts the thread on first use)
        if made is None:
            try:
                made = create_spare(self._new_tmp())
            except OSError:
                return
        self._spares.file = Spare(*made)

    def discard_prepared(self) -> None:
        """Remove the calling thread's unused :meth:`prepare` file, if any (idempotent)."""
        spare: Spare | None = getattr(self._spares, "file", None)
        self._spares.file = None
        if spare is not None:
            spare.discard()

    def release_spares(self) -> None:
        """Stop the pool of files made ahead and remove its unused files (idempotent; a later
        :meth:`prepare` starts a new one)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _commit_batch(self, batch: Sequence[Pending[_Write]]) -> None:
        """Make a batch of fsync'ed temporary files durable and indexed (group commit).

        In runs where each SOP Instance UID appears once: rename every file into place,
        fsync each directory touched once, index every row in one transaction, then
        remove replaced versions stored elsewhere. An item whose step fails gets the
        error (its caller answers with a failure) and leaves no file behind.
        """
        with self._lock:
            start, seen = 0, set[str]()
            for i, pending in enumerate(batch):
                if pending.item.sop in seen:
                    self._commit_run(batch[start:i])
                    start, seen = i, set[str]()
                seen.add(pending.item.sop)
            self._commit_run(batch[start:])

    def _commit_run(self, run: Sequence[Pending[_Write]]) -> None:
        renamed: list[Pending[_Write]] = []
        try:  # one write transaction: the versions this run replaces (one query), then its rows
            self._db.execute("BEGIN IMMEDIATE")
            olds = dict(self._db.execute(
                "SELECT sop_instance_uid, path FROM instances WHERE sop_instance_uid IN "
                f"({', '.join('?' * len(run))})", [p.item.sop for p in run]).fetchall())
        except BaseException as exc:
            self._rollback()
            for pending in run:
                pending.error = exc
                _unlink(pending.item.tmp)
            return
        for pending in run:
            w = pending.item
            try:
                old = olds.get(w.sop)
                w.old = None if old is None else str(old)
                try:
                    os.replace(w.tmp, w.final)
                except FileNotFoundError:  # its folder was removed since: made again, synced below
                    if not os.path.exists(w.tmp):
                        raise
                    folder = os.path.dirname(w.final)
                    self._folders.remade(folder, _make_dirs(folder))
                    os.replace(w.tmp, w.final)
                renamed.append(pending)
            except BaseException as exc:
                pending.error = exc
                _unlink(w.tmp)
        if not renamed:
            self._rollback()
            return
        try:
            homes = {os.path.dirname(p.item.final) for p in renamed}
            folders = homes.union(*(self._folders.parents(h) for h in homes))  # new folders' parents too
            done: list[str] = []
            try:
                for folder in sorted(folders):
                    _fsync_dir(folder)
                    done.append(folder)
            finally:
                self._folders.synced(done)  # durable entries, even if a later fsync failed
            now = dt.datetime.now(dt.UTC).isoformat()
            self._insert([[*p.item.row, now] for p in renamed])  # commits the transaction
        except BaseException as exc:
            self._rollback()
            for pending in renamed:
                pending.error = exc
                if pending.item.old is None:  # not indexed: the file must not stay behind
                    _unlink(pending.item.final)
            return
        # a replaced version stored elsewhere moves out before the ack: after a crash here the
        # committed row wins (_reconcile), after the ack a power cut cannot revive it
        stale = [p for p in renamed if p.item.old is not None and p.item.old != p.item.rel]
        for pending in stale:
            (self.root / str(pending.item.old)).unlink(missing_ok=True)
        for folder in sorted({os.fspath((self.root / str(p.item.old)).parent) for p in stale}):
            try:
                _fsync_dir(folder)
            except OSError as exc:
                for pending in stale:
                    if os.fspath((self.root / str(pending.item.old)).parent) == folder:
                        pending.error = exc

    def _insert(self, values: Sequence[Sequence[Any]]) -> None:
        """Index rows (values in :data:`_INSERT_COLUMNS` order) and commit: in the write
        transaction already begun (a group commit's), else in one of their own."""
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_INSERT, values)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        if self._checkpointer.committed(len(values)):  # overdue: nobody idle ran one
            self.checkpoint(wait=True)

    def _rollback(self) -> None:
        """End a write transaction left open by a failure (its rows are not committed)."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:  # pragma: no cover - the connection is broken
                LOGGER.error("cannot roll back the index transaction: %s", exc)

    def checkpoint(self, *, wait: bool = False) -> bool:
        """Checkpoint the index's WAL if enough rows were committed since the last time.

        Called once an instance is acknowledged (off the commit path; a checkpoint fsyncs
        twice); returns at once when not due or when another thread is checkpointing
        (unless ``wait``). A failure is logged, not raised: the rows are committed (the WAL
        keeps them) and the next call tries again. Returns whether a checkpoint ran.
        """
        try:
            return self._checkpointer.run(wait=wait)
        except StoreError as exc:
            LOGGER.warning("%s (will retry)", exc)
            return False

    def _index_file(self, f: Path) -> bool:
        try:
            ds = dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, ValueError, EOFError, OSError):
            return False
        attrs = index_attributes(ds)
        if not attrs.get("SOPInstanceUID"):
            return False
        self._insert([[attrs.get(k) for k in _COLUMNS]
                      + [str(ds.file_meta.get("TransferSyntaxUID", "")), str(f.relative_to(self.root)),
                         f.stat().st_size, dt.datetime.now(dt.UTC).isoformat()]])
        return True

    def _reconcile(self) -> None:
        """Make the index and the files agree, deterministically.

        Rows whose file is gone are dropped. A file the index lacks is indexed, unless its
        SOP Instance UID is already indexed with an existing file: then it is the replaced
        version a crash left behind between the index commit and its removal, and the
        committed one wins (the stale file is removed). Among unindexed files sharing a SOP
        Instance UID, the newest (then the last path) wins.
        """
        with self._lock:
            try:
                on_disk = {str(f.relative_to(self.root)): f for f in self.files_dir.rglob("*.dcm")}
                indexed = dict(self._db.execute("SELECT path, sop_instance_uid FROM instances").fetchall())
                for rel in indexed.keys() - on_disk.keys():
                    self._db.execute("DELETE FROM instances WHERE path = ?", (rel,))
                held = {sop for rel, sop in indexed.items() if rel in on_disk}
                self._index_newest([on_disk[rel] for rel in sorted(on_disk.keys() - indexed.keys())], held)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot reconcile the index of {self.root}: {exc}") from exc

    def _index_newest(self, files: Sequence[Path], held: set[str]) -> int:
        """Index ``files``, one per SOP Instance UID (the newest); remove the others and
        those whose UID is in ``held``. Returns how many were indexed."""
        by_sop: dict[str, list[Path]] = {}
        for f in files:
            sop = _sop_instance_uid(f)
            if sop is None:
                continue  # not DICOM the store wrote: left alone, never indexed
            if sop in held:
                LOGGER.warning("removing %s: a replaced version of %s (the index holds the newer)", f, sop)
                f.unlink(missing_ok=True)
                continue
            by_sop.setdefault(sop, []).append(f)
        count = 0
        for versions in by_sop.values():
            versions.sort(key=lambda f: (f.stat().st_mtime_ns, str(f)))
            for stale in versions[:-1]:
                LOGGER.warning("removing %s: an older version of the instance in %s", stale, versions[-1])
                stale.unlink(missing_ok=True)
            count += self._index_file(versions[-1])
        return count

    def rebuild(self) -> int:
        """Re-create the index from the files on disk; returns the number of instances indexed.

        Files that cannot be parsed are skipped (they are not DICOM the store wrote).
        """
        with self._lock:
            try:
                self._db.execute("DELETE FROM instances")
                count = self._index_newest(sorted(self.files_dir.rglob("*.dcm")), set())
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot rebuild the index of {self.root}: {exc}") from exc
        return count

    # -- reading --------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                cur = self._db.execute(sql, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            except sqlite3.Error as exc:
                raise StoreError(f"index query failed: {exc}") from exc

    @staticmethod
    def _where(where: Mapping[str, Sequence[str]]) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for keyword, values in where.items():
            if keyword not in _COLUMNS:
                raise KeyError(keyword)
            clauses.append(f"{_COLUMNS[keyword]} IN ({', '.join('?' * len(values))})")
            params.extend(values)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def records(self, level: QueryLevel, where: Mapping[str, Sequence[str]] | None = None
                ) -> list[dict[str, Any]]:
        """One ``{keyword: value}`` record per entity at ``level``, with its computed keys.

        Parameters
        ----------
        level : QueryLevel
            PATIENT, STUDY, SERIES or IMAGE.
        where : mapping, optional
            Exact prefilters ``{keyword: [values]}`` on indexed keys of this level
            or above (so counts over the hierarchy stay right).

        Returns
        -------
        list of dict
            Indexed keywords of the level and above, the level's computed keys
            (e.g. NumberOfStudyRelatedInstances, ModalitiesInStudy), and ``_path``:
            one file of the entity (to read keys the index lacks).
        """
        keys = [k for lv in QueryLevel if lv.depth <= level.depth for k in LEVEL_KEYS[lv]]
        clause, params = self._where(where or {})
        if level is QueryLevel.IMAGE:
            select = ", ".join(f"{_COLUMNS[k]} AS {k}" for k in keys) + ", path AS _path"
            rows = self._query(f"SELECT {select} FROM instances{clause}", params)
        else:
            select = ", ".join(f"MIN({_COLUMNS[k]}) AS {k}" for k in keys) + ", MIN(path) AS _path"
            computed = {
                QueryLevel.PATIENT: "COUNT(DISTINCT study_instance_uid) AS NumberOfPatientRelatedStudies, "
                                    "COUNT(DISTINCT series_instance_uid) AS NumberOfPatientRelatedSeries, "
                                    "COUNT(*) AS NumberOfPatientRelatedInstances",
                QueryLevel.STUDY: "COUNT(DISTINCT series_instance_uid) AS NumberOfStudyRelatedSeries, "
                                  "COUNT(*) AS NumberOfStudyRelatedInstances, "
                                  "GROUP_CONCAT(DISTINCT modality) AS ModalitiesInStudy, "
                                  "GROUP_CONCAT(DISTINCT sop_class_uid) AS SOPClassesInStudy",
                QueryLevel.SERIES: "COUNT(*) AS NumberOfSeriesRelatedInstances",
            }[level]
            group = _COLUMNS[level.unique_key]
            rows = self._query(f"SELECT {select}, {computed} FROM instances{clause} "
                               f"GROUP BY {group} ORDER BY MIN(rowid)", params)
        for row in rows:
            for multi in ("ModalitiesInStudy", "SOPClassesInStudy"):
                if row.get(multi):
                    row[multi] = sorted(set(str(row[multi]).split(",")))
            row["_path"] = self.root / row["_path"]
        return rows

    def instances(self, where: Mapping[str, Sequence[str]] | None = None) -> list[StoredInstance]:
        """The stored instances whose indexed keys are among the given values (all if none)."""
        clause, params = self._where(where or {})
        rows = self._query("SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, study_instance_uid, "
                           f"series_instance_uid, patient_id, path FROM instances{clause} ORDER BY rowid",
                           params)
        return [StoredInstance(r["sop_instance_uid"], r["sop_class_uid"] or "",
                               r["transfer_syntax_uid"] or "",
                               r["study_instance_uid"] or "", r["series_instance_uid"] or "",
                               r["patient_id"] or "", self.root / r["path"]) for r in rows]

    def commit_batches(self) -> list[int]:
        """Sizes of the last (up to 1,000) group commits: how many instances shared each one."""
        return list(self._group.batch_sizes)

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM instances")[0]["n"])

    def __iter__(self) -> Iterator[StoredInstance]:
        return iter(self.instances())

    def frame(self) -> pl.DataFrame:
        """The index as a DataFrame: one row per instance.

        Columns: the snake_case names of :data:`INDEXED_KEYWORDS` (``patient_id``,
        ``study_instance_uid``, ``accession_number``, ``series_instance_uid``,
        ``sop_instance_uid``, ...), dates as ``pl.Date``, times as ``pl.Time``,
        ``series_number``/``instance_number`` as Int32 (as in :mod:`kit.dicom.index`), plus
        ``transfer_syntax_uid``, ``path`` (absolute) and ``size_bytes``.
        """
        import polars as pl

        rows = self._query(f"SELECT {', '.join(_COLUMNS.values())}, transfer_syntax_uid, path, "
                           "size AS size_bytes FROM instances ORDER BY rowid")
        schema: dict[str, Any] = {c: (pl.Int32 if k in _INT_KEYWORDS else pl.String)
                                  for k, c in _COLUMNS.items()}
        schema.update(transfer_syntax_uid=pl.String, path=pl.String, size_bytes=pl.Int64)
        df = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
        root = str(self.root)
        exprs = [pl.concat_str([pl.lit(root + os.sep), pl.col("path")]).alias("path")]
        for keyword, col in _COLUMNS.items():
            if keyword.endswith("Date"):
                exprs.append(pl.col(col).str.strptime(pl.Date, "%Y%m%d", strict=False))
            elif keyword.endswith("Time"):
                exprs.append(pl.col(col).str.replace_all(":", "").str.slice(0, 6).str.pad_end(6, "0")
                             .str.strptime(pl.Time, "%H%M%S", strict=False))
        return df.with_columns(exprs)

    def close(self) -> None:
        """Close the index (idempotent) and stop the pool of files made ahead."""
        self.release_spares()
        self._checkpointer.close()
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # pragma: no cover
                pass


def _with_meta(ds: Dataset) -> Dataset:
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", meta.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", meta.get("MediaStorageSOPInstanceUID"))
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


class _Write:
    """A written, fsync'ed temporary file waiting for its group commit."""

    __slots__ = ("final", "old", "rel", "row", "sop", "tmp")

    def __init__(self, sop: str, tmp: str, final: str, rel: str, row: list[Any]) -> None:
        self.sop, self.tmp, self.final, self.rel, self.row = sop, tmp, final, rel, row
        self.old: str | None = None


def _sop_instance_uid(path: Path) -> str | None:
    """The SOP Instance UID in a file's header (None if unreadable; the import then reports it)."""
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SOPInstanceUID"])
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return None
    return str(ds.get("SOPInstanceUID", "")) or None
