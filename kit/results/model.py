"""The analysis result: one object, pure data, that every write-back is made from.

A researcher's model says something about specific images: a lesion measured,
a mask, a label with a score, a sentence of conclusion. :class:`AnalysisResult`
holds exactly that, with the subject (patient, study, series, instances,
frames), the algorithm (name, version, parameters) and the provenance (the
inputs' UIDs and resource ids, and when). The encoders in this package turn
one result into DICOM SR and SEG, FHIR Observation/DiagnosticReport and an
HL7 ORU^R01; the same identifiers (accession number, StudyInstanceUID, the
result id) appear in all of them.

Every class here is frozen and validated on construction: once built, a
result is valid, and an invalid one raises :class:`kit.errors.InvalidInputError`
naming the field. The identifiers of everything derived from a result (the SR
and SEG UIDs, the FHIR identifiers, the HL7 control id) are derived from its
``result_id``, so sending the same result twice sends the same objects, which
the targets recognise instead of duplicating.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from pydicom.uid import generate_uid

from kit.errors import InvalidInputError

__all__ = [
    "SCHEMES",
    "AnalysisResult",
    "Algorithm",
    "BoundingBox",
    "Code",
    "Label",
    "Measurement",
    "Region",
    "Subject",
]

#: Coding schemes (DICOM designators) and their FHIR system URIs.
SCHEMES: Mapping[str, str] = MappingProxyType({
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "RADLEX": "http://radlex.org",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
    "NCIt": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "99KIT": "urn:kit:codes",
})

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # the FHIR id grammar: usable as a resource id


def _bad(field: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"{field}: {message}", source=field)


def _text(field: str, value: object, *, max_len: int = 1024, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise _bad(field, f"must be a non-empty string, not {value!r}")
    if len(value) > max_len:
        raise _bad(field, f"longer than {max_len} characters")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise _bad(field, "contains control characters")


def _number(value: object) -> bool:
    """A finite int or float that a float can hold (bool is not a number here)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float (10**400): no measurement is that
        return False


