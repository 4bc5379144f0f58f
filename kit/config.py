"""Settings: one typed object read from ``kit.toml`` with ``KIT_*`` overrides.

Where the file comes from, first match wins:

1. the ``path`` argument (the CLI's ``--config``, a notebook's ``SETTINGS_FILE``),
2. the ``KIT_CONFIG`` environment variable,
3. ``./kit.toml``,
4. no file: the embedded defaults, which point every client at the embedded
   stack on 127.0.0.1 (``Settings.configured`` is False; ``kit demo`` and
   :func:`kit.notebook.connect` then start the embedded stack).

Any setting can be overridden from the environment as ``KIT_<SECTION>_<KEY>``,
e.g. ``KIT_PACS_PORT=4242`` or ``KIT_FHIR_BASE=https://ehr.example.org/R4``.

Secrets (passwords, tokens, client secrets) are never read from ``kit.toml``
itself: they come from the environment (``KIT_FHIR_CLIENT_SECRET``) or from a
file named by a ``*_file`` key (``client_secret_file = "/run/secrets/fhir"``).
They are held as :class:`Secret`, whose ``repr`` and ``str`` never show the
value. A missing or wrong setting raises :class:`~kit.errors.ConfigError`
naming the key.

Example ``kit.toml``::

    [pacs]
    host = "pacs.hospital.org"
    port = 104
    called_aet = "ORTHANC"
    aet = "KITSCU"

    [fhir]
    base = "https://fhir.hospital.org/R4"
    vendor = "epic"
    auth = "smart"
    client_id = "my-app"
    private_key_file = "~/.kit/fhir-key.pem"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import kit._checks as _checks
import kit._config_services as _services
from kit._config_services import (
    ApiSettings,
    AuditSettings,
    CohortSettings,
    DaskSettings,
    MedixSettings,
    MonitorSettings,
)
from kit._secret import Secret
from kit.errors import ConfigError

__all__ = [
    "ApiSettings",
    "CohortSettings",
    "DaskSettings",
    "AuditSettings",
    "DicomWebSettings",
    "EndoscopySettings",
    "FhirSettings",
    "HL7Settings",
    "MedixSettings",
    "MonitorSettings",
    "PacsSettings",
    "Secret",
    "Settings",
    "StackSettings",
    "configured_settings",
    "describe_source",
    "load_settings",
]


@dataclasses.dataclass(frozen=True)
class PacsSettings:
    """Where the DIMSE client connects, and as whom.

    Attributes
    ----------
    host, port : str, int
        The PACS's address.
    called_aet : str
        The PACS's AE title.
    aet : str
        Our own (calling) AE title; also the C-MOVE destination by default.
    store_port : int
        Port of the temporary storage SCP run during a C-MOVE (0 = ephemeral).
    timeout : float
        Seconds for connect, ACSE and DIMSE waits.
    tls, tls_ca, tls_cert, tls_key
        Use TLS, with an optional CA bundle and client certificate/key files.
    """

    host: str = "127.0.0.1"
    port: int = 11112
    called_aet: str = "KIT"
    aet: str = "KITSCU"
    store_port: int = 0
    timeout: float = 30.0
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclasses.dataclass(frozen=True)
class DicomWebSettings:
    """DICOMweb endpoint (QIDO-RS/WADO-RS/STOW-RS root URL) and credentials."""

    base: str = "http://127.0.0.1:8042/dicom-web"
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    timeout: float = 30.0


@dataclasses.dataclass(frozen=True)
class FhirSettings:
    """FHIR R4 endpoint and how to authenticate to it.

    ``auth`` is one of ``none``, ``bearer`` (``token``), ``basic``
    (``username``/``password``), ``client_credentials`` (``client_id``,
    ``client_secret``, ``token_url``) or ``smart`` (SMART Backend Services:
    ``client_id``, ``private_key_file``, optional ``key_id`` and ``token_url``,
    else discovered). ``vendor`` picks a profile of known defaults
    (``generic``, ``epic``, ``cerner``, ``athena``, ``allscripts``).
    ``trusted_origins`` lists further origins (``https://files.example.org``,
    ``https://*.example.org``) that may receive the credentials, e.g. a Bulk
    Data file server; by default only ``base``'s own origin does.
    """

    base: str = "http://127.0.0.1:8080/fhir/R4"
    vendor: str = "generic"
    auth: Literal["none", "bearer", "basic", "client_credentials", "smart"] = "none"
    client_id: str | None = None
    token_url: str | None = None
    scope: str | None = None
    key_id: str | None = None
    algorithm: str = "RS384"
    private_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    client_secret: Secret | None = None
    timeout: float = 30.0
    trusted_origins: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class HL7Settings:
    """The MLLP peer results are sent to, and the listener's defaults."""

    host: str = "127.0.0.1"
    port: int = 2575
    timeout: float = 30.0
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class StackSettings:
    """The embedded stack: addresses, AE title and where it keeps its data.

    ``data_dir`` empty means a per-user cache folder (``~/.cache/kit/stack``).
    ``move_destinations`` maps AE titles to ``host:port`` for C-MOVE.
    ``allowed_aets`` empty means any calling AE title is accepted.
    ``pacs_accept_any_called_aet`` lets clients call the PACS by any AE title
    (by default only ``pacs_aet`` is accepted, as a real PACS does).
    """

    host: str = "127.0.0.1"
    pacs_port: int = 11112
    pacs_aet: str = "KIT"
    fhir_port: int = 8080
    mllp_port: int = 2575
    video_port: int = 8090
    dicomweb_port: int = 8042
    data_dir: str = ""
    allowed_aets: tuple[str, ...] = ()
    move_destinations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pacs_accept_any_called_aet: bool = False

    def resolved_data_dir(self) -> Path:
        """The data folder as an absolute path (default: ``~/.cache/kit/stack``)."""
        if self.data_dir:
            return Path(self.data_dir).expanduser().resolve()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "kit" / "stack"


@dataclasses.dataclass(frozen=True)
class EndoscopySettings:
    """The endoscopy suite: its vendor profile, site overrides and where its live video comes from.

    ``vendor`` is ``generic``, ``olympus``, ``pentax``, ``fujifilm`` or
    ``karl_storz`` (:mod:`kit.endoscopy.vendors`). ``overrides`` sets profile
    fields for this site, as text (lists comma-separated, sizes ``WIDTHxHEIGHT``)::

        [endoscopy]
        vendor = "olympus"
        overrides = { station_aet = "ENDO3", still_transfer_syntax = "1.2.840.10008.1.2.1" }
        stream_url = "rtsp://video-gateway.example/endo3"

    or ``KIT_ENDOSCOPY_OVERRIDES="station_aet=ENDO3,frame_rate=25"``.

    ``stream_url`` is what :class:`kit.endoscopy.source.FrameSource` opens by
    default: an ``rtsp://``/``http://``/``udp://`` URL from the video gateway, a
    capture device (``/dev/video0``) or a file. Default: the embedded stack's
    stream (``[stack] video_port``). ``timeout`` bounds opening it and each read.
    """

    vendor: str = "generic"
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    stream_url: str = "http://127.0.0.1:8090/live.ts"
    timeout: float = 10.0

    def profile(self) -> Any:
        """The configured :class:`kit.endoscopy.vendors.VendorProfile` (overrides applied)."""
        from kit.endoscopy.vendors import apply_overrides, profile

        return apply_overrides(profile(self.vendor), self.overrides)


@dataclasses.dataclass(frozen=True)
class Settings:
    """All of the kit's settings. Build with :func:`load_settings`.

    ``source`` is the kit.toml read (an absolute path), or ``"defaults"`` when
    none was: then the clients point at the embedded stack.
    """

    pacs: PacsSettings = dataclasses.field(default_factory=PacsSettings)
    dicomweb: DicomWebSettings = dataclasses.field(default_factory=DicomWebSettings)
    fhir: FhirSettings = dataclasses.field(default_factory=FhirSettings)
    hl7: HL7Settings = dataclasses.field(default_factory=HL7Settings)
    stack: StackSettings = dataclasses.field(default_factory=StackSettings)
    endoscopy: EndoscopySettings = dataclasses.field(default_factory=EndoscopySettings)
    medix: MedixSettings = dataclasses.field(default_factory=MedixSettings)
    api: ApiSettings = dataclasses.field(default_factory=ApiSettings)
    cohort: CohortSettings = dataclasses.field(default_factory=CohortSettings)
    audit: AuditSettings = dataclasses.field(default_factory=AuditSettings)
    monitor: MonitorSettings = dataclasses.field(default_factory=MonitorSettings)
    dask: DaskSettings = dataclasses.field(default_factory=DaskSettings)
    source: str = "defaults"
    #: The sections the file or the environment set (at least one key each).
    given: frozenset[str] = frozenset()

    @property
    def configured(self) -> bool:
        """True when a kit.toml named the systems (not the built-in defaults of the embedded stack)."""
        return self.source != "defaults"

    @property
    def uses_dicomweb(self) -> bool:
        """Whether DICOMweb is one of the systems to use and probe.

        Never with an empty base (:meth:`kit.stack.Stack.client_settings` of a
        stack that runs no DICOMweb). Otherwise when the file or the environment
        sets ``[dicomweb]`` (or its base differs from the default), and on the
        embedded stack's own defaults (no kit.toml and no client section set: it
        serves DICOMweb). A configuration that names other systems but no
        DICOMweb has none.
        """
        if not self.dicomweb.base:  # e.g. an embedded stack running without its DICOMweb service
            return False
        if "dicomweb" in self.given or self.dicomweb.base != DicomWebSettings().base:
            return True
        return not self.configured and not (self.given - {"stack", "audit", "endoscopy", "dask"})


_SECTIONS: dict[str, type] = {
    "pacs": PacsSettings,
    "dicomweb": DicomWebSettings,
    "fhir": FhirSettings,
    "hl7": HL7Settings,
    "stack": StackSettings,
    "endoscopy": EndoscopySettings,
    "medix": MedixSettings,
    "api": ApiSettings,
    "cohort": CohortSettings,
    "audit": AuditSettings,
    "monitor": MonitorSettings,
    "dask": DaskSettings,
}


def _config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError("config", f"{p} is not a file" if p.exists() else f"file {p} does not exist")
        return p
    if env.get("KIT_CONFIG"):
        p = Path(env["KIT_CONFIG"]).expanduser()
        if not p.is_file():
            raise ConfigError("KIT_CONFIG", f"{p} is not a file" if p.exists()
                              else f"file {p} does not exist")
        return p
    p = Path("kit.toml")
    return p if p.is_file() else None


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip ``X | None`` to ``X``; say whether None is allowed."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(key: str, value: Any, tp: Any, *, from_env: bool) -> Any:
    base, optional = _base_type(tp)
    if value is None or (from_env and value == "" and optional):
        if optional:
            return None
        raise ConfigError(key, "must not be empty")
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if origin is Literal:
            if value not in typing.get_args(base):
                raise ValueError(value)
            return value
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(v).strip() for v in items if str(v).strip())
        if base is Mapping or origin is Mapping:
            if isinstance(value, str):
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                return {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return {str(k): str(v) for k, v in value.items()}
    except (ValueError, TypeError) as exc:
        want = typing.get_args(base) if origin is Literal else getattr(base, "__name__", str(base))
        raise ConfigError(key, f"expected {want}, got {value!r}") from exc
    raise ConfigError(key, f"unsupported setting type {base!r}")  # pragma: no cover


def _read_secret_file(key: str, path: str) -> Secret:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"secret file {p} is not UTF-8 text") from exc
    return Secret(text.strip() if p.suffix not in (".pem", ".key") else text)



