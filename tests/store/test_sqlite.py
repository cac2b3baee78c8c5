from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from clipper.exceptions import StoreError
from clipper.store import ConfigStore, SQLiteStore
from clipper.store.sqlite import SCHEMA_VERSION
from clipper.types import AppOptions, AppSpec, InputType, ModelOptions, ModelSpec, RolloutSpec

from .contract import StoreContract, app, hammer_state, increment, model


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
        options=AppOptions.parse({"cache": False, "api_keys": ["k" * 16]}),
    )
    gpu = ModelOptions.parse({"ray_num_gpus": 1, "ray_resources": {"gpu_box": 2}})
    with SQLiteStore(path) as store:
        store.add_app(spec)
        store.add_app(app("b"))
        store.add_model(model("m", "1", labels=("l1",), options=gpu))
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
        assert store.get_model("m", "1") == model("m", "1", labels=("l1",), options=gpu)
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
    assert rows == {"schema_version": SCHEMA_VERSION, "generation": 0}
    assert SCHEMA_VERSION == 5


# The schema of version 1, before options, as that release created it.
_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE apps (
    name TEXT PRIMARY KEY, input_type TEXT NOT NULL, default_output TEXT NOT NULL,
    slo_micros INTEGER NOT NULL, input_shape TEXT, policy TEXT NOT NULL,
    policy_params TEXT NOT NULL
);
CREATE TABLE model_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
    input_type TEXT NOT NULL, labels TEXT NOT NULL, container_name TEXT NOT NULL,
    model_data_path TEXT NOT NULL, batch_size INTEGER NOT NULL,
    is_current INTEGER NOT NULL DEFAULT 0, num_replicas INTEGER NOT NULL DEFAULT 1,
    UNIQUE (name, version)
);
CREATE TABLE links (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    model TEXT NOT NULL,
    UNIQUE (app, model)
);
CREATE INDEX links_by_model ON links (model);
INSERT INTO meta VALUES ('schema_version', 1), ('generation', 7);
INSERT INTO apps VALUES ('a', 'floats', 'none', 2000, '[3, 2]', 'exp3', '{"eta": 0.1}');
INSERT INTO apps VALUES ('b', 'json', '-1', 100000, NULL, 'single', '{}');
INSERT INTO model_versions
    (name, version, input_type, labels, container_name, model_data_path, batch_size,
     is_current, num_replicas)
VALUES
    ('m', '1', 'doubles', '["l1"]', 'sklearn', '/data/m1', 8, 0, 3),
    ('m', '2', 'doubles', '[]', 'python-closure', '', -1, 1, 1);
