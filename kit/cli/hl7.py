"""``kit hl7``: listen for, send, parse and count HL7 v2 messages."""

from __future__ import annotations

import signal
import ssl
import sys
import threading
import time
from pathlib import Path

import click

from kit.cli._dask import dask_address, dask_option, dataset_table, open_client
from kit.cli.common import (
    EPHEMERAL_PORT,
    HOST,
    MLLP_URL,
    OUT_DIR,
    PORT,
    SECONDS,
    emit_frame,
    handle_errors,
    listen_host,
    output_options,
    progress,
    settings_from,
)
from kit.config import HL7Settings
from kit.errors import ConfigError, InvalidInputError

__all__ = ["hl7"]


def _client_tls(s: HL7Settings) -> ssl.SSLContext | None:
    if not s.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=s.tls_ca)
        if s.tls_cert:
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("hl7.tls_ca", f"cannot load TLS files: {exc}") from exc
    return ctx


def _server_tls(s: HL7Settings) -> ssl.SSLContext | None:
    if not s.tls:
        return None
    if not s.tls_cert:
        raise ConfigError("hl7.tls_cert", "a listener with tls = true needs tls_cert (and tls_key)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=s.tls_ca)
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("hl7.tls_cert", f"cannot load TLS files: {exc}") from exc
    return ctx


@click.group()
def hl7() -> None:
    """HL7 v2 over MLLP: run a durable listener, send files, parse files into tables.

    \b
      kit hl7 listen --port 2576 --store feed.db
      kit hl7 send data/samples/hl7/feed.hl7 --url mllp://127.0.0.1:2575
      kit hl7 parse data/samples/hl7/feed.hl7 --out-dir tables
      kit hl7 stats --store ~/.cache/kit/stack/mllp.db
    """


#: --retries default for `kit hl7 send`: a refused connection gives up after 1.5 s (0.5 s, 1 s)
DEFAULT_RETRIES = 2


@hl7.command()
@click.option("--host", type=HOST, default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=EPHEMERAL_PORT, default=None,
              help="TCP port (0 = ephemeral; default: kit.toml [hl7] port, else 2575).")
@click.option("--store", "store", type=click.Path(dir_okay=False), required=True,
              help="SQLite file the received messages are stored in (created if missing).")
@click.option("--idle-timeout", type=SECONDS, default=300.0, show_default=True,
              help="Close a connection after this many seconds without data.")
@click.option("--max-message-bytes", type=click.IntRange(min=1), default=None,
              help="Largest accepted message (default: kit.toml [hl7] max_message_bytes, 16 MiB).")
@click.option("--max-segments", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Most segments a message may have (and 20 times as many fields); more is answered "
                   "AR before the message is parsed, so that one message cannot hold gigabytes.")
@click.option("--max-buffered-bytes", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="Bytes of unfinished frames all connections together may hold (default 256 MiB, at "
                   "least twice --max-message-bytes); past it, the connections whose frames started the "
                   "longest ago are closed (their senders resend).")
@click.option("--accept-unknown-types", is_flag=True,
              help="Store message types outside HL7 table 0076 instead of answering AR.")
@click.pass_context
@handle_errors
def listen(ctx: click.Context, host: str, port: int | None, store: str, idle_timeout: float,
           max_message_bytes: int | None, max_segments: int, max_buffered_bytes: int | None,
           accept_unknown_types: bool) -> None:
    """Receive HL7 messages over MLLP until Ctrl-C or SIGTERM.

    Every message is committed to STORE before it is answered AA; duplicates
    (same MSH-3, MSH-4, MSH-10 and content) are stored once, and a reused control
    id with other content is stored and flagged. If an internal worker dies the
    command exits 1 with the reason. Prints one line with the
    address, e.g. `mllp  mllp://127.0.0.1:2575`.

    \b
    Examples:
      kit hl7 listen --port 0 --store feed.db
    """
    from kit.hl7.mllp import MLLPListener

    s = settings_from(ctx).hl7
    _parent_folder(store, "--store")
    listen_host(host, "hl7 listen --host")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    max_message_bytes = max_message_bytes or s.max_message_bytes
    if max_buffered_bytes is not None and max_buffered_bytes < max_message_bytes:
        raise click.BadParameter(f"must be at least the largest message ({max_message_bytes} bytes)",
                                 param_hint="--max-buffered-bytes")
    listener = MLLPListener(store, host=host, port=s.port if port is None else port,
                            max_message_bytes=max_message_bytes,
                            idle_timeout=idle_timeout, ssl_context=_server_tls(s),
                            accept_unknown_types=accept_unknown_types, max_segments=max_segments,
                            max_buffered_bytes=max_buffered_bytes)
    with listener:
        click.echo(f"mllp  {listener.address}")
        sys.stdout.flush()
        click.echo(f"store {Path(store).resolve()}", err=True)
        while not stop.wait(0.5):
            listener.check()  # a dead worker: exit 1 with the reason, never accept into a void
        counts = dict(listener.counts)
    click.echo("stopped: " + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)


def _parent_folder(path: str, option: str) -> None:
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise click.BadParameter(f"folder {parent} does not exist (kit does not create parent folders)",
                                 param_hint=option)


@hl7.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--url", type=MLLP_URL, default=None,
              help="The peer as `kit serve` prints it: mllp://host:port (instead of --host/--port).")
