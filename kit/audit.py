"""Audit events: who accessed which patient or study, when, and how it went (pure: dispatch only).

Every data access and write through kit's clients and servers is described by
one :class:`AuditEvent` and handed to :func:`emit`, which passes it to the
registered sinks. This module only dispatches: it opens no files and no sockets.
The durable sink, an append-only hash-chained log in the workspace, is
:class:`kit.services.audit.AuditLog`; it is registered by ``kit serve``,
``kit api serve`` and ``kit medix serve``, and by the CLI and notebooks when
``[audit] path`` (``KIT_AUDIT_PATH``) is set.

* No sink registered: :func:`emit` and the :func:`audited` wrappers cost one
  tuple test, nothing is built.
* A sink that raises never breaks the access it records: the failure is
  counted (:func:`sink_failures`) and logged once per sink.
* Events carry identifiers only: patient ids, study instance UIDs, accession
  numbers. Never names, birth dates, message or resource bodies or query text.

Who: :func:`current_actor`, set per request by the services (``key:<id>``,
``token:<fingerprint>``) with :func:`acting_as`, else the local user
(``user:<login>``). A value may be a callable, read when an event is made (a
service learns the key only after the request has started).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import getpass
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ACTION_PREFIXES",
    "MAX_IDS",
    "AuditEvent",
    "Sink",
    "acting_as",
    "add_sink",
    "audited",
    "clean_target",
    "current_actor",
    "emit",
    "enabled",
    "record",
    "record_failure",
    "remove_sink",
    "sink_failures",
    "sinks",
]

log = logging.getLogger("kit.audit")

#: the first word of every action: the protocol or service the access went through
ACTION_PREFIXES: Final = ("pacs", "dicomweb", "fhir", "hl7", "api", "medix")
#: most identifiers of one kind kept per event (the rest are counted in ``detail``)
MAX_IDS: Final = 100_000

_ACTION = re.compile(r"(?:pacs|dicomweb|fhir|hl7|api|medix)\.[A-Za-z0-9_.{}/$\-]{1,200}")
_ERROR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_ID_CHARS = 128
_MAX_TEXT = 256

F = TypeVar("F", bound=Callable[..., Any])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _text(value: Any, limit: int = _MAX_TEXT) -> str:
    return _CONTROL.sub(" ", str(value))[:limit].strip()


def clean_target(target: str) -> str:
    """An address without credentials: ``user:pass@`` and the query string dropped from URLs."""
    target = _text(target)
    if "://" not in target:
        return target
    try:
        parts = urlsplit(target)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return target.split("://", 1)[0] + "://?"
    user = parts.username or ""
    if parts.scheme == "dicom" and user:  # dicom://AET@host:port: the AE title is no credential
        host = f"{user}@{host}"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _ids(values: Iterable[Any]) -> tuple[tuple[str, ...], int]:
    """Distinct non-empty identifiers in order (each cut to 128 characters, at most MAX_IDS), and how
    many were dropped."""
    seen: dict[str, None] = {}
    dropped = 0
    for value in values:
        if value is None:
            continue
        text = _text(value, _MAX_ID_CHARS)
        if not text or text in seen:
            continue
        if len(seen) >= MAX_IDS:
            dropped += 1
            continue
        seen[text] = None
    return tuple(seen), dropped


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One access to clinical data: valid by construction, identifiers only.

    Parameters
    ----------
    action : str
        ``<protocol>.<operation>``: ``pacs.find``, ``pacs.get``, ``pacs.move``,
        ``pacs.store``, ``pacs.echo``, ``pacs.worklist``, ``dicomweb.qido``,
        ``dicomweb.wado``, ``dicomweb.stow``, ``fhir.read``, ``fhir.search``,
        ``fhir.create``, ``fhir.update``, ``fhir.delete``, ``fhir.transaction``,
        ``fhir.export``, ``hl7.send``, ``hl7.receive``, ``api.<route>``,
        ``medix.<route>``.
    who : str
        The principal: ``user:<login>``, ``key:<id>``, ``token:<fingerprint>``,
        ``ae:<AE title>``, ``peer:<host:port>`` (:func:`current_actor` by default).
    target : str
        The other system's address, without credentials.
    side : {"client", "server"}
        ``client``: kit accessed ``target``; ``server``: ``who`` accessed a kit server.
    outcome : {"ok", "failed"}
    error : str
        The error's class name (failed only).
    patient_ids, study_uids, accessions : tuple of str
        The identifiers the access touched (asked for or returned).
    count : int, optional
        How many items (matches, instances, resources, messages).
    detail : str
        A short non-PHI note (query level, resource type, HTTP status).
    when : datetime
        UTC (default: now).
    """

    action: str
    who: str = ""
    target: str = ""
    side: str = "client"
    outcome: str = "ok"
    error: str = ""
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    accessions: tuple[str, ...] = ()
    count: int | None = None
    detail: str = ""
    when: dt.datetime = dataclasses.field(default_factory=_now)

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or not _ACTION.fullmatch(self.action):
            raise ValueError(f"action {self.action!r} is not <{'|'.join(ACTION_PREFIXES)}>.<operation>")
        setter = functools.partial(object.__setattr__, self)
        setter("who", _text(self.who) or current_actor())
        setter("target", clean_target(self.target))
        if self.side not in ("client", "server"):
            raise ValueError(f"side must be client or server, not {self.side!r}")
        if self.outcome not in ("ok", "failed"):
            raise ValueError(f"outcome must be ok or failed, not {self.outcome!r}")
        if self.outcome == "ok" and self.error:
            raise ValueError("an ok event has no error")
        if self.error and not _ERROR.fullmatch(self.error):
            raise ValueError(f"error must be an error class name, not {self.error!r}")
        notes = [_text(self.detail)] if self.detail else []
        for name in ("patient_ids", "study_uids", "accessions"):
            value = getattr(self, name)
            kept, dropped = _ids([value] if isinstance(value, str) else value)
            setter(name, kept)
            if dropped:
                notes.append(f"{dropped} more {name} not listed")
        setter("detail", "; ".join(notes)[:_MAX_TEXT])
        if self.count is not None:
            if isinstance(self.count, bool) or int(self.count) < 0:
                raise ValueError(f"count must be a non-negative integer, not {self.count!r}")
            setter("count", int(self.count))
        if not isinstance(self.when, dt.datetime) or self.when.tzinfo is None:
            raise ValueError("when must be a timezone-aware datetime")
        setter("when", self.when.astimezone(dt.UTC))

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (``when`` as ISO 8601 UTC with microseconds)."""
        out = dataclasses.asdict(self)
        out["when"] = self.when.isoformat(timespec="microseconds")
        for name in ("patient_ids", "study_uids", "accessions"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """The inverse of :meth:`to_dict` (ValueError for anything else)."""
        try:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            values["when"] = dt.datetime.fromisoformat(str(data["when"]))
            for name in ("patient_ids", "study_uids", "accessions"):
                values[name] = tuple(data.get(name) or ())
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an audit event: {exc}") from exc


#: a sink receives the events of one :func:`emit` call, in order
Sink = Callable[[Sequence[AuditEvent]], None]

_lock = threading.Lock()
_sinks: tuple[Sink, ...] = ()
_failures: dict[str, int] = {}


def add_sink(sink: Sink) -> None:
    """Register ``sink`` (once; adding it again does nothing)."""
    global _sinks
    with _lock:
        if sink not in _sinks:
            _sinks = (*_sinks, sink)


def remove_sink(sink: Sink) -> None:
    """Unregister ``sink``, or a sink equal to it (nothing if none is registered)."""
    global _sinks
    with _lock:
        _sinks = tuple(s for s in _sinks if s != sink)  # equal, as add_sink compares (bound methods)


def sinks() -> tuple[Sink, ...]:
    """The registered sinks."""
    return _sinks


def enabled() -> bool:
    """Whether any sink is registered (else events are not even built)."""
    return bool(_sinks)


def sink_failures() -> dict[str, int]:
    """Failures so far per sink (or ``describe`` step) name: events that could not be recorded."""
    with _lock:
        return dict(_failures)


def record_failure(where: str, exc: BaseException) -> None:
    """Count an event that could not be made or recorded (logged the first time per ``where``)."""
    _failed(where, exc)


def _failed(where: str, exc: BaseException) -> None:
    with _lock:
        _failures[where] = _failures.get(where, 0) + 1
        first = _failures[where] == 1
    if first:
        log.error("audit: %s failed, the event is not recorded (further failures are counted, "
                  "not logged): %s: %s", where, type(exc).__name__, exc)


def _name(obj: Any) -> str:
    return str(getattr(obj, "name", None) or getattr(obj, "__qualname__", None) or type(obj).__qualname__)


def emit(*events: AuditEvent) -> None:
    """Hand ``events`` to every registered sink; never raises for a sink's failure."""
    registered = _sinks
    if not registered or not events:
        return
    for sink in registered:
        try:
            sink(events)
        except Exception as exc:  # noqa: BLE001 - an audit sink never breaks the access it records
            _failed(_name(sink), exc)


