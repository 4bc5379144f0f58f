"""Benchmark: endoscopy video in the kit against what a user would write by hand.

Sections (each a function returning its ``RATIO`` lines; ``main()`` runs them in order):

- ``decode``: decode-to-numpy frames per second of :class:`kit.endoscopy.source.FrameSource`
  (capture thread, bounded buffer, :class:`~kit.endoscopy.frame.Frame` objects) against a bare
  PyAV loop (``container.decode(video=0)`` and ``frame.to_ndarray(format="rgb24")``) on the same
  file, in the same run: the sample clip remuxed ``LOOPS`` times into one longer file, runs
  alternated, the median of ``RUNS`` each (the median of the paired runs' ratios is printed
  too: on a shared machine it drifts less). The kit's overhead should stay under 10 %
  (ratio >= 0.9).

- ``latency``: time from a frame's arrival (``Frame.received``, the monotonic clock when
  the source decoded it) to a VL Endoscopic still of it stored on the embedded PACS,
  C-STORE acknowledged. kit: :func:`kit.endoscopy.store.capture_procedure` with that one
  frame as a still (JPEG Baseline, no clip; the instance is built, written and read back by
  pydicom as a check, then C-STOREd; no C-FIND afterwards). By hand: the same JPEG (Pillow)
  in a VL Endoscopic dataset built with pydicom, sent with pynetdicom (associate, C-STORE,
  release), no check. Median of ``LATENCY_RUNS`` per column, frames of the sample clip.
  ``RATIO endoscopy still kit/pynetdicom`` is by-hand seconds / kit seconds.

    python bench/endoscopy.py              # every section
    python bench/endoscopy.py decode       # only these sections

Add a section: write ``bench_<name>() -> list[str]`` and list it in :data:`SECTIONS`.
"""

from __future__ import annotations

import datetime as dt
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import av  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit, VLEndoscopicImageStorage, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402

from kit import examples  # noqa: E402
from kit.dicom.dimse import PacsClient  # noqa: E402
from kit.dicom.scp import EmbeddedPACS  # noqa: E402
from kit.endoscopy.capture import Procedure  # noqa: E402
from kit.endoscopy.frame import Frame  # noqa: E402
from kit.endoscopy.source import FrameSource  # noqa: E402
from kit.endoscopy.store import capture_procedure  # noqa: E402
from kit.examples import endoscopy_clip  # noqa: E402

#: the sample clip (36 frames) is repeated this many times into the decoded file
LOOPS = 10
#: runs per contender, alternated; the ratio is the median of the runs' pairwise ratios
RUNS = 15


def looped_clip(directory: Path, loops: int = LOOPS) -> Path:
    """The sample clip's packets repeated ``loops`` times into one MP4 (no re-encoding)."""
    clip = examples.endoscopy_clip()
    out_path = directory / f"clip-x{loops}.mp4"
    with av.open(str(clip)) as src:
        template = src.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.duration, p.is_keyframe) for p in src.demux(template) if p.size]
        period = max(p[1] + p[3] for p in packets) - min(p[1] for p in packets)
        with av.open(str(out_path), "w") as out:
            stream = out.add_stream_from_template(template)
            for k in range(loops):
                for data, pts, dts, duration, key in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts, packet.duration = pts + k * period, dts + k * period, duration
                    packet.time_base = template.time_base
                    packet.is_keyframe = key
                    packet.stream = stream
                    out.mux(packet)
    return out_path


def bare_pyav(path: Path) -> int:
    """What a user writes without the kit: decode every frame to an RGB array."""
    n = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def kit_source(path: Path) -> int:
    n = 0
    with FrameSource(path) as source:
        for _ in source:
            n += 1
    return n