def _uid(field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > 64 or not _UID.match(value):
        raise _bad(field, f"not a DICOM UID: {value!r}")


@dataclasses.dataclass(frozen=True)
class Code:
    """A coded concept: ``Code("8867-4", "LN", "Heart rate")``.

    Parameters
    ----------
    value : str
        The code.
    scheme : str
        The coding scheme designator (``SCT``, ``LN``, ``DCM``, ``UCUM``,
        ``RADLEX``, ``UMLS``, ``NCIt``, ``99KIT`` or a local ``99...`` scheme).
    meaning : str
        The human-readable meaning (at most 64 characters, as in DICOM).
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        _text("Code.value", self.value, max_len=64)
        _text("Code.meaning", self.meaning, max_len=64)  # DICOM's CodeMeaning (LO) limit
        if self.scheme not in SCHEMES and not re.fullmatch(r"99[A-Z0-9_]{1,14}", str(self.scheme)):
            raise _bad("Code.scheme", f"unknown coding scheme {self.scheme!r} (one of {sorted(SCHEMES)} "
                                      "or a local 99... scheme)")

    @property
    def system(self) -> str:
        """The FHIR ``Coding.system`` of the scheme."""
        return SCHEMES.get(self.scheme, f"urn:kit:codes:{self.scheme.lower()}")


@dataclasses.dataclass(frozen=True)
class Subject:
    """What the result is about: the patient, the study and, optionally, series, instances, frames.

    ``patient_id``, ``accession_number`` and ``study_instance_uid`` are the
    identifiers that join across PACS, FHIR and HL7. ``fhir_patient`` and
    ``fhir_imaging_study`` are the FHIR resource ids where they are known (the
    FHIR encoders then reference them).
    """

    patient_id: str
    study_instance_uid: str
    accession_number: str | None = None
    patient_name: str | None = None
    patient_birth_date: dt.date | None = None
    patient_sex: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()
    frame_numbers: tuple[int, ...] = ()
    fhir_patient: str | None = None
    fhir_imaging_study: str | None = None

    def __post_init__(self) -> None:
        _text("Subject.patient_id", self.patient_id, max_len=64)
        _uid("Subject.study_instance_uid", self.study_instance_uid)
        _text("Subject.accession_number", self.accession_number, max_len=16, optional=True)
        _text("Subject.patient_name", self.patient_name, max_len=64 * 5, optional=True)
        _uid("Subject.series_instance_uid", self.series_instance_uid, optional=True)
        object.__setattr__(self, "sop_instance_uids", tuple(self.sop_instance_uids))
        object.__setattr__(self, "frame_numbers", tuple(self.frame_numbers))
        for u in self.sop_instance_uids:
            _uid("Subject.sop_instance_uids", u)
        if len(set(self.sop_instance_uids)) != len(self.sop_instance_uids):
            raise _bad("Subject.sop_instance_uids", "repeats an instance")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.frame_numbers):
            raise _bad("Subject.frame_numbers", "frame numbers are integers from 1")
        if self.patient_sex is not None and self.patient_sex not in ("M", "F", "O"):
            raise _bad("Subject.patient_sex", f"M, F or O, not {self.patient_sex!r}")
        if self.patient_birth_date is not None and not isinstance(self.patient_birth_date, dt.date):
            raise _bad("Subject.patient_birth_date", "must be a datetime.date")
        for name in ("fhir_patient", "fhir_imaging_study"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _ID.match(value)):
                raise _bad(f"Subject.{name}", f"not a FHIR resource id: {value!r}")


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """The algorithm that produced the result: name, version and the parameters it ran with."""

    name: str
    version: str
    parameters: Mapping[str, str | int | float | bool] = dataclasses.field(default_factory=dict)
    manufacturer: str = "kit"

    def __post_init__(self) -> None:
        _text("Algorithm.name", self.name, max_len=64)
        _text("Algorithm.version", self.version, max_len=64)
        _text("Algorithm.manufacturer", self.manufacturer, max_len=64)
        params = dict(self.parameters)
        for key, value in params.items():
            _text("Algorithm.parameters", key, max_len=64)
            if not isinstance(value, (str, int, float, bool)):
                raise _bad("Algorithm.parameters",
                           f"{key}: a str, int, float or bool, not {type(value).__name__}")
        object.__setattr__(self, "parameters", MappingProxyType(params))

    def __hash__(self) -> int:
        return hash((self.name, self.version, tuple(sorted(self.parameters.items())), self.manufacturer))


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A numeric finding, e.g. a diameter of 12.5 ``mm`` (UCUM) measured on a lesion.

    ``region`` names the :class:`Region` or :class:`BoundingBox` it was measured on
    (by its ``label``), ``finding`` what was measured (e.g. a lesion) and
    ``finding_site`` where.
    """

    name: Code
    value: float
    unit: Code
    finding: Code | None = None
    finding_site: Code | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, Code) or not isinstance(self.unit, Code):
            raise _bad("Measurement", "name and unit are Code objects")
        if self.unit.scheme != "UCUM":
            raise _bad("Measurement.unit", f"units are UCUM codes, not {self.unit.scheme}")
        if not _number(self.value):
            raise _bad("Measurement.value", f"a finite number, not {self.value!r}")
        object.__setattr__(self, "value", float(self.value))
        for name in ("finding", "finding_site"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), Code):
                raise _bad(f"Measurement.{name}", "must be a Code")


