"""The integration REST API's hub and scheduling bodies, checked against the kit's own rules (pure).

* Integrations: one connector of :data:`kit.hub.registry.REGISTRY`, an auth
  type it accepts, its settings (checked with :mod:`kit._checks`, the rules
  ``kit.toml`` follows) and its credentials (only the fields its auth type
  uses). :func:`integration_settings` makes the :class:`kit.config.Settings`
  a Hub or client uses for it.
* Sync jobs: :func:`build_mapping` turns a job body into a
  :class:`kit.hub.syncmap.ResourceMapping` (named transforms only).
* SIU entry: :class:`SiuIn` is the JSON a booking system sends
  (:func:`kit.hl7.scheduling.siu_from_json`'s keys).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import Field, StringConstraints

import kit._checks as _checks
from kit.config import DicomWebSettings, FhirSettings, HL7Settings, PacsSettings, Secret, Settings
from kit.errors import InvalidInputError
from kit.hub.registry import get_connector
from kit.hub.sync import Strategy
from kit.hub.syncmap import Direction, FieldMapping, ResourceMapping
from kit.services.api_models import ID_PATTERN, Text64, Text128, Text256, Text1024, Text8192, _In

__all__ = [
    "CONFIG_FIELDS",
    "CREDENTIAL_FIELDS",
    "ConnectorName",
    "FieldIn",
    "IntegrationIn",
    "IntegrationPatch",
    "SiuIn",
    "SyncJobIn",
    "SyncRunIn",
    "build_mapping",
    "check_integration",
    "integration_settings",
]

#: The registry's connectors (a test checks this matches kit.hub.registry.REGISTRY).
ConnectorName = Literal["pacs-dimse", "pacs-dicomweb", "ehr-fhir", "hl7-mllp", "endoscopy"]
AuthName = Literal["none", "tls", "mutual_tls", "bearer", "basic", "client_credentials", "smart"]


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not true or false")


def _text(limit: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            raise ValueError(f"a non-empty text of at most {limit} characters, not {value!r}"[:200])
        return value

    return check


def _vendor(value: object) -> str:
    from kit.fhir.vendors import VENDORS

    if value not in VENDORS:
        raise ValueError(f"unknown vendor {value!r}; known: {', '.join(sorted(VENDORS))}")
    return str(value)


_DIMSE: Final[dict[str, Callable[[object], Any]]] = {
    "host": _checks.host_name,
    "port": _checks.port,
    "called_aet": _checks.ae_title,
    "aet": _checks.ae_title,
    "timeout": _checks.positive_seconds,
}

#: Settings each connector takes through the API, with their checks.
CONFIG_FIELDS: Final[Mapping[str, Mapping[str, Callable[[object], Any]]]] = {
    "pacs-dimse": _DIMSE,
    "endoscopy": _DIMSE,
    "pacs-dicomweb": {"base": _checks.http_url, "timeout": _checks.positive_seconds, "username": _text(256)},
    "ehr-fhir": {
        "base": _checks.http_url,
        "vendor": _vendor,
        "client_id": _text(256),
        "token_url": _checks.http_url,
        "scope": _text(1024),
        "timeout": _checks.positive_seconds,
        "username": _text(256),
    },
    "hl7-mllp": {"host": _checks.host_name, "port": _checks.port, "timeout": _checks.positive_seconds},
}
_REQUIRED: Final = {
    "pacs-dimse": ("host", "port"),
    "endoscopy": ("host", "port"),
    "pacs-dicomweb": ("base",),
    "ehr-fhir": ("base",),
    "hl7-mllp": ("host", "port"),
}
#: Credential fields each auth type needs (all required).
CREDENTIAL_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "none": (),
    "tls": (),
    "bearer": ("token",),
    "basic": ("password",),
    "client_credentials": ("client_secret",),
    "smart": ("private_key",),
}
#: Settings each auth type needs besides its credentials.
_AUTH_CONFIG: Final = {"basic": ("username",), "client_credentials": ("client_id",), "smart": ("client_id",)}


def check_integration(
    connector: str, auth_type: str, config: Mapping[str, Any], credentials: Mapping[str, str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The checked settings and credentials of an integration.

    Raises
    ------
    kit.errors.InvalidInputError
        An unknown connector, an auth type it does not accept (``mutual_tls``
        needs certificate files: set it in kit.toml), an unknown or bad
        setting, a missing one, or credentials its auth type does not use.
    """
    spec = get_connector(connector)
    if auth_type not in {a.value for a in spec.auth_types} or auth_type == "mutual_tls":
        allowed = [a.value for a in spec.auth_types if a.value != "mutual_tls"]
        raise InvalidInputError(
            f"connector {connector} takes auth_type {allowed} through the API, not {auth_type!r}",
            source="auth_type",
        )
    fields = CONFIG_FIELDS[connector]
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if key not in fields:
            raise InvalidInputError(
                f"unknown setting {key!r} for {connector}; known: {', '.join(fields)}", source="config"
            )
        try:
            clean[key] = fields[key](value)
        except ValueError as exc:
            raise InvalidInputError(f"{key}: {exc}", source="config") from None
    for key in (*_REQUIRED[connector], *_AUTH_CONFIG.get(auth_type, ())):
        if key not in clean:
            raise InvalidInputError(f"{connector} needs {key!r} (auth_type {auth_type!r})", source="config")
    # (messages name the auth type quoted, after the rest: "basic <word>" reads as a credential to
    # kit._redact, which would mask the word)
    needed = CREDENTIAL_FIELDS.get(auth_type, ())
    given = dict(credentials or {})
    extra = sorted(set(given) - set(needed))
    if extra:
        raise InvalidInputError(
            f"credential(s) {extra} are not used (auth_type {auth_type!r} takes {list(needed)})",
            source="credentials",
        )
    missing = [k for k in needed if not given.get(k)]
    if missing:
        raise InvalidInputError(
            f"credential(s) {missing} are needed (auth_type {auth_type!r})", source="credentials"
        )
    return clean, given


