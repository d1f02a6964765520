"""Durable study state in SQLite (standard library `sqlite3`): participants, their trials, ratings.

One connection per operation, WAL journal, and every write in a `BEGIN IMMEDIATE` transaction, so
any number of server threads (and processes) write safely and a crash or restart loses nothing
that was committed. A rating is one row per (participant, position, criterion); the UNIQUE
constraint and the "only the next unrated trial" check in the same transaction make double
ratings impossible. Times are Unix seconds (float).
"""
from __future__ import annotations

import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .design import Trial

SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    id INTEGER PRIMARY KEY,
    ordinal INTEGER NOT NULL UNIQUE,      -- order of arrival: picks the Latin-square rows
    code TEXT NOT NULL UNIQUE,            -- what the participant typed or was given
    session TEXT NOT NULL UNIQUE,         -- secret id that the participant's requests carry
    created REAL NOT NULL,
    client TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS trials (
    participant INTEGER NOT NULL REFERENCES participants(id),
    position INTEGER NOT NULL,
    stimulus TEXT NOT NULL,
    condition TEXT NOT NULL,
    repeat_of INTEGER,                    -- attention check: position of the repeated trial
    shown REAL,                           -- first time it was served
    PRIMARY KEY (participant, position)
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    participant INTEGER NOT NULL REFERENCES participants(id),
    position INTEGER NOT NULL,
    criterion TEXT NOT NULL,
    score INTEGER NOT NULL,
    rated REAL NOT NULL,
    client TEXT NOT NULL DEFAULT '',
    UNIQUE (participant, position, criterion)
);
"""


@dataclass(frozen=True)
class Participant:
    id: int
    ordinal: int
    code: str
    session: str


class Store:
    """The study database at `path` (created on first use)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            conn.executescript(SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=FULL")  # a committed rating survives a power cut too
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (no upgrade deadlocks)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _read(self, sql: str, args=()) -> list[tuple]:
        """One read-only query on its own connection (WAL: it never waits for a writer)."""
        conn = self._connect()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def participant(self, *, code: str | None = None, session: str | None = None) -> Participant | None:
        """The participant with this code or session id, or None."""
        column, value = ("code", code) if code is not None else ("session", session)
        rows = self._read(f"SELECT id, ordinal, code, session FROM participants WHERE {column} = ?", (value,))
        return Participant(*rows[0]) if rows else None

    def enrol(self, code: str, trials_for: Callable[[int], list[Trial]], client: str = "") -> Participant:
        """The participant with `code`, created with `trials_for(ordinal)` if new (one transaction)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT id, ordinal, code, session FROM participants WHERE code = ?",
                               (code,)).fetchone()
            if row:
                return Participant(*row)
            ordinal = conn.execute("SELECT COUNT(*) FROM participants").fetchone()[0]
            session = secrets.token_urlsafe(18)
            pid = conn.execute("INSERT INTO participants (ordinal, code, session, created, client) "
                               "VALUES (?, ?, ?, ?, ?)", (ordinal, code, session, time.time(), client)).lastrowid
            conn.executemany("INSERT INTO trials (participant, position, stimulus, condition, repeat_of) "
                             "VALUES (?, ?, ?, ?, ?)",
                             [(pid, t.position, t.stimulus, t.condition, t.repeat_of) for t in trials_for(ordinal)])
            return Participant(pid, ordinal, code, session)

    def next_trial(self, participant: int) -> tuple[Trial | None, int]:
        """(the first trial without ratings or None when all are rated, number of trials)."""
        rows = self._read(
            "SELECT position, stimulus, condition, repeat_of FROM trials t WHERE participant = ? AND NOT EXISTS "
            "(SELECT 1 FROM ratings r WHERE r.participant = t.participant AND r.position = t.position) "
            "ORDER BY position LIMIT 1", (participant,))
        total = self._read("SELECT COUNT(*) FROM trials WHERE participant = ?", (participant,))[0][0]
        return (Trial(*rows[0]) if rows else None), total

    def mark_shown(self, participant: int, position: int) -> None:
        """Record when a trial was first served (later calls keep the first time)."""
        with self.transaction() as conn:
            conn.execute("UPDATE trials SET shown = ? WHERE participant = ? AND position = ? AND shown IS NULL",
                         (time.time(), participant, position))

    def rate(self, participant: int, position: int, scores: dict[str, int], client: str = "") -> str:
        """Store the scores of one trial if it is the participant's next unrated one.

        Returns "stored", "already rated" (nothing written) or "not yet" (a later trial; nothing written).
        """
        with self.transaction() as conn:
            done = conn.execute("SELECT COUNT(*) FROM ratings WHERE participant = ? AND position = ?",
                                (participant, position)).fetchone()[0]
            if done:
                return "already rated"
            first = conn.execute(
                "SELECT MIN(position) FROM trials t WHERE participant = ? AND NOT EXISTS (SELECT 1 FROM ratings r "
                "WHERE r.participant = t.participant AND r.position = t.position)", (participant,)).fetchone()[0]
            if first != position:
                return "not yet"
            now = time.time()
            conn.executemany("INSERT INTO ratings (participant, position, criterion, score, rated, client) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             [(participant, position, k, int(v), now, client) for k, v in scores.items()])
            return "stored"

    def ratings(self) -> list[dict]:
        """Every rating joined with its trial and participant, in a stable order (for reports)."""
        rows = self._read(
            "SELECT p.code, p.ordinal, r.position, t.stimulus, t.condition, t.repeat_of, r.criterion, r.score, "
            "t.shown, r.rated, r.client FROM ratings r JOIN trials t ON t.participant = r.participant AND "
            "t.position = r.position JOIN participants p ON p.id = r.participant ORDER BY p.ordinal, r.position, r.id")
        keys = ("participant", "ordinal", "position", "stimulus", "condition", "repeat_of", "criterion", "score",
                "shown", "rated", "client")
        return [dict(zip(keys, row)) for row in rows]

    def progress(self) -> list[tuple[str, int, int]]:
        """(code, trials rated, trials in total) per participant, in order of arrival."""
        return self._read(
            "SELECT p.code, (SELECT COUNT(DISTINCT position) FROM ratings r WHERE r.participant = p.id), "
            "(SELECT COUNT(*) FROM trials t WHERE t.participant = p.id) FROM participants p ORDER BY p.ordinal")
