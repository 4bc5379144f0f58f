"""The C-GET answer path (:meth:`kit.dicom.dimse.PacsClient.get`): files made ahead, answer first.

Per sub-operation the PACS waits for our C-STORE-RSP before it sends the next
instance, so everything between the last byte of an instance and our answer
is paid once per instance. Three things are taken off that path here:

- creating the file, where that is slow: ext4 without a journal may spend up to a
  millisecond of kernel time allocating an inode (it scans past recently freed ones on a
  busy file system), a network file system a round trip. Each file is made as its instance
  arrives, timed; once :data:`SLOW_TO_POOL` of the last :data:`SLOW_WINDOW` took longer
  than :data:`SLOW_CREATE`, a :class:`~kit.dicom._spares.SparePool` keeps a few empty files
  ready in the target folder for the rest of the retrieve, made by its thread (``os.open``
  releases the GIL). Where making a file is cheap (10-20 us on journalled ext4 or tmpfs)
  the thread costs more than it saves (its wake-ups and GIL hand-offs on the answer path:
  on a loaded machine, 0.89-1.00x dcmtk getscu with it, 1.07-1.10x without), so it is not
  started. Files are unnamed (``O_TMPFILE``) where the system has them, so making one takes
  no lock on the folder, and each is linked at its final name once written; so the path is
  write, link (or rename), close, answer;
- the bookkeeping (the row, the next files): after the answer is on the wire
  (:func:`get_loop`). The per-instance hook (progress, the rate cap) runs before
  it, as on pynetdicom's path: a wait there must hold back the PACS's next instance.

The guarantee is unchanged: the success status is sent only after the file is
written whole, put at its final path (it appears there whole) and closed. Written by
hand: no library does any of this; the file layout and names are
:class:`kit.dicom._fastnet.FileReceiver`'s.

Every instance received (C-GET here, C-MOVE's storage SCP too) must be what was asked:
:class:`Expected` reads the data set's SOP Instance, Study and Series Instance UIDs from
its first bytes (:func:`read_identity`, a walk of the top-level elements up to (0020,000E),
a few microseconds) and refuses, before anything is written, an instance whose SOP Instance
UID is not the command's, or that is of another study, series or instance than the one asked
for (answered 0xA900, kept in the receiver's ``refused``; the retrieve then raises). A SOP
Instance UID that cannot name a file (:func:`~kit.dicom._fastnet.instance_file_name`: too long,
a path, a NUL...) is refused the same way (0xC000), not failed as a local write; a UID that
only breaks PS3.5's syntax (``1.2..3``) is kept: data from a non-conformant modality is still data.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import itertools
import os
import struct
import threading
import zlib
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from kit.dicom._command import (
    C_GET_RQ,
    C_GET_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATASET,
    command_int,
    command_str,
    encode_command,
    status_fields,
)
from kit.dicom._fastnet import DataPhase, FileReceiver, check_get_rsp, instance_file_name
from kit.dicom._filemeta import part10_head
from kit.dicom._native import getc
from kit.dicom._spares import POOL_LIMIT, SparePool
from kit.dicom.received import CANNOT_UNDERSTAND, DATASET_MISMATCH, MAX_DEPTH, MAX_INFLATED
from kit.errors import DicomProtocolError

#: ``kit/dicom/_getc.c``'s identity walk, or None: the Python walk alone (:mod:`kit.dicom._native`)
_c_identity = getc("identity")

__all__ = ["SLOW_CREATE", "SLOW_TO_POOL", "SLOW_WINDOW", "Expected", "PooledReceiver", "get_loop",
           "read_identity", "store_rsp"]

#: Seconds (wall) past which making one file counts as slow (:class:`PooledReceiver`).
SLOW_CREATE = 250e-6
#: Slow creations among the last :data:`SLOW_WINDOW` after which a retrieve's files are made
#: ahead by a thread: a majority, so that a creation preempted on a busy machine does not count.
SLOW_TO_POOL = 3
SLOW_WINDOW = 5

_SOP_INSTANCE, _STUDY, _SERIES = 0x00080018, 0x0020000D, 0x0020000E
_IDENTITY = (_SOP_INSTANCE, _STUDY, _SERIES)  # the order of _getc.identity's answer
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                       b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: (implicit head, explicit head with its VR and 16-bit length, 32-bit) unpackers by byte
#: order: made once, not per instance.
_LITTLE = (struct.Struct("<HHI"), struct.Struct("<HH2sH"), struct.Struct("<I"))
_BIG = (struct.Struct(">HHI"), struct.Struct(">HH2sH"), struct.Struct(">I"))


def read_identity(dataset: bytes | memoryview, transfer_syntax: str) -> dict[int, str]:
    """The SOP Instance, Study and Series Instance UIDs of an encoded data set, by tag.

    Walks the top-level elements (skipping sequences, nested ones too) only up to (0020,000E):
    the pixel data and the rest are never touched. A tag absent is absent from the answer.

    Parameters
    ----------
    dataset : bytes or memoryview
        The data set as received (no preamble or file meta).
    transfer_syntax : str
        Its transfer syntax UID (deflated ones are inflated first, up to
        :data:`kit.dicom.received.MAX_INFLATED` bytes).

    Raises
    ------
    ValueError
        The elements before (0020,000E) do not parse (cut short, a malformed sequence).

    Notes
    -----
    Where ``kit/dicom/_getc.c`` is built, the walk of a data set that is not deflated runs there
    first (written by hand, for speed: ~1 us against ~20 us here); a walk it cannot finish, or
    a value outside ASCII, it leaves to this one, which says why or decodes it
    (tests/unit/dicom_store/test_getc.py: the same answers on generated data sets).
    """
    data: bytes | memoryview = dataset
    if _c_identity is not None and transfer_syntax != _DEFLATED:
        implicit, little = transfer_syntax == _IMPLICIT_LE, transfer_syntax != _EXPLICIT_BE
        got = _c_identity(dataset, implicit, little, MAX_DEPTH)
        if got is not None:
            return {tag: value for tag, value in zip(_IDENTITY, got, strict=True) if value is not None}
    if transfer_syntax == _DEFLATED:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset, MAX_INFLATED)
        except zlib.error as exc:
            raise ValueError(f"the deflated data set does not inflate: {exc}") from exc
    walk = _IdentityWalk(data, transfer_syntax == _IMPLICIT_LE, transfer_syntax != _EXPLICIT_BE)
    found: dict[int, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        tag, length, pos, vr = walk.element(pos, end, walk.implicit)
        if tag > _SERIES:
            break
        if length == _UNDEFINED:
            pos = walk.sequence(pos, end, walk.implicit or vr == b"UN", 1)
            continue
        if pos + length > end:
            raise ValueError(f"the value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is cut short")
        if tag in (_SOP_INSTANCE, _STUDY, _SERIES):
            found[tag] = bytes(data[pos:pos + length]).decode("ascii", "replace").strip(" \x00")
        pos += length
    return found


class _IdentityWalk:
    """The element and sequence walk of :func:`read_identity` (one data set, one byte order)."""

    __slots__ = ("data", "explicit", "head", "implicit", "long")

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.data, self.implicit = data, implicit
        self.head, self.explicit, self.long = _LITTLE if little else _BIG

    def element(self, pos: int, end: int, implicit: bool) -> tuple[int, int, int, bytes | None]:
        """(tag, value length, value position, VR or None) of the element at ``pos``."""
        if pos + 8 > end:
            raise ValueError(f"an element header is cut short at offset {pos}")
        if implicit:
            group, elem, length = self.head.unpack_from(self.data, pos)
            return group << 16 | elem, length, pos + 8, None
        group, elem, vr, length = self.explicit.unpack_from(self.data, pos)
        if group == 0xFFFE:  # item tags have no VR in any syntax
            return group << 16 | elem, self.head.unpack_from(self.data, pos)[2], pos + 8, None
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise ValueError(f"an element header is cut short at offset {pos}")
            return group << 16 | elem, self.long.unpack_from(self.data, pos + 8)[0], pos + 12, vr
        return group << 16 | elem, length, pos + 8, vr

    def sequence(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        """Skip an undefined-length sequence's items from ``pos``; the position after its delimiter."""
        if depth > MAX_DEPTH:
            raise ValueError(f"sequences nested deeper than {MAX_DEPTH}")
        while True:
            tag, length, pos, _ = self.element(pos, end, True)
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where a sequence item was expected")
            if length != _UNDEFINED:
                pos += length
                continue
            while True:  # an undefined-length item: its elements, up to the item delimiter
                tag, length, pos, vr = self.element(pos, end, implicit)
                if tag == _ITEM_END:
                    break
                if length == _UNDEFINED:
                    pos = self.sequence(pos, end, implicit or vr == b"UN", depth + 1)
                else:
                    pos += length


