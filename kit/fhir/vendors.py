"""Vendor profiles: what to expect from the FHIR R4 servers of the big EHRs (pure data).

A :class:`VendorProfile` collects the defaults and quirks :class:`kit.fhir.client.FhirClient`
and :mod:`kit.fhir.auth` apply when ``vendor=`` names a vendor: the usual
authentication style for backend (system) access, the default scopes, extra
HTTP headers, the largest ``_count`` to ask for, and notes on paging, search and
Bulk Data. The facts are taken from each vendor's public developer
documentation and sandbox CapabilityStatement; a hospital's own installation
may differ, so read its ``/metadata`` and ``/.well-known/smart-configuration``
(``kit fhir metadata``) before relying on them. Hand-written: no library keeps
this table.

| vendor | backend auth | default scope | extra headers | max `_count` | Bulk Data | paging / search quirks |
|---|---|---|---|---|---|---|
| generic | as configured (`none` on the embedded server) | `system/*.read` | – | 1000 | system, group, patient | standard `next` links |
| epic | SMART Backend Services, RS384 JWT, JWKS hosted by you | `system/*.read` (SMART v1) | `Epic-Client-ID: <client_id>` | 1000 | Group only | many searches need `patient=`; `next` links are opaque session URLs |
| cerner (Oracle Health) | system account, `client_credentials` with client_secret_basic | `system/*.read` | – | 100 | Group (system account) | opaque `next` links expire; most clinical searches need `patient=` |
| athena | `client_credentials` (2-legged OAuth) | `system/*.read` | – | 100 | Group | every search needs `ah-practice=Organization/a-1.Practice-<id>` |
| allscripts (Veradigm) | SMART Backend Services, RS384 | `system/*.read` | – | 100 | Group | per-tenant base URL; `patient=` required on clinical searches |
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType

from kit.errors import ConfigError

__all__ = [
    "VENDORS",
    "AuthStyle",
    "BulkLevel",
    "VendorProfile",
    "vendor_profile",
]


class AuthStyle(enum.StrEnum):
    """How a backend (system-to-system) client usually authenticates."""

    NONE = "none"
    BEARER = "bearer"
    BASIC = "basic"
    CLIENT_CREDENTIALS = "client_credentials"
    SMART = "smart"


class BulkLevel(enum.StrEnum):
    """Levels of the Bulk Data ``$export`` operation."""

    SYSTEM = "system"
    GROUP = "group"
    PATIENT = "patient"


@dataclasses.dataclass(frozen=True)
class VendorProfile:
    """Defaults and quirks of one EHR vendor's FHIR R4 API.

    Attributes
    ----------
    name : str
        Short key (``"epic"``), as in ``kit.toml``'s ``fhir.vendor``.
    display_name : str
        Human name of the product.
    auth_style : AuthStyle
        Usual authentication for backend access.
    jwt_algorithms : tuple of str
        Client-assertion algorithms accepted for SMART Backend Services.
    default_scopes : tuple of str
        Scopes requested when the settings name none.
    extra_headers : Mapping[str, str]
        Headers added to every request; ``{client_id}`` is replaced by the
        configured client id.
    max_count : int
        Largest ``_count`` the server honours; the client caps page sizes to it.
    requires_patient_param : tuple of str
        Resource types whose searches are refused without ``patient=``.
    required_search_params : tuple of str
        Parameters every search must carry (tenant selectors).
    opaque_next_links : bool
        ``next`` links are session cursors that expire: page through promptly
        and never rebuild them.
    bulk_levels : tuple of BulkLevel
        Which ``$export`` levels are offered.
    file_hosts : tuple of str
        Origins besides the FHIR base (``"https://files.vendor.example"``, or
        ``"https://*.vendor.example"`` for any subdomain) that serve the vendor's
        Bulk Data files and status URLs and may receive the access token. Every
        other origin gets no credentials.
    notes : str
        Anything else worth knowing.
    """

    name: str
    display_name: str
    auth_style: AuthStyle
    jwt_algorithms: tuple[str, ...] = ("RS384", "ES384")
    default_scopes: tuple[str, ...] = ("system/*.read",)
    extra_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    max_count: int = 1000
    requires_patient_param: tuple[str, ...] = ()
    required_search_params: tuple[str, ...] = ()
    opaque_next_links: bool = False
    bulk_levels: tuple[BulkLevel, ...] = (BulkLevel.SYSTEM, BulkLevel.GROUP, BulkLevel.PATIENT)
    file_hosts: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise ConfigError("fhir.vendor", f"vendor key must be lower case, got {self.name!r}")
        if self.max_count < 1:
            raise ConfigError("fhir.vendor", f"{self.name}: max_count must be positive")
        for alg in self.jwt_algorithms:
            if alg not in ("RS384", "ES384", "RS256", "ES256"):
                raise ConfigError("fhir.vendor", f"{self.name}: unsupported JWT algorithm {alg}")
        object.__setattr__(self, "auth_style", AuthStyle(self.auth_style))
        object.__setattr__(self, "bulk_levels", tuple(BulkLevel(b) for b in self.bulk_levels))
        object.__setattr__(self, "extra_headers", MappingProxyType(dict(self.extra_headers)))
        for host in self.file_hosts:
            if not host.startswith("https://"):
                raise ConfigError("fhir.vendor", f"{self.name}: file host {host!r} must be an https origin")

    def headers(self, client_id: str | None) -> dict[str, str]:
        """The extra headers with ``{client_id}`` filled in (headers needing it are dropped without one)."""
        out: dict[str, str] = {}
        for key, value in self.extra_headers.items():
            if "{client_id}" in value:
                if not client_id:
                    continue
                value = value.replace("{client_id}", client_id)
            out[key] = value
        return out

    @property
    def default_scope(self) -> str:
        """The default scopes as one space-separated OAuth ``scope`` string."""
        return " ".join(self.default_scopes)


_CLINICAL = ("Observation", "Condition", "MedicationRequest", "Procedure", "DiagnosticReport",
             "AllergyIntolerance", "Immunization", "Encounter", "DocumentReference")

_PROFILES = (
    VendorProfile(
        name="generic",
        display_name="Any FHIR R4 server (HAPI, Firely, Azure, Google, the embedded server)",
        auth_style=AuthStyle.NONE,
        notes="Standard behaviour; the settings decide the authentication.",
    ),
    VendorProfile(
        name="epic",
        display_name="Epic (open.epic)",
        auth_style=AuthStyle.SMART,
        jwt_algorithms=("RS384", "ES384"),
        extra_headers={"Epic-Client-ID": "{client_id}"},
        max_count=1000,
        requires_patient_param=_CLINICAL,
        opaque_next_links=True,
        bulk_levels=(BulkLevel.GROUP,),
        notes="Backend apps register a JWKS URL; the token endpoint is usually "
              "<host>/oauth2/token. Bulk export only for Groups (registries) configured by the site.",
    ),
    VendorProfile(
        name="cerner",
        display_name="Oracle Health (Cerner) Millennium",
        auth_style=AuthStyle.CLIENT_CREDENTIALS,
        max_count=100,
        requires_patient_param=_CLINICAL,
        opaque_next_links=True,
        bulk_levels=(BulkLevel.GROUP,),
        notes="System accounts get tokens with client_credentials and HTTP Basic client "
              "authentication at the tenant's token endpoint (see smart-configuration).",
    ),
    VendorProfile(
        name="athena",
        display_name="athenahealth (athenaOne FHIR R4)",
        auth_style=AuthStyle.CLIENT_CREDENTIALS,
        max_count=100,
        required_search_params=("ah-practice",),
        opaque_next_links=True,
        bulk_levels=(BulkLevel.GROUP,),
        notes="Searches must name the practice: ah-practice=Organization/a-1.Practice-<id>.",
    ),
    VendorProfile(
        name="allscripts",
        display_name="Veradigm (Allscripts) Unity FHIR",
        auth_style=AuthStyle.SMART,
        jwt_algorithms=("RS384",),
        max_count=100,
        requires_patient_param=_CLINICAL,
        bulk_levels=(BulkLevel.GROUP,),
        notes="Each tenant has its own base URL; discover the token endpoint from smart-configuration.",
    ),
)

#: vendor key -> profile
VENDORS: Mapping[str, VendorProfile] = MappingProxyType({p.name: p for p in _PROFILES})


def vendor_profile(name: str) -> VendorProfile:
    """The profile named ``name`` (case-insensitive; ``"oracle"`` is an alias of ``"cerner"``).

    Raises
    ------
    ConfigError
        The vendor is unknown.
    """
    key = name.strip().lower()
    key = {"oracle": "cerner", "oracle_health": "cerner", "veradigm": "allscripts"}.get(key, key)
    try:
        return VENDORS[key]
    except KeyError:
        raise ConfigError("fhir.vendor", f"unknown vendor {name!r}; known: {', '.join(VENDORS)}") from None