def integration_settings(
    base: Settings,
    connector: str,
    auth_type: str,
    config: Mapping[str, Any],
    credentials: Mapping[str, Secret],
) -> Settings:
    """``base`` with the section of this connector replaced by the integration's settings."""
    c = dict(config)
    if connector in ("pacs-dimse", "endoscopy"):
        pacs = dataclasses.replace(PacsSettings(), tls=auth_type == "tls", **c)
        return dataclasses.replace(base, pacs=pacs)
    if connector == "hl7-mllp":
        return dataclasses.replace(base, hl7=dataclasses.replace(HL7Settings(), tls=auth_type == "tls", **c))
    if connector == "pacs-dicomweb":
        web = DicomWebSettings(password=credentials.get("password"), token=credentials.get("token"), **c)
        return dataclasses.replace(base, dicomweb=web)
    fhir = FhirSettings(
        auth=auth_type,  # type: ignore[arg-type]
        password=credentials.get("password"),
        token=credentials.get("token"),
        client_secret=credentials.get("client_secret"),
        private_key=credentials.get("private_key"),
        **c,
    )
    return dataclasses.replace(base, fhir=fhir)


Scalar = str | int | float | bool | None
Key = Text64


class IntegrationIn(_In):
    """A connection to one hospital system."""

    name: Text128
    connector: ConnectorName
    auth_type: AuthName = "none"
    description: Text1024 | None = None
    config: dict[Key, str | int | float | bool] = Field(
        default_factory=dict,
        max_length=30,
    )
    credentials: dict[Key, Text8192] | None = Field(default=None, max_length=10)


class IntegrationPatch(_In):
    """Changes to an integration (what is left out stays; ``credentials`` replaces all of them)."""

    name: Text128 | None = None
    auth_type: AuthName | None = None
    description: Text1024 | None = None
    config: dict[Key, str | int | float | bool] | None = Field(
        default=None,
        max_length=30,
    )
    credentials: dict[Key, Text8192] | None = Field(default=None, max_length=10)


Transform = Text64 | list[Scalar | dict[Key, Scalar]]


