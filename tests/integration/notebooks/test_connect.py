"""kit.notebook.connect and kit.fhir.cohort on real servers: which systems, a workspace, bounded searches."""

from __future__ import annotations

import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import kit.fhir.cohort as cohort
from kit.errors import InvalidInputError, TruncatedResultWarning
from kit.fhir.capability import ServerSupport
from kit.fhir.client import FhirClient
from kit.notebook import MARKER, connect
from kit.stack import Stack


@pytest.fixture(scope="module")
def fhir_stack() -> Iterator[Stack]:
    with Stack.ephemeral(services=("fhir",)) as stack:
        yield stack


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KIT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_embedded_session_keeps_everything_in_its_workspace(no_config: Path) -> None:
    session = connect(workspace="ws", services=("mllp",))
    try:
        workspace = no_config / "ws"
        assert session.workspace == workspace and session.embedded
        assert str(session).splitlines() == [
            "embedded stack (started in this kernel)",
            f"  mllp      mllp://127.0.0.1:{session.settings.hl7.port}",
            f"workspace: {workspace} (the last cell removes it)"]
        assert stat.S_IMODE(workspace.stat().st_mode) == 0o700 and (workspace / MARKER).is_file()
        assert session.stack is not None and session.stack.data_dir == workspace / "stack"
        assert (workspace / "stack" / "mllp.db").is_file() and session.mllp_store is not None
        assert session.hl7_messages(["MSH|ignored"]) == []   # the listener's store, not what was sent
        assert session.embedded_only("anything", echo=pytest.fail)
    finally:
        said = session.close()
    assert said == f"removed the workspace {no_config / 'ws'}" and not (no_config / "ws").exists()
    assert session.close() == f"workspace {no_config / 'ws'} already removed"


def test_configured_session_starts_nothing(no_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise AssertionError("an embedded stack was started")

    monkeypatch.setattr(Stack, "start", refuse)
    toml = no_config / "site.toml"
    toml.write_text('[pacs]\nhost = "pacs.example.org"\nport = 104\ncalled_aet = "PACS"\n'
                    '[hl7]\nhost = "engine.example.org"\nport = 2600\n')
    session = connect(toml, workspace=no_config / "ws", services=("pacs", "mllp"))
    assert not session.embedded and session.mllp_store is None
    assert str(session).splitlines()[:3] == [f"configured systems ({toml})",
                                             "  pacs      dicom://PACS@pacs.example.org:104",
                                             "  mllp      mllp://engine.example.org:2600"]
    said: list[str] = []
    assert session.hl7_messages([b"MSH|a", "MSH|b"], echo=said.append) == ["MSH|a", "MSH|b"]
    assert said == ["mllp://engine.example.org:2600 keeps what it received (MLLP has no read-back): the "
                    "tables below are built from the 2 messages this notebook sent it"]
    assert not session.embedded_only("the duplicate check", echo=said.append)
    assert said[-1] == f"skipped against configured systems ({toml}): the duplicate check"
    assert session.close(keep=True).startswith(f"kept the workspace {no_config / 'ws'}")
    assert (no_config / "ws").is_dir()
    # KIT_CONFIG, then ./kit.toml, without a parameter
    monkeypatch.setenv("KIT_CONFIG", str(toml))
    assert connect(workspace=no_config / "ws2").description == f"configured systems ({toml})"
    monkeypatch.delenv("KIT_CONFIG")
    (no_config / "kit.toml").write_text(toml.read_text())
    local = connect(workspace=no_config / "ws3")
    assert local.description == f"configured systems ({no_config / 'kit.toml'})"


def test_workspace_rules(no_config: Path) -> None:
    (no_config / "kit.toml").write_text('[pacs]\nhost = "pacs.example.org"\n')   # no stack needed here
    leftover = no_config / "left"
    leftover.mkdir()
    (leftover / MARKER).write_text("")
    (leftover / "old.dcm").write_text("identified data from an interrupted run")
    session = connect(workspace=leftover)
    assert "(left over from an earlier run: emptied)" in str(session)
    assert sorted(p.name for p in leftover.iterdir()) == [MARKER]

    foreign = no_config / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not the kit's")
    with pytest.raises(InvalidInputError, match="exists, is not empty and is not a kit workspace"):
        connect(workspace=foreign)
    assert (foreign / "thesis.tex").is_file()
    (no_config / "afile").write_text("")
    with pytest.raises(InvalidInputError, match="is not a folder"):
        connect(workspace=no_config / "afile")
    empty = no_config / "empty"
    empty.mkdir()
    adopted = connect(workspace=empty)
    (empty / MARKER).unlink()            # no longer marked: close refuses to remove it
    with pytest.raises(InvalidInputError, match="not marked as a kit workspace"):
        adopted.close()
    assert empty.is_dir()
    with pytest.raises(InvalidInputError, match="services must be some of"):
        connect(workspace=no_config / "x", services=("dicomweb",))


def test_cohort_searches_are_bounded_and_say_what_is_missing(fhir_stack: Stack,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with FhirClient.from_settings(fhir_stack.client_settings()) as fhir:
        said: list[str] = []
        patients = cohort.patients_by_mrn(fhir, ["MRN1001", "MRN1002", "MRN1003", "MRN0"], echo=said.append)
        assert sorted(patients["patient_id"]) == ["MRN1001", "MRN1002", "MRN1003"]
        assert said == ["the FHIR server has no Patient for 1 of the 4 MRNs asked for: MRN0; "
                        "going on without them"]
        with pytest.raises(InvalidInputError, match="has no Patient with identifier MRN0, MRN9"):
            cohort.patients_by_mrn(fhir, ["MRN0", "MRN9"])
        with pytest.raises(InvalidInputError, match="no patient asked for"):
            cohort.patients_by_mrn(fhir, [])

        support = ServerSupport.of({**fhir.capabilities(), "rest": [
            {"mode": "server", "resource": [r for r in fhir.capabilities()["rest"][0]["resource"]
                                            if r["type"] != "ImagingStudy"]}]})
        frames = cohort.cohort_frames(fhir, support, patients, ["Observation", "ImagingStudy"],
                                      echo=said.append)
        assert frames["ImagingStudy"].height == 0 and "study_instance_uid" in frames["ImagingStudy"].columns
        assert said[-1] == ("the FHIR server does not support ImagingStudy (its CapabilityStatement does not "
                            "list it): skipped, an empty ImagingStudy frame stands in")
        everything = frames["Observation"]
        assert set(everything["patient_ref"]) == set(patients["id"])   # these patients' only

        monkeypatch.setattr(cohort, "IDS_PER_SEARCH", 1)          # one request per patient
        same = cohort.cohort_frames(fhir, support, patients, ["Observation"], count=2)["Observation"]
        assert sorted(same["id"]) == sorted(everything["id"])      # paged and grouped: the same result
        with pytest.warns(TruncatedResultWarning, match="stopped at limit=3"):
            cut = cohort.cohort_frames(fhir, support, patients, ["Observation"], limit=3)["Observation"]
        assert cut.height == 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exact = cohort.cohort_frames(fhir, support, patients, ["Observation"],
                                         limit=everything.height)["Observation"]
        assert exact.height == everything.height