@click.option("--host", type=HOST, default=None,
              help="MLLP peer (default: kit.toml [hl7] host, else 127.0.0.1).")
@click.option("--port", type=PORT, default=None,
              help="MLLP port (default: kit.toml [hl7] port, else [stack] mllp_port, 2575).")
@click.option("--timeout", type=SECONDS, default=None, help="Seconds to wait for each ACK (default 30).")
@click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES, show_default=True,
              help="Retries per message after a refused connection, disconnect, timeout or AE "
                   "(AR is final); backoff 0.5 s, doubling.")
@click.option("--attempts", type=click.IntRange(min=1), default=None, hidden=True,
              help="Tries per message: the older spelling of --retries N-1.")
@output_options
@click.pass_context
@handle_errors
def send(ctx: click.Context, files: tuple[str, ...], url: tuple[str, int] | None, host: str | None,
         port: int | None, timeout: float | None, retries: int, attempts: int | None,
         output: str | None, as_json: bool) -> None:
    """Send the messages in FILES (ER7; one message per MSH) and print one row per ACK.

    Exits 1 if the peer cannot be reached or any message was not acknowledged AA/CA.

    \b
    Examples:
      kit hl7 send data/samples/hl7/feed.hl7
      kit hl7 send data/samples/hl7/feed.hl7 --url mllp://127.0.0.1:2575 -o acks.csv
    """
    import polars as pl

    from kit.errors import PeerUnreachableError
    from kit.hl7.message import split_messages
    from kit.hl7.mllp import MLLPSender, RetryPolicy

    if url is not None:
        if host is not None or port is not None:
            raise click.UsageError("--url names the peer: give it without --host or --port")
        host, port = url
    s = settings_from(ctx).hl7
    messages = [m for f in files for m in split_messages(Path(f).read_bytes())]
    if not messages:
        raise InvalidInputError(f"no HL7 message (MSH segment) in {', '.join(files)}")
    retry = RetryPolicy.from_retries(attempts - 1 if attempts else retries)
    with MLLPSender(host or s.host, port or s.port, timeout=timeout or s.timeout,
                    retry=retry, ssl_context=_client_tls(s)) as sender:
        for attempt in range(1, retry.max_attempts + 1):  # an unreachable peer fails once, not per message
            try:
                sender.connect()
                break
            except PeerUnreachableError as exc:
                if attempt == retry.max_attempts:
                    raise PeerUnreachableError(f"{str(exc).removesuffix(f' ({sender.peer})')} (gave up "
                                               f"after {attempt} attempt(s))", peer=sender.peer) from exc
                time.sleep(retry.delay(attempt + 1))
        acks = sender.send_many(progress(messages, total=len(messages), desc="send"))
    emit_frame(acks, output, as_json, label="acks")
    failed = acks.filter(pl.col("error").is_not_null())
    if failed.height:
        click.echo(f"kit: error: {failed.height} of {acks.height} messages not accepted; first: "
                   f"{failed['error'][0]}".splitlines()[0], err=True)
        sys.exit(1)


@hl7.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", type=OUT_DIR, default=None,
              help="Write every table into this folder, one TABLE.parquet each (created if missing); "
                   "with --dask one folder per table, TABLE/part-NNNNN.parquet per input file.")
@click.option("--table", default="results", show_default=True,
              help="The table -o, --json and the printed table show.")
