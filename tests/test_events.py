"""The behaviour event store on SQLite and on a real PostgreSQL server: durable acknowledgement across a
SIGKILL, 8 concurrent writer processes, atomic batches, pseudonymised and erasable users, retention.

The PostgreSQL server is started here from Debian's binaries (`apt-get install postgresql`, done by
.ci/run) on 127.0.0.1 and a free port; without them those cases are skipped with the reason printed.
"""
from __future__ import annotations

import glob
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from mmray.config import RecommendConfig
from mmray.recommend.events import KEY_ENV, EventError, EventStore, events_table, load_key

ROOT = Path(__file__).resolve().parents[1]
KEY = b"test-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields a function that creates a fresh database URL."""
    bindir = _pg_bin()
    if bindir is None:
        reason = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; apt-get install postgresql)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = tempfile.mkdtemp(prefix="mmray-pg-")
    if as_pg:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = os.path.join(tmp, "data"), _free_port()
    subprocess.run([*as_pg, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(tmp, "log"), "-o",
                    f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    import psycopg

    def new_database() -> str:
        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.sqlite"
    return request.getfixturevalue("postgres_server")()


def _store(url: str, key: bytes = KEY, **cfg) -> EventStore:
    return EventStore(url, key, RecommendConfig(event_store=url, **cfg))


def _writer_script(url: str, batches: int, batch: int, prefix: str, user: str) -> str:
    return textwrap.dedent(f"""
        import sys
        from mmray.config import RecommendConfig
        from mmray.recommend.events import EventStore
        store = EventStore({url!r}, {KEY!r}, RecommendConfig(event_store={url!r}))
        for b in range({batches}):
            store.add({user!r}, [{{"type": "view", "item_id": f"{prefix}-{{b}}-{{j}}"}} for j in range({batch})])
            print("ack", b, flush=True)
        """)


def _all_items(store: EventStore) -> list[str]:
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(events_table.select().with_only_columns(events_table.c.item_id))]


def test_acknowledged_events_survive_sigkill(store_url):
    store = _store(store_url)  # creates the table before the writer starts
    batch = 10
    proc = subprocess.Popen([sys.executable, "-c", _writer_script(store_url, 100_000, batch, "k", "killed")],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    acked = 0
    try:
        for line in proc.stdout:
            if line.startswith("ack"):
                acked += 1
            if acked >= 30:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acked >= 30, "writer died before acknowledging"
    store.close()
    reopened = _store(store_url)
    n = reopened.count("killed")
    assert acked * batch <= n <= (acked + 2) * batch  # every acknowledged batch, at most the in-flight ones beyond
    assert n % batch == 0  # batches are atomic: no half batch
    items = _all_items(reopened)
    assert len(items) == len(set(items))


def test_eight_parallel_writers_lose_and_duplicate_nothing(store_url):
    store = _store(store_url)
    writers, batches, batch = 8, 40, 25  # 8 x 1,000 events
    procs = [subprocess.Popen([sys.executable, "-c", _writer_script(store_url, batches, batch, f"w{w}", f"user{w}")],
                              stdout=subprocess.DEVNULL, cwd=ROOT) for w in range(writers)]
    assert [p.wait(timeout=300) for p in procs] == [0] * writers
    items = _all_items(store)
    expected = {f"w{w}-{b}-{j}" for w in range(writers) for b in range(batches) for j in range(batch)}
    assert len(items) == writers * batches * batch == 8000
    assert set(items) == expected
    assert all(store.count(f"user{w}") == 1000 for w in range(writers))


def test_delete_user_erases_every_row_and_the_raw_id(store_url):
    store = _store(store_url)
    raw = "shopper-raw-id-7f3e@example.com"
    store.add(raw, [{"type": "view", "item_id": f"i{j}"} for j in range(7)])
    store.add(raw, [{"type": "purchase", "item_id": "i3"}])
    store.add("someone-else", [{"type": "view", "item_id": "i1"}])
    with store.engine.connect() as conn:
        stored_keys = {r[0] for r in conn.execute(events_table.select().with_only_columns(events_table.c.user_key))}
    assert raw not in stored_keys and store.pseudonym(raw) in stored_keys

    assert store.delete_user(raw) == 8
    assert store.count(raw) == 0 and store.history(raw) == []
    assert store.count("someone-else") == 1 and store.count() == 1
    assert store.delete_user(raw) == 0
    if store.sqlite:
        store.checkpoint()
        path = store.engine.url.database
        blob = b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if os.path.exists(p))
        assert raw.encode() not in blob
        assert store.pseudonym(raw).encode() not in blob  # secure_delete: the erased rows' bytes are gone too
        assert store.pseudonym("someone-else").encode() in blob  # (the check can see a stored key)
    else:
        with store.engine.connect() as conn:
            left = conn.exec_driver_sql("SELECT count(*) FROM mmray_events WHERE user_key IN (%(a)s, %(b)s)",
                                        {"a": raw, "b": store.pseudonym(raw)}).scalar_one()
        assert left == 0


def test_stored_id_is_a_keyed_hash_that_changes_with_the_key(tmp_path):
    url = f"sqlite:///{tmp_path}/e.sqlite"
    a, b = _store(url, b"key-a"), _store(url, b"key-b")
    assert a.pseudonym("alice") == hmac.new(b"key-a", b"alice", hashlib.sha256).hexdigest()
    assert a.pseudonym("alice") != "alice"
    assert a.pseudonym("alice") != b.pseudonym("alice")
    assert a.pseudonym("alice") != a.pseudonym("bob")
    a.add("alice", [{"type": "view", "item_id": "x"}])
    assert b.history("alice") == [] and len(a.history("alice")) == 1  # another key cannot link the events


def test_key_from_env_then_secret_file_then_generated_0600(tmp_path, monkeypatch, caplog):
    url = f"sqlite:///{tmp_path}/db/e.sqlite"
    secret = tmp_path / "secret"
    secret.write_text("from-the-secret\n")
    monkeypatch.setenv(KEY_ENV, "from-the-env")
    assert load_key(RecommendConfig(events_key_file=str(secret)), url) == b"from-the-env"
    monkeypatch.delenv(KEY_ENV)
    assert load_key(RecommendConfig(events_key_file=str(secret)), url) == b"from-the-secret"
    os.makedirs(tmp_path / "db")
    generated = load_key(RecommendConfig(), url)
    key_file = tmp_path / "db" / "e.sqlite.key"
    assert len(generated) == 64 and key_file.stat().st_mode & 0o777 == 0o600
    assert "generated a pseudonymisation key" in caplog.text
    assert load_key(RecommendConfig(), url) == generated  # generated once, then reused
    with pytest.raises(ValueError, match=KEY_ENV):
        load_key(RecommendConfig(), "postgresql+psycopg://u@127.0.0.1/db")


def test_retention_on_read_and_by_the_prune_job(store_url, tmp_path, monkeypatch):
    store = _store(store_url, trust_client_timestamps=True, retention_days=30)
    now = time.time()
    store.add("u", [{"type": "view", "item_id": "old", "ts": now - 40 * 86400},
                    {"type": "view", "item_id": "recent", "ts": now - 10 * 86400},
                    {"type": "purchase", "item_id": "new", "ts": now - 1}])
    assert [e.item_id for e in store.history("u")] == ["new", "recent"]
    assert store.count() == 3 and store.count(within_retention=True) == 2
    assert "old" not in store.popularity()

    from jobs.prune_events import main
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"recommend:\n  event_store: {store_url}\n  retention_days: 30\n")
    assert main(["--config", str(cfg)]) == 0
    assert store.count() == 2 and sorted(_all_items(store)) == ["new", "recent"]
    assert store.prune() == 0