class FieldIn(_In):
    """One field of a sync mapping (see :class:`kit.hub.syncmap.FieldMapping`)."""

    remote: Text256
    local: Text64
    required: bool = False
    direction: Literal["both", "to_remote", "to_local"] = "both"
    transform: Transform | None = None
    reverse_transform: Transform | None = None
    delete_on_null: bool = False


_Strategy = Literal["source_wins", "dest_wins", "newest_wins", "merge", "manual"]


class SyncJobIn(_In):
    """A sync job: local rows -> FHIR resources of one type (see :class:`kit.hub.syncjob.SyncJob`)."""

    name: Text128
    resource_type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z]{1,63}$")]
    key_column: Text64
    key_system: Text256
    fields: list[FieldIn] = Field(min_length=1, max_length=50)
    strategy: _Strategy = "source_wins"
    merge_rule: _Strategy = "source_wins"
    updated_at: Text64 | None = None


class SyncRunIn(_In):
    """The local rows to push (each a flat object; the key column in every row)."""

    rows: list[dict[Key, Scalar]] = Field(min_length=1, max_length=1000)


def _transform(spec: Any) -> Any:
    if spec is None or isinstance(spec, str):
        return spec
    if not spec or not isinstance(spec[0], str):
        raise InvalidInputError(f"a transform is a name or [name, argument...], not {spec!r}"[:200])
    return tuple(spec)


def build_mapping(job: SyncJobIn) -> tuple[ResourceMapping, Strategy, Strategy]:
    """The mapping and strategies of a job body.

    Raises
    ------
    kit.errors.InvalidInputError
        Not a FHIR resource type, an unknown transform, a bad path, two
        fields on one column or path.
    """
    fields = [
        FieldMapping(
            f.remote,
            f.local,
            f.required,
            Direction(f.direction),
            _transform(f.transform),
            _transform(f.reverse_transform),
            f.delete_on_null,
        )
        for f in job.fields
    ]
    mapping = ResourceMapping(job.resource_type, (job.key_column, job.key_system), fields, job.updated_at)
    return mapping, Strategy(job.strategy), Strategy(job.merge_rule)


_HL7 = r"^[^|^~\\&\x00-\x1f\x7f]{1,64}$"
HL7Text = Annotated[str, StringConstraints(pattern=_HL7)]


class SiuIn(_In):
    """An appointment from a booking system, sent on as an SIU message (keys of ``siu_from_json``)."""

    trigger: Literal["S12", "S13", "S14", "S15", "S26"] = "S12"
    placer_appointment_id: HL7Text | None = None
    filler_appointment_id: HL7Text | None = None
    patient_id: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = None
    family: HL7Text | None = None
    given: HL7Text | None = None
    birth_date: dt.date | None = None
    sex: Literal["M", "F", "O", "U", "A", "N"] | None = None
    start: dt.datetime
    end: dt.datetime | None = None
    duration_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] | None = None
    status: HL7Text | None = None
    reason: HL7Text | None = None
    appointment_type: HL7Text | None = None
    accession_number: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,16}$")] | None = None
    service_code: HL7Text | None = None
    service_text: HL7Text | None = None
    resource_id: HL7Text | None = None
    modality: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,16}$")] | None = None
    location: HL7Text | None = None
    personnel_id: HL7Text | None = None
    control_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,20}$")] | None = None
    sending_application: HL7Text | None = None
    sending_facility: HL7Text | None = None
    receiving_application: HL7Text | None = None
    receiving_facility: HL7Text | None = None
    timestamp: dt.datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """The keys ``siu_from_json`` takes (ISO text for dates; InvalidInputError for a bad slot)."""
        if not self.placer_appointment_id and not self.filler_appointment_id:
            raise InvalidInputError("placer_appointment_id or filler_appointment_id is required")
        years = {d.year for d in (self.start, self.end, self.timestamp) if d is not None}
        if any(not 1900 <= y <= 2200 for y in years):
            raise InvalidInputError("dates are between 1900 and 2200")
        if self.end is not None and _naive(self.end) < _naive(self.start):
            raise InvalidInputError("end is before start")
        data = self.model_dump(exclude_none=True)
        return {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for k, v in data.items()}


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


#: ``id`` pattern re-exported for routers
ID: Final = ID_PATTERN
