"""WADO-RS against a DICOMweb server whose parts carry SOP Instance UIDs that are not UIDs.

The SOP Instance UID names the file a part is written to (``<dest>/<SOPInstanceUID>.dcm``): a
part whose UID is 300 digits or 300 spaces and a UID (sent as UT: a name too long for the file
system), holds ``/`` or ``..`` (a path out of ``dest``) or an empty component is refused like
any other bad part (not written, the retrieve raises :class:`~kit.errors.DicomWebError` naming
it), not a :class:`~kit.errors.StoreError`, which says the local disk failed and stops a whole
cohort pull. The valid parts around it are written; nothing lands outside ``dest`` and no
temporary file is left. A real local write failure is still a StoreError. The hostile server is
:func:`serve` (127.0.0.1, ephemeral port).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from kit.cohort.retrieve import attempt
from kit.dicom.web import DicomWebClient
from kit.errors import DicomWebError, StoreError
from tests.integration.hostile.test_dicomweb_client_bounds import serve
from tests.integration.pacs_client.test_retrieve_integrity import ASKED, ct
from tests.integration.pacs_client.test_retrieve_integrity_web import CTYPE, multipart, part10

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore:(Invalid value for VR UI|The value length):UserWarning")]

GOOD, AFTER = ASKED + ".1.1", ASKED + ".1.2"


def files_under(root: Path) -> list[str]:
    """Every file and folder under ``root`` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def padded_part(sop: str, pad: int = 300) -> bytes:
    """A whole instance whose SOP Instance UID is sent as UT (explicit VR) after ``pad`` spaces:
    read, the UID keeps them (a UT's leading spaces count), a check that strips the value passes it,
    and its file name is too long for the file system."""
    ds = ct(ASKED, ASKED + ".1", sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    del ds.SOPInstanceUID
    ds.add_new(0x00080018, "UT", " " * pad + sop)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def retrieve(bad: str | bytes, tmp_path: Path) -> tuple[pytest.ExceptionInfo[DicomWebError], Path]:
    """WADO-RS of a study answered with a valid part, a part whose SOP Instance UID is ``bad`` (or
    the part ``bad``), and a valid part; the error raised and the destination (tmp_path/a/b/out)."""
    part = bad if isinstance(bad, bytes) else part10(ASKED, bad)
    body = multipart([part10(ASKED, GOOD), part, part10(ASKED, AFTER)])
    dest = tmp_path / "a" / "b" / "out"
    with serve(lambda h: h.answer(body, CTYPE)) as (base, _):
        with pytest.raises(DicomWebError) as info:
            DicomWebClient(base, timeout=5).get(ASKED, dest=dest)
    return info, dest


BAD_UIDS = {
    "300-digits": "1" * 300,
    "slash-dotdot": "1.2/../../../escaped",
    "dotdot": "..",
    "empty-component": "1.2..3",
    "letters": "1.2.abc",
}


@pytest.mark.parametrize("bad", BAD_UIDS.values(), ids=BAD_UIDS.keys())
def test_a_part_whose_sop_uid_is_not_a_uid_is_refused_and_the_others_written(bad: str,
                                                                             tmp_path: Path) -> None:
    info, dest = retrieve(bad, tmp_path)

    assert not isinstance(info.value, StoreError)
    message = str(info.value)
    assert "1 instance(s) of the answer refused, not written (2 written)" in message
    assert bad[:40] in message and "not a UID" in message
    # the valid parts are written, nothing else anywhere under tmp_path (no temporary file)
    assert files_under(tmp_path) == ["a", "a/b", "a/b/out", f"a/b/out/{GOOD}.dcm", f"a/b/out/{AFTER}.dcm"]


def test_a_sop_uid_padded_past_a_file_name_is_refused_not_a_store_error(tmp_path: Path) -> None:
    info, dest = retrieve(padded_part(ASKED + ".1.9"), tmp_path)

    assert not isinstance(info.value, StoreError)
    message = str(info.value)
    assert "1 instance(s) of the answer refused, not written (2 written)" in message
    assert "SOP Instance UID '   " in message and "is not a UID" in message
    assert len(message) < 400  # the 300 spaces are not repeated whole
    assert files_under(tmp_path) == ["a", "a/b", "a/b/out", f"a/b/out/{GOOD}.dcm", f"a/b/out/{AFTER}.dcm"]


def test_an_absolute_path_as_sop_uid_writes_nothing_outside_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    info, dest = retrieve(str(outside), tmp_path)

    assert "is not a UID" in str(info.value)
    assert not list(tmp_path.glob("outside*"))
    assert files_under(dest) == [f"{GOOD}.dcm", f"{AFTER}.dcm"]


def test_a_cohort_attempt_counts_a_bad_uid_against_the_study_not_the_disk(tmp_path: Path) -> None:
    """:func:`kit.cohort.retrieve.attempt` stops the whole job on a StoreError only."""
    body = multipart([part10(ASKED, GOOD), padded_part(ASKED + ".1.9")])
    with serve(lambda h: h.answer(body, CTYPE)) as (base, _):
        result = attempt(DicomWebClient(base, timeout=5).get, ASKED, dest=tmp_path / "out")

    assert result.store_error is None
    assert result.failure is not None and result.error_type == "DicomWebError"
    assert "is not a UID" in result.message


# -- a real local failure is still a StoreError ----------------------------------------------------

@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_a_destination_the_process_cannot_write_is_a_store_error(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    dest.chmod(0o500)
    try:
        with serve(lambda h: h.answer(multipart([part10(ASKED, GOOD)]), CTYPE)) as (base, _):
            with pytest.raises(StoreError, match="Permission denied"):
                DicomWebClient(base, timeout=5).get(ASKED, dest=dest)
    finally:
        dest.chmod(0o700)
    assert files_under(dest) == []


def test_a_destination_under_a_regular_file_is_a_store_error(tmp_path: Path) -> None:
    """Also as root (whom chmod does not stop)."""
    (tmp_path / "file").write_bytes(b"")
    with serve(lambda h: h.answer(multipart([part10(ASKED, GOOD)]), CTYPE)) as (base, _):
        with pytest.raises(StoreError, match="cannot create"):
            DicomWebClient(base, timeout=5).get(ASKED, dest=tmp_path / "file" / "out")


def test_an_instance_whose_file_name_is_taken_by_a_folder_is_a_store_error(tmp_path: Path) -> None:
    """A write failure of a valid UID's file (the rename meets a folder: EISDIR, also as root)."""
    dest = tmp_path / "out"
    (dest / f"{GOOD}.dcm").mkdir(parents=True)
    with serve(lambda h: h.answer(multipart([part10(ASKED, GOOD)]), CTYPE)) as (base, _):
        with pytest.raises(StoreError, match="cannot write an instance"):
            DicomWebClient(base, timeout=5).get(ASKED, dest=dest)
    assert files_under(dest) == [f"{GOOD}.dcm"]  # the folder, no temporary file
