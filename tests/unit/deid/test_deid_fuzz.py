"""Fuzzing de-identification: random names, ids and text planted in listed and unlisted places.

For every input, ``Deidentifier.dataset`` either returns an output in which the leak scan finds
nothing, or raises a KitError (DeidLeakError when something identifying would survive); never
another exception, never an output with a leak.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from kit.dicom.deid import Deidentifier, DeidLeakError, DeidOptions
from kit.dicom.deid_check import find_leaks, identifiers
from kit.errors import KitError

from ._torture import torture_dataset

KEY = "fuzz-test-key-0123"
_NAME = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "Nd"), max_codepoint=0x30FF),
                min_size=1, max_size=12)
#: where the planted text goes: attributes in the table, unlisted ones, SR text, nested
_PLACES = ["PatientName", "OperatorsName", "InstitutionName", "StationName", "PatientID",
           "StudyDescription", "Manufacturer", "BodyPartExamined", "sr", "nested"]


def _plant(ds: Dataset, where: str, family: str, given: str, ident: str) -> None:
    text = f"{family} {given} {ident}"
    if where == "sr":
        ds.ContentSequence[0].TextValue = text
    elif where == "nested":
        item = Dataset()
        item.PatientID = ident
        item.PatientName = f"{family}^{given}"
        ds.OtherPatientIDsSequence = Sequence([item])
    elif where in ("PatientName", "OperatorsName"):
        setattr(ds, where, f"{family}^{given}")
    else:
        setattr(ds, where, text[:16] if where in ("StationName", "BodyPartExamined") else text[:64])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_PLACES), _NAME, _NAME, st.from_regex(r"[A-Z]{1,3}[0-9]{3,8}", fullmatch=True),
       st.booleans())
def test_output_is_clean_or_the_file_fails(where: str, family: str, given: str, ident: str,
                                          options: bool) -> None:
    ds = torture_dataset()
    _plant(ds, where, family, given, ident)
    d = Deidentifier(KEY, options=DeidOptions(options, options))
    try:
        out = d.dataset(ds)
    except KitError as exc:  # DeidLeakError: the scan stopped it (e.g. a name in Manufacturer)
        assert isinstance(exc, DeidLeakError) or str(exc)
        return
    assert find_leaks(identifiers(ds), out) == []