def record(action: str, **fields: Any) -> None:
    """Build an :class:`AuditEvent` and :func:`emit` it, if a sink is registered.

    A field that makes the event invalid is counted like a sink failure, never raised.
    """
    if not _sinks:
        return
    try:
        event = AuditEvent(action, **fields)
    except Exception as exc:  # noqa: BLE001 - a bad description never breaks the access
        _failed(f"event {action}", exc)
        return
    emit(event)


# -- who -------------------------------------------------------------------------------------------

_actor: contextvars.ContextVar[str | Callable[[], str | None] | None] = contextvars.ContextVar(
    "kit_audit_actor", default=None)


@functools.cache
def _local_user() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except (OSError, KeyError, ImportError):
        return f"user:uid{os.getuid()}" if hasattr(os, "getuid") else "user:unknown"


@contextlib.contextmanager
def acting_as(who: str | Callable[[], str | None]) -> Iterator[None]:
    """Attribute the events made inside the block (this context, and threads it hands work to) to ``who``.

    ``who`` may be a callable, asked when an event is made; ``None`` from it means the local user.
    """
    token = _actor.set(who)
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor() -> str:
    """Who is acting now: the innermost :func:`acting_as`, else ``user:<login>``."""
    value = _actor.get()
    if callable(value):
        try:
            value = value()
        except Exception:  # noqa: BLE001 - an unknown actor is the local user
            value = None
    return _text(value) if value else _local_user()