class Expected:
    """What a retrieve asked for; called on each instance received, it says whether to keep it.

    Parameters
    ----------
    study_uid : str
        The study asked for: every instance must be of it.
    series_uid, sop_uid : str, optional
        The series (and instance) asked for, if any.

    Notes
    -----
    The sender's AE title is not checked: a PACS may perform a C-MOVE's C-STOREs from
    another AE (a storage node) than the one the move was sent to; what is kept is what
    was asked for, whoever sends it.
    """

    def __init__(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> None:
        self.study_uid, self.series_uid, self.sop_uid = study_uid, series_uid or None, sop_uid or None
        #: Why each instance refused was, in arrival order (C-MOVE's storage SCP: several threads).
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, sop_uid: str, transfer_syntax: str, dataset: bytes | memoryview) -> tuple[int, str]:
        """(0, "") to keep the instance the C-STORE-RQ ``sop_uid`` carries, else the status to
        answer (0xA900, 0xC000) and why (also kept in :attr:`refused`)."""
        status, reason = self._verdict(sop_uid, transfer_syntax, dataset)
        if status:
            with self._lock:
                self.refused.append(reason)
        return status, reason

    def _verdict(self, sop_uid: str, transfer_syntax: str, dataset: bytes | memoryview) -> tuple[int, str]:
        try:  # a UID no file can be named by is refused here, not failed as a local write
            instance_file_name(sop_uid)
        except ValueError as exc:
            return CANNOT_UNDERSTAND, f"{exc}: it cannot name a file"
        try:
            found = read_identity(dataset, transfer_syntax)
        except ValueError as exc:
            return CANNOT_UNDERSTAND, f"{sop_uid}: its identifiers cannot be read ({exc})"
        sop = found.get(_SOP_INSTANCE, "")
        if sop != sop_uid:
            return DATASET_MISMATCH, f"the C-STORE names {sop_uid} but its data set is {sop or 'without one'}"
        for tag, name, asked in ((_STUDY, "study", self.study_uid), (_SERIES, "series", self.series_uid)):
            value = found.get(tag, "")
            if asked is not None and value != asked:
                return DATASET_MISMATCH, f"{sop_uid} is of {name} {value or '(none)'}, not {asked}"
        if self.sop_uid is not None and sop != self.sop_uid:
            return DATASET_MISMATCH, f"{sop_uid} is not the instance asked for, {self.sop_uid}"
        return 0x0000, ""

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
#: An unnamed file in a folder (Linux); 0 where the platform has none.
_TMPFILE = (os.O_WRONLY | os.O_TMPFILE | _CLOEXEC) if hasattr(os, "O_TMPFILE") else 0
#: open(O_TMPFILE) errors meaning "this file system has no unnamed files".
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
#: linkat errors meaning "unnamed files cannot be linked here" (no /proc, a refusing LSM...).
_NO_LINK = {errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EACCES, errno.ENOTDIR, errno.ELOOP}


