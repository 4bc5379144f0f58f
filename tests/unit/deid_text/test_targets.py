"""Where text is scrubbed: HL7 OBX/NTE, FHIR narrative/conclusion/notes/attachments, DICOM text and SR."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import xml.etree.ElementTree as ET

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from kit import examples
from kit.deid.text import TextScrubber, scrub_dicom, scrub_fhir, scrub_hl7
from kit.errors import InvalidInputError
from kit.fhir.resources import validate
from kit.hl7.message import parse_message, split_messages

XHTML = "http://www.w3.org/1999/xhtml"
PHI = "Alice Moreau (MRN1001, born 14.03.1958) called +41 21 555 01 01"


def _hl7(body: str) -> str:
    return ("MSH|^~\\&|RIS|KITHOSP|KIT|RESEARCH|20260112104400||ORU^R01^ORU_R01|X1|P|2.5.1\r"
            "PID|1||MRN1001^^^KITHOSP^MR||Moreau^Alice||19580314|F\r" + body)


def test_hl7_text_values_and_notes_scrubbed_coded_kept(scrubber: TextScrubber) -> None:
    msg = parse_message(_hl7(
        "OBX|1|TX|59776-5^Findings^LN||Seen A. Moreau\\.br\\18 mm nodule \\F\\ MRN1001~Moreau, Alice||||||F\r"
        "OBX|2|FT|x^y||\\H\\Moreau\\N\\ Alice, DOB 1958-03-14 \\.in+4\\T2 lesion||||||F\r"
        "OBX|3|ST|x^y||call 044 255 11 11||||||F\r"
        "OBX|4|CWE|x^y||Moreau^Moreau^L||||||F\r"
        "NTE|1|L|Dr. Anna Weber: MRN1001 consent^ok\r"))
    result = scrub_hl7(msg, scrubber)
    out = result.value
    again = parse_message(out.to_er7())  # kit's parser reads it back
    assert again == out
    assert out.segment("OBX", 1).field(5) == "Seen [NAME]\\.br\\18 mm nodule \\F\\ [ID]~[NAME]"
    assert out.get("OBX(1)-5") == "Seen [NAME]\n18 mm nodule | [ID]"
    assert out.segment("OBX", 2).field(5) == "\\H\\[NAME]\\N\\ [NAME], DOB [DATE] \\.in+4\\T2 lesion"
    assert out.get("OBX(3)-5") == "call [PHONE]"
    assert out.segment("OBX", 4) == msg.segment("OBX", 4)  # coded: not free text
    assert out.get("NTE-3") == "Dr. [NAME]: [ID] consent^ok"
    assert out.get("PID-5") == "Moreau^Alice"  # structured fields are the pseudonymiser's job
    assert set(result.spans) == {"OBX(1)-5", "OBX(2)-5", "OBX(3)-5", "NTE(1)-3"}
    assert msg.get("OBX(3)-5") == "call 044 255 11 11"  # the input is unchanged


def test_hl7_other_delimiters_survive(scrubber: TextScrubber) -> None:
    msg = parse_message("MSH#$%!*#RIS#H#KIT#R#20260112##ORU$R01#X1#P#2.5.1\r"
                        "OBX#1#TX#x##Moreau !F!1 Alice$ok%Moreau######F\r")
    out = scrub_hl7(msg, scrubber).value
    assert parse_message(out.to_er7()) == out
    assert out.segment("OBX").field(5) == "[NAME] !F!1 [NAME]$ok%[NAME]"


def test_sample_feed_scrubbed_and_reparsed(scrubber: TextScrubber) -> None:
    for text in split_messages(examples.hl7_feed().read_bytes()):
        msg = parse_message(text)
        out = scrub_hl7(msg, scrubber).value
        assert parse_message(out.to_er7()) == out
        assert [s.name for s in out.segments()] == [s.name for s in msg.segments()]


def _div(inner: str) -> str:
    return f'<div xmlns="{XHTML}">{inner}</div>'


def test_fhir_narrative_stays_valid_xhtml(scrubber: TextScrubber) -> None:
    report = {
        "resourceType": "DiagnosticReport", "id": "r1", "status": "final",
        "code": {"text": "CT chest"},
        "text": {"status": "generated", "div": _div(
            f'<p title="for Alice Moreau">{PHI} &amp; <b>A. Moreau</b> &lt;ok&gt;</p><br/>'
            '<table><tr><td>5 mm</td><td>T2</td></tr></table>')},
        "conclusion": f"Nodule 5 mm. {PHI}.",
        "presentedForm": [{"contentType": "application/pdf",
                           "data": base64.b64encode(b"%PDF Moreau").decode()}],
    }
    result = scrub_fhir(report, scrubber)
    out = result.value
    root = ET.fromstring(out["text"]["div"])
    assert root.tag == f"{{{XHTML}}}div"
    assert out["text"]["div"].startswith(f'<div xmlns="{XHTML}">')
    text = "".join(root.itertext())
    assert "Moreau" not in out["text"]["div"] and "[NAME]" in text and "<ok>" in text and "5 mm" in text
    assert "Moreau" not in out["conclusion"] and out["conclusion"].startswith("Nodule 5 mm. [NAME]")
    validate(out)  # still a valid FHIR R4 resource (narrative included)
    assert result.skipped == ("DiagnosticReport.presentedForm[0].data",)
    assert report["conclusion"].endswith("01 01.")  # the input is unchanged
    assert set(result.spans) == {"DiagnosticReport.text.div", "DiagnosticReport.conclusion"}


def test_fhir_notes_and_text_attachments(scrubber: TextScrubber) -> None:
    note = f"Report of {PHI}\nImpression: T2 lesion, 5 mm."
    data = note.encode("utf-8")
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "title": "Alice Moreau",
                                       "data": base64.b64encode(data).decode(), "size": len(data),
                                       "hash": base64.b64encode(hashlib.sha1(data).digest()).decode()}}]}
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "note": [{"authorString": "Dr. Anna Weber", "text": f"{PHI}; eGFR 58"}]}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": doc}, {"resource": obs}]}
    out = scrub_fhir(bundle, scrubber).value
    att = out["entry"][0]["resource"]["content"][0]["attachment"]
    raw = base64.b64decode(att["data"])
    assert raw.decode() == ("Report of [NAME] ([ID], born [DATE]) called [PHONE]\n"
                            "Impression: T2 lesion, 5 mm.")
    assert att["size"] == len(raw) and att["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()
    assert att["title"] == "[NAME]"
    n = out["entry"][1]["resource"]["note"][0]
    assert n == {"authorString": "Dr. [NAME]", "text": "[NAME] ([ID], born [DATE]) called [PHONE]; eGFR 58"}
    validate(out["entry"][0]["resource"])
    validate(out["entry"][1]["resource"])


@pytest.mark.parametrize("div", [
    "<div>unclosed", '<!DOCTYPE x [<!ENTITY a "b">]><div>&a;</div>', "not xml at all <"])
def test_fhir_bad_narrative_is_invalid_input(scrubber: TextScrubber, div: str) -> None:
    with pytest.raises(InvalidInputError):
        scrub_fhir({"resourceType": "Patient", "text": {"status": "generated", "div": div}}, scrubber)


def test_fhir_bad_attachment_and_nesting(scrubber: TextScrubber) -> None:
    bad = {"resourceType": "DocumentReference",
           "content": [{"attachment": {"contentType": "text/plain", "data": "***"}}]}
    with pytest.raises(InvalidInputError):
        scrub_fhir(bad, scrubber)
    deep: dict = {"resourceType": "Basic"}
    node = deep
    for _ in range(100):
        node["extension"] = [{}]
        node = node["extension"][0]
    with pytest.raises(InvalidInputError):
        scrub_fhir(deep, scrubber)


def _sr_dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyDescription = "CT CHEST for Alice Moreau"
    ds.SeriesDescription = "T2 axial 5 mm"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "Moreau Medical"  # coded/structural LO: kept
    ds.ImageComments = f"{PHI}; T2"
    ds.AdditionalPatientHistory = "Seen by Dr. Anna Weber on 12.04.2026"
    ds.add_new(0x00081040, "LO", "Dept of Moreau")  # InstitutionalDepartmentName: not free text
    ds.add_new(0x00181030, "LO", "Alice Moreau protocol" + "x" * 40)  # ProtocolName: cut at 64 after scrub
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding Moreau"
    item = Dataset()
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = f"{PHI}. Nodule 5 mm at C3-C4."
    ds.ContentSequence = Sequence([item])
    return ds


def test_dicom_text_attributes_and_sr_text(scrubber: TextScrubber) -> None:
    ds = _sr_dataset()
    before = copy.deepcopy(ds)
    result = scrub_dicom(ds, scrubber)
    out = result.value
    assert ds == before  # the input is unchanged
    assert out.StudyDescription == "CT CHEST for [NAME]"
    assert out.SeriesDescription == "T2 axial 5 mm"
    assert out.Manufacturer == "Moreau Medical" and out.BodyPartExamined == "CHEST"
    assert out.InstitutionalDepartmentName == "Dept of Moreau"
    assert out.ImageComments == "[NAME] ([ID], born [DATE]) called [PHONE]; T2"
    assert out.AdditionalPatientHistory == "Seen by Dr. [NAME] on [DATE]"
    assert out.ProtocolName.startswith("[NAME] protocol") and len(out.ProtocolName) <= 64
    item = out.ContentSequence[0]
    assert item.TextValue == "[NAME] ([ID], born [DATE]) called [PHONE]. Nodule 5 mm at C3-C4."
    assert item.ConceptNameCodeSequence[0].CodeMeaning == "Finding Moreau"  # coded: kept
    assert "ContentSequence[0].TextValue" in result.spans
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert back.ContentSequence[0].TextValue == item.TextValue and back.ImageComments == out.ImageComments
    assert b"Alice" not in buf.getvalue().replace(b"Dept of Moreau", b"")


def test_dicom_sample_files_scrub_and_write(scrubber: TextScrubber) -> None:
    path = sorted(examples.study_dir("MRN1001").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    out = scrub_dicom(ds, scrubber).value
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).StudyInstanceUID == ds.StudyInstanceUID


def test_wrong_types_refused(scrubber: TextScrubber) -> None:
    with pytest.raises(InvalidInputError):
        scrub_hl7("MSH|^~\\&|", scrubber)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        scrub_fhir({"no": "type"}, scrubber)
    with pytest.raises(InvalidInputError):
        scrub_dicom({"x": 1}, scrubber)  # type: ignore[arg-type]
