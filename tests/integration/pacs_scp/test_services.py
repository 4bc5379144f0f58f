"""The embedded PACS against dcmtk clients: echo, store, find (QR and worklist), get, move."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from kit.dicom.matching import worklist_items_from_cohort
from kit.dicom.scp import EmbeddedPACS
from kit.examples.cohort import patient, studies
from tests.conftest import free_port, peer_env, spawned, wait_for_port
from tests.integration.pacs_scp.conftest import N_INSTANCES, dcmtk, extracted, run

pytestmark = pytest.mark.dcmtk

CT1 = patient("MRN1001").studies[0]
MR2 = patient("MRN1002").studies[1]


def find(pacs: EmbeddedPACS, out: Path, model: str, *keys: str) -> list:  # type: ignore[type-arg]
    """findscu with -X into ``out``; returns the response datasets."""
    out.mkdir(parents=True, exist_ok=True)
    args = [model, "-aec", pacs.aet, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = run("findscu", *args, "127.0.0.1", str(pacs.port))
    assert result.returncode == 0, result.stderr
    return extracted(out)


def test_echo(pacs: EmbeddedPACS) -> None:
    result = run("echoscu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port))
    assert result.returncode == 0, result.stderr
    assert pacs.address == f"dicom://KIT@127.0.0.1:{pacs.port}"


def test_storescu_folder_then_find_each_level(pacs: EmbeddedPACS, cohort_dir: Path, tmp_path: Path) -> None:
    result = run("storescu", "-aec", pacs.aet, "+sd", "127.0.0.1", str(pacs.port), str(cohort_dir))
    assert result.returncode == 0, result.stderr
    assert len(pacs.store) == N_INSTANCES
    # the files are Part 10 with the received bytes and our meta
    stored = dcmread(pacs.store.instances({"SOPInstanceUID": [CT1.instance_uid(1, 1)]})[0].path)
    assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
    assert stored.PatientID == "MRN1001"

    # PATIENT level, patient root: all three patients, with related-study counts
    rsp = find(pacs, tmp_path / "p", "-P", "QueryRetrieveLevel=PATIENT", "PatientID",
               "PatientName", "NumberOfPatientRelatedStudies")
    assert sorted(r.PatientID for r in rsp) == ["MRN1001", "MRN1002", "MRN1003"]
    counts = {r.PatientID: int(r.NumberOfPatientRelatedStudies) for r in rsp}
    assert counts == {"MRN1001": 1, "MRN1002": 2, "MRN1003": 1}
    # only the requested keys (plus QueryRetrieveLevel / character set)
    assert {e.keyword for e in rsp[0]} <= {"QueryRetrieveLevel", "PatientID", "PatientName",
                                           "NumberOfPatientRelatedStudies", "SpecificCharacterSet"}

    # STUDY level, study root: wildcard on name, computed keys
    rsp = find(pacs, tmp_path / "s", "-S", "QueryRetrieveLevel=STUDY", "PatientName=Kel*",
               "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "AccessionNumber")
    assert sorted(r.AccessionNumber for r in rsp) == ["ACC100201", "ACC100202"]
    by_acc = {r.AccessionNumber: r for r in rsp}
    assert by_acc["ACC100202"].ModalitiesInStudy == "MR"
    assert int(by_acc["ACC100201"].NumberOfStudyRelatedInstances) == 2
    assert all(r.QueryRetrieveLevel == "STUDY" for r in rsp)

    # STUDY level: date range
    rsp = find(pacs, tmp_path / "d", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20260114-20260131",
               "StudyInstanceUID")
    # stored: MRN1001 CT 01-12, MRN1002 CT 01-15 and MR 01-20, MRN1003 CT 02-01
    assert {r.StudyInstanceUID for r in rsp} == {patient("MRN1002").studies[0].study_uid, MR2.study_uid}

    # SERIES level with a UID list of studies
    rsp = find(pacs, tmp_path / "se", "-S", "QueryRetrieveLevel=SERIES",
               f"StudyInstanceUID={CT1.study_uid}\\{MR2.study_uid}", "SeriesInstanceUID", "Modality",
               "NumberOfSeriesRelatedInstances")
    assert sorted(r.SeriesInstanceUID for r in rsp) == sorted(
        [CT1.series_uid(1), CT1.series_uid(2), MR2.series_uid(1)])
    assert all(int(r.NumberOfSeriesRelatedInstances) in (2, 3) for r in rsp)

    # IMAGE level: a key the index lacks (InstitutionName) comes from the file header
    rsp = find(pacs, tmp_path / "i", "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={CT1.study_uid}",
               f"SeriesInstanceUID={CT1.series_uid(2)}", "SOPInstanceUID", "InstanceNumber",
               "InstitutionName")
    assert sorted(int(r.InstanceNumber) for r in rsp) == [1, 2, 3]
    assert {r.InstitutionName for r in rsp} == {"Kit Test Hospital"}

    # no match is an empty answer, not an error
    assert find(pacs, tmp_path / "n", "-S", "QueryRetrieveLevel=STUDY", "PatientID=NOBODY",
                "StudyInstanceUID") == []


def test_study_root_rejects_patient_level(loaded_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    result = run("findscu", "-v", "-S", "-aec", loaded_pacs.aet, "-k", "QueryRetrieveLevel=PATIENT",
                 "-k", "PatientID", "127.0.0.1", str(loaded_pacs.port))
    assert "datasetdoesnotmatchsopclass" in (result.stdout + result.stderr).lower()  # 0xA900


def test_worklist_find(tmp_path: Path) -> None:
    items = worklist_items_from_cohort()
    with EmbeddedPACS(tmp_path / "pacs", worklist=items) as pacs:
        rsp = find(pacs, tmp_path / "w", "-W", "PatientName", "PatientID", "AccessionNumber",
                   "StudyInstanceUID", "ScheduledProcedureStepSequence[0].Modality=MR",
                   "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
                   "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate")
    scheduled_mr = [s for s in studies(scheduled=True) if s.modality == "MR"]
    assert [r.AccessionNumber for r in rsp] == [s.accession for s in scheduled_mr]
    sps = rsp[0].ScheduledProcedureStepSequence[0]
    assert sps.Modality == "MR" and sps.ScheduledStationAETitle == "KITMR1"
    assert sps.ScheduledProcedureStepStartDate == scheduled_mr[0].date.strftime("%Y%m%d")
    assert "QueryRetrieveLevel" not in rsp[0]


def test_worklist_folder_of_json(tmp_path: Path) -> None:
    folder = tmp_path / "wl"
    folder.mkdir()
    for i, item in enumerate(worklist_items_from_cohort()):
        (folder / f"{i}.json").write_text(item.to_json())
    with EmbeddedPACS(tmp_path / "pacs", worklist=folder) as pacs:
        rsp = find(pacs, tmp_path / "w", "-W", "AccessionNumber",
                   "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=ENDO1")
    assert sorted(r.AccessionNumber for r in rsp) == sorted(s.accession for s in studies(modality="ES"))


def test_getscu_study_pixel_data_identical(loaded_pacs: EmbeddedPACS, cohort_dir: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    result = run("getscu", "-S", "-aec", loaded_pacs.aet, "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={CT1.study_uid}", "127.0.0.1", str(loaded_pacs.port))
    assert result.returncode == 0, result.stderr
    got = {dcmread(p).SOPInstanceUID: dcmread(p).PixelData for p in out.iterdir()}
    originals = {dcmread(p).SOPInstanceUID: dcmread(p).PixelData for p in cohort_dir.glob("MRN1001_0_*")}
    assert len(got) == 6 and got == originals


def test_movescu_to_storescp(loaded_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "moved"
    out.mkdir()
    loaded_pacs.move_destinations["DEST"] = ("127.0.0.1", port)
    try:
        with spawned([dcmtk("storescp"), "-aet", "DEST", "-od", str(out), str(port)], env=peer_env()) as proc:
            wait_for_port(port, proc=proc)
            result = run("movescu", "-v", "-S", "-aec", loaded_pacs.aet, "-aem", "DEST",
                         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={CT1.study_uid}",
                         "-k", f"SeriesInstanceUID={CT1.series_uid(1)}", "127.0.0.1", str(loaded_pacs.port))
            assert result.returncode == 0, result.stderr
            # unknown destination -> 0xA801
            bad = run("movescu", "-v", "-S", "-aec", loaded_pacs.aet, "-aem", "NOWHERE",
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT1.study_uid}",
                      "127.0.0.1", str(loaded_pacs.port))
    finally:
        del loaded_pacs.move_destinations["DEST"]
    moved = sorted(dcmread(p).SOPInstanceUID for p in out.iterdir())
    assert moved == sorted(CT1.instance_uid(1, n) for n in (1, 2, 3))
    assert "movedestinationunknown" in (bad.stdout + bad.stderr).lower()  # 0xA801


def test_move_to_unreachable_destination(loaded_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    """Nothing listens at the destination: the C-MOVE fails (pynetdicom answers 0xA801)."""
    port = free_port()  # nothing listens here
    loaded_pacs.move_destinations["DEAD"] = ("127.0.0.1", port)
    try:
        result = run("movescu", "-v", "-S", "-aec", loaded_pacs.aet, "-aem", "DEAD",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT1.study_uid}",
                     "127.0.0.1", str(loaded_pacs.port))
    finally:
        del loaded_pacs.move_destinations["DEAD"]
    assert "movedestinationunknown" in (result.stdout + result.stderr).lower()


def test_move_sub_operation_failures_are_counted(loaded_pacs: EmbeddedPACS) -> None:
    """A destination that refuses one C-STORE: final status warning, the failure counted."""
    refused = CT1.instance_uid(1, 2)
    dest = AE(ae_title="PICKY")
    dest.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)

    def on_store(event: evt.Event) -> int:
        return 0xA700 if event.request.AffectedSOPInstanceUID == refused else 0x0000

    server = dest.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    loaded_pacs.move_destinations["PICKY"] = ("127.0.0.1", server.server_address[1])
    client = AE(ae_title="KITSCU")
    client.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    try:
        assoc = client.associate("127.0.0.1", loaded_pacs.port, ae_title=loaded_pacs.aet)
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = CT1.study_uid
        query.SeriesInstanceUID = CT1.series_uid(1)
        responses = list(assoc.send_c_move(query, "PICKY", StudyRootQueryRetrieveInformationModelMove))
        assoc.release()
    finally:
        del loaded_pacs.move_destinations["PICKY"]
        server.shutdown()
    final = responses[-1][0]
    assert final.Status == 0xB000  # warning: some sub-operations failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert responses[-1][1].FailedSOPInstanceUIDList == refused
