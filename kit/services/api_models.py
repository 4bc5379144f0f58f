"""The integration REST API's request bodies, problem answers and result builders (pure).

Every request body is a pydantic model with bounds on every string, list and
number, so the published OpenAPI document says what is accepted and a body
outside it is a 422 before any peer is asked. Text fields refuse control
characters and lone surrogates (they would break DICOM, HL7 and UTF-8 later).
:func:`build_result` turns a result body into a
:class:`kit.results.AnalysisResult`; :func:`records` turns a polars frame into
JSON rows; :func:`problem` is the ``application/problem+json`` body (RFC 9457)
of every error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import polars as pl
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from kit.errors import InvalidInputError, KitError
from kit.results.model import Algorithm, AnalysisResult, BoundingBox, Code, Label, Measurement, Subject

__all__ = [
    "ENDOSCOPY_TARGETS",
    "ID_PATTERN",
    "MAX_ROWS",
    "UID_PATTERN",
    "AlgorithmIn",
    "ApiProblem",
    "BoxIn",
    "CodeIn",
    "DiagnosticReportIn",
    "EndoscopyAnalysisIn",
    "FindingIn",
    "LabelIn",
    "MeasurementIn",
    "ObservationIn",
    "ObservationItemIn",
    "ResultIn",
    "build_endoscopy_result",
    "build_result",
    "clean_text",
    "json_differences",
    "problem",
    "records",
]

#: Ids in paths (MRNs, FHIR ids, integration and job ids): letters, digits, ``.``, ``_``, ``-``.
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A DICOM UID.
UID_PATTERN: Final = r"^(0|[1-9][0-9]{0,38})(\.(0|[1-9][0-9]{0,38})){1,31}$"
#: Rows one frame may put in an answer (more is cut, with ``truncated: true``).
MAX_ROWS: Final = 5000

_SCHEME = r"^(SCT|LN|DCM|UCUM|RADLEX|UMLS|NCIt|99[A-Z0-9_]{1,14})$"


class ApiProblem(KitError):
    """An answer the API gives as a problem (status, title, detail); raised inside the routes.

    Parameters
    ----------
    status : int
        The HTTP status (4xx or 5xx).
    detail : str
        What happened, for people.
    extra : dict, optional
        More members of the problem body (e.g. ``deliveries``).
    """

    def __init__(self, status: int, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        self.status = int(status)
        self.detail = detail
        self.extra = dict(extra or {})
        super().__init__(f"{status}: {detail}")


def clean_text(value: str) -> str:
    """``value`` if it has no control characters (tab, CR, LF allowed) and no lone surrogates."""
    for c in value:
        o = ord(c)
        if (o < 32 and c not in "\t\n\r") or o == 127:
            raise ValueError("contains control characters")
        if 0xD800 <= o <= 0xDFFF:
            raise ValueError("contains a lone surrogate")
    return value


_CLEAN = AfterValidator(clean_text)
Text16 = Annotated[str, StringConstraints(min_length=1, max_length=16), _CLEAN]
Text64 = Annotated[str, StringConstraints(min_length=1, max_length=64), _CLEAN]
Text128 = Annotated[str, StringConstraints(min_length=1, max_length=128), _CLEAN]
Text256 = Annotated[str, StringConstraints(min_length=1, max_length=256), _CLEAN]
Text1024 = Annotated[str, StringConstraints(min_length=1, max_length=1024), _CLEAN]
Text8192 = Annotated[str, StringConstraints(min_length=1, max_length=8192), _CLEAN]
Text10000 = Annotated[str, StringConstraints(min_length=1, max_length=10_000), _CLEAN]
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Uid = Annotated[str, StringConstraints(pattern=UID_PATTERN, max_length=64)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]
Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e6)]
Score = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)]
#: The delivery targets (``kit.results.deliver.TARGETS``; a test checks they agree).
Target = Literal["sr", "seg", "observation", "diagnostic_report", "oru"]
#: Where an endoscopy analysis goes by default.
ENDOSCOPY_TARGETS: Final[tuple[Target, ...]] = ("observation", "diagnostic_report", "oru")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class CodeIn(_In):
    """A coded concept: value, coding scheme designator and meaning."""

    value: Text64
    scheme: Annotated[str, StringConstraints(pattern=_SCHEME)]
    meaning: Text64

    def code(self) -> Code:
        """As a :class:`kit.results.Code`."""
        return Code(self.value, self.scheme, self.meaning)


class AlgorithmIn(_In):
    """The algorithm that made the result."""

    name: Text64 = "kit-api"
    version: Text64 = "1"
    parameters: dict[Text64, str | int | float | bool] = Field(default_factory=dict, max_length=50)


class MeasurementIn(_In):
    """A numeric finding in UCUM units."""

    name: CodeIn
    value: Finite
    unit: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,32}$")]
    finding: CodeIn | None = None
    finding_site: CodeIn | None = None
    region: Text64 | None = None


class LabelIn(_In):
    """A qualitative finding with an optional score in [0, 1]."""

    name: CodeIn
    value: CodeIn
    score: Score | None = None
    region: Text64 | None = None


class BoxIn(_In):
    """A detection box on one image or video frame (pixel corners)."""

    label: Text64
    kind: CodeIn
    source_instance: Uid
    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate
    frame_number: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    time: Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e7)] | None = None
    score: Score | None = None


class ResultIn(_In):
    """An analysis result about one study of the patient named in the path."""

    study_instance_uid: Uid
    series_instance_uid: Uid | None = None
    accession_number: Text16 | None = None
    result_id: Id | None = None
    algorithm: AlgorithmIn = Field(default_factory=AlgorithmIn)
    measurements: list[MeasurementIn] = Field(default_factory=list, max_length=200)
    labels: list[LabelIn] = Field(default_factory=list, max_length=200)
    boxes: list[BoxIn] = Field(default_factory=list, max_length=200)
    conclusion: Text10000 | None = None
    targets: list[Target] | None = Field(default=None, min_length=1, max_length=5)


class FindingIn(_In):
    """One endoscopy finding (e.g. a polyp), optionally with its box on a video frame."""

    finding: CodeIn
    score: Score | None = None
    source_instance: Uid | None = None
    box: list[Coordinate] | None = Field(default=None, min_length=4, max_length=4)
    frame_number: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    time: Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e7)] | None = None


class EndoscopyAnalysisIn(_In):
    """An endoscopy analysis (findings on the procedure's video) for one patient's study."""

    patient_id: Id
    study_instance_uid: Uid
    accession_number: Text16 | None = None
    result_id: Id | None = None
    algorithm: AlgorithmIn = Field(default_factory=AlgorithmIn)
    findings: list[FindingIn] = Field(default_factory=list, max_length=200)
    measurements: list[MeasurementIn] = Field(default_factory=list, max_length=200)
    conclusion: Text10000 | None = None
    targets: list[Target] = Field(default_factory=lambda: list(ENDOSCOPY_TARGETS), min_length=1, max_length=5)


Status = Literal["registered", "preliminary", "final", "amended"]


class ObservationItemIn(_In):
    """One Observation: a code and exactly one of a number (with a UCUM unit), a text or a code."""

    code: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,64}$")]
    system: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9+.-]*:[!-~]{1,250}$")] = (
        "http://loinc.org"
    )
    display: Text256 | None = None
    value_quantity: Finite | None = None
    unit: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,32}$")] | None = None
    value_string: Text1024 | None = None
    value_code: CodeIn | None = None
    effective: dt.datetime | None = None
    study_instance_uid: Uid | None = None
    status: Status = "final"

    def value(self) -> float | str | Code:
        """The one value given (InvalidInputError for none or several)."""
        given = [
            v
            for v in (
                self.value_quantity,
                self.value_string,
                self.value_code.code() if self.value_code else None,
            )
            if v is not None
        ]
        if len(given) != 1:
            raise InvalidInputError("give exactly one of value_quantity, value_string, value_code")
        if self.unit is not None and self.value_quantity is None:
            raise InvalidInputError("unit goes with value_quantity")
        return given[0]


class ObservationIn(ObservationItemIn):
    """An Observation for a patient: ``patient_id`` (the MRN) or ``fhir_patient`` (the Patient's id)."""

    patient_id: Id | None = None
    fhir_patient: Id | None = None


class DiagnosticReportIn(_In):
    """A DiagnosticReport over new Observations and/or existing ones (by id)."""

    patient_id: Id | None = None
    fhir_patient: Id | None = None
    observations: list[ObservationItemIn] = Field(default_factory=list, max_length=50)
    observation_ids: list[Id] = Field(default_factory=list, max_length=50)
    conclusion: Text10000 | None = None
    code: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,64}$")] = "18748-4"
    system: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9+.-]*:[!-~]{1,250}$")] = (
        "http://loinc.org"
    )
    display: Text256 | None = None
    effective: dt.datetime | None = None
    study_instance_uid: Uid | None = None
    status: Literal["registered", "partial", "preliminary", "final", "amended"] = "final"


def problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """An ``application/problem+json`` body (RFC 9457)."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}


def records(frame: pl.DataFrame, limit: int = MAX_ROWS) -> tuple[list[dict[str, Any]], bool]:
    """The frame's first ``limit`` rows as JSON-ready dicts, and whether rows were cut."""
    rows = frame.head(limit).to_dicts()
    return [{k: _jsonable(v) for k, v in row.items()} for row in rows], frame.height > limit


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return None
    return value


def _finding_code() -> Code:
    return Code("121071", "DCM", "Finding")


def build_result(
    patient_id: str,
    body: ResultIn,
    *,
    accession_number: str | None = None,
    sop_instance_uids: Sequence[str] = (),
) -> AnalysisResult:
    """The :class:`AnalysisResult` a result body describes (InvalidInputError when it is inconsistent)."""
    subject = Subject(
        patient_id=patient_id,
        study_instance_uid=body.study_instance_uid,
        accession_number=body.accession_number or accession_number,
        series_instance_uid=body.series_instance_uid,
        sop_instance_uids=tuple(sop_instance_uids),
    )
    algorithm = Algorithm(body.algorithm.name, body.algorithm.version, dict(body.algorithm.parameters))
    measurements = tuple(
        Measurement(
            m.name.code(),
            m.value,
            Code(m.unit, "UCUM", m.unit[:64]),
            m.finding.code() if m.finding else None,
            m.finding_site.code() if m.finding_site else None,
            m.region,
        )
        for m in body.measurements
    )
    labels = tuple(Label(lb.name.code(), lb.value.code(), lb.score, lb.region) for lb in body.labels)
    boxes = tuple(
        BoundingBox(
            b.label, b.kind.code(), b.source_instance, b.x0, b.y0, b.x1, b.y1, b.frame_number, b.time, b.score
        )
        for b in body.boxes
    )
    result = AnalysisResult(subject, algorithm, measurements, labels, boxes=boxes, conclusion=body.conclusion)
    return dataclasses.replace(result, result_id=body.result_id) if body.result_id else result


