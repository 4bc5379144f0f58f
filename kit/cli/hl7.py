"""``kit hl7``: listen for, send, parse and count HL7 v2 messages."""

from __future__ import annotations

import signal
import ssl
import sys
import threading
from pathlib import Path

import click
import polars as pl

from kit.cli.common import emit_frame, handle_errors, output_options, progress, settings_from
from kit.config import HL7Settings
from kit.errors import ConfigError

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
      kit hl7 listen --port 2575 --store feed.db
      kit hl7 send feed.hl7 --host 127.0.0.1 --port 2575
      kit hl7 parse feed.hl7 -o tables/
      kit hl7 stats --store feed.db
    """


@hl7.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=None,
              help="TCP port (0 = ephemeral; default: kit.toml [hl7] port, else 2575).")
@click.option("--store", "store", type=click.Path(dir_okay=False), required=True,
              help="SQLite file the received messages are stored in (created if missing).")
@click.option("--idle-timeout", type=float, default=300.0, show_default=True,
              help="Close a connection after this many seconds without data.")
@click.option("--max-message-bytes", type=int, default=None,
              help="Largest accepted message (default: kit.toml [hl7] max_message_bytes, 16 MiB).")
@click.option("--accept-unknown-types", is_flag=True,
              help="Store message types outside HL7 table 0076 instead of answering AR.")
@click.pass_context
@handle_errors
def listen(ctx: click.Context, host: str, port: int | None, store: str, idle_timeout: float,
           max_message_bytes: int | None, accept_unknown_types: bool) -> None:
    """Receive HL7 messages over MLLP until Ctrl-C or SIGTERM.

    Every message is committed to STORE before it is answered AA; duplicates
    (same MSH-3, MSH-4, MSH-10) are stored once. Prints one line with the
    address, e.g. `mllp  mllp://127.0.0.1:2575`.
    """
    from kit.hl7.mllp import MLLPListener

    s = settings_from(ctx).hl7
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    listener = MLLPListener(store, host=host, port=s.port if port is None else port,
                            max_message_bytes=max_message_bytes or s.max_message_bytes,
                            idle_timeout=idle_timeout, ssl_context=_server_tls(s),
                            accept_unknown_types=accept_unknown_types)
    with listener:
        click.echo(f"mllp  {listener.address}")
        sys.stdout.flush()
        click.echo(f"store {Path(store).resolve()}", err=True)
        while not stop.wait(0.5):
            pass
        counts = dict(listener.counts)
    click.echo("stopped: " + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)


@hl7.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default=None, help="MLLP peer (default: kit.toml [hl7] host, else 127.0.0.1).")
@click.option("--port", type=int, default=None, help="MLLP port (default: kit.toml [hl7] port, else 2575).")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each ACK (default 30).")
@click.option("--attempts", type=int, default=3, show_default=True,
              help="Tries per message on disconnect, timeout or AE (AR is final).")
@output_options
@click.pass_context
@handle_errors
def send(ctx: click.Context, files: tuple[str, ...], host: str | None, port: int | None,
         timeout: float | None, attempts: int, output: str | None, as_json: bool) -> None:
    """Send the messages in FILES (ER7; one message per MSH) and print one row per ACK.

    Exits 1 if any message was not acknowledged AA/CA.
    """
    from kit.hl7.message import split_messages
    from kit.hl7.mllp import MLLPSender, RetryPolicy

    s = settings_from(ctx).hl7
    messages = [m for f in files for m in split_messages(Path(f).read_bytes())]
    with MLLPSender(host or s.host, port or s.port, timeout=timeout or s.timeout,
                    retry=RetryPolicy(max_attempts=attempts), ssl_context=_client_tls(s)) as sender:
        acks = sender.send_many(progress(messages, total=len(messages), desc="send"))
    emit_frame(acks, output, as_json, label="acks")
    failed = acks.filter(pl.col("error").is_not_null())
    if failed.height:
        click.echo(f"kit: error: {failed.height} of {acks.height} messages not accepted; first: "
                   f"{failed['error'][0]}".splitlines()[0], err=True)
        sys.exit(1)


@hl7.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for one <table>.parquet per table.")
@handle_errors
def parse(files: tuple[str, ...], out_dir: str) -> None:
    """Parse HL7 files into tables (messages, patients, visits, orders, results, appointments, documents).

    Writes one parquet file per table to OUT_DIR and prints the row counts.
    """
    from kit.hl7.frames import TABLES, read_file

    parts = [read_file(f) for f in progress(files, total=len(files), desc="parse")]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for table in TABLES:
        df = pl.concat([p[table] for p in parts], how="vertical")
        df.write_parquet(out / f"{table}.parquet")
        rows.append({"table": table, "rows": df.height, "file": str(out / f"{table}.parquet")})
    emit_frame(pl.DataFrame(rows), None, False)


@hl7.command()
@click.option("--store", "store", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The listener's SQLite store.")
@output_options
@handle_errors
def stats(store: str, output: str | None, as_json: bool) -> None:
    """Messages per type in a listener's store, plus duplicates, rejections and framing errors."""
    from kit.hl7.store import MessageStore

    with MessageStore(store) as db:
        table = db.stats()
        counters = db.counters()
        total = db.count()
    emit_frame(table, output, as_json, label="message types")
    click.echo(f"total {total}, " + ", ".join(f"{k} {v}" for k, v in counters.items()), err=True)