# -- wrapping a client's methods -------------------------------------------------------------------

#: ``describe(args, kwargs, result, error)``: the event's fields, or None for no event
Describe = Callable[[tuple[Any, ...], dict[str, Any], Any, BaseException | None], Mapping[str, Any] | None]


def audited(action: str, describe: Describe) -> Callable[[F], F]:
    """Decorate a function so each call emits one event (ok or failed) when a sink is registered.

    Parameters
    ----------
    action : str
        The event's action.
    describe : callable
        ``describe(args, kwargs, result, error) -> fields`` (``result`` None on
        failure): the event's other fields (``who``, ``target``, identifiers,
        ``count``...). ``outcome`` and ``error`` are set from the call.
        Its failures are counted, never raised.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not _sinks:
                return fn(*args, **kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                _describe_and_emit(action, describe, args, kwargs, None, exc)
                raise
            _describe_and_emit(action, describe, args, kwargs, result, None)
            return result

        return cast(F, wrapper)

    return decorate


def _describe_and_emit(action: str, describe: Describe, args: tuple[Any, ...], kwargs: dict[str, Any],
                       result: Any, error: BaseException | None) -> None:
    try:
        fields = describe(args, kwargs, result, error)
        if fields is None:
            return
        fields = dict(fields)
        if error is not None:
            fields.update(outcome="failed", error=type(error).__name__)
        event = AuditEvent(str(fields.pop("action", action)), **fields)
    except Exception as exc:  # noqa: BLE001 - describing never breaks the access
        _failed(f"describe {action}", exc)
        return
    emit(event)
