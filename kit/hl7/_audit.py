"""Audit descriptions of HL7 v2 traffic: messages sent (MLLPSender) and received (MLLPListener).

A message's identifiers are PID-3's first identifier (the MRN), every OBR-18
(accession number) and ZDS-1 (StudyInstanceUID, as :mod:`kit.hl7.frames` reads
them); ``detail`` is the message type. Never names, dates or other content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kit import audit
from kit.hl7.message import Message, parse_message

__all__ = ["audited_send", "message_fields", "record_received"]

F = TypeVar("F", bound=Callable[..., Any])


def message_fields(message: Message | str | bytes | None) -> dict[str, Any]:
    """The identifiers and type of a message (nothing for what does not parse)."""
    if message is None:
        return {}
    try:
        m = message if isinstance(message, Message) else parse_message(message)
        return {
            "patient_ids": [m.get("PID-3.1")],
            "accessions": [m.get(f"OBR({i})-18.1") for i in range(1, len(m.segments("OBR")) + 1)],
            "study_uids": [m.get("ZDS-1.1")],
            "detail": m.message_type,
        }
    except Exception:  # noqa: BLE001 - an unparseable message names no identifier
        return {}


def _describe_send(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any,
                   error: BaseException | None) -> dict[str, Any]:
    sender = args[0]
    message = args[1] if len(args) > 1 else kwargs.get("message")
    return {"target": sender.peer, "count": 1 if error is None else 0, **message_fields(message)}


def audited_send(fn: F) -> F:
    """Audit :meth:`MLLPSender.send <kit.hl7.sender.MLLPSender.send>` (``hl7.send``)."""
    return audit.audited("hl7.send", _describe_send)(fn)


def record_received(address: str, items: Sequence[Any], results: Sequence[Any]) -> None:
    """Record one ``hl7.receive`` event per stored (or failed) message of a listener's batch.

    ``items`` are :class:`kit.hl7.store.Received`; ``results`` their
    :class:`~kit.hl7.store.StoredResult` or the exception that failed them.
    """
    if not audit.enabled():
        return
    events = []
    for item, result in zip(items, results, strict=False):
        failed = isinstance(result, BaseException)
        try:
            events.append(audit.AuditEvent(
                "hl7.receive", who=f"peer:{str(item.peer).rsplit(':', 1)[0]}", target=address,
                side="server", count=0 if failed else 1, outcome="failed" if failed else "ok",
                error=type(result).__name__ if failed else "", **message_fields(item.message)))
        except Exception as exc:  # noqa: BLE001 - describing never breaks the listener
            audit.record_failure("describe hl7.receive", exc)
    audit.emit(*events)