@dataclasses.dataclass(frozen=True)
class Label:
    """A qualitative finding with an optional score in [0, 1]: ``Label(finding_code, polyp_code, 0.93)``."""

    name: Code
    value: Code
    score: float | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, Code) or not isinstance(self.value, Code):
            raise _bad("Label", "name and value are Code objects")
        if self.score is not None:
            if not _number(self.score) or not 0.0 <= float(self.score) <= 1.0:
                raise _bad("Label.score", f"a number in [0, 1], not {self.score!r}")
            object.__setattr__(self, "score", float(self.score))


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """A segmented region: a binary mask, one mask frame per source image.

    ``mask`` has shape ``(len(source_instances), rows, columns)`` (a 2-D mask
    is taken as one frame); ``source_instances[i]`` is the SOP Instance UID of
    the image that mask frame ``i`` lies on. ``category`` and ``kind`` are the
    segment's property category and type (e.g. ``Code("49755003", "SCT",
    "Morphologically Altered Structure")`` and ``Code("52988006", "SCT",
    "Lesion")``). The mask is stored read-only.
    """

    label: str
    category: Code
    kind: Code
    mask: npt.NDArray[np.bool_]
    source_instances: tuple[str, ...]

    def __post_init__(self) -> None:
        _text("Region.label", self.label, max_len=64)
        if not isinstance(self.category, Code) or not isinstance(self.kind, Code):
            raise _bad("Region", "category and kind are Code objects")
        try:
            mask = np.asarray(self.mask)
        except Exception as exc:  # noqa: BLE001 - anything that is not array-like
            raise _bad("Region.mask", f"not an array: {exc}") from exc
        if mask.ndim == 2:
            mask = mask[np.newaxis]
        if mask.ndim != 3 or 0 in mask.shape:
            raise _bad("Region.mask", f"shape (frames, rows, columns), not {mask.shape}")
        if mask.dtype != np.bool_:
            if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
                raise _bad("Region.mask", "a binary mask (bool, or integers 0/1)")
            mask = mask.astype(bool)
        mask = np.array(mask, copy=True)
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        sources = tuple(self.source_instances)
        for u in sources:
            _uid("Region.source_instances", u)
        if len(sources) != mask.shape[0]:
            raise _bad("Region.source_instances",
                       f"{len(sources)} instances for {mask.shape[0]} mask frames")
        object.__setattr__(self, "source_instances", sources)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Region):
            return NotImplemented
        return (self.label, self.category, self.kind, self.source_instances) == \
            (other.label, other.category, other.kind, other.source_instances) \
            and self.mask.shape == other.mask.shape and bool((self.mask == other.mask).all())

    def __hash__(self) -> int:
        return hash((self.label, self.category, self.kind, self.source_instances, self.mask.shape))