#: value checks per setting (beyond its type), from :mod:`kit._checks`
_CHECKS: dict[str, Any] = {
    "pacs.host": _checks.host_name,
    "pacs.port": _checks.port,
    "pacs.called_aet": _checks.ae_title,
    "pacs.aet": _checks.ae_title,
    "pacs.store_port": lambda v: _checks.port(v, ephemeral=True),
    "pacs.timeout": _checks.positive_seconds,
    "dicomweb.base": _checks.http_url,
    "dicomweb.timeout": _checks.positive_seconds,
    "fhir.base": _checks.http_url,
    "fhir.token_url": _checks.http_url,
    "fhir.timeout": _checks.positive_seconds,
    "hl7.host": _checks.host_name,
    "hl7.port": _checks.port,
    "hl7.timeout": _checks.positive_seconds,
    "hl7.max_message_bytes": _checks.positive_int,
    "stack.host": _checks.host_name,
    "stack.pacs_port": lambda v: _checks.port(v, ephemeral=True),
    "stack.pacs_aet": _checks.ae_title,
    "stack.fhir_port": lambda v: _checks.port(v, ephemeral=True),
    "stack.mllp_port": lambda v: _checks.port(v, ephemeral=True),
    "stack.video_port": lambda v: _checks.port(v, ephemeral=True),
    "stack.dicomweb_port": lambda v: _checks.port(v, ephemeral=True),
    "stack.allowed_aets": lambda v: tuple(_checks.ae_title(a) for a in v),
    "endoscopy.vendor": lambda v: _endoscopy_check(v, {}) and v,
    "endoscopy.overrides": lambda v: _endoscopy_check("generic", v) and v,
    "endoscopy.timeout": _checks.positive_seconds,
    **_services.CHECKS,
}