class PooledReceiver(FileReceiver):
    """A :class:`~kit.dicom._fastnet.FileReceiver` for C-GET whose files come from a
    :class:`~kit.dicom._spares.SparePool` once making them proves slow (:attr:`pooled`),
    answering before its bookkeeping (:meth:`place`, then :meth:`record`).

    Where the file system has unnamed files (Linux ``O_TMPFILE``: ext4, xfs, btrfs, tmpfs),
    each file is made without a name and linked at its final path once written whole
    (``linkat`` of ``/proc/self/fd/N``, the path resolved as a rename's is: a folder moved
    mid-retrieve gets nothing more): making one then takes no lock on the folder, so the
    helper thread's slow inode allocation never holds up the link of the instance being
    answered (a named temporary file is created under the folder's lock, which a rename in
    the same folder waits for). Elsewhere, or if linking fails, named temporary files
    renamed into place, as :class:`~kit.dicom._fastnet.FileReceiver` does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = SparePool(self._new_temp, POOL_LIMIT, name="kit-get-files")
        self._made = itertools.count()  # next() is atomic: the helper thread and the owner both call
        self.unnamed = _TMPFILE != 0
        self._procfd: int | None = None  # /proc/self/fd, for linkat (see _link)
        #: Files come from the pool (made ahead by its thread): set once creating them proves slow.
        self.pooled = False
        self._slow: collections.deque[bool] = collections.deque(maxlen=SLOW_WINDOW)

    def _new_temp(self) -> tuple[str, int]:
        """A new empty file: ("", descriptor) when unnamed, else (temporary path, descriptor)."""
        if self.unnamed:
            try:
                return "", os.open(self.dest, _TMPFILE, 0o600)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise
                self.unnamed = False  # this file system has no unnamed files
        tmp = os.path.join(self.dest, f".recv-{self._tag}-p{next(self._made)}.part")
        return tmp, os.open(tmp, _FLAGS, 0o600)

    def prepare(self) -> None:
        """Keep one file ready if files are made ahead (more with
        :meth:`~kit.dicom._spares.SparePool.top_up`); else nothing: each is made as it is needed."""
        if self.pooled:
            self.pool.top_up(1)

    def _file(self) -> tuple[str, int]:
        """The next file to write: a ready one from the pool, else one made now (timed: when
        :data:`SLOW_TO_POOL` of the last :data:`SLOW_WINDOW` took over :data:`SLOW_CREATE`, the
        pool is turned on)."""
        if self.pooled:
            made = self.pool.take()
            if made is not None:
                return made
        start = perf_counter()
        made = self._new_temp()
        if not self.pooled:
            self._slow.append(perf_counter() - start > SLOW_CREATE)
            self.pooled = self._slow.count(True) >= SLOW_TO_POOL
        return made

    def discard(self) -> None:
        """Remove the files made ahead and not used (idempotent)."""
        super().discard()
        self.pool.close()
        procfd, self._procfd = self._procfd, None
        if procfd is not None:
            with contextlib.suppress(OSError):
                os.close(procfd)

    def place(self, sop_uid: str, sop_class: str, transfer_syntax: str,
              dataset: bytes | memoryview) -> tuple[int, int, str]:
        """Write one received data set as a Part 10 file at its final path: (status, size, path).

        The file is written whole, put at ``<SOPInstanceUID>.dcm`` (linked or renamed: it
        appears there whole) and closed before this returns 0; a local failure is kept in
        ``errors`` and answered 0xA700; an empty data set is answered 0xC000 and not written.
        Call :meth:`record` after the answer is sent.
        """
        if not dataset:
            return self._refuse(sop_uid), 0, ""
        try:
            name = instance_file_name(sop_uid)
            head = part10_head(sop_class, sop_uid, transfer_syntax, PYNETDICOM_IMPLEMENTATION_UID,
                               PYNETDICOM_IMPLEMENTATION_VERSION)
            final = os.path.join(self.dest, name)
            tmp, fd = self._file()
            try:
                try:
                    _write_all(fd, head, dataset)
                    linked = not tmp and self._link(fd, final)
                finally:
                    os.close(fd)
                if not tmp and not linked:  # linking failed: named files from now on
                    tmp, fd = self._new_temp()
                    try:
                        _write_all(fd, head, dataset)
                    finally:
                        os.close(fd)
                if tmp:
                    os.replace(tmp, final)
            except BaseException:
                if tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                raise
            return 0x0000, len(head) + len(dataset), final
        except Exception as exc:  # answered with a status, never raised
            return self._failed(exc), 0, ""

    def _link(self, fd: int, final: str) -> bool:
        """Give the unnamed file ``fd`` the path ``final`` (replacing a file there, as a rename
        would); False if this system cannot link unnamed files.

        ``final`` is resolved by path, as the named files' rename is: a destination folder
        renamed or removed mid-retrieve (Medix's disk bound) fails here (ENOENT: then the named
        file fails too, answered 0xA700) instead of the file landing in the moved folder.
        ``/proc/self/fd`` is passed as a folder descriptor only so that Python calls
        ``linkat(..., AT_SYMLINK_FOLLOW)`` (plain ``link`` would not follow the fd's link).
        """
        source = str(fd)
        try:
            if self._procfd is None:
                self._procfd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            os.link(source, final, src_dir_fd=self._procfd)
            return True
        except FileExistsError:  # an instance already there: linked aside, then renamed over it
            aside = os.path.join(self.dest, f".recv-{self._tag}-l{next(self._made)}.part")
            os.link(source, aside, src_dir_fd=self._procfd)
            try:
                os.replace(aside, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(aside)
                raise
            return True
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            self.unnamed = False  # no /proc, linking refused or the folder gone: named files now
            return False

    def record(self, sop_uid: str, sop_class: str, transfer_syntax: str, size: int,
               final: str) -> None:
        """The row of an instance :meth:`place` wrote (its per-instance hook, ``on_file``, is the
        caller's to call before the answer)."""
        with self.lock:
            self.rows.append((sop_uid, sop_class, transfer_syntax, self.study_uid, final, size))


#: (0000,0100) to the header of (0000,1000) of a C-STORE-RSP (:func:`store_rsp`).
_RSP_TAIL = struct.Struct("<HHIHHHIHHHIHHHIHHHI")
_GROUP_LENGTH = struct.Struct("<HHII")


def _ui(value: str) -> bytes:
    """A UI value as :func:`~kit.dicom._command.encode_command` writes it (ASCII, NUL-padded to even)."""
    data = value.encode("ascii", "replace")
    return data + b"\x00" if len(data) % 2 else data


@functools.lru_cache(maxsize=256)
def _class_element(sop_class: str) -> bytes:
    """(0000,0002) Affected SOP Class UID, the same for every instance of a class: built once."""
    value = _ui(sop_class)
    return struct.pack("<HHI", 0x0000, 0x0002, len(value)) + value


def store_rsp(sop_class: str, msg_id: int, status: int, sop_uid: str) -> bytes:
    """The command set of a C-STORE-RSP without a data set: the bytes
    :func:`~kit.dicom._command.encode_command` makes of these fields, built with one pack
    (answered once per instance, on the PACS's critical path)."""
    cls, uid = _class_element(sop_class), _ui(sop_uid)
    tail = _RSP_TAIL.pack(0x0000, 0x0100, 2, C_STORE_RSP, 0x0000, 0x0120, 2, msg_id, 0x0000, 0x0800, 2,
                          NO_DATASET, 0x0000, 0x0900, 2, status, 0x0000, 0x1000, len(uid))
    return _GROUP_LENGTH.pack(0x0000, 0x0000, 4, len(cls) + len(tail) + len(uid)) + cls + tail + uid


def _write_all(fd: int, head: bytes, body: bytes | memoryview) -> None:
    """``head`` then ``body`` to ``fd`` in one system call where the kernel takes it all."""
    done = os.writev(fd, (head, body))
    if done == len(head) + len(body):
        return
    for part in (head, body):  # short write (e.g. over 2 GiB): the rest from where it stopped
        view = memoryview(part)[done:]  # no copy of a data set that may be gigabytes
        done = max(done - len(part), 0)
        while view:
            view = view[os.write(fd, view):]


def get_loop(phase: DataPhase, context_id: int, sop_class: str, identifier: bytes,
             syntaxes: Mapping[int, str], receiver: PooledReceiver,
             cancelled: Callable[[], bool] | None = None,
             classes: Mapping[int, str] | None = None) -> dict[str, Any]:
    """A C-GET on ``phase``, as :func:`kit.dicom._fastnet.c_get` with ``receiver.write``, but
    each C-STORE-RSP goes out as soon as the file is at its final path and the per-instance hook
    (``receiver.on_file``) has run; the row and the next temporary files follow it. The final
    C-GET-RSP's :func:`status_fields`.

    ``classes`` maps the accepted contexts to their abstract syntax: a sub-operation whose SOP
    class is not its context's is answered 0x0122 and not written, as pynetdicom does (its
    data set is not what the context was negotiated for). One ``receiver.expect`` refuses
    (another study, a data set that is not the instance the command names: :class:`Expected`)
    is answered with its status and not written.

    Once ``receiver.pooled`` (making files proved slow), files are made ahead up to the
    number of remaining sub-operations the PACS reports in its pending C-GET-RSPs
    (doubling per instance, from one, when it reports none), at most
    :data:`kit.dicom._spares.POOL_LIMIT`.

    Raises
    ------
    DicomProtocolError
        The PACS sent a DIMSE message other than C-STORE-RQ and C-GET-RSP, or a C-GET-RSP
        that answers another message than our C-GET-RQ.
    """
    phase.send(context_id, encode_command({
        0x00000002: sop_class, 0x00000100: C_GET_RQ, 0x00000110: 1, 0x00000700: 0x0002,
        0x00000800: 0x0001}), identifier)
    pool = receiver.pool
    ahead = 1
    remaining: int | None = None
    if receiver.pooled:
        pool.top_up(ahead)
    while True:
        msg = phase.recv()
        command = msg.command
        field = command_int(command, 0x0100)
        if field == C_STORE_RQ:
            sop_uid, sop_cls = command_str(command, 0x1000), command_str(command, 0x0002)
            syntax = syntaxes.get(msg.context_id)
            status, size, final = 0x0122, 0, ""
            if syntax is not None and (classes is None or classes.get(msg.context_id) == sop_cls):
                dataset = msg.dataset or b""
                status = receiver.expect(sop_uid, syntax, dataset)[0] if dataset and receiver.expect \
                    else 0  # an instance not asked for is refused, not written
                if not status:
                    status, size, final = receiver.place(sop_uid, sop_cls, syntax, dataset)
            if status == 0x0000 and receiver.on_file is not None:
                receiver.on_file()  # before the answer: a wait there (the rate cap) holds the PACS back
            phase.send(msg.context_id, store_rsp(sop_cls, command_int(command, 0x0110) or 0, status, sop_uid))
            # -- answered: the rest is off the PACS's path
            if status == 0x0000 and syntax is not None:
                receiver.record(sop_uid, sop_cls, syntax, size, final)
            if remaining is not None:
                remaining = max(remaining - 1, 0)
            ahead = min(POOL_LIMIT, remaining if remaining is not None else ahead * 2)
            if receiver.pooled:
                pool.top_up(ahead)
        elif field == C_GET_RSP:
            check_get_rsp(command, phase.peer)
            code = command_int(command, 0x0900)
            if code not in (0xFF00, 0xFF01):  # not pending: the last
                return status_fields(command)
            remaining = command_int(command, 0x1020)
        else:
            raise DicomProtocolError(f"unexpected DIMSE command 0x{field or 0:04X} "
                                     "during C-GET", peer=phase.peer)
        if cancelled is not None and cancelled():  # asked to stop: C-CANCEL (kit.dicom._cancel)
            from kit.dicom._cancel import drain_get

            return drain_get(phase, context_id)