def build_endoscopy_result(
    body: EndoscopyAnalysisIn, *, accession_number: str | None = None
) -> AnalysisResult:
    """The :class:`AnalysisResult` of an endoscopy analysis: each finding a label, with its box if given."""
    labels: list[LabelIn] = []
    boxes: list[BoxIn] = []
    for n, f in enumerate(body.findings, 1):
        region = None
        if f.box is not None:
            if f.source_instance is None:
                raise InvalidInputError(
                    f"findings[{n - 1}]: a box needs its source_instance (the video's SOP Instance UID)"
                )
            region = f"finding-{n}"
            x0, y0, x1, y1 = f.box
            boxes.append(
                BoxIn(
                    label=region,
                    kind=f.finding,
                    source_instance=f.source_instance,
                    x0=x0,
                    y0=y0,
                    x1=x1,
                    y1=y1,
                    frame_number=f.frame_number,
                    time=f.time,
                    score=f.score,
                )
            )
        name = CodeIn(value="121071", scheme="DCM", meaning="Finding")
        labels.append(LabelIn(name=name, value=f.finding, score=f.score, region=region))
    result = ResultIn(
        study_instance_uid=body.study_instance_uid,
        accession_number=body.accession_number,
        result_id=body.result_id,
        algorithm=body.algorithm,
        measurements=body.measurements,
        labels=labels,
        boxes=boxes,
        conclusion=body.conclusion,
        targets=body.targets,
    )
    return build_result(body.patient_id, result, accession_number=accession_number)


_IGNORED: Final = frozenset({"id", "meta", "text"})


def json_differences(sent: Any, read: Any, path: str = "") -> list[str]:
    """Where a read-back FHIR resource differs from what was sent (``id``, ``meta``, ``text`` ignored)."""
    if isinstance(sent, dict) and isinstance(read, dict):
        keys = sorted((set(sent) | set(read)) - (_IGNORED if not path else set()))
        return [
            d for k in keys for d in json_differences(sent.get(k), read.get(k), f"{path}.{k}" if path else k)
        ]
    if isinstance(sent, list) and isinstance(read, list) and len(sent) == len(read):
        return [
            d
            for i, (a, b) in enumerate(zip(sent, read, strict=True))
            for d in json_differences(a, b, f"{path}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(sent, numbers)
        and isinstance(read, numbers)
        and not isinstance(sent, bool)
        and not isinstance(read, bool)
        and float(sent) == float(read)
    ):
        return []
    return [] if sent == read else [f"{path}: sent {sent!r}, read {read!r}"[:200]]