def _endoscopy_check(vendor: str, overrides: Mapping[str, str]) -> bool:
    """A vendor name and profile overrides :mod:`kit.endoscopy.vendors` accepts (ValueError if not)."""
    from kit.endoscopy.vendors import check_overrides

    check_overrides(vendor, overrides)
    return True


def _checked(name: str, key: str, value: Any) -> Any:
    """``value`` through its check in :data:`_CHECKS`; a failure is a ConfigError naming ``key``."""
    check = _CHECKS.get(name)
    if check is None or value is None:
        return value
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from exc


def _build_section(
    name: str, cls: type, table: Mapping[str, Any], env: Mapping[str, str]
) -> Any:
    return _build_section_set(name, cls, table, env)[0]


def _build_section_set(
    name: str, cls: type, table: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[Any, set[str]]:
    """The section's settings object and the names of the fields the file or environment set."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    known = set(fields) | {f"{n}_file" for n, t in hints.items() if _base_type(t)[0] is Secret}
    for key in table:
        if key not in known:
            raise ConfigError(f"{name}.{key}", f"unknown setting; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for fname in fields:
        tp = hints[fname]
        key = f"{name}.{fname}"
        env_key = f"KIT_{name.upper()}_{fname.upper()}"
        if _base_type(tp)[0] is Secret:
            if fname in table:
                raise ConfigError(
                    key,
                    f"secrets are not read from kit.toml; set {env_key} or {fname}_file",
                )
            if env.get(env_key):
                values[fname] = Secret(env[env_key])
            elif env.get(env_key + "_FILE"):
                values[fname] = _read_secret_file(env_key + "_FILE", env[env_key + "_FILE"])
            elif f"{fname}_file" in table:
                values[fname] = _read_secret_file(f"{key}_file", str(table[f"{fname}_file"]))
            continue
        if env_key in env:
            values[fname] = _checked(key, env_key, _coerce(env_key, env[env_key], tp, from_env=True))
        elif fname in table:
            values[fname] = _checked(key, key, _coerce(key, table[fname], tp, from_env=False))
    return cls(**values), set(values)


def load_settings(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from kit.toml and the environment.

    Parameters
    ----------
    path : path-like, optional
        A kit.toml to read. Default: ``KIT_CONFIG``, then ``./kit.toml``, then
        built-in defaults (the embedded stack on 127.0.0.1).
    env : mapping, optional
        Environment to read ``KIT_*`` overrides and secrets from
        (default ``os.environ``).

    Returns
    -------
    Settings

    Raises
    ------
    ConfigError
        The file is missing or not TOML, or a setting is unknown or has the
        wrong type; the error names the key.
    """
    env = os.environ if env is None else env
    file = _config_path(path, env)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(str(file), f"not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at "
                                         f"offset {exc.start}); save it as UTF-8") from exc
        except OSError as exc:
            raise ConfigError(str(file), f"cannot read: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}") from exc
    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(section, f"unknown section; known: {', '.join(_SECTIONS)}")
        if not isinstance(data[section], dict):
            raise ConfigError(section, "must be a table")
    built = {name: _build_section_set(name, cls, data.get(name, {}), env)
             for name, cls in _SECTIONS.items()}
    sections = {name: obj for name, (obj, _) in built.items()}
    sections.update(_stack_defaults(sections["stack"], {n: s for n, (_, s) in built.items()}, sections))
    return Settings(**sections, source=str(file.absolute()) if file else "defaults",
                    given=frozenset(n for n, (_, keys) in built.items() if keys))


def configured_settings(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Settings | None:
    """The settings a configuration names, or None when there is none (use the embedded stack).

    The one rule of the notebooks (:func:`kit.notebook.connect`) and the ``kit``
    command (``kit demo``): ``path`` (a notebook's ``SETTINGS_FILE``, the
    CLI's ``--config``), then ``KIT_CONFIG``, then ``./kit.toml``; with none of
    them, None: the caller starts the embedded stack.

    Parameters
    ----------
    path : path-like, optional
        A kit.toml to read (must exist).
    env : mapping, optional
        As for :func:`load_settings`.

    Returns
    -------
    Settings or None

    Raises
    ------
    ConfigError
        As for :func:`load_settings` (a named file that does not exist, a wrong setting).
    """
    settings = load_settings(path, env=env)
    return settings if settings.configured else None


def describe_source(settings: Settings | None) -> str:
    """Which systems, in words: ``configured systems (/path/kit.toml)`` or ``embedded stack``."""
    if settings is None or not settings.configured:
        return "embedded stack"
    return f"configured systems ({settings.source})"


def _stack_defaults(stack: StackSettings, given: Mapping[str, set[str]],
                    sections: Mapping[str, Any]) -> dict[str, Any]:
    """Client settings the file and environment left unset, taken from ``[stack]``.

    So a kit.toml that moves the embedded stack (``[stack] pacs_port = 4242``)
    points ``kit pacs`` (``--web`` too, by ``dicomweb_port``), ``kit fhir`` and
    ``kit hl7 send`` at it too. A port 0 (ephemeral) says nothing about where
    the stack is, and a wildcard listen address is reached on 127.0.0.1. A client
    section that sets its own ``host`` (``base`` for FHIR and DICOMweb) points
    elsewhere and takes nothing from the stack.
    """
    host = "127.0.0.1" if stack.host in ("0.0.0.0", "::", "") else stack.host
    url_host = f"[{host}]" if ":" in host else host

    def fill(section: str, values: dict[str, Any]) -> Any:
        if "host" in given[section]:  # the client points elsewhere: nothing to take from the stack
            return sections[section]
        wanted = {k: v for k, v in values.items() if k not in given[section] and v not in (None, 0)}
        return dataclasses.replace(sections[section], **wanted)

    return {
        "pacs": fill("pacs", {"host": host, "port": stack.pacs_port, "called_aet": stack.pacs_aet}),
        "fhir": fill("fhir", {"base": f"http://{url_host}:{stack.fhir_port}/fhir/R4"
                              if stack.fhir_port else None}),
        "hl7": fill("hl7", {"host": host, "port": stack.mllp_port}),
        "dicomweb": fill("dicomweb", {"base": f"http://{url_host}:{stack.dicomweb_port}/dicom-web"
                                      if stack.dicomweb_port else None}),
        "endoscopy": fill("endoscopy", {"stream_url": f"http://{url_host}:{stack.video_port}/live.ts"
                                        if stack.video_port else None}),
    }