def _alternated(contenders: dict[str, Callable[[], int]],
                runs: int) -> dict[str, tuple[list[float], int]]:
    """``{name: (seconds of each run, frames)}``, runs interleaved (a shared machine drifts)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    frames: dict[str, int] = {}
    for name, fn in contenders.items():   # warm-up: imports, caches, the file in the page cache
        frames[name] = fn()
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            frames[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (t, frames[name]) for name, t in times.items()}


def bench_decode(runs: int = RUNS, loops: int = LOOPS) -> list[str]:
    """Decode-to-numpy fps: FrameSource vs a bare PyAV loop, same file, same run."""
    with tempfile.TemporaryDirectory(prefix="kit-bench-endo-") as tmp:
        path = looped_clip(Path(tmp), loops)
        result = _alternated({"pyav": lambda: bare_pyav(path), "kit": lambda: kit_source(path)}, runs)
    (runs_pyav, n_pyav), (runs_kit, n_kit) = result["pyav"], result["kit"]
    if n_kit != n_pyav:
        raise SystemExit(f"frame counts differ: kit {n_kit}, PyAV {n_pyav}")
    t_pyav, t_kit = statistics.median(runs_pyav), statistics.median(runs_kit)
    # each kit run against the PyAV run just before it: the machine's load drifts less within a pair
    ratio = statistics.median(p / k for p, k in zip(runs_pyav, runs_kit, strict=True))
    print(f"decode {n_pyav} frames (320x240 H.264, the sample clip x{loops}), median of {runs} runs each:")
    print(f"  bare PyAV loop          {t_pyav:7.3f} s  {n_pyav / t_pyav:8.0f} frames/s")
    print(f"  kit FrameSource         {t_kit:7.3f} s  {n_kit / t_kit:8.0f} frames/s")
    print(f"  kit/PyAV of the medians: {t_pyav / t_kit:.2f}; median of the {runs} paired runs' ratios: "
          f"{ratio:.2f}")
    return [f"RATIO endoscopy decode kit/pyav = {t_pyav / t_kit:.2f}"]


PROCEDURE = Procedure("MRN1001", "1.2.826.0.1.3680043.8.498.99", accession_number="ACC100102",
                      patient_name="Moreau^Alice", patient_sex="F", description="COLONOSCOPY",
                      station_aet="ENDO1")


def _images() -> list[np.ndarray]:
    with av.open(str(endoscopy_clip("MRN1001"))) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _kit(client: PacsClient) -> Callable[[np.ndarray, int], float]:
    def run(image: np.ndarray, i: int) -> float:
        frame = Frame(i, i / 12, image, time.monotonic())  # the frame "arrives" now
        capture_procedure(client, PROCEDURE, [frame], stills=[i], clip=False, verify=False)
        return time.monotonic() - frame.received

    return run


def _by_hand(port: int) -> Callable[[np.ndarray, int], float]:
    def run(image: np.ndarray, i: int) -> float:
        received = time.monotonic()
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90, subsampling=1)
        jpeg = buf.getvalue()
        uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = \
            VLEndoscopicImageStorage, uid
        ds.SOPClassUID, ds.SOPInstanceUID = VLEndoscopicImageStorage, uid
        ds.PatientID, ds.PatientName, ds.AccessionNumber = PROCEDURE.patient_id, "Moreau^Alice", "ACC100102"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = PROCEDURE.study_instance_uid, generate_uid()
        now = dt.datetime.now()
        ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ES", 10, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Rows, ds.Columns = image.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.LossyImageCompression = "01"
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ae = AE(ae_title="KITSCU")
        ae.add_requested_context(VLEndoscopicImageStorage, JPEGBaseline8Bit)
        assoc = ae.associate("127.0.0.1", port, ae_title="KIT")
        try:
            status = assoc.send_c_store(ds)
            if status is None or int(status.Status) != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
            return time.monotonic() - received
        finally:
            assoc.release()

    return run


#: stills stored per column in the latency section
LATENCY_RUNS = 20


def bench_latency(n: int = LATENCY_RUNS) -> list[str]:
    """Frame arrival to a stored still: kit vs pydicom + pynetdicom; prints the medians."""
    images = _images()
    with tempfile.TemporaryDirectory(prefix="kit-bench-endo-") as tmp, \
            EmbeddedPACS(Path(tmp) / "pacs", port=0) as pacs:
        client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=30)
        columns = {"kit capture_procedure": _kit(client), "pydicom + pynetdicom": _by_hand(pacs.port)}
        times: dict[str, list[float]] = {name: [] for name in columns}
        for run in columns.values():  # one warm-up each (imports, first association)
            run(images[0], 0)
        for i in range(n):  # interleaved, so both see the same machine load
            image = images[(i + 1) % len(images)]
            for name, run in columns.items():
                times[name].append(run(image, (i + 1) % len(images)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"endoscopy still latency: frame arrival -> C-STORE acknowledged on the embedded PACS, "
          f"median of {n}")
    for name, value in medians.items():
        print(f"  {name:24s} {value * 1000:8.1f} ms")
    ratio = medians["pydicom + pynetdicom"] / medians["kit capture_procedure"]
    return [f"RATIO endoscopy still kit/pynetdicom = {ratio:.2f}"]


#: the sections, in the order they run
SECTIONS: dict[str, Callable[[], list[str]]] = {
    "decode": bench_decode,
    "latency": bench_latency,
}


def main(argv: list[str]) -> None:
    wanted = argv[1:] or list(SECTIONS)
    unknown = [w for w in wanted if w not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    ratios: list[str] = []
    for name in wanted:
        ratios += SECTIONS[name]()
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main(sys.argv)
