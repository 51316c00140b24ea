"""The stand-in's storage: SQLite in a folder chosen at start, so a restart loses nothing."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    source TEXT NOT NULL,          -- feed name, or the log group for Firehose
    origin TEXT NOT NULL,          -- s3://bucket/key or log stream
    event_time_ms INTEGER,
    insert_time_ms INTEGER NOT NULL,
    raw TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_dataset ON events (dataset, insert_time_ms);
CREATE TABLE IF NOT EXISTS firehose_requests (request_id TEXT PRIMARY KEY, received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    component TEXT NOT NULL,       -- collector:<feed> | firehose | xql
    kind TEXT NOT NULL,            -- auth | processing
    key_id TEXT,
    detail TEXT NOT NULL
);
"""


TIME = "coalesce(event_time_ms, insert_time_ms)"  # XSIAM's _time: the event's own time, else when it arrived


def _matching(dataset: str, needles: Sequence[str], from_ms: int, to_ms: int) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause for a dataset, a timeframe and `contains` needles joined by `or` (SQLite's LIKE is
    case-insensitive for ASCII, as XQL's comparisons are by default)."""
    where = f"dataset = ? AND {TIME} BETWEEN ? AND ?"
    if needles:
        where += " AND (" + " OR ".join(["raw LIKE ? ESCAPE '!'"] * len(needles)) + ")"
    patterns = ("%" + n.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%" for n in needles)
    return where, (dataset, from_ms, to_ms, *patterns)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Event:
    dataset: str
    source: str
    origin: str
    event_time_ms: int | None
    raw: str


class Store:
    """One connection guarded by a lock: the stand-in's threads write small batches."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "xsiam.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def add_events(self, events: Iterable[Event], firehose_request_id: str | None = None) -> int:
        """Store events atomically; a Firehose request id already stored is not stored twice."""
        stamp = now_ms()
        rows = [(e.dataset, e.source, e.origin, e.event_time_ms, stamp, e.raw) for e in events]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                if firehose_request_id is not None:
                    seen = self._db.execute("SELECT 1 FROM firehose_requests WHERE request_id = ?",
                                            (firehose_request_id,)).fetchone()
                    if seen:
                        self._db.execute("COMMIT")
                        return 0
                    self._db.execute("INSERT INTO firehose_requests VALUES (?, ?)", (firehose_request_id, stamp))
                self._db.executemany(
                    "INSERT INTO events (dataset, source, origin, event_time_ms, insert_time_ms, raw) "
                    "VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def add_failure(self, component: str, kind: str, detail: str, key_id: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO failures (at_ms, component, kind, key_id, detail) VALUES (?, ?, ?, ?, ?)",
                             (now_ms(), component, kind, key_id, detail))

    def search(self, dataset: str, needles: Sequence[str], from_ms: int, to_ms: int,
               limit: int) -> list[dict[str, Any]]:
        """Events whose raw text contains any needle, case-insensitively as XQL's `contains` (no needles: every
        event), with `_time` (the event's time, else its insertion time) in [from_ms, to_ms]."""
        where, args = _matching(dataset, needles, from_ms, to_ms)
        with self._lock:
            sql = f"SELECT dataset, source, origin, {TIME}, insert_time_ms, raw FROM events WHERE {where}"  # noqa: S608
            rows = self._db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [{"dataset": r[0], "_source": r[1], "_origin": r[2], "_time": r[3], "_insert_time": r[4],
                 "_raw_log": r[5]} for r in rows]

    def aggregate(self, dataset: str, needles: Sequence[str], from_ms: int, to_ms: int,
                  function: Literal["count", "max_time"]) -> int | None:
        """count() of the matching events, or max(_time) (None when none match). The SQL text is built from constants
        only (values are placeholders), hence the S608 waivers."""
        where, args = _matching(dataset, needles, from_ms, to_ms)
        value = "count(*)" if function == "count" else f"max({TIME})"
        with self._lock:
            row = self._db.execute(f"SELECT {value} FROM events WHERE {where}", args).fetchone()  # noqa: S608
        return None if row[0] is None else int(row[0])

    def events(self, dataset: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT dataset, source, origin, event_time_ms, raw FROM events"
        args: tuple[str, ...] = ()
        if dataset:
            query, args = query + " WHERE dataset = ?", (dataset,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [{"dataset": r[0], "source": r[1], "origin": r[2], "event_time_ms": r[3], "raw": json.loads(r[4])
                 if r[4][:1] in "{[" else r[4]} for r in rows]

    def count(self, dataset: str, needle: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM events WHERE dataset = ? AND instr(raw, ?) > 0",
                                   (dataset, needle)).fetchone()
        return int(row[0])

    def failures(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at_ms, component, kind, key_id, detail FROM failures ORDER BY id").fetchall()
        return [{"at_ms": r[0], "component": r[1], "kind": r[2], "key_id": r[3], "detail": r[4]} for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
