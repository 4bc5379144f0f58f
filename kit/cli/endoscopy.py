"""``kit endoscopy``: the endoscopy suite's worklist, live video, and capture of stills and clips.

``worklist`` lists the scheduled endoscopies (Modality Worklist, modality ES)
or, with ``--performed``, the ES studies already in the PACS. ``frames`` reads
frames from a video file, stream or capture device
(:class:`kit.endoscopy.source.FrameSource`). ``capture SOURCE --accession ACC``
reads frames the same way, stores stills and a clip into that accession's
study and prints what it stored. The vendor profile (transfer syntaxes,
station AE title) and the default stream come from kit.toml ``[endoscopy]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from kit.cli._limits import noting_truncation
from kit.cli.common import (
    AE_TITLE,
    DATE_RANGE,
    OUTPUT_FILE,
    SECONDS,
    emit_frame,
    handle_errors,
    output_options,
    settings_from,
)
from kit.cli.pacs import _client, _dimse_options
from kit.errors import KitError, PeerDisconnectedError, VideoFileError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["endoscopy"]


@click.group()
def endoscopy() -> None:
    """Endoscopy: the procedure worklist, the live video as frames, capture to the PACS.

    The vendor profile (AE titles, transfer syntaxes) and the default stream
    come from kit.toml [endoscopy] (vendor, overrides, stream_url); PACS
    connections from [pacs]; all default to the embedded stack (`kit serve`).

    \b
      kit endoscopy worklist --today --station ENDO1
      kit endoscopy frames --count 5
      kit endoscopy capture data/samples/endoscopy/MRN1001-ES2.mp4 --accession ACC100102
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


@endoscopy.command()
@click.argument("url", required=False)
@click.option("-n", "--count", type=click.IntRange(min=1), default=10, show_default=True,
              help="Frames to read, then stop.")
@click.option("--timeout", type=SECONDS, default=None,
              help="Seconds to wait for the source to open, for each frame, and for a dropped stream to "
                   "come back (default: endoscopy.timeout in kit.toml, else 10).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per frame and line, as it arrives.")
@click.option("-o", "--output", type=OUTPUT_FILE, default=None,
              help="Write the frames' table to FILE (.parquet, .csv, .json or .ndjson; its folder "
                   "must exist).")
@click.pass_context
@handle_errors
def frames(ctx: click.Context, url: str | None, count: int, timeout: float | None, as_json: bool,
           output: str | None) -> None:
    """Read COUNT frames from a video source and print index, timestamp, shape and mean intensity.

    URL is a stream (rtsp://, http://, udp://, ...), a capture device
    (/dev/video0) or a video file; default: endoscopy.stream_url in kit.toml,
    else the embedded stack's stream (`kit serve` prints it as `video
    http://127.0.0.1:8090/live.ts`). A live stream that drops is reopened
    until --timeout; a URL that does not answer fails within --timeout. With
    --json, each frame is one line {"index", "timestamp", "shape", "mean"};
    the index skips frames that were dropped. A summary (fps, dropped,
    reconnects) goes to stderr. Exits 1 if the source fails or ends before
    COUNT frames (after printing those it read).

    \b
    Examples:
      kit endoscopy frames --count 5
      kit endoscopy frames http://127.0.0.1:8090/live.ts --count 24 --json
      kit endoscopy frames data/samples/endoscopy/MRN1001-ES2.mp4 --count 36 -o frames.csv
    """
    from kit.endoscopy.probe import frame_record
    from kit.endoscopy.source import FrameSource, display_url

    settings = settings_from(ctx)
    source_url = url or settings.endoscopy.stream_url
    seconds = timeout if timeout is not None else settings.endoscopy.timeout
    rows: list[dict[str, Any]] = []
    failure: KitError | None = None
    with FrameSource(source_url, open_timeout=seconds, read_timeout=seconds,
                     reconnect_deadline=seconds, buffer_size=max(32, min(count, 256))) as source:
        try:
            for frame in source:
                record = frame_record(frame)
                rows.append(record)
                if as_json and not output:
                    click.echo(json.dumps(record))
                    sys.stdout.flush()
                if len(rows) >= count:
                    break
        except KitError as exc:
            if not rows:
                raise
            failure = exc
        stats = source.stats
    if failure is None and len(rows) < count:
        message = f"the source ended after {len(rows)} of {count} frames"
        failure = (VideoFileError(message, source=display_url(source_url)) if source.kind == "file"
                   else PeerDisconnectedError(message, peer=display_url(source_url)))
    if not as_json and not output:   # the frames read before a failure are shown too
        _print_table(rows)
    if failure is not None:
        raise failure
    if output:
        emit_frame(_table(rows), output, False, label="frames")
    click.echo(f"{len(rows)} frames from {display_url(source_url)}: {stats.fps:.1f} fps measured "
               f"({stats.nominal_fps:g} declared), {stats.dropped} dropped, {stats.reconnects} reconnects, "
               f"{stats.missed} missed", err=True)


def _table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(rows, schema={"index": pl.Int64, "timestamp": pl.Float64,
                                      "shape": pl.List(pl.Int64), "mean": pl.Float64})


def _print_table(rows: list[dict[str, Any]]) -> None:
    import polars as pl

    table = _table(rows).with_columns(
        pl.col("shape").list.eval(pl.element().cast(pl.String)).list.join("x"))
    emit_frame(table, None, False, label="frames")


def _open_frames(source: str, seconds: float | None, timeout: float) -> Iterator[Any]:
    """The frames of ``source`` (:class:`~kit.endoscopy.source.FrameSource`), ``seconds`` of them
    (all of a file without)."""
    from kit.endoscopy.source import FrameSource

    with FrameSource(source, open_timeout=timeout, read_timeout=timeout,
                     reconnect_deadline=timeout) as frames:
        first: float | None = None
        for frame in frames:
            first = frame.timestamp if first is None else first
            if seconds is not None and frame.timestamp - first >= seconds:
                return
            yield frame


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
      kit endoscopy capture http://127.0.0.1:8090/live.ts --accession ACC100102 --seconds 2 --stills 2 --json
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
    frames = _open_frames(source, seconds, settings.endoscopy.timeout)
    result = store.capture_procedure(client, procedure, frames, profile=profile, stills=stills,
                                     clip=not no_clip)
    click.echo(f"stored {len(result.instances)} instance(s) into study {procedure.study_instance_uid} "
               f"(accession {accession}) and found them again", err=True)
    df = result.frame.select("kind", "sop_instance_uid", "series_instance_uid", "sop_class_uid",
                             "transfer_syntax_uid", "number_of_frames")
    emit_frame(df, output, as_json, label="instances")
