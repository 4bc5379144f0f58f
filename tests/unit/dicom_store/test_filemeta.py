"""kit.dicom._filemeta: the hand-written file meta encoder == pydicom's writer (fast == slow path)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from kit.dicom._filemeta import encode_file_meta

_UID = st.from_regex(r"\A[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,8}\Z")
_AE = st.from_regex(r"\A[A-Z][A-Z0-9_]{0,15}\Z")


def _pydicom(meta: FileMetaDataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


@settings(max_examples=40, deadline=None)
@given(sop_class=_UID, sop_uid=_UID, syntax=st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                                             "1.2.840.10008.1.2.4.50"]),
       implementation=_UID, version=_AE, source=st.one_of(st.just(""), _AE))
def test_encoder_matches_pydicom_and_the_mapping_form(sop_class: str, sop_uid: str, syntax: str,
                                                      implementation: str, version: str,
                                                      source: str) -> None:
    values = {"MediaStorageSOPClassUID": sop_class, "MediaStorageSOPInstanceUID": sop_uid,
              "TransferSyntaxUID": syntax, "ImplementationClassUID": implementation,
              "ImplementationVersionName": version, "SourceApplicationEntityTitle": source}
    meta = FileMetaDataset()
    for keyword, value in values.items():
        if value:
            setattr(meta, keyword, value)
    assert encode_file_meta(meta) == _pydicom(meta)
    assert encode_file_meta(values) == encode_file_meta(meta)  # the dict the fast receive path builds
    # cached parts are per (class, syntax, implementation, source): another instance UID still differs
    other = {**values, "MediaStorageSOPInstanceUID": sop_uid + ".1"}
    assert encode_file_meta(other) != encode_file_meta(values)
