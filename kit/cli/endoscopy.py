"""``kit endoscopy``: the endoscopy suite's live video (frames)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from kit.cli.common import OUTPUT_FILE, SECONDS, emit_frame, handle_errors, settings_from
from kit.errors import KitError, PeerDisconnectedError, VideoFileError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["endoscopy", "frame_record"]


def frame_record(frame: Any) -> dict[str, Any]:
    """``{index, timestamp, shape, mean}`` of a :class:`~kit.endoscopy.frame.Frame` (mean: all channels)."""
    return {"index": frame.index, "timestamp": round(frame.timestamp, 6),
            "shape": list(frame.image.shape), "mean": round(float(frame.image.mean()), 3)}


@click.group()
def endoscopy() -> None:
    """Endoscopy: the live video of the running procedure as frames.

    \b
      kit endoscopy frames --count 5
      kit endoscopy frames rtsp://gateway.example.org/room3 --count 100 --json
      kit endoscopy frames data/samples/endoscopy/MRN1001-ES2.mp4 --count 36 -o frames.csv
    """


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
