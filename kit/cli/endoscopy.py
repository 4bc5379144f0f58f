"""``kit endoscopy``: the endoscopy suite's worklist, and capture of stills and clips to the PACS.

``worklist`` lists the scheduled endoscopies (Modality Worklist, modality ES)
or, with ``--performed``, the ES studies already in the PACS.
``capture SOURCE --accession ACC`` reads frames from a video file or stream
URL, stores stills and a clip into that accession's study and prints what it
stored. The vendor profile (transfer syntaxes, station AE title) comes from
kit.toml ``[endoscopy]``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import click

from kit.cli._limits import noting_truncation
from kit.cli.common import (
    AE_TITLE,
    DATE_RANGE,
    SECONDS,
    emit_frame,
    handle_errors,
    output_options,
    settings_from,
)
from kit.cli.pacs import _client, _dimse_options

__all__ = ["endoscopy"]

#: Longest a stream URL may take to open or to deliver its next frame, seconds.
OPEN_TIMEOUT = 10.0


@click.group()
def endoscopy() -> None:
    """Endoscopy: the procedure worklist, and capture of stills and clips to the PACS.

    The vendor profile (AE titles, transfer syntaxes) comes from kit.toml
    [endoscopy] vendor / overrides; connections from [pacs], defaulting to
    the embedded stack (`kit serve`).
    """


@endoscopy.command()
@click.option("--date", type=DATE_RANGE, default=None,
              help="Scheduled date: 20260203, 2026-02-03 or a range 20260201-20260228.")
@click.option("--today", is_flag=True, help="Only procedures scheduled today.")
@click.option("--station", type=AE_TITLE, default=None,
              help="Scheduled Station AE Title: the room's tower (e.g. ENDO1).")
@click.option("--patient-id", default=None, help="PatientID (MRN).")
@click.option("--accession", default=None, help="AccessionNumber.")
@click.option("--performed", is_flag=True,
              help="List the endoscopy (ES) studies already in the PACS instead of the worklist.")
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N matches (the rest cancelled), with a warning when that cut the result.")
@_dimse_options
@output_options
@click.pass_context
@handle_errors
def worklist(ctx: click.Context, date: str | None, today: bool, station: str | None, patient_id: str | None,
             accession: str | None, performed: bool, limit: int | None, url: Any, host: str | None,
             port: int | None, aet: str | None, called_aet: str | None, timeout: float | None,
             output: str | None, as_json: bool) -> None:
    """List scheduled endoscopies (Modality Worklist, modality ES), or those in the PACS.

    No match is an empty table (exit 0).

    \b
    Examples:
      kit endoscopy worklist
      kit endoscopy worklist --today --station ENDO1 --json
      kit endoscopy worklist --performed --patient-id MRN1001
    """
    from kit.endoscopy import procedures

    if today and date:
        raise click.UsageError("give --date or --today, not both")
    if performed and station:
        raise click.UsageError("--station filters the worklist; the PACS's studies have no station")
    day: Any = "today" if today else date
    client = _client(ctx, url, host, port, aet, called_aet, timeout)
    with noting_truncation():
        if performed:
            df = procedures.performed(client, date=day, patient_id=patient_id, accession=accession,
                                      limit=limit)
        else:
            df = procedures.worklist(client, date=day, station=station, patient_id=patient_id,
                                     accession=accession, limit=limit)
    emit_frame(df, output, as_json, label="procedures")


def _open_frames(source: str, seconds: float | None) -> Iterator[Any]:
    """Frames of a video file or stream URL, decoded by PyAV (``kit.endoscopy.frame.Frame``).

    Stands in for ``kit.endoscopy.source.FrameSource`` (the live source with
    reconnects and a bounded buffer); where that exists, it should be used here.
    """
    import av
    import numpy as np

    from kit.endoscopy.frame import Frame
    from kit.errors import InvalidInputError, PeerUnreachableError

    is_url = "://" in source
    options = {"rw_timeout": str(int(OPEN_TIMEOUT * 1e6)), "timeout": str(int(OPEN_TIMEOUT * 1e6))} \
        if is_url else {}
    try:
        container = av.open(source, mode="r", options=options, timeout=OPEN_TIMEOUT if is_url else None)
    except (av.FFmpegError, OSError, ValueError) as exc:
        kind = PeerUnreachableError if is_url else InvalidInputError
        raise kind(f"cannot open the video {source}: {exc}") from exc
    try:
        if not container.streams.video:
            raise InvalidInputError("no video stream", source=source)
        stream = container.streams.video[0]
        first: float | None = None
        for index, video in enumerate(container.decode(stream)):
            stamp = float(video.time) if video.time is not None else index / float(stream.average_rate or 25)
            if first is None:
                first = stamp
            if seconds is not None and stamp - first >= seconds:
                return
            image = np.asarray(video.to_ndarray(format="rgb24"), dtype=np.uint8)
            yield Frame(index, stamp - first, image, time.monotonic())
    except av.FFmpegError as exc:
        raise InvalidInputError(f"the video does not decode: {exc}", source=source) from exc
    finally:
        container.close()


@endoscopy.command()
@click.argument("source")
@click.option("--accession", required=True, help="AccessionNumber of the worklist item to capture into.")
@click.option("--seconds", type=SECONDS, default=None,
              help="Capture this many seconds of video (default: the whole file; a stream needs it).")
@click.option("--stills", type=click.IntRange(min=0, max=1000), default=3, show_default=True,
              help="How many stills, evenly spaced over the capture.")
@click.option("--no-clip", is_flag=True, help="Store only the stills, no clip.")
@click.option("--station", type=AE_TITLE, default=None,
              help="Only a worklist item scheduled on this station AE title.")
@_dimse_options
@output_options
@click.pass_context
@handle_errors
def capture(ctx: click.Context, source: str, accession: str, seconds: float | None, stills: int,
            no_clip: bool, station: str | None, url: Any, host: str | None, port: int | None,
            aet: str | None, called_aet: str | None, timeout: float | None, output: str | None,
            as_json: bool) -> None:
    """Capture stills and a clip from a video file or stream into an accession's study.

    Looks the accession up in the worklist, reads SOURCE (a file, or an
    rtsp://, http:// or udp:// URL), stores the stills (VL Endoscopic Image)
    and the clip (Video Endoscopic Image, H.264) to the PACS, finds them again
    by C-FIND and prints their UIDs.

    \b
    Examples:
      kit endoscopy capture data/samples/endoscopy/MRN1001-ES2.mp4 --accession ACC100102
      kit endoscopy capture rtsp://127.0.0.1:8554/live --accession ACC100102 --seconds 5 --stills 2 --json
    """
    from kit.endoscopy import procedures, store

    if no_clip and stills == 0:
        raise click.UsageError("nothing to capture: --no-clip with --stills 0")
    if "://" in source and seconds is None:
        raise click.UsageError("a stream URL needs --seconds (a live stream has no end)")
    settings = settings_from(ctx)
    profile = settings.endoscopy.profile()
    client = _client(ctx, url, host, port, aet, called_aet, timeout)
    procedure = procedures.find_procedure(client, accession, station=station)
    result = store.capture_procedure(client, procedure, _open_frames(source, seconds), profile=profile,
                                     stills=stills, clip=not no_clip)
    click.echo(f"stored {len(result.instances)} instance(s) into study {procedure.study_instance_uid} "
               f"(accession {accession}) and found them again", err=True)
    df = result.frame.select("kind", "sop_instance_uid", "series_instance_uid", "sop_class_uid",
                             "transfer_syntax_uid", "number_of_frames")
    emit_frame(df, output, as_json, label="instances")
