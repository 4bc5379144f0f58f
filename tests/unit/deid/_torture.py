"""A DICOM file with PHI in every place the attacks on de-identification found (issue #7.12-14)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ComprehensiveSRStorage, CTImageStorage, ExplicitVRLittleEndian

FAMILY, GIVEN, MRN, BIRTH = "Rossi", "Chiara", "MRN1003", "19710723"
STATION, INSTITUTION = "ENDO1", "Ospedale San Luca"
PHONE, STREET = "+39 055 123 4567", "Via Roma 12 Firenze"
ROOT = "1.2.826.0.1.3680043.8.498.77."
SOP_UID, STUDY_UID, SERIES_UID = ROOT + "1", ROOT + "2", ROOT + "3"
FOR_UID, CONCAT_SRC_UID, TARGET_FOR_UID, REF_UID = ROOT + "4", ROOT + "5", ROOT + "6", ROOT + "7"
SR_TEXT = f"Patient {FAMILY} {GIVEN} {MRN} born 1971-07-23"
#: every identifying value planted (what must not survive), by what it is
PHI = {
    "family name": FAMILY, "given name": GIVEN, "mrn": MRN, "birth date": BIRTH,
    "birth date (ISO)": "1971-07-23", "birth date (European)": "23/07/1971", "station": STATION,
    "institution": INSTITUTION, "phone": PHONE, "address": STREET, "sop uid": SOP_UID,
    "study uid": STUDY_UID, "series uid": SERIES_UID, "frame of reference uid": FOR_UID,
    "concatenation source uid": CONCAT_SRC_UID, "target frame of reference uid": TARGET_FOR_UID,
    "referenced uid": REF_UID, "referring physician": "Bianchi", "operator": "Esposito",
    "accession": "ACC-77-0001",
}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _content(value_type: str, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def torture_dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = STATION
    ds.file_meta.PrivateInformationCreatorUID = ROOT + "99"
    ds.file_meta.PrivateInformation = f"{FAMILY}^{GIVEN} {MRN}".encode() + b"\x00"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY_UID, SERIES_UID, FOR_UID
    ds.SOPInstanceUIDOfConcatenationSource = CONCAT_SRC_UID
    ds.add_new(0x0018991E, "UI", TARGET_FOR_UID)  # TargetFrameOfReferenceUID
    ds.Modality = "SR"
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20240415", "101010", "20240415", "1015"
    ds.AccessionNumber = PHI["accession"]
    ds.PatientName = f"{FAMILY}^{GIVEN}=ロッシ^キアラ=ROSSI^KIARA"
    ds.PatientID = MRN
    ds.PatientBirthDate = BIRTH
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "052Y", "61.5"
    ds.OtherPatientIDs = ["MRN-OLD-1003"]
    ds.PatientAddress = STREET
    ds.PatientTelephoneNumbers = PHONE
    ds.InstitutionName, ds.InstitutionAddress, ds.StationName = INSTITUTION, STREET, STATION
    ds.ReferringPhysicianName = "Bianchi^Marco^^Dr."
    ds.OperatorsName = ["Esposito^Luca", f"^{GIVEN}^^^"]  # a name in an odd component
    ds.StudyID = "S-MRN1003"
    ds.Manufacturer = "kit"
    other = Dataset()
    other.PatientID = "MRN-OLD-1003"
    other.IssuerOfPatientID = INSTITUTION
    ds.OtherPatientIDsSequence = Sequence([other])
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = REF_UID
    deeper = Dataset()
    deeper.ReferencedSOPClassUID = CTImageStorage
    deeper.ReferencedSOPInstanceUID = REF_UID
    deeper.add_new(0x0040A160, "UT", f"see {FAMILY}, {GIVEN}")  # text where no IOD puts it
    ref.ReferencedImageSequence = Sequence([deeper])
    series = Dataset()
    series.SeriesInstanceUID = SERIES_UID
    series.ReferencedSOPSequence = Sequence([ref])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([series])
    nested = _content("CONTAINER", ContinuityOfContent="SEPARATE")
    nested.ContentSequence = Sequence([_content("TEXT", TextValue=f"{GIVEN} {FAMILY}, 23/07/1971")])
    ds.ContentSequence = Sequence([
        _content("TEXT", TextValue=SR_TEXT),
        _content("PNAME", PersonName=f"{FAMILY}^{GIVEN}"),
        _content("DATE", Date=BIRTH),
        _content("DATETIME", DateTime=BIRTH + "0830"),
        _content("UIDREF", UID=REF_UID),
        nested,
    ])
    block = ds.private_block(0x0009, "KIT TORTURE", create=True)
    block.add_new(0x10, "LO", f"{FAMILY} {GIVEN}")
    block.add_new(0x11, "UN", f"{MRN} {BIRTH}".encode())
    ds.add_new(0x00720777, "UN", f"{FAMILY}^{GIVEN}".encode())  # a public tag pydicom does not know
    return ds


def write_torture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torture_dataset().save_as(path, enforce_file_format=True)
    return path
