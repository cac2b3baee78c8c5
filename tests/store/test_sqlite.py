from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from clipper.exceptions import StoreError
from clipper.store import ConfigStore, SQLiteStore
from clipper.types import AppSpec, InputType

from .contract import StoreContract, app, model


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[], ConfigStore]:
        return lambda: SQLiteStore(tmp_path / "store.db")


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "store.db"
    spec = AppSpec(
        name="a",
        input_type=InputType.INTEGERS,
        default_output="0",
        slo_micros=1234,
        input_shape=(2, 2),
        policy="exp3",
        policy_params={"eta": 0.1},
    )
    with SQLiteStore(path) as store:
        store.add_app(spec)
        store.add_app(app("b"))
        store.add_model(model("m", "1", labels=("l1",)))
        store.add_model(model("m", "2"), make_current=False)
        store.add_model(model("n", "1"))
        store.add_links("a", ["n", "m"])
        store.set_num_replicas("m", "2", 5)
        generation = store.generation()
    assert path.exists()
    with SQLiteStore(str(path)) as store:
        assert store.list_apps() == [spec, app("b")]
        assert [(m.name, m.version) for m in store.list_models()] == [
            ("m", "1"),
            ("m", "2"),
            ("n", "1"),
        ]
        assert store.get_model("m", "1") == model("m", "1", labels=("l1",))
        assert store.get_current_version("m") == "1"
        assert store.get_links("a") == ["n", "m"]
        assert store.get_num_replicas("m", "2") == 5
        assert store.get_num_replicas("m", "1") == 1
        assert store.generation() == generation
        store.delete_app("b")
        assert store.generation() > generation


def test_file_uses_wal_and_records_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert rows == {"schema_version": 1, "generation": 0}


def test_concurrent_writes_from_threads(tmp_path: Path) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    with SQLiteStore(tmp_path / "store.db") as store:
        store.add_app(app("shared"))
        start = store.generation()

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                store.add_app(app(f"app-{t}-{i}"))
                store.add_model(model(f"m-{t}", str(i)))
                store.set_num_replicas(f"m-{t}", str(i), i)
                store.add_links("shared", [f"m-{t}-{i}"])
                store.get_links("shared")

        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(work, t) for t in range(threads)]:
                future.result()

        assert len(store.list_apps()) == 1 + threads * per_thread
        assert len(store.list_models()) == threads * per_thread
        assert len(store.get_links("shared")) == threads * per_thread
        assert store.get_current_version("m-3") == str(per_thread - 1)
        assert store.get_num_replicas("m-5", "7") == 7
        assert store.generation() == start + 4 * threads * per_thread


def test_two_stores_on_one_file_see_each_others_changes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SQLiteStore(path) as first, SQLiteStore(path) as second:

        def fill(store: SQLiteStore, prefix: str) -> None:
            for i in range(30):
                store.add_app(app(f"{prefix}-{i}"))

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(fill, first, "x"), pool.submit(fill, second, "y")]
            for future in futures:
                future.result()
        assert len(first.list_apps()) == 60
        assert first.generation() == second.generation() == 60


def test_corrupt_file_gives_store_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a sqlite database\n" * 200)
    with pytest.raises(StoreError, match=r"store\.db"):
        SQLiteStore(path)


def test_directory_path_gives_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path)


def test_newer_schema_version_gives_store_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(path)


def test_sqlite_failure_during_an_operation_is_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SQLiteStore(path) as store:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("DROP TABLE apps")
            conn.commit()
        with pytest.raises(StoreError, match="cannot list applications"):
            store.list_apps()
        with pytest.raises(StoreError, match="cannot add an application"):
            store.add_app(app("a"))
