"""``/api/v1/scheduling``: appointments, analytics and JSON -> SIU entry (I/O).

The appointments are the replay (:func:`kit.hl7.scheduling.replay`) of every
SIU the API knows: those entered through ``POST /siu`` (kept in the API's
``siu_log``, stored before they are sent) and, with ``[api] hl7_store``, those
an MLLP listener stored (e.g. the embedded stack's ``mllp.db``); a message in
both counts once (by MSH-10). ``POST /siu`` turns a booking system's JSON into
an SIU (:func:`kit.hl7.scheduling.siu_from_json`) and sends it over MLLP to
``[hl7]``, answering with the peer's ACK.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import polars as pl
from fastapi import APIRouter, Depends, Query

from kit.errors import NakError
from kit.hl7.scheduling import analytics, conflicts, replay, siu_from_json
from kit.services.api import READ, WRITE, ApiContext, context, hl7_turn, upstream
from kit.services.api_checks import SiuIn
from kit.services.api_http import Json
from kit.services.api_models import ID_PATTERN, ApiProblem, records

__all__ = ["router", "siu_messages"]

router = APIRouter(prefix="/api/v1/scheduling", tags=["scheduling"])

Ctx = Annotated[ApiContext, Depends(context)]
Day = Annotated[dt.date | None, Query(description="ISO date, e.g. 2026-02-03")]
Modality = Annotated[str | None, Query(pattern=r"^[A-Z0-9]{1,16}$", description="AIG-4, e.g. CT")]


def _control_id(message: str) -> str:
    fields = message.split("\r", 1)[0].split("|")
    return fields[9] if len(fields) > 9 else ""


def siu_messages(ctx: ApiContext) -> list[str]:
    """Every SIU the API knows: its own log, then the listener store's (each MSH-10 once)."""
    messages = {_control_id(m): m for m in ctx.store.siu_messages()}
    if ctx.hl7_store is not None:
        from kit.hl7.store import MessageStore

        with upstream("HL7 message store"):
            if not ctx.hl7_store.is_file():
                raise ApiProblem(503, f"[api] hl7_store {ctx.hl7_store} is not a file")
            with MessageStore(ctx.hl7_store) as store:
                stored = store.messages()
        siu = stored.filter(pl.col("message_type").str.starts_with("SIU"))
        for cid, raw in zip(siu["control_id"].to_list(), siu["raw"].to_list(), strict=True):
            messages.setdefault(cid or raw, raw)
    return list(messages.values())


def _appointments(ctx: ApiContext) -> tuple[pl.DataFrame, int]:
    table, skipped = replay(siu_messages(ctx))
    return table, skipped.height


def _between(
    table: pl.DataFrame, date_from: dt.date | None, date_to: dt.date | None, modality: str | None
) -> pl.DataFrame:
    day = pl.col("start_time").dt.date()
    if date_from is not None:
        table = table.filter(day >= date_from)
    if date_to is not None:
        table = table.filter(day <= date_to)
    if modality is not None:
        table = table.filter(pl.col("modality") == modality)
    return table


@router.get(
    "/appointments",
    dependencies=[READ],
    summary="Appointments (replayed from SIU messages) by date and modality",
)
def appointments(
    ctx: Ctx,
    date: Day = None,
    date_to: Day = None,
    modality: Modality = None,
    status: Annotated[str | None, Query(pattern=r"^(booked|cancelled|noshow)$")] = None,
    patient_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Any:
    """``date`` alone is one day; with ``date_to`` a range (inclusive)."""
    if date is not None and date_to is not None and date_to < date:
        raise ApiProblem(422, "date_to is before date")
    table, skipped = _appointments(ctx)
    table = _between(table, date, date_to if date_to is not None else date, modality)
    if status is not None:
        table = table.filter(pl.col("status") == status)
    if patient_id is not None:
        table = table.filter(pl.col("patient_id") == patient_id)
    rows, cut = records(table)
    return {"appointments": rows, "truncated": cut, "skipped_messages": skipped}


@router.get(
    "/analytics",
    dependencies=[READ],
    summary="Per modality and day: bookings, utilisation, lead time, cancellations, no-shows",
)
def scheduling_analytics(
    ctx: Ctx,
    date_from: Day = None,
    date_to: Day = None,
    modality: Modality = None,
    day_minutes: Annotated[int, Query(ge=1, le=1440)] = 600,
) -> Any:
    table, _ = _appointments(ctx)
    summary = _between(
        analytics(table, day_minutes=day_minutes).rename({"day": "start_time"}), None, None, modality
    ).rename({"start_time": "day"})
    if date_from is not None:
        summary = summary.filter(pl.col("day") >= date_from)
    if date_to is not None:
        summary = summary.filter(pl.col("day") <= date_to)
    rows, cut = records(summary)
    return {"analytics": rows, "truncated": cut}


@router.get(
    "/conflicts",
    dependencies=[READ],
    summary="Booked appointments that overlap on one room, piece of equipment or patient",
)
def scheduling_conflicts(ctx: Ctx) -> Any:
    table, _ = _appointments(ctx)
    rows, cut = records(conflicts(table))
    return {"conflicts": rows, "truncated": cut}


@router.post(
    "/siu",
    dependencies=[WRITE],
    status_code=201,
    summary="An appointment as JSON -> SIU message, stored, then sent over MLLP",
    description="The SIU is stored before it is sent, so it counts among the appointments even "
    "when the MLLP peer is down (then the answer is a 502 problem with `stored: true`; 503 when "
    "another request has held the MLLP connection for over 2 s). `send=false` only stores it.",
)
def enter_siu(body: SiuIn, ctx: Ctx, send: bool = True) -> Any:
    message = siu_from_json(body.as_json())
    control_id = _control_id(message)
    ctx.store.log_siu(control_id, message)
    out: dict[str, Any] = {
        "control_id": control_id,
        "stored": True,
        "sent": False,
        "ack_code": None,
        "ack_text": None,
        "message": message.replace("\r", "\n"),
    }
    if send:
        try:
            with upstream("MLLP peer"), hl7_turn(ctx):
                ack = ctx.hub.hl7.send(message)
        except ApiProblem as exc:
            cause = exc.__cause__
            code = cause.ack_code if isinstance(cause, NakError) else None
            ctx.store.siu_sent(control_id, code, exc.detail[:500])
            raise ApiProblem(
                503 if exc.status == 503 else 502,  # 503: the connection was busy, nothing was sent
                exc.detail,
                extra={"control_id": control_id, "stored": True, "sent": False, "ack_code": code},
            ) from exc
        code = str(getattr(ack.code, "value", ack.code))
        ctx.store.siu_sent(control_id, code, ack.text or None)
        out.update(sent=True, ack_code=code, ack_text=ack.text or None)
    return Json(out, status_code=201)