INSERT INTO links (app, model) VALUES ('a', 'm');
"""


def _make_v1_file(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(_V1_SCHEMA)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _make_v1_file(path)
    with SQLiteStore(path) as store:
        assert store.list_apps() == [
            AppSpec(
                name="a",
                input_type=InputType.FLOATS,
                default_output="none",
                slo_micros=2000,
                input_shape=(3, 2),
                policy="exp3",
                policy_params={"eta": 0.1},
            ),
            app("b", input_type=InputType.JSON, input_shape=None),
        ]
        assert store.list_models() == [
            ModelSpec(
                name="m",
                version="1",
                input_type=InputType.DOUBLES,
                labels=("l1",),
                container_name="sklearn",
                model_data_path="/data/m1",
                batch_size=8,
            ),
            model("m", "2"),
        ]
        assert all(a.options == AppOptions() for a in store.list_apps())
        assert all(m.options == ModelOptions() for m in store.list_models())
        assert store.get_current_version("m") == "2"
        assert store.get_num_replicas("m", "1") == 3
        assert store.get_links("a") == ["m"]
        # Migrating is not a change of the configuration.
        assert store.generation() == 7
        # The new column takes writes at once.
        store.update_model(model("m", "1", labels=("l1",), options=ModelOptions(batching="fixed")))
        store.update_app(app("b", options=AppOptions(overload="503")))
        assert store.generation() == 9
    with closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert rows == {"schema_version": SCHEMA_VERSION, "generation": 9}
        assert _columns(conn, "apps")[-1] == "options"
        assert _columns(conn, "policy_states") == ["app", "uid", "state", "updated_seq"]
        assert _columns(conn, "model_versions")[-1] == "options"
    # Reopening a migrated file migrates nothing again.
    with SQLiteStore(path) as store:
        got = store.get_model("m", "1")
        assert got is not None
        assert got.options == ModelOptions(batching="fixed")
        assert got.labels == ("l1",)
        assert store.get_num_replicas("m", "1") == 3
        app_b = store.get_app("b")
        assert app_b is not None
        assert app_b.options.overload == "503"
        assert app_b.options.to_json() == {"overload": "503"}
        # And so does the new table, cascade included.
        assert store.get_policy_state("a", "u") is None
        assert store.update_policy_state("a", "u", increment) == {"n": 1}
        assert store.generation() == 9
        store.delete_app("a")
        assert store.get_policy_state("a", "u") is None


# Version 2 added options; version 3 added policy_states.
_V2_SCHEMA = (
    _V1_SCHEMA.replace(
        "policy_params TEXT NOT NULL\n);",
        "policy_params TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}'\n);",
    )
    .replace(
        "UNIQUE (name, version)",
        "options TEXT NOT NULL DEFAULT '{}',\n    UNIQUE (name, version)",
    )
    .replace("('schema_version', 1)", "('schema_version', 2)")
    .replace("'single', '{}');", "'single', '{}', '{\"team\": \"t\"}');")
    .replace("'exp3', '{\"eta\": 0.1}');", "'exp3', '{\"eta\": 0.1}', '{}');")
)


def _make_v2_file(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(_V2_SCHEMA)


def test_version_2_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _make_v2_file(path)
    with closing(sqlite3.connect(path)) as conn:
        assert "policy_states" not in _tables(conn)
        assert _columns(conn, "apps")[-1] == "options"
    with SQLiteStore(path) as store:
        assert [a.name for a in store.list_apps()] == ["a", "b"]
        app_b = store.get_app("b")
        assert app_b is not None
        # An option this release does not know is kept as stored, and not read.
        assert app_b.options == AppOptions.from_record({"team": "t"})
        assert app_b.options.to_json() == {"team": "t"} and app_b.options.cache is True
        assert store.get_links("a") == ["m"]
        assert store.get_num_replicas("m", "1") == 3
        assert store.generation() == 7
        assert store.get_policy_state("a", "") is None
        store.update_policy_state("a", "", increment)
        store.update_policy_state("b", "u", increment)
        assert store.update_policy_state("a", "", increment) == {"n": 2}
        assert store.generation() == 7
    with closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert rows == {"schema_version": SCHEMA_VERSION, "generation": 7}
        assert conn.execute("SELECT count(*) FROM policy_states").fetchone()[0] == 2
    with SQLiteStore(path) as store:
        assert store.get_policy_state("a", "") == {"n": 2}
        assert store.delete_app("a") is True
        assert store.get_policy_state("a", "") is None
        assert store.get_policy_state("b", "u") == {"n": 1}


# Version 4 added the user-state cap: policy_states.updated_seq and policy_state_users.
_V3_SCHEMA = (
    _V2_SCHEMA.replace("('schema_version', 2)", "('schema_version', 3)")
    + """
CREATE TABLE policy_states (
    app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    uid TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (app, uid)
);
INSERT INTO policy_states VALUES ('a', '', '{"n": 10}'), ('a', 'old1', '{"n": 1}'),
    ('a', 'old2', '{"n": 2}'), ('a', 'old3', '{"n": 3}'), ('b', 'other', '{"n": 4}');