@dataclasses.dataclass(frozen=True)
class BoundingBox:
    """A detection box on one image (or one video frame): pixel corners, inclusive-exclusive.

    ``score`` is the detector's certainty in [0, 1] (in the SR: the certainty of the box's
    ``kind``). ``time`` is the frame's time in seconds from the start of a clip, for video;
    it stays with the result (the SR names the frame of a DICOM video by ``frame_number``).
    """

    label: str
    kind: Code
    source_instance: str
    x0: float
    y0: float
    x1: float
    y1: float
    frame_number: int | None = None
    time: float | None = None
    score: float | None = None

    def __post_init__(self) -> None:
        _text("BoundingBox.label", self.label, max_len=64)
        _uid("BoundingBox.source_instance", self.source_instance)
        corners = (self.x0, self.y0, self.x1, self.y1)
        if any(not _number(v) or v < 0 for v in corners):
            raise _bad("BoundingBox", f"corners are finite, non-negative numbers: {corners}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise _bad("BoundingBox", f"x1 > x0 and y1 > y0, not {corners}")
        if self.frame_number is not None and (not isinstance(self.frame_number, int)
                                              or self.frame_number < 1):
            raise _bad("BoundingBox.frame_number", "an integer from 1")
        if self.score is not None and not (_number(self.score) and 0.0 <= float(self.score) <= 1.0):
            raise _bad("BoundingBox.score", f"a number in [0, 1], not {self.score!r}")
        if self.time is not None and not (_number(self.time) and float(self.time) >= 0):
            raise _bad("BoundingBox.time", f"seconds from the start, not {self.time!r}")


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    """One analysis result about one subject: findings, the algorithm, provenance.

    Parameters
    ----------
    subject : Subject
    algorithm : Algorithm
    measurements, labels, regions, boxes : tuple
        The findings; at least one finding or a ``conclusion`` is required.
        A measurement's or label's ``region`` must name a region or box.
    conclusion : str, optional
        A sentence of conclusion (free text).
    result_id : str, optional
        Stable id of this result (FHIR id grammar, ``[A-Za-z0-9-.]{1,64}``);
        a new UUID by default. Every UID and identifier derived from the result
        comes from it, so re-sending the same result does not duplicate it.
    inputs : tuple of str
        Provenance: the UIDs and resource ids the analysis read.
    created : datetime, optional
        When the result was made (timezone-aware; now, UTC, by default).

    Raises
    ------
    kit.errors.InvalidInputError
        A field is missing or inconsistent; the message names it.
    """

    subject: Subject
    algorithm: Algorithm
    measurements: tuple[Measurement, ...] = ()
    labels: tuple[Label, ...] = ()
    regions: tuple[Region, ...] = ()
    boxes: tuple[BoundingBox, ...] = ()
    conclusion: str | None = None
    result_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    inputs: tuple[str, ...] = ()
    created: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def __post_init__(self) -> None:
        if not isinstance(self.subject, Subject) or not isinstance(self.algorithm, Algorithm):
            raise _bad("AnalysisResult", "subject is a Subject and algorithm an Algorithm")
        for name, cls in (("measurements", Measurement), ("labels", Label), ("regions", Region),
                          ("boxes", BoundingBox)):
            items = tuple(getattr(self, name))
            if any(not isinstance(i, cls) for i in items):
                raise _bad(f"AnalysisResult.{name}", f"items are {cls.__name__} objects")
            object.__setattr__(self, name, items)
        object.__setattr__(self, "inputs", tuple(self.inputs))
        _text("AnalysisResult.conclusion", self.conclusion, max_len=10_000, optional=True)
        if not isinstance(self.result_id, str) or not _ID.match(self.result_id):
            raise _bad("AnalysisResult.result_id", f"[A-Za-z0-9-.]{{1,64}}, not {self.result_id!r}")
        if not (self.measurements or self.labels or self.regions or self.boxes or self.conclusion):
            raise _bad("AnalysisResult", "has no finding and no conclusion")
        if not isinstance(self.created, dt.datetime) or self.created.tzinfo is None:
            raise _bad("AnalysisResult.created", "a timezone-aware datetime")
        names = [r.label for r in self.regions] + [b.label for b in self.boxes]
        if len(set(r.label for r in self.regions)) != len(self.regions):
            raise _bad("AnalysisResult.regions", "region labels must be unique")
        referenced = [m.region for m in self.measurements] + [lb.region for lb in self.labels]
        for region in referenced:
            if region is not None and region not in names:
                raise _bad("AnalysisResult", f"a finding refers to region {region!r}, which is not "
                                             f"among {sorted(set(names))}")
        known = set(self.subject.sop_instance_uids)
        if known:
            used = {u for r in self.regions for u in r.source_instances} | \
                {b.source_instance for b in self.boxes}
            if used - known:
                raise _bad("AnalysisResult", f"regions lie on instances outside the subject: "
                                             f"{sorted(used - known)[:3]}")

    # -- derived identifiers: the same result always gives the same ones -----------------------
    def uid(self, kind: str) -> str:
        """A DICOM UID derived from ``result_id`` and ``kind`` (``"sr"``, ``"seg-series"``, ...)."""
        return str(generate_uid(entropy_srcs=[self.result_id, kind]))  # pydicom's root, hashed sources

    @property
    def identifier_system(self) -> str:
        """The FHIR ``Identifier.system`` under which ``result_id`` is unique."""
        return "urn:kit:analysis-result"

    # -- frames --------------------------------------------------------------------------------
    def measurements_frame(self) -> pl.DataFrame:
        """One row per measurement, with the join keys (``patient_id``, ``study_instance_uid``, ...)."""
        rows = [{**self._keys(), "name_code": m.name.value, "name_scheme": m.name.scheme,
                 "name": m.name.meaning, "value": m.value, "unit": m.unit.value,
                 "finding": m.finding.meaning if m.finding else None,
                 "finding_site": m.finding_site.meaning if m.finding_site else None, "region": m.region}
                for m in self.measurements]
        return pl.DataFrame(rows, schema={**_KEYS, "name_code": pl.String, "name_scheme": pl.String,
                                          "name": pl.String, "value": pl.Float64, "unit": pl.String,
                                          "finding": pl.String, "finding_site": pl.String,
                                          "region": pl.String})

    def labels_frame(self) -> pl.DataFrame:
        """One row per qualitative label, with the join keys."""
        rows = [{**self._keys(), "name": lb.name.meaning, "value_code": lb.value.value,
                 "value_scheme": lb.value.scheme, "value": lb.value.meaning, "score": lb.score,
                 "region": lb.region} for lb in self.labels]
        return pl.DataFrame(rows, schema={**_KEYS, "name": pl.String, "value_code": pl.String,
                                          "value_scheme": pl.String, "value": pl.String,
                                          "score": pl.Float64, "region": pl.String})

    def _keys(self) -> dict[str, Any]:
        s = self.subject
        return {"result_id": self.result_id, "patient_id": s.patient_id,
                "accession_number": s.accession_number, "study_instance_uid": s.study_instance_uid,
                "algorithm": self.algorithm.name, "algorithm_version": self.algorithm.version}


_KEYS: dict[str, Any] = {"result_id": pl.String, "patient_id": pl.String, "accession_number": pl.String,
                         "study_instance_uid": pl.String, "algorithm": pl.String,
                         "algorithm_version": pl.String}
