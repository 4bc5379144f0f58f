"""DIMSE throughput: the kit against dcmtk and Orthanc on the same generated CT files.

    python bench/dimse.py [N] [--only=send,cget,receive]
        N small CT instances in one study (default 500); --only runs those sections
        (default: all three)

(a) receive: SENDERS concurrent dcmtk storescu processes (TCP_NODELAY=1), each
    sending its quarter of N fresh instances, into the kit's EmbeddedPACS and into
    Orthanc -> images/s each (a single storescu into dcmtk storescp, which does
    not fsync, is printed for scale). One untimed warm-up round per side, then
    RECV_ROUNDS interleaved rounds; the RATIO is the median of the per-round ratios
    (each kit round against the Orthanc round next to it in time, so that a busy
    spell of a shared machine falls on both); each side's best round and the
    best-vs-best ratio are printed beside it.
(b) send: kit PacsClient.store vs dcmtk storescu, both into one storescp, the same
    folder (the kit's timing includes listing it, as storescu +sd scans it).
(c) C-GET of the study (N instances) from Orthanc: kit PacsClient.get vs dcmtk getscu,
    each into a fresh folder of the same file system (neither fsyncs). Run twice: into the
    temporary folder's file system (the RATIO line), and, where /dev/shm is a tmpfs, into it
    (RATIO cget-tmpfs: making a file costs ~10 us, so what is left is the protocol path, and
    Orthanc's own time per instance, the floor of both). It runs first, and every round's
    folder is kept until the section ends: on ext4 without a journal (this project's CI
    machine) the inode allocator skips, one inode-table read each, every inode freed in
    the last 30 s (``recently_deleted`` in fs/ext4/ialloc.c), so deleting a round's 500
    files made the next rounds' files cost 200-700 us each instead of 20-35 us (measured
    here, loaded), a cost of the bench's own clean-up that a retrieve does not meet and
    that both clients paid in the kernel. Then the kit's CPU per instance with and without
    its C readers (kit/dicom/_getc.c), alternating gets in this process (into tmpfs where there
    is one, so that the figure is the kit's own and not the disk's).
Both sides run with TCP_NODELAY (dcmtk via TCP_NODELAY=1, the kit sets it) and the same
maximum PDU on the peer. In (a) each round starts from an empty store (Orthanc's copy
is deleted over REST). (b) and (c) warm each side up once, then run PAIRED_ROUNDS
rounds (the order alternating) and their RATIO is the median of the per-round
ratios (robust on a shared machine; the best-vs-best ratio is printed beside it).

Durability is not the same on both sides of (a), and the kit's is the stronger:
the EmbeddedPACS acknowledges a C-STORE only after fdatasync'ing the file, renaming
it into place, fsync'ing its directory and committing its index row (group commit
across associations). Orthanc 1.10 (SyncStorageArea, its default) fdatasyncs each
file but not its directory, and its SQLite index commit is not synced (checked
with strace: one fdatasync per instance, on the file). storescp here (-pm +B) does
not sync at all.

Every server is started here on an ephemeral port and stopped by PID.
Ends with ``RATIO <what> kit/<alternative> = <x>`` lines (higher is better for the kit).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import generate_uid

from kit.dicom.dimse import PacsClient
from kit.examples.dicom import random_ct_files

ENV = {**os.environ, "TCP_NODELAY": "1"}
#: Interleaved rounds of each comparison; the best round of each side counts (the machine may be shared).
ROUNDS = 3
#: Concurrent storescu senders in (a).
SENDERS = 4
#: Timed rounds of (a), after one warm-up round per side (7: on a busy machine a side's best of 5
#: still moved by ~30% from run to run).
RECV_ROUNDS = 7


def dcmtk(name: str) -> str:
    """dcmtk's binary: pynetdicom installs Python apps of the same names earlier on PATH."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        if Path(folder, name).is_file():
            return str(Path(folder, name))
    sys.exit(f"dcmtk {name} is not installed (Debian package dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=ENV, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def make_files(folder: Path, n: int) -> tuple[str, list[Path]]:
    """N 128x128 int16 CT instances of one study/series."""
    study = generate_uid()
    return study, random_ct_files(folder, n, patient_id="BENCH1", patient_name="Bench^Patient",
                                  study_uid=study, study_date=dt.date(2026, 1, 1), size=128, seed=0)



def storescu_args(port: int, aet: str, src: Path) -> list[str]:
    return [dcmtk("storescu"), "-aec", aet, "+sd", "+r", "-pdu", "131072", "127.0.0.1", str(port), str(src)]


def storescu(port: int, aet: str, src: Path) -> float:
    start = time.perf_counter()
    subprocess.run(storescu_args(port, aet, src), env=ENV, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def storescu_parallel(port: int, aet: str, folders: list[Path]) -> float:
    """Seconds until every folder is sent, one storescu per folder, all at once."""
    start = time.perf_counter()
    procs = [subprocess.Popen(storescu_args(port, aet, f), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for f in folders]
    codes = [p.wait(120) for p in procs]
    took = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"storescu failed: exit codes {codes}")
    return took


def sender_folders(folder: Path, n: int, seed: int, study_uid: str) -> list[Path]:
    """N instances of a new study split into SENDERS folders."""
    files = random_ct_files(folder / "all", n, patient_id="BENCH2", study_uid=study_uid, size=128,
                            seed=seed)
    parts = [folder / str(i) for i in range(SENDERS)]
    for part in parts:
        part.mkdir()
    for i, f in enumerate(files):
        f.rename(parts[i % SENDERS] / f.name)
    return parts


def storescp(tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    out = tmp / name
    out.mkdir()
    proc = spawn([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), "-pm", "+B", "-pdu", "131072",
                  str(port)], tmp / f"{name}.log")
    wait_port(port, proc)
    return proc, port, out


def orthanc(tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    dicom, http = free_port(), free_port()
    storage = tmp / "orthanc-db"
    config = {"Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": True,
              "AuthenticationEnabled": False, "StorageCompression": False,
              "DicomAlwaysAllowStore": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowEcho": True,
              "MaximumPduLength": 131072, "SaveJobs": False, "Plugins": []}
    (tmp / "orthanc.json").write_text(json.dumps(config))
    proc = spawn(["/usr/sbin/Orthanc", str(tmp / "orthanc.json")], tmp / "orthanc.log")
    wait_port(dicom, proc, 60)
    wait_port(http, proc, 60)
    return proc, dicom, http


def orthanc_delete_study(http: int, study_uid: str) -> None:
    """Remove a study from Orthanc (REST), so the next round stores fresh instances again."""
    base = f"http://127.0.0.1:{http}"
    with urllib.request.urlopen(urllib.request.Request(f"{base}/tools/lookup", data=study_uid.encode(),
                                                       method="POST"), timeout=60) as rsp:
        ids = [hit["ID"] for hit in json.load(rsp) if hit.get("Type") == "Study"]
    for oid in ids:
        urllib.request.urlopen(urllib.request.Request(f"{base}/studies/{oid}", method="DELETE"),
                               timeout=60).close()


def alternate(round_: int) -> tuple[str, str]:
    """Which side goes first in a round: the kit in even rounds, the other tool in odd ones
    (whoever runs first after a phase change may find colder caches)."""
    return ("kit", "other") if round_ % 2 == 0 else ("other", "kit")


#: Timed rounds of (b) and (c), after one warm-up of each side: a round takes well under a second
#: and, on a loaded machine, its ratio spreads from 0.6 to 1.7, so the median needs many of them.
PAIRED_ROUNDS = 21


class Paired:
    """Seconds of both sides per round; ``ratio`` is the median of other/kit over the rounds."""

    def __init__(self, kit: list[float], other: list[float]) -> None:
        self.kit, self.other = kit, other
        ratios = sorted(o / k for k, o in zip(kit, other, strict=True))
        self.ratios = ratios
        self.ratio = statistics.median(ratios)
        self.best_kit, self.best_other = min(kit), min(other)

    def spread(self) -> str:
        quarter = len(self.ratios) // 4
        return (f"round ratios {self.ratios[0]:.2f}-{self.ratios[-1]:.2f}, middle half "
                f"{self.ratios[quarter]:.2f}-{self.ratios[-1 - quarter]:.2f}, median {self.ratio:.2f}, "
                f"best/best {self.best_other / self.best_kit:.2f}")


def paired(kit: Callable[[], float], other: Callable[[], float]) -> Paired:
    """One untimed warm-up of each, then PAIRED_ROUNDS rounds, the order alternating per round."""
    kit()
    other()
    kits: list[float] = []
    others: list[float] = []
    for round_ in range(PAIRED_ROUNDS):
        for side in alternate(round_):
            (kits if side == "kit" else others).append(kit() if side == "kit" else other())
    return Paired(kits, others)


def rate(n: int, seconds: float) -> float:
    return n / seconds


SECTIONS = ("receive", "send", "cget")


def parse_args(argv: list[str]) -> tuple[int, set[str]]:
    """N and the sections to run (``--only=send,cget``; all by default)."""
    n, only = 500, set(SECTIONS)
    for arg in argv:
        if arg.startswith("--only="):
            only = {part.strip() for part in arg.split("=", 1)[1].split(",") if part.strip()}
            if not only or not only <= set(SECTIONS):
                sys.exit(f"--only takes a comma-separated list of {', '.join(SECTIONS)}")
        else:
            n = int(arg)
    return n, only


def bench_send(tmp: Path, src: Path, procs: list[subprocess.Popen[bytes]]) -> Paired:
    """(b) kit PacsClient.store vs dcmtk storescu, both into one storescp."""
    scp, scp_port, _ = storescp(tmp, "storescp-b")
    procs.append(scp)
    client = PacsClient("127.0.0.1", scp_port, called_aet="STORESCP", timeout=60)

    def kit_send() -> float:
        start = time.perf_counter()
        client.store(sorted(src.iterdir()))  # the listing too: storescu scans the folder (+sd)
        return time.perf_counter() - start

    send = paired(kit_send, lambda: storescu(scp_port, "STORESCP", src))
    stop(scp)
    return send


def bench_cget(tmp: Path, study: str, n: int, orth_port: int) -> Paired:
    """(c) C-GET of the study from Orthanc into folders under ``tmp``: kit PacsClient.get vs
    dcmtk getscu."""
    client = PacsClient("127.0.0.1", orth_port, called_aet="ORTHANC", timeout=60)
    gets = iter(range(1_000_000))

    def kit_get() -> float:  # each round's folder is kept until the end (see the docstring, (c))
        dest = tmp / f"kit-get-{next(gets)}"
        start = time.perf_counter()
        got = client.get(study_uid=study, dest=dest)
        took = time.perf_counter() - start
        assert got.height == n, got.height
        return took

    def getscu() -> float:
        out = tmp / f"getscu-{next(gets)}"
        out.mkdir()
        start = time.perf_counter()
        subprocess.run([dcmtk("getscu"), "-S", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study}", "-od", str(out),
                        "127.0.0.1", str(orth_port)], env=ENV, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took = time.perf_counter() - start
        assert len(list(out.iterdir())) == n
        return took

    return paired(kit_get, getscu)


#: Gets of each kind in :func:`c_readers_cpu`.
CPU_ROUNDS = 11


def c_readers_cpu(tmp: Path, study: str, n: int, orth_port: int) -> tuple[float, float] | None:
    """The kit's CPU per instance (this process, all threads: user and system) in a C-GET, with
    ``kit/dicom/_getc.c``'s readers and with the Python path alone, CPU_ROUNDS gets each, alternating:
    the medians in microseconds; None where the C module is not built."""
    from kit.dicom import _clientphase, _getphase

    built = (_clientphase._c_message, _getphase._c_identity)
    if None in built:
        return None
    client = PacsClient("127.0.0.1", orth_port, called_aet="ORTHANC", timeout=60)
    spent: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(2 * CPU_ROUNDS):
            with_c = i % 2 == 0
            _clientphase._c_message, _getphase._c_identity = built if with_c else (None, None)
            start = time.process_time()
            client.get(study_uid=study, dest=tmp / f"kit-cpu-{i}")
            spent[with_c].append((time.process_time() - start) / n * 1e6)
    finally:
        _clientphase._c_message, _getphase._c_identity = built
    return statistics.median(spent[True]), statistics.median(spent[False])


def _tmpfs() -> Path | None:
    """A fresh folder in /dev/shm if that is a tmpfs (Linux), else None."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            if not any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts):
                return None
    except OSError:
        return None
    return Path(tempfile.mkdtemp(prefix="kit-bench-cget-", dir="/dev/shm"))


def main() -> None:
    n, only = parse_args(sys.argv[1:])
    for tool in ("storescu", "storescp", "getscu"):
        dcmtk(tool)
    if not Path("/usr/sbin/Orthanc").is_file():
        sys.exit("Orthanc is not installed (Debian package orthanc)")
    from kit.dicom.scp import EmbeddedPACS

    tmp = Path(tempfile.mkdtemp(prefix="kit-bench-dimse-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        study, files = make_files(tmp / "src", n)
        src = tmp / "src"
        print(f"{n} CT instances of 128x128 int16 ({sum(p.stat().st_size for p in files) / 1e6:.1f} MB)")
        if only & {"receive", "cget"}:
            orth, orth_port, orth_http = orthanc(tmp)
            procs.append(orth)
            storescu(orth_port, "ORTHANC", src)  # the study (c) retrieves

        # (c) first, before any section deletes files (see the docstring). (c) and (b): one
        # untimed warm-up of each side, then PAIRED rounds (the order alternating); each round's
        # ratio compares two runs seconds apart, so a burst of load from elsewhere hits both;
        # the RATIO line is the median of the rounds' ratios.
        if "cget" in only:
            cget = bench_cget(tmp, study, n, orth_port)
            print(f"(c) C-GET     kit PacsClient.get {rate(n, cget.best_kit):8.0f} img/s   "
                  f"dcmtk getscu {rate(n, cget.best_other):8.0f} img/s   (best rounds; {cget.spread()})")
            shm = _tmpfs()
            cget_shm = None
            if shm is not None:
                try:
                    cget_shm = bench_cget(shm, study, n, orth_port)
                finally:
                    shutil.rmtree(shm, ignore_errors=True)
                print(f"(c) into tmpfs kit PacsClient.get {rate(n, cget_shm.best_kit):8.0f} img/s   "
                      f"dcmtk getscu {rate(n, cget_shm.best_other):8.0f} img/s   "
                      f"(best rounds; {cget_shm.spread()})")
            cpu_dir = _tmpfs() or tmp  # tmpfs: no inode-allocator time (see above) in the figure
            try:
                cpu = c_readers_cpu(cpu_dir, study, n, orth_port)
            finally:
                if cpu_dir != tmp:
                    shutil.rmtree(cpu_dir, ignore_errors=True)
            if cpu is not None:
                print(f"(c) the kit's CPU per instance (medians of {CPU_ROUNDS} gets each): "
                      f"{cpu[0]:.0f} us with kit/dicom/_getc.c's readers, {cpu[1]:.0f} us in Python alone")

        if "receive" in only:
            # (a) receive: SENDERS storescu at once; each round into an empty kit store / Orthanc
            scp, scp_port, _ = storescp(tmp, "storescp-a")
            procs.append(scp)
            t_scp = storescu(scp_port, "STORESCP", src)
            stop(scp)
            recv_study = generate_uid()
            folders = sender_folders(tmp / "recv", n, 1, recv_study)
            t_emb: list[float] = []
            t_orth: list[float] = []
            batches: list[int] = []
            for round_ in range(-1, RECV_ROUNDS):  # round -1: warm-up, not timed
                for side in alternate(round_):
                    if side == "kit":
                        with EmbeddedPACS(tmp / f"embedded-{round_}", port=0, aet="KIT") as pacs:
                            took = storescu_parallel(pacs.port, "KIT", folders)
                            assert len(pacs.store) == n, len(pacs.store)
                            if round_ >= 0:
                                t_emb.append(took)
                                batches += pacs.store.commit_batches()
                            pacs.store.close()
                    else:
                        took = storescu_parallel(orth_port, "ORTHANC", folders)
                        orthanc_delete_study(orth_http, recv_study)
                        if round_ >= 0:
                            t_orth.append(took)
            per_round = statistics.median(o / k for o, k in zip(t_orth, t_emb, strict=True))
            print(f"(a) receive, {SENDERS} storescu at once   "
                  f"kit EmbeddedPACS {rate(n, min(t_emb)):8.0f} img/s  "
                  f"Orthanc {rate(n, min(t_orth)):8.0f} img/s   (best of {RECV_ROUNDS} rounds, ratio "
                  f"{min(t_orth) / min(t_emb):.2f}; medians "
                  f"{rate(n, statistics.median(t_emb)):.0f} vs {rate(n, statistics.median(t_orth)):.0f}, "
                  f"median of the per-round ratios {per_round:.2f}; one storescu into storescp, no fsync: "
                  f"{rate(n, t_scp):.0f} img/s; kit group commits: {len(batches)}, "
                  f"mean {sum(batches) / max(len(batches), 1):.2f} instances)")

        if "send" in only:
            send = bench_send(tmp, src, procs)
            print(f"(b) send      kit PacsClient.store {rate(n, send.best_kit):8.0f} img/s   "
                  f"dcmtk storescu {rate(n, send.best_other):8.0f} img/s   (best rounds; {send.spread()})")
        if "cget" in only:
            print(f"RATIO cget kit/getscu = {cget.ratio:.2f}")
            if cget_shm is not None:
                print(f"RATIO cget-tmpfs kit/getscu = {cget_shm.ratio:.2f}")
        if "send" in only:
            print(f"RATIO send kit/storescu = {send.ratio:.2f}")
        if "receive" in only:
            print(f"RATIO receive embedded/orthanc ({SENDERS} senders) = {per_round:.2f}")
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