@click.option("--max-message-bytes", type=click.IntRange(min=1), default=None, metavar="BYTES",
              show_default="64 MiB, kit.hl7.archive.DEFAULT_MAX_MESSAGE_BYTES",
              help="Longest message read (from a line starting with MSH to the next one): a longer "
                   "one stops the parse with an error naming the file and the message's byte offset, "
                   "rather than be read whole. Raise it for messages with large embedded documents.")
@dask_option
@output_options
@click.pass_context
@handle_errors
def parse(ctx: click.Context, files: tuple[str, ...], out_dir: str | None, table: str,
          max_message_bytes: int | None, dask: str | None, output: str | None, as_json: bool) -> None:
    """Parse HL7 files into tables (messages, patients, visits, orders, results, appointments, ...).

    With --out-dir, writes one parquet file per table and prints the row
    counts; files are read a chunk of messages at a time, so memory stays flat
    whatever their size. Otherwise prints one table (--table, default results), or writes
    it with -o FILE (.parquet, .csv, .json, .ndjson) or --json.

    \b
    Examples:
      kit hl7 parse data/samples/hl7/feed.hl7
      kit hl7 parse data/samples/hl7/feed.hl7 --out-dir tables
      kit hl7 parse data/samples/hl7/feed.hl7 --table orders -o orders.csv
      kit hl7 parse data/samples/hl7/feed.hl7 --dask local --out-dir tables-dask

    With --dask each file is parsed on a Dask worker (they must see the files
    at the same paths) and written as partitioned parquet folders.
    """
    import polars as pl

    from kit.hl7 import archive
    from kit.hl7.frames import TABLES

    if table not in TABLES:
        raise click.BadParameter(f"{table!r} is not a table; choose from {', '.join(TABLES)}",
                                 param_hint="--table")
    if out_dir and (output or as_json):
        raise click.UsageError("--out-dir writes every table; -o/--json write one: give one of them")
    address = dask_address(ctx, dask)
    if address:
        if not out_dir:
            raise click.UsageError("with --dask the result is a partitioned parquet folder: "
                                   "give --out-dir DIR")
        _parse_on_dask(ctx, address, files, out_dir, max_message_bytes)
        return
    cap = archive.DEFAULT_MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
    if out_dir:  # chunk by chunk into the parquet files: memory bounded whatever the files' size
        emit_frame(archive.write_tables(files, out_dir, max_message_bytes=cap), None, False)
        return
    parts = [chunk for f in progress(files, total=len(files), desc="parse")  # read_file's tables, capped
             for chunk in archive.read_file_chunks(f, tables=[table, "messages"], max_message_bytes=cap)]
    if not any(p["messages"].height for p in parts):
        raise InvalidInputError(f"no HL7 message (MSH segment) in {', '.join(files)}")
    emit_frame(pl.concat([p[table] for p in parts], how="vertical"), output, as_json, label=f"{table} rows")


def _parse_on_dask(ctx: click.Context, address: str, files: tuple[str, ...], out_dir: str,
                   max_message_bytes: int | None) -> None:
    from kit.scale.frames import hl7_dataset
    from kit.scale.run import prepare_dataset

    s = settings_from(ctx).dask
    with open_client(ctx, address) as client:
        result = hl7_dataset(list(files), out_dir, client=client, timeout=s.timeout, progress=True,
                             max_message_bytes=max_message_bytes)
    if not result.rows.get("messages"):
        prepare_dataset(result.folder)  # removes the empty parts: a failure is not an empty dataset
        raise InvalidInputError(f"no HL7 message (MSH segment) in {', '.join(files)}")
    emit_frame(dataset_table([(t, n, result.folder / t) for t, n in result.rows.items()],
                             result.partitions), None, False)


@hl7.command()
@click.option("--store", "store", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The listener's SQLite store.")
@output_options
@handle_errors
def stats(store: str, output: str | None, as_json: bool) -> None:
    """Messages per type in a listener's store, plus duplicates, rejections and framing errors.

    \b
    Examples:
      kit hl7 stats --store ~/.cache/kit/stack/mllp.db      # the store of `kit serve`
    """
    from kit.hl7.store import MessageStore

    with MessageStore(store) as db:
        table = db.stats()
        counters = db.counters()
        total = db.count()
    emit_frame(table, output, as_json, label="message types")
    click.echo(f"total {total}, " + ", ".join(f"{k} {v}" for k, v in counters.items()), err=True)
