"""Settings sections of the kit's services and jobs (re-exported by :mod:`kit.config`).

Split from :mod:`kit.config` to keep it small: the sections of ``kit medix``,
``kit api``, ``kit cohort``, the audit log ``kit monitor`` and the Dask scale-out, with their value
checks (:data:`CHECKS`, merged into the config's own).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Literal

import kit._checks as _checks
from kit._secret import Secret

__all__ = [
    "ApiSettings", "AuditSettings", "CohortSettings", "DaskSettings", "MedixSettings", "MonitorSettings",
    "CHECKS",
]


@dataclasses.dataclass(frozen=True)
class MedixSettings:
    """The Medix study-download service (``kit medix serve``, :mod:`kit.services.medix`).

    ``token`` (``KIT_MEDIX_TOKEN``, ``KIT_MEDIX_TOKEN_FILE`` or ``token_file``) is the
    bearer token every request must carry; the service does not start without one.
    ``workspace`` empty means ``~/.cache/kit/medix``. ``retrieve`` is how a study is
    fetched from the PACS: ``c-get`` (default), ``c-move`` (to our ``[pacs] aet`` and
    ``store_port``) or ``wado`` (WADO-RS from ``[dicomweb] base``). ``public_url`` is
    the root the webhooks' ``File`` addresses start with (default: the listen address).
    A finished study's zip is deleted ``keep_hours`` after the job's last change
    (its download then answers 410 Gone); 0 keeps every zip.
    """

    host: str = "127.0.0.1"
    port: int = 8070
    workspace: str = ""
    token: Secret | None = None
    retrieve: Literal["c-get", "c-move", "wado"] = "c-get"
    public_url: str | None = None
    max_jobs: int = 2
    max_queue: int = 100
    max_export_bytes: int = 20 * 1024 ** 3
    min_free_bytes: int = 512 * 1024 ** 2
    max_body_bytes: int = 64 * 1024
    max_report_studies: int = 200
    webhook_timeout: float = 10.0
    webhook_attempts: int = 8
    webhook_backoff: float = 0.5
    webhook_backoff_max: float = 30.0
    max_resumes: int = 2
    keep_hours: float = 72.0

    def resolved_workspace(self) -> Path:
        """The workspace folder as an absolute path (default: ``~/.cache/kit/medix``)."""
        if self.workspace:
            return Path(self.workspace).expanduser().resolve()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "kit" / "medix"


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """The integration REST API (``kit api serve``, :mod:`kit.services.api`).

    ``workspace`` holds its SQLite state (keys, integrations, sync jobs, the
    SIU log); empty means ``$XDG_DATA_HOME/kit/api`` (``~/.local/share/kit/api``).
    ``fernet_key`` encrypts the connector credentials stored through the API
    (``KIT_API_FERNET_KEY``, ``KIT_API_FERNET_KEY_FILE`` or ``fernet_key_file``);
    ``admin_key`` is an admin API key registered on start (``KIT_API_ADMIN_KEY``,
    ``..._FILE`` or ``admin_key_file``; at least 32 characters). ``hl7_store``
    is an MLLP listener's message store (e.g. the embedded stack's
    ``mllp.db``) whose SIU and other messages the API reads;
    ``endoscopy_stream`` the endoscopy suite's video stream URL.
    """

    host: str = "127.0.0.1"
    port: int = 8071
    workspace: str = ""
    max_body: int = 32 * 1024 * 1024
    max_json_body: int = 1024 * 1024
    probe_timeout: float = 5.0
    hl7_store: str | None = None
    endoscopy_stream: str | None = None
    fernet_key: Secret | None = None
    admin_key: Secret | None = None

    def resolved_workspace(self) -> Path:
        """The workspace folder as an absolute path (default ``$XDG_DATA_HOME/kit/api``)."""
        if self.workspace:
            return Path(self.workspace).expanduser().resolve()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "kit" / "api"


@dataclasses.dataclass(frozen=True)
class CohortSettings:
    """Cohort retrieval (``kit cohort pull``, :mod:`kit.cohort.pull`): how politely to pull.

    ``max_associations`` caps the associations (DICOMweb: requests) open to the PACS at
    once, ``images_per_second`` the rate instances arrive at (the PACS waits for our
    answer to each one). ``retrieve`` is ``c-get`` (default), ``c-move`` (to our
    ``[pacs] aet`` and ``store_port``) or ``wado`` (WADO-RS from ``[dicomweb] base``).
    A study that fails for a transient reason (unreachable, timeout, aborted, busy) is
    tried up to ``max_attempts`` times; after such a failure the whole job waits
    ``backoff`` seconds, doubled on each further failure up to ``max_backoff``.
    ``max_studies_per_item`` bounds what one requested item (an MRN) may resolve to.
    """

    max_associations: int = 2
    images_per_second: float = 50.0
    retrieve: Literal["c-get", "c-move", "wado"] = "c-get"
    max_attempts: int = 6
    backoff: float = 2.0
    max_backoff: float = 300.0
    max_studies_per_item: int = 1000


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """The audit log (:mod:`kit.services.audit`): who accessed which patient or study.

    ``path`` (``KIT_AUDIT_PATH``) is the log file. Without one, ``kit serve``,
    ``kit api serve`` and ``kit medix serve`` keep ``audit.db`` in their workspace,
    and the CLI and notebooks record nothing. ``enabled = false`` turns it off everywhere.
    """

    path: str = ""
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class MonitorSettings:
    """Connector health monitoring (``kit monitor``, :mod:`kit.hub.monitor`, :mod:`kit.hub.alerts`).

    Every ``interval`` seconds each configured connector is probed (each probe
    within ``probe_timeout``); the results and the alerts are kept in
    ``<workspace>/monitor.db`` for ``retention_days`` (empty workspace means
    ``$XDG_DATA_HOME/kit/monitor``). The error rate is over the last
    ``error_checks`` checks, uptime over the last ``uptime_hours``. The alert
    thresholds are :func:`kit.hub.alerts.default_rules`' (ratios 0..1).
    ``host``/``port`` are where ``kit monitor serve`` answers ``/metrics``.
    """

    host: str = "127.0.0.1"
    port: int = 8072
    workspace: str = ""
    interval: float = 30.0
    probe_timeout: float = 5.0
    retention_days: float = 7.0
    error_checks: int = 20
    uptime_hours: float = 24.0
    consecutive_failures: int = 3
    slow_seconds: float = 5.0
    error_rate_warning: float = 0.10
    error_rate_critical: float = 0.25
    uptime_warning: float = 0.95
    uptime_critical: float = 0.90
    min_rate_checks: int = 10

    def resolved_workspace(self) -> Path:
        """The workspace folder as an absolute path (default ``$XDG_DATA_HOME/kit/monitor``)."""
        if self.workspace:
            return Path(self.workspace).expanduser().resolve()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "kit" / "monitor"


@dataclasses.dataclass(frozen=True)
class DaskSettings:
    """Scale-out on Dask distributed (:mod:`kit.scale`): where the big jobs run.

    ``scheduler`` empty (the default) runs every job in this process.
    ``"local"`` starts a ``distributed.LocalCluster`` of ``workers`` processes
    (``threads_per_worker`` threads each, listening on 127.0.0.1 only) for the
    job and stops it after. ``"tcp://host:8786"`` (or ``tls://``) uses a running
    scheduler: one a SLURM (dask-jobqueue) or Kubernetes (dask-kubernetes)
    cluster of the institution already serves. The ``--dask ADDRESS`` option of
    ``kit index``, ``kit deid``, ``kit hl7 parse`` and ``kit cohort`` overrides it.
    ``timeout`` bounds connecting to the scheduler.
    """

    scheduler: str = ""
    workers: int = 2
    threads_per_worker: int = 1
    timeout: float = 30.0


def _hours(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{value} is not a number of hours (0 or more)")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"{value} must not be negative")
    return value


def _ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{value} is not a ratio between 0 and 1")
    return value


def _checks_dask_scheduler(value: str) -> str:
    value = value.strip()
    if value in ("", "local") or value.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        return value
    raise ValueError(f"{value!r} is not 'local' or a scheduler address such as tcp://host:8786")


#: value checks per setting of these sections (beyond its type)
CHECKS: dict[str, Any] = {
    "medix.host": _checks.host_name,
    "medix.port": lambda v: _checks.port(v, ephemeral=True),
    "medix.public_url": _checks.http_url,
    "medix.max_jobs": _checks.positive_int,
    "medix.max_queue": _checks.positive_int,
    "medix.max_export_bytes": _checks.positive_int,
    "medix.min_free_bytes": _non_negative,
    "medix.max_body_bytes": _checks.positive_int,
    "medix.max_report_studies": _checks.positive_int,
    "medix.webhook_timeout": _checks.positive_seconds,
    "medix.webhook_attempts": _checks.positive_int,
    "medix.webhook_backoff": _checks.positive_seconds,
    "medix.webhook_backoff_max": _checks.positive_seconds,
    "medix.max_resumes": _non_negative,
    "medix.keep_hours": lambda v: _hours(v),
    "api.host": _checks.host_name,
    "api.port": lambda v: _checks.port(v, ephemeral=True),
    "api.max_body": _checks.positive_int,
    "api.max_json_body": _checks.positive_int,
    "api.probe_timeout": _checks.positive_seconds,
    "cohort.max_associations": _checks.positive_int,
    "cohort.images_per_second": _checks.positive_seconds,  # a positive finite number
    "cohort.max_attempts": _checks.positive_int,
    "cohort.backoff": _checks.positive_seconds,
    "cohort.max_backoff": _checks.positive_seconds,
    "cohort.max_studies_per_item": _checks.positive_int,
    "monitor.host": _checks.host_name,
    "monitor.port": lambda v: _checks.port(v, ephemeral=True),
    "monitor.interval": _checks.positive_seconds,
    "monitor.probe_timeout": _checks.positive_seconds,
    "monitor.retention_days": _checks.positive_seconds,
    "monitor.error_checks": _checks.positive_int,
    "monitor.uptime_hours": _checks.positive_seconds,
    "monitor.consecutive_failures": _checks.positive_int,
    "monitor.slow_seconds": _checks.positive_seconds,
    "monitor.error_rate_warning": lambda v: _ratio(v),
    "monitor.error_rate_critical": lambda v: _ratio(v),
    "monitor.uptime_warning": lambda v: _ratio(v),
    "monitor.uptime_critical": lambda v: _ratio(v),
    "monitor.min_rate_checks": _checks.positive_int,
    "dask.scheduler": _checks_dask_scheduler,
    "dask.workers": _checks.positive_int,
    "dask.threads_per_worker": _checks.positive_int,
    "dask.timeout": _checks.positive_seconds,
}
