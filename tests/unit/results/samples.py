"""A sample AnalysisResult and Hypothesis strategies over valid ones (shared by the encoder tests)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import string
from typing import Any

from hypothesis import strategies as st

from kit.results import SCHEMES, Algorithm, AnalysisResult, Code, Label, Measurement, Subject

STUDY = "1.2.826.0.1.3680043.8.498.77"
DIAMETER = Code("81827009", "SCT", "Diameter")
VOLUME = Code("118565006", "SCT", "Volume")
MM = Code("mm", "UCUM", "millimeter")
ML = Code("mL", "UCUM", "milliliter")
LESION = Code("52988006", "SCT", "Lesion")
LUNG = Code("39607008", "SCT", "Lung structure")
FINDING = Code("F-1", "99KIT", "Nodule type")
SOLID = Code("S-1", "99KIT", "Solid | ^ ~ \\ & nodule")
CREATED = dt.datetime(2026, 1, 12, 9, 14, 30, tzinfo=dt.UTC)
CONCLUSION = "Solid nodule |^~\\& in the right upper lobe,\n12.5 mm.\r\nFollow-up in 3 months."


def sample(**kw: Any) -> AnalysisResult:
    """Two measurements (one with finding and site), one scored label, a multi-line conclusion."""
    subject = Subject("MRN1001", STUDY, "ACC1001", patient_name="Moreau^Alice",
                      patient_birth_date=dt.date(1958, 3, 14), patient_sex="F")
    fields: dict[str, Any] = {
        "subject": subject, "algorithm": Algorithm("lesion-finder", "1.2.0", {"threshold": 0.5}),
        "measurements": (Measurement(DIAMETER, 12.5, MM, finding=LESION, finding_site=LUNG),
                         Measurement(VOLUME, 0.0001, ML)),
        "labels": (Label(FINDING, SOLID, 0.93),), "conclusion": CONCLUSION, "result_id": "res-1",
        "created": CREATED}
    fields.update(kw)
    return AnalysisResult(**fields)


def with_subject(result: AnalysisResult, **kw: Any) -> AnalysisResult:
    return dataclasses.replace(result, subject=dataclasses.replace(result.subject, **kw))


# -- strategies --------------------------------------------------------------------------------------
_SPECIAL = "|^~\\&"
#: FHIR ``code`` values: no whitespace (FHIR's code grammar), HL7 delimiters allowed.
code_values = st.text(string.ascii_letters + string.digits + "-._:/" + _SPECIAL, min_size=1, max_size=20)
#: Any text the model accepts: unicode, HL7 delimiters, tabs and line breaks.
texts = st.text(st.one_of(st.characters(min_codepoint=32, codec="utf-8"),
                          st.sampled_from(_SPECIAL + "\t\n\r ")),
                min_size=1, max_size=80).filter(lambda s: s.strip() != "")
schemes = st.sampled_from([*SCHEMES, "99LOCAL"])
codes = st.builds(Code, code_values, schemes, texts)
ucum = st.builds(Code, st.sampled_from(["mm", "mL", "mm2", "cm3", "1", "%", "[hnsf'U]", "/min"]),
                 st.just("UCUM"), texts)
#: Finite numbers that HL7 NM can write out (no exponent, at most 199 digits).
values = st.one_of(st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
                   st.floats(min_value=1e-100, max_value=1e100), st.integers(-10**9, 10**9))
measurements = st.builds(Measurement, codes, values, ucum, finding=st.none() | codes,
                         finding_site=st.none() | codes)
labels = st.builds(Label, codes, codes, st.none() | st.floats(0.0, 1.0))
conclusions = st.none() | st.text(st.one_of(st.characters(min_codepoint=32, codec="utf-8"),
                                            st.sampled_from(_SPECIAL + "\t\n\r ")),
                                  min_size=1, max_size=600).filter(lambda s: s.strip() != "")


@st.composite
def results(draw: st.DrawFn) -> AnalysisResult:
    """A valid AnalysisResult with measurements, labels and texts drawn over special characters."""
    ms = tuple(draw(st.lists(measurements, max_size=3)))
    ls = tuple(draw(st.lists(labels, max_size=3)))
    conclusion = draw(conclusions)
    if not (ms or ls or conclusion):
        conclusion = "no finding"
    ident = st.text(string.ascii_letters + string.digits + "-._" + _SPECIAL + " ", min_size=1,
                    max_size=30).filter(lambda s: s.strip() != "")
    subject = Subject(draw(ident), STUDY, draw(st.none() | ident.map(lambda s: s[:16]).filter(str.strip)),
                      patient_name=draw(st.none() | texts.map(lambda s: s[:30]).filter(str.strip)),
                      fhir_patient=draw(st.none() | st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True)))
    return AnalysisResult(subject, Algorithm(draw(ident), draw(ident)), ms, ls, conclusion=conclusion,
                          result_id=draw(st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)),
                          created=draw(st.datetimes(min_value=dt.datetime(1970, 1, 2),
                                                    max_value=dt.datetime(2100, 1, 1),
                                                    timezones=st.just(dt.UTC))))
