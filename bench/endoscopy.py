"""Benchmark: endoscopy, from a frame to a stored DICOM still.

latency
    Time from a frame's arrival (``Frame.received``, the monotonic clock when
    the source decoded it) to a VL Endoscopic still of it stored on the
    embedded PACS, C-STORE acknowledged. kit:
    :func:`kit.endoscopy.store.capture_procedure` with that one frame as a
    still (JPEG Baseline, no clip; the instance is built, written and read back
    by pydicom as a check, then C-STOREd; no C-FIND afterwards). By hand: the
    same JPEG (Pillow) in a VL Endoscopic dataset built with pydicom, sent with
    pynetdicom (associate, C-STORE, release), no check. Median of N (default
    20) per column, frames of the sample clip.

    python bench/endoscopy.py [latency] [N]

Ends with ``RATIO endoscopy still kit/pynetdicom = <x>`` (by-hand seconds /
kit seconds; higher is better for kit).
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

from kit.dicom.dimse import PacsClient  # noqa: E402
from kit.dicom.scp import EmbeddedPACS  # noqa: E402
from kit.endoscopy.capture import Procedure  # noqa: E402
from kit.endoscopy.frame import Frame  # noqa: E402
from kit.endoscopy.store import capture_procedure  # noqa: E402
from kit.examples import endoscopy_clip  # noqa: E402

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


def latency(n: int = 20) -> float:
    """Print both medians and the RATIO line; return the ratio."""
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
    print(f"RATIO endoscopy still kit/pynetdicom = {ratio:.2f}")
    return ratio


def main(argv: list[str]) -> None:
    sections = [a for a in argv if not a.isdigit()] or ["latency"]
    n = next((int(a) for a in argv if a.isdigit()), 20)
    for section in sections:
        if section == "latency":
            latency(n)
        else:
            raise SystemExit(f"unknown section {section!r} (latency)")


if __name__ == "__main__":
    main(sys.argv[1:])
