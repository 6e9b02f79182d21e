"""The behaviour event store: one interface (SQLAlchemy 2 Core) over SQLite (embedded default) and
PostgreSQL (production, by URL).

- Durable acknowledgement: `add` returns only after its transaction committed. SQLite runs in WAL
  mode with `synchronous=FULL` (each commit is fsynced), PostgreSQL with its default synchronous commit.
- One batch, one transaction: every event of a batch is validated first; any bad event fails the
  whole batch with `EventError` and nothing is written.
- Pseudonymous: user ids are stored only as HMAC-SHA256(key, user_id). The key comes from
  `MMRAY_EVENTS_KEY` or a mounted secret file (`recommend.events_key_file`); an SQLite store without
  either generates one into `<db file>.key` (0600) once and warns.
- Erasable: `delete_user` removes every row of a user; SQLite runs with `secure_delete` and the WAL
  is checkpointed and truncated afterwards, so the erased rows are gone from the files too.
- Retention: reads ignore events older than `recommend.retention_days`; `prune` deletes them.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url

from mmray.config import RecommendConfig

log = logging.getLogger("mmray.events")
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
KEY_ENV = "MMRAY_EVENTS_KEY"
DAY_S = 86400.0

metadata = MetaData()
events_table = Table(
    "mmray_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_key", String(64), nullable=False, index=True),
    Column("item_id", String(200), nullable=False, index=True),
    Column("type", String(16), nullable=False),
    Column("ts", Float, nullable=False, index=True),
)


class EventError(ValueError):
    """A batch that cannot be stored; `code` names why (the HTTP layer answers 4xx with it)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Event:
    item_id: str
    type: str
    ts: float


