"""The durable message store behind the MLLP listener: SQLite in WAL mode (I/O).

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode
``NORMAL`` already survives a crash of the process (the committed WAL frames
are in the OS page cache), but a power loss or kernel crash can roll back the
last transactions -- and those were already acknowledged with AA. ``FULL``
fsyncs the WAL on every commit, so an AA is never sent for a message that a
power cut could lose. The cost (one fsync per commit) is paid once per batch:
:meth:`MessageStore.add_many` stores many messages in one transaction, and the
listener groups the messages that arrive together on all connections into one
commit (group commit).

Duplicates: a duplicate is the same sender (MSH-3 sending application, MSH-4
sending facility), the same MSH-10 control id *and* the same content
(:func:`kit.hl7.message.content_hash`, SHA-256 of the segments); a second copy is
not stored, only counted (``counters.duplicates``). A message that reuses a
sender's control id with other content (senders that recycle ids: an A08
after an A01 with the same MSH-10) is stored and flagged ``reused_control_id``.

Schema versions (``PRAGMA user_version``): 2 adds ``content_hash`` and
``reused_control_id`` and makes the content part of the unique key; a store
written by an older kit (version 0) is migrated in one transaction when opened.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from kit.errors import KitError, StoreError
from kit.hl7.frames import to_frames
from kit.hl7.listen_fast import MshValues, msh_values
from kit.hl7.message import Message, content_hash, parse_message

log = logging.getLogger(__name__)

__all__ = ["MESSAGE_COLUMNS", "MessageStore", "Received", "StoredResult"]

#: Columns of :meth:`MessageStore.messages` and :meth:`MessageStore.since`.
MESSAGE_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "id": pl.Int64, "received_time": pl.Datetime("us"), "peer": pl.String,
    "sending_application": pl.String, "sending_facility": pl.String, "control_id": pl.String,
    "message_type": pl.String, "raw": pl.String, "content_hash": pl.String,
    "reused_control_id": pl.Boolean,
}

SCHEMA_VERSION = 2

_MESSAGES = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    received_time TEXT NOT NULL,
    peer TEXT NOT NULL DEFAULT '',
    sending_application TEXT NOT NULL,
    sending_facility TEXT NOT NULL,
    control_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    raw TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    reused_control_id INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sending_application, sending_facility, control_id, content_hash)
)"""
_COUNTERS = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
_V1_COLUMNS = "id, received_time, peer, sending_application, sending_facility, control_id, message_type, raw"

#: Counter names kept in the store.
COUNTERS = ("duplicates", "rejected", "framing_errors")


@dataclasses.dataclass(frozen=True)
class Received:
    """One received message to store: its parsed form, its text and who sent it.

    The stored values (sender, control id, type, content hash) are read from the
    message when this is built, so a message whose values cannot be read fails
    here, before it reaches a storage transaction. ``values``, the message's header
    values (:func:`kit.hl7.listen_fast.msh_values`), is read here unless given.
    """

    message: Message
    raw: str
    peer: str = ""
    values: MshValues | None = dataclasses.field(default=None, compare=False, repr=False)
    key: tuple[str, str, str] = dataclasses.field(init=False)
    message_type: str = dataclasses.field(init=False)
    content_hash: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        v = self.values if self.values is not None else msh_values(self.message)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "key", (v.sending_application, v.sending_facility, v.control_id))
        object.__setattr__(self, "message_type", v.message_type)
        object.__setattr__(self, "content_hash", content_hash(self.message))


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """Outcome of storing one message: its row id, whether it was a duplicate (same sender, id
    and content), and whether it reuses a control id already stored with other content."""

    rowid: int
    duplicate: bool
    reused_control_id: bool = False