def test_server_clock_unless_the_client_is_trusted(tmp_path):
    url = f"sqlite:///{tmp_path}/e.sqlite"
    past = time.time() - 3600
    untrusted = _store(url)
    untrusted.add("u", [{"type": "view", "item_id": "a", "ts": past}])
    assert abs(untrusted.history("u")[0].ts - time.time()) < 60
    trusted = _store(url, trust_client_timestamps=True)
    trusted.add("v", [{"type": "view", "item_id": "a", "ts": past}])
    assert trusted.history("v")[0].ts == past


@pytest.mark.parametrize("bad,code", [
    ({"type": "like", "item_id": "a"}, "unknown_event_type"),
    ({"type": "view", "item_id": "not-in-the-index"}, "unknown_item"),
    ({"type": "view", "item_id": "a", "ts": time.time() + 3600}, "future_timestamp"),
    ({"type": "view", "item_id": "a", "ts": float("nan")}, "invalid_timestamp"),
    ({"type": "view", "item_id": ""}, "invalid_item"),
])
def test_malformed_batch_is_refused_whole(store_url, bad, code):
    store = _store(store_url, max_batch=5)
    known = {"a", "b"}.__contains__
    store.add("u", [{"type": "view", "item_id": "b"}], known)
    with pytest.raises(EventError) as e:
        store.add("u", [{"type": "view", "item_id": "a"}, {"type": "purchase", "item_id": "b"}, bad], known)
    assert e.value.code == code
    assert store.count() == 1  # the good events before the bad one were not written either


def test_oversized_and_empty_batches(tmp_path):
    store = _store(f"sqlite:///{tmp_path}/e.sqlite", max_batch=5)
    with pytest.raises(EventError) as e:
        store.add("u", [{"type": "view", "item_id": "a"}] * 6)
    assert e.value.code == "batch_too_large"
    with pytest.raises(EventError) as e:
        store.add("u", [])
    assert e.value.code == "empty_batch"
    assert store.add("u", [{"type": "view", "item_id": "a"}] * 5) == 5
    assert store.count() == 5


def test_sqlite_runs_wal_with_full_sync(tmp_path):
    store = _store(f"sqlite:///{tmp_path}/e.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL


def test_co_purchases_count_distinct_buyers(store_url):
    store = _store(store_url)
    store.add("a", [{"type": "purchase", "item_id": "x"}, {"type": "purchase", "item_id": "y"},
                    {"type": "purchase", "item_id": "y"}, {"type": "view", "item_id": "z"}])
    store.add("b", [{"type": "purchase", "item_id": "x"}, {"type": "purchase", "item_id": "y"},
                    {"type": "purchase", "item_id": "w"}])
    store.add("c", [{"type": "purchase", "item_id": "w"}, {"type": "purchase", "item_id": "v"}])
    assert store.co_purchases(["x"]) == {"y": 2, "w": 1}