def load_key(cfg: RecommendConfig, url: str) -> bytes:
    """The HMAC key: env var, else the mounted secret file, else (SQLite only) a generated key file."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    if cfg.events_key_file:
        with open(cfg.events_key_file, "rb") as f:
            key = f.read().strip()
        if not key:
            raise ValueError(f"recommend.events_key_file {cfg.events_key_file!r} is empty")
        return key
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"no key to pseudonymise user ids: set {KEY_ENV} or recommend.events_key_file")
    path = parsed.database + ".key"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, "rb") as f:
            return f.read().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
        f.flush()
        os.fsync(f.fileno())
    log.warning("no %s and no recommend.events_key_file: generated a pseudonymisation key into %s (0600); "
                "back it up (losing it unlinks stored events from their users) or mount a secret", KEY_ENV, path)
    with open(path, "rb") as f:
        return f.read().strip()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA secure_delete=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


class EventStore:
    """Append, read, erase and prune behaviour events. Thread- and process-safe."""

    def __init__(self, url: str, key: bytes, cfg: RecommendConfig | None = None):
        self.cfg = cfg or RecommendConfig()
        self.url, self._key = url, key
        parsed = make_url(url)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict = {}
        if self.sqlite:
            if parsed.database and parsed.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    @classmethod
    def from_config(cls, cfg: RecommendConfig) -> EventStore:
        return cls(cfg.event_store, load_key(cfg, cfg.event_store), cfg)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ ids
    def pseudonym(self, user_id: str) -> str:
        return hmac.new(self._key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ writes
    def validate(self, user_id: str, events: Iterable[dict], known: Callable[[str], bool] | None = None,
                 now: float | None = None) -> list[Event]:
        """The batch as stored rows, or EventError for the first bad event (nothing is written)."""
        now = time.time() if now is None else now
        events = list(events)
        if not isinstance(user_id, str) or not user_id or len(user_id) > 200:
            raise EventError("invalid_user", "user_id: a non-empty string of at most 200 characters")
        if not events:
            raise EventError("empty_batch", "events: at least one event")
        if len(events) > self.cfg.max_batch:
            raise EventError("batch_too_large", f"events: at most {self.cfg.max_batch} per batch, got {len(events)}")
        out = []
        for i, e in enumerate(events):
            kind, item, ts = e.get("type"), e.get("item_id"), e.get("ts")
            if kind not in EVENT_TYPES:
                raise EventError("unknown_event_type", f"events.{i}.type: {kind!r} is not one of {', '.join(EVENT_TYPES)}")
            if not isinstance(item, str) or not item or len(item) > 200:
                raise EventError("invalid_item", f"events.{i}.item_id: a non-empty string of at most 200 characters")
            if known is not None and not known(item):
                raise EventError("unknown_item", f"events.{i}.item_id: {item!r} is not in the index")
            if ts is not None:
                if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
                    raise EventError("invalid_timestamp", f"events.{i}.ts: seconds since the epoch")
                if ts > now + self.cfg.max_clock_skew_s:
                    raise EventError("future_timestamp", f"events.{i}.ts: {ts} is in the future")
            stored_ts = float(ts) if ts is not None and self.cfg.trust_client_timestamps else now
            out.append(Event(item, kind, stored_ts))
        return out

    def add(self, user_id: str, events: Iterable[dict], known: Callable[[str], bool] | None = None,
            now: float | None = None) -> int:
        """Validate and store one batch in one transaction; returns once it is durable."""
        rows = self.validate(user_id, events, known, now)
        user_key = self.pseudonym(user_id)
        with self.engine.begin() as conn:
            conn.execute(events_table.insert(), [{"user_key": user_key, "item_id": e.item_id, "type": e.type,
                                                  "ts": e.ts} for e in rows])
        return len(rows)

    def delete_user(self, user_id: str) -> int:
        """Erase every event of `user_id`; the number erased."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(events_table).where(events_table.c.user_key == self.pseudonym(user_id))).rowcount
        if self.sqlite and n:
            self.checkpoint()
        return int(n or 0)

    def prune(self, now: float | None = None) -> int:
        """Delete events older than the retention window; the number deleted."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(events_table).where(events_table.c.ts < self._horizon(now))).rowcount
        if self.sqlite and n:
            self.checkpoint()
        return int(n or 0)

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database file and truncate it."""
        if self.sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # ------------------------------------------------------------------ reads (within retention)
    def _horizon(self, now: float | None) -> float:
        return (time.time() if now is None else now) - self.cfg.retention_days * DAY_S

    def history(self, user_id: str, limit: int | None = None, now: float | None = None) -> list[Event]:
        """The user's events within retention, newest first."""
        t = events_table.c
        q = (select(t.item_id, t.type, t.ts).where(t.user_key == self.pseudonym(user_id), t.ts >= self._horizon(now))
             .order_by(t.ts.desc(), t.id.desc()).limit(limit or self.cfg.history_limit))
        with self.engine.connect() as conn:
            return [Event(r.item_id, r.type, r.ts) for r in conn.execute(q)]

    def sequences(self, now: float | None = None) -> list[list[str]]:
        """Every user's item ids within retention, oldest first (one list per pseudonymous user; the training
        sequences of `jobs.train_recommender`)."""
        t = events_table.c
        q = select(t.user_key, t.item_id).where(t.ts >= self._horizon(now)).order_by(t.user_key, t.ts, t.id)
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for user, item in conn.execute(q):
                out.setdefault(user, []).append(item)
        return list(out.values())

    def count(self, user_id: str | None = None, now: float | None = None, within_retention: bool = False) -> int:
        t = events_table.c
        q = select(func.count()).select_from(events_table)
        if user_id is not None:
            q = q.where(t.user_key == self.pseudonym(user_id))
        if within_retention:
            q = q.where(t.ts >= self._horizon(now))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def popularity(self, now: float | None = None) -> dict[str, float]:
        """item id -> sum of event-type weights within retention."""
        t = events_table.c
        q = (select(t.item_id, t.type, func.count()).where(t.ts >= self._horizon(now)).group_by(t.item_id, t.type))
        weights = self.cfg.event_weights
        out: dict[str, float] = {}
        with self.engine.connect() as conn:
            for item, kind, n in conn.execute(q):
                out[item] = out.get(item, 0.0) + weights.get(kind, 1.0) * n
        return out

    def co_purchases(self, item_ids: list[str], now: float | None = None) -> dict[str, int]:
        """Other items bought by the users who bought any of `item_ids`: item -> number of such users."""
        t = events_table.c
        buyers = (select(t.user_key).where(t.type == "purchase", t.item_id.in_(item_ids), t.ts >= self._horizon(now))
                  .distinct().scalar_subquery())
        q = (select(t.item_id, func.count(t.user_key.distinct())).where(
            t.type == "purchase", t.user_key.in_(buyers), t.item_id.not_in(item_ids), t.ts >= self._horizon(now))
            .group_by(t.item_id))
        with self.engine.connect() as conn:
            return {item: int(n) for item, n in conn.execute(q)}
