"""The procedure list against real worklist providers: the embedded PACS, dcmtk's wlmscpfs, Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.dicom.dimse import PacsClient
from kit.dicom.query import WORKLIST_RETURN_KEYS
from kit.dicom.scp import EmbeddedPACS
from kit.endoscopy import procedures
from kit.errors import InvalidInputError, NotFoundError, PeerUnreachableError, TruncatedResultWarning
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.endoscopy_dicom.peers import TODAY_ACCESSION, items, wlmscpfs, write_worklist_files

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["embedded", "wlmscpfs", "orthanc"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PacsClient]:
    """A worklist provider holding the cohort's items plus today's colonoscopy on ENDO2."""
    if request.param == "embedded":
        with EmbeddedPACS(tmp_path / "pacs", port=0, worklist=items()) as pacs:
            yield PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
    elif request.param == "wlmscpfs":
        with wlmscpfs(tmp_path, items()) as (port, aet):
            yield PacsClient("127.0.0.1", port, called_aet=aet, timeout=10)
    else:
        orthanc: OrthancServer = request.getfixturevalue("orthanc")
        for old in orthanc.worklist_dir.glob("*.wl"):
            old.unlink()
        write_worklist_files(orthanc.worklist_dir, items())
        yield PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, timeout=10)


def test_worklist_lists_the_endoscopies_by_day_room_and_patient(provider: PacsClient) -> None:
    every = procedures.worklist(provider)
    assert every.columns == list(WORKLIST_RETURN_KEYS)
    assert sorted(every["accession_number"].to_list()) == sorted(
        ["ACC100102", "ACC100302", "ACC100602", TODAY_ACCESSION]), "only modality ES"
    assert set(every["modality"].to_list()) == {"ES"}
    today = procedures.worklist(provider, date="today")
    assert today["accession_number"].to_list() == [TODAY_ACCESSION]
    assert today["patient_id"].to_list() == ["MRN7001"]
    room = procedures.worklist(provider, station="ENDO1")
    assert sorted(room["accession_number"].to_list()) == ["ACC100102", "ACC100302", "ACC100602"]
    patient = procedures.worklist(provider, patient_id="MRN1003")
    assert patient["accession_number"].to_list() == ["ACC100302"]
    assert patient["study_instance_uid"][0] and patient["patient_name"][0] == "Rossi^Chiara"
    nothing = procedures.worklist(provider, patient_id="MRN0000")
    assert nothing.height == 0 and nothing.columns == list(WORKLIST_RETURN_KEYS)


def test_find_procedure_takes_patient_study_and_accession_from_the_item(provider: PacsClient) -> None:
    p = procedures.find_procedure(provider, "ACC100302")
    assert (p.patient_id, p.accession_number, p.station_aet, p.patient_name) == (
        "MRN1003", "ACC100302", "ENDO1", "Rossi^Chiara")
    row = procedures.worklist(provider, accession="ACC100302").row(0, named=True)
    assert p.study_instance_uid == row["study_instance_uid"]
    with pytest.raises(NotFoundError, match="no worklist item with accession number 'ACC999999'") as info:
        procedures.find_procedure(provider, "ACC999999")
    assert info.value.query["accession_number"] == "ACC999999"
    with pytest.raises(NotFoundError, match="on station ENDO1"):
        procedures.find_procedure(provider, TODAY_ACCESSION, station="ENDO1")


def test_the_limit_cancels_the_rest_with_a_warning(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs", port=0, worklist=items()) as pacs:
        client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
        with pytest.warns(TruncatedResultWarning):
            assert procedures.worklist(client, limit=2).height == 2


def test_a_wildcard_accession_is_refused_before_any_query() -> None:
    client = PacsClient("127.0.0.1", free_port(), called_aet="KIT", timeout=2)
    with pytest.raises(InvalidInputError, match="without wildcards"):
        procedures.find_procedure(client, "ACC*")
    with pytest.raises(PeerUnreachableError):
        procedures.worklist(client)
