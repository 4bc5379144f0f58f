"""Helpers of the cohort-pull tests: tiny synthetic studies, a PACS that counts, a counting proxy."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import evt

from kit.dicom.scp import EmbeddedPACS
from kit.examples.dicom import random_ct_files


@dataclass(frozen=True)
class Study:
    uid: str
    accession: str
    patient_id: str
    date: dt.date
    sops: frozenset[str] = field(default_factory=frozenset)


def make_studies(folder: Path, count: int, *, per_study: int = 3, patients: int = 10,
                 prefix: str = "COH") -> list[Study]:
    """``count`` tiny CT studies (``per_study`` 8x8 instances each) with new UIDs, as files under ``folder``.

    Patient ``MRN<prefix><k>`` gets studies ``k, k+patients, ...``, dated a week apart in 2025.
    """
    studies = []
    for n in range(count):
        patient = f"MRN{prefix}{n % patients:02d}"
        date = dt.date(2025, 1, 6) + dt.timedelta(days=7 * (n // patients))
        uid = generate_uid()
        paths = random_ct_files(folder / uid, per_study, patient_id=patient, patient_name="Cohort^Test",
                                study_uid=uid, accession_number=f"A{prefix}{n:04d}", study_date=date,
                                size=8, seed=n, name="{i}.dcm")
        sops = frozenset(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)
        studies.append(Study(uid, f"A{prefix}{n:04d}", patient, date, sops))
    return studies



class CountingPACS(EmbeddedPACS):
    """The embedded PACS, counting at the server: associations open at once (peak), C-GET and
    C-MOVE requests per study, and when each instance was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.open: set[int] = set()
        self.peak = 0
        self.retrieves: list[str] = []      # study UID per C-GET/C-MOVE request, in order
        self.sent: list[float] = []         # time.monotonic() per instance sent

    def start(self) -> None:
        super().start()
        assert self._server is not None
        self._server.bind(evt.EVT_CONN_CLOSE, self._on_closed)

    def stop(self) -> None:
        super().stop()
        with self.lock:  # a stopped server holds no association (aborted ones may not report a close)
            self.open.clear()

    def _on_conn_open(self, event: Any) -> None:
        super()._on_conn_open(event)
        with self.lock:
            self.open.add(id(event.assoc))
            self.peak = max(self.peak, len(self.open))

    def _on_closed(self, event: Any) -> None:
        with self.lock:
            self.open.discard(id(event.assoc))

    def _record(self, event: Any) -> None:
        with contextlib.suppress(Exception):
            with self.lock:
                self.retrieves.append(str(event.identifier.StudyInstanceUID))

    def _on_get(self, event: Any) -> Iterator[Any]:
        self._record(event)
        yield from super()._on_get(event)

    def _on_move(self, event: Any) -> Iterator[Any]:
        self._record(event)
        yield from super()._on_move(event)

    def _read(self, instance: Any, accepted: Any = None) -> Any:
        with self.lock:
            self.sent.append(time.monotonic())
        return super()._read(instance, accepted)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the server has seen every connection close."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.open:
                    return
            time.sleep(0.02)
        raise AssertionError(f"{len(self.open)} association(s) still open at the PACS")


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port`` that counts connections open at once."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.total = 0
        self.sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.active += 1
                self.total += 1
                self.peak = max(self.peak, self.active)
                self.sockets += [client, upstream]
            done = threading.Barrier(2, action=self._closed)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    def _closed(self) -> None:
        with self.lock:
            self.active -= 1

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(timeout=30)
            src.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.close()


def journal_states(out_dir: Path) -> dict[str, str]:
    """Study UID -> state, read from a running (or killed) job's journal without locking it."""
    path = out_dir / ".kit-cohort" / "journal.sqlite"
    if not path.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return {uid: state for uid, state in db.execute("SELECT study_instance_uid, state FROM studies")}
    except sqlite3.Error:
        return {}


def cohort_frame(studies: list[Study]) -> pl.DataFrame:
    """A mixed cohort over ``studies``: accession numbers, study UIDs, and MRNs with date ranges
    that overlap the accession rows (a study asked for twice must still come once)."""
    rows: list[dict[str, str | None]] = []
    for n, s in enumerate(studies):
        if n % 5 == 4:
            rows.append({"accession_number": None, "study_instance_uid": s.uid, "mrn": None,
                         "study_date": None})
        elif n % 5 != 3:
            rows.append({"accession_number": s.accession, "study_instance_uid": None, "mrn": None,
                         "study_date": None})
    # every 5th-minus-2 study is reached only through its patient's MRN and a date range
    for s in studies:
        if studies.index(s) % 5 == 3:
            day = s.date.strftime("%Y%m%d")
            rows.append({"accession_number": None, "study_instance_uid": None, "mrn": s.patient_id,
                         "study_date": f"{day}-{day}"})
    rows.append({"accession_number": None, "study_instance_uid": None, "mrn": studies[0].patient_id,
                 "study_date": None})  # overlaps: all of the first patient's studies
    return pl.DataFrame(rows, schema={"accession_number": pl.String, "study_instance_uid": pl.String,
                                      "mrn": pl.String, "study_date": pl.String})


def folder_contents(out_dir: Path) -> dict[str, set[str]]:
    """Study folder -> SOP UIDs of its files (everything except the job's own files)."""
    out: dict[str, set[str]] = {}
    for entry in out_dir.iterdir():
        if entry.name in (".kit-cohort", "report.csv"):
            continue
        assert entry.is_dir(), f"unexpected file {entry}"
        names = [p.name for p in entry.iterdir()]
        assert all(n.endswith(".dcm") for n in names), names
        out[entry.name] = {n.removesuffix(".dcm") for n in names}
    return out