class MessageStore:
    """Received HL7 messages in an SQLite database (WAL, ``synchronous=FULL``).

    Parameters
    ----------
    path : str or Path
        The database file (created with its folder if missing).

    Notes
    -----
    Thread-safe: one connection guarded by a lock. Several processes may read
    the same file while a listener writes (WAL readers do not block the writer).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._create_or_migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the message store {self.path}: {exc}") from exc

    def _create_or_migrate(self) -> None:
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            version = int(cur.execute("PRAGMA user_version").fetchone()[0])
            exists = cur.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='messages'").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(f"the message store {self.path} has schema version {version}, newer than "
                                 f"this kit's {SCHEMA_VERSION}")
            if not exists:
                cur.execute(_MESSAGES.format(name="messages"))
            elif version < SCHEMA_VERSION:
                self._migrate_v1(cur)
            cur.execute(_COUNTERS)
            cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _migrate_v1(self, cur: sqlite3.Cursor) -> None:
        """Version 0/1 (unique sender + control id) to 2: add the content hash, widen the unique key."""
        cur.execute(_MESSAGES.format(name="messages_v2"))
        rows = cur.execute(f"SELECT {_V1_COLUMNS} FROM messages ORDER BY id").fetchall()
        for row in rows:
            raw = str(row[7])
            try:
                digest = content_hash(parse_message(raw))
            except KitError:  # stored before it was checked: hash its text
                digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
            cur.execute(f"INSERT INTO messages_v2 ({_V1_COLUMNS}, content_hash) VALUES (?,?,?,?,?,?,?,?,?)",
                        (*row, digest))
        cur.execute("DROP TABLE messages")
        cur.execute("ALTER TABLE messages_v2 RENAME TO messages")
        log.info("migrated the message store %s to schema version %d (%d messages)", self.path,
                 SCHEMA_VERSION, len(rows))

    # -- writing -------------------------------------------------------------------------------
    def add(self, message: Message, raw: str, peer: str = "") -> StoredResult:
        """Store one message durably (committed, fsynced) and return its row id / duplicate flag."""
        return self.add_many([Received(message, raw, peer)])[0]

    def add_many(self, items: Sequence[Received]) -> list[StoredResult]:
        """Store messages in one transaction; returns when it is committed to disk.

        Raises
        ------
        kit.errors.StoreError
            The transaction could not be committed (nothing of it is stored).
        """
        now = dt.datetime.now().isoformat(timespec="microseconds")
        results: list[StoredResult] = []
        with self._lock:
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    dups = 0
                    for it in items:
                        same_id = cur.execute(
                            "SELECT id, content_hash FROM messages WHERE sending_application=? "
                            "AND sending_facility=? AND control_id=? ORDER BY id", it.key).fetchall()
                        copy = next((int(r[0]) for r in same_id if r[1] == it.content_hash), None)
                        if copy is not None:
                            results.append(StoredResult(copy, True))
                            dups += 1
                            continue
                        reused = bool(same_id)
                        cur.execute(
                            f"INSERT INTO messages ({_V1_COLUMNS[4:]}, content_hash, reused_control_id) "
                            "VALUES (?,?,?,?,?,?,?,?,?)",
                            (now, it.peer, *it.key, it.message_type, it.raw, it.content_hash, int(reused)))
                        results.append(StoredResult(int(cur.lastrowid or 0), False, reused))
                    if dups:
                        self._bump(cur, "duplicates", dups)
                    cur.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                        cur.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"cannot store messages in {self.path}: {exc}") from exc
        return results

    def increment(self, counter: str, by: int = 1) -> None:
        """Add ``by`` to a counter (``duplicates``, ``rejected``, ``framing_errors``)."""
        self.add_counts({counter: by})

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add to several counters in one transaction (one fsync), e.g. those a listener gathered
        while its store was busy."""
        unknown = set(counts) - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown counters {sorted(unknown)}; expected some of {COUNTERS}")
        with self._lock:
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    for counter, by in counts.items():
                        self._bump(cur, counter, by)
                    cur.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"cannot update counters in {self.path}: {exc}") from exc

    @staticmethod
    def _bump(cur: sqlite3.Cursor, counter: str, by: int) -> None:
        cur.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (counter, by))

    # -- reading -------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the message store {self.path}: {exc}") from exc

    def count(self) -> int:
        """Number of distinct messages stored."""
        return int(self._query("SELECT count(*) FROM messages")[0][0])  # type: ignore[call-overload]

    def counters(self) -> dict[str, int]:
        """``duplicates``, ``rejected`` and ``framing_errors`` so far (0 when never counted)."""
        found = {str(k): int(v) for k, v in self._query("SELECT name, value FROM counters")}  # type: ignore[call-overload]
        return {name: found.get(name, 0) for name in COUNTERS}

    def since(self, rowid: int = 0) -> pl.DataFrame:
        """Messages with ``id > rowid``, oldest first (columns :data:`MESSAGE_COLUMNS`)."""
        rows = self._query(f"SELECT {_V1_COLUMNS}, content_hash, reused_control_id FROM messages "
                           "WHERE id > ? ORDER BY id", (rowid,))
        raw_types = {"received_time": pl.String, "reused_control_id": pl.Int64}
        df = pl.DataFrame(rows, schema={k: raw_types.get(k, v) for k, v in MESSAGE_COLUMNS.items()},
                          orient="row")
        return df.with_columns(pl.col("received_time").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f",
                                                                       time_unit="us"),
                               pl.col("reused_control_id").cast(pl.Boolean))

    def messages(self) -> pl.DataFrame:
        """All stored messages, oldest first (columns :data:`MESSAGE_COLUMNS`)."""
        return self.since(0)

    def stats(self) -> pl.DataFrame:
        """Per message type: ``message_type``, ``messages``, ``first_received``, ``last_received``."""
        return (self.messages().group_by("message_type")
                .agg(pl.len().cast(pl.Int64).alias("messages"),
                     pl.col("received_time").min().alias("first_received"),
                     pl.col("received_time").max().alias("last_received"))
                .sort("message_type"))

    def frames(self) -> dict[str, pl.DataFrame]:
        """Replay the stored messages into :func:`kit.hl7.frames.to_frames`'s tables.

        Every stored message is in the tables it belongs to or in ``skipped``
        (``message_number`` is its 1-based position in :meth:`messages`).
        """
        return to_frames(self.messages()["raw"].to_list())

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> MessageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
