"""`kit deid` applies the Basic Profile alone by default; its options are explicit flags, named in
the output (issue #7.11)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import ROOT
from tests.integration.cli.test_cli_items import clean_env, kit

SOURCE = ROOT / "data" / "samples" / "dicom" / "MRN1001"


def _outputs(out: Path) -> list[pydicom.Dataset]:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files
    return [pydicom.dcmread(p) for p in files]


def _codes(ds: pydicom.Dataset) -> set[str]:
    return {str(item.CodeValue) for item in ds.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize("flags, codes, dates_kept", [
    ((), {"113100"}, False),
    (("--shift-dates",), {"113100", "113107"}, True),
    (("--shift-dates", "--retain-patient-characteristics"), {"113100", "113107", "113108"}, True),
])
def test_options_are_off_by_default_and_named(tmp_path: Path, flags: tuple[str, ...], codes: set[str],
                                              dates_kept: bool) -> None:
    env = {**clean_env(), "KIT_DEID_KEY": "a-test-key-of-some-length"}
    out = tmp_path / "out"
    proc = kit("deid", str(SOURCE), str(out), *flags, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyDate)
                 for p in SOURCE.rglob("*") if p.is_file()}
    for ds in _outputs(out):
        assert not ds.get("PatientBirthDate"), "the birth date is removed under every option"
        assert _codes(ds) == codes
        assert ds.PatientIdentityRemoved == "YES"
        study_date = str(ds.get("StudyDate") or "")
        if dates_kept:
            assert study_date and study_date not in originals  # shifted, not kept
        else:
            assert not study_date


def test_keep_dates_flag_is_gone(tmp_path: Path) -> None:
    env = {**clean_env(), "KIT_DEID_KEY": "a-test-key-of-some-length"}
    proc = kit("deid", str(SOURCE), str(tmp_path / "out"), "--keep-dates", cwd=tmp_path, env=env)
    assert proc.returncode == 2