"""
)


def _make_v3_file(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(_V3_SCHEMA)


def test_version_3_file_is_migrated_and_its_states_count_as_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _make_v3_file(path)
    with SQLiteStore(path) as store:
        assert store.get_policy_state("a", "") == {"n": 10}
        assert store.get_policy_state("a", "old2") == {"n": 2}
        assert store.get_policy_state("b", "other") == {"n": 4}
        store.update_policy_state("a", "old3", increment, max_user_states=3)
        assert store.get_policy_state("a", "old3") == {"n": 4}
        # Three users already (counted by the migration): a new one removes an old one.
        store.update_policy_state("a", "new", increment, max_user_states=3)
        kept = [u for u in ("old1", "old2", "old3", "new") if store.get_policy_state("a", u)]
        assert len(kept) == 3 and kept[-2:] == ["old3", "new"]
        assert store.get_policy_state("a", "") == {"n": 10}
        assert store.generation() == 7
    with closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert rows == {"schema_version": SCHEMA_VERSION, "generation": 7}
        counts = dict(conn.execute("SELECT app, users FROM policy_state_users").fetchall())
        assert counts == {"a": 3, "b": 1}


def _make_v4_file(path: Path) -> None:
    # Version 5 added the rollouts table; a version 4 file is a current one without it.
    with SQLiteStore(path) as store:
        store.add_app(AppSpec("a", InputType.DOUBLES, "-1", 100_000))
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP TABLE rollouts")
        conn.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")


def test_version_4_file_is_migrated_and_takes_rollouts(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _make_v4_file(path)
    with SQLiteStore(path) as store:
        assert store.list_rollouts() == []
        spec = RolloutSpec.build("m", "1", "2", "canary")
        store.put_rollout(spec)
        assert store.list_rollouts() == [spec]
        assert [a.name for a in store.list_apps()] == ["a"]
    with closing(sqlite3.connect(path)) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (SCHEMA_VERSION,)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _indexes(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql")
    return {(row[0], row[1]) for row in rows}


@pytest.mark.parametrize(
    "make_old",
    [_make_v1_file, _make_v2_file, _make_v3_file, _make_v4_file],
    ids=["v1", "v2", "v3", "v4"],
)
def test_migrated_and_new_files_have_the_same_schema(
    tmp_path: Path, make_old: Callable[[Path], None]
) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    make_old(old)
    SQLiteStore(old).close()
    SQLiteStore(new).close()
    with closing(sqlite3.connect(old)) as a, closing(sqlite3.connect(new)) as b:
        assert _tables(a) == _tables(b)
        assert _indexes(a) == _indexes(b)
        tables = ("meta", "apps", "model_versions", "links", "policy_states", "policy_state_users")
        for table in tables:
            info_a = list(a.execute(f"PRAGMA table_info({table})"))
            info_b = list(b.execute(f"PRAGMA table_info({table})"))
            assert info_a == info_b, table
            keys_a = list(a.execute(f"PRAGMA foreign_key_list({table})"))
            keys_b = list(b.execute(f"PRAGMA foreign_key_list({table})"))
            assert keys_a == keys_b, table


def test_failed_migration_leaves_the_file_at_version_1(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _make_v1_file(path)
    # Something the first ALTER succeeds on but the second one cannot do.
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE model_versions ADD COLUMN options TEXT")
    with pytest.raises(StoreError, match="schema version 2"):
        SQLiteStore(path)
    with closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert rows == {"schema_version": 1, "generation": 7}
        assert "options" not in _columns(conn, "apps")
        assert conn.execute("SELECT count(*) FROM model_versions").fetchone()[0] == 2


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


def test_two_stores_on_one_file_lose_no_state_update(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SQLiteStore(path) as first, SQLiteStore(path) as second:
        first.add_app(app("a"))
        before = first.generation()
        hammer_state([first, second], threads=8, per_thread=50)
        assert first.get_policy_state("a", "u") == second.get_policy_state("a", "u") == {"n": 400}
        assert first.get_policy_state("a", "") == {"n": 200}
        assert second.generation() == before


def test_policy_state_update_holds_the_write_lock(tmp_path: Path) -> None:
    """Another store's write waits while an update is between its read and its write."""
    path = tmp_path / "store.db"
    inside, release = threading.Event(), threading.Event()
    with SQLiteStore(path) as first, SQLiteStore(path) as second:
        first.add_app(app("a"))

        def slow(state: dict[str, object] | None) -> dict[str, object]:
            inside.set()
            assert release.wait(10)
            return {"by": "first"}

        with ThreadPoolExecutor(2) as pool:
            slow_update = pool.submit(first.update_policy_state, "a", "u", slow)
            assert inside.wait(10)
            racing = pool.submit(second.update_policy_state, "a", "u", lambda s: {"after": s})
            # The racing update cannot get in before the slow one commits.
            time.sleep(0.2)
            assert not racing.done()
            release.set()
            assert slow_update.result() == {"by": "first"}
            assert racing.result() == {"after": {"by": "first"}}
        assert second.get_policy_state("a", "u") == {"after": {"by": "first"}}


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


# Options as the release before typed options wrote them: the validated dict, as
# JSON text with sorted keys (api_keys already replaced by their digests).
_OLD_APP_OPTIONS = '{"api_key_sha256": ["' + "ab" * 32 + '"], "cache": false, "overload": "503"}'
_OLD_MODEL_OPTIONS = (
    '{"batching": "fixed", "max_batch_delay_ms": 2.5, "max_replicas": 4, "memory_limit_mb": 512, '
    '"min_replicas": 0, "queue_capacity": 7, "ray_placement": "pack", '
    '"ray_resources": {"gpu_box": 1, "node_b": 0.5}, "scale_down_after_s": 30}'
)


def test_options_written_by_the_previous_release_load_and_write_back_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    with SQLiteStore(path) as store:
        store.add_app(app("a"))
        store.add_app(app("b"))
        store.add_model(model("m", "1"))
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE apps SET options = ? WHERE name = 'a'", (_OLD_APP_OPTIONS,))
        conn.execute("UPDATE model_versions SET options = ?", (_OLD_MODEL_OPTIONS,))
    with SQLiteStore(path) as store:
        a = store.get_app("a")
        m = store.get_model("m", "1")
        b = store.get_app("b")
        assert a is not None and m is not None and b is not None
        assert a.options == AppOptions(cache=False, overload="503", api_key_sha256=("ab" * 32,))
        assert m.options.batching == "fixed" and m.options.queue_capacity == 7
        assert (m.options.min_replicas, m.options.max_replicas) == (0, 4)
        assert m.options.ray_resources == {"gpu_box": 1, "node_b": 0.5}
        assert b.options == AppOptions() and b.options.to_json() == {}
        # Written back as they were read: the same JSON text, byte for byte.
        store.update_app(a)
        store.update_app(b)
        store.update_model(m)
    with closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT name, options FROM apps").fetchall())
        assert rows == {"a": _OLD_APP_OPTIONS, "b": "{}"}
        (text,) = conn.execute("SELECT options FROM model_versions").fetchone()
        assert text == _OLD_MODEL_OPTIONS
