"""A config store in one SQLite file (WAL mode), safe to share between threads."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipper.exceptions import StoreError
from clipper.store.base import (
    APP_FIELDS,
    APP_STRUCTURED_FIELDS,
    MODEL_FIELDS,
    MODEL_STRUCTURED_FIELDS,
    ConfigStore,
    States,
    StatesUpdate,
    app_from_record,
    app_to_record,
    check_max_user_states,
    check_replicas,
    check_uid,
    check_uids,
    dump_evidence,
    dump_json,
    dump_policy_states,
    duplicate_app,
    duplicate_model,
    load_evidence,
    load_policy_state,
    missing_app,
    missing_version,
    model_from_record,
    model_to_record,
    rollout_from_json,
    rollout_to_json,
)
from clipper.types import AppSpec, ModelSpec, RolloutSpec

log = logging.getLogger(__name__)

SHARED = ""  # the uid of an application's shared policy state

SCHEMA_VERSION = 5

# The current schema, for a new file. An older file gets the same tables from
# _MIGRATIONS, so a column added here is added there too, at the end.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY, input_type TEXT NOT NULL, default_output TEXT NOT NULL,
    slo_micros INTEGER NOT NULL, input_shape TEXT, policy TEXT NOT NULL,
    policy_params TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS model_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
    input_type TEXT NOT NULL, labels TEXT NOT NULL, container_name TEXT NOT NULL,
    model_data_path TEXT NOT NULL, batch_size INTEGER NOT NULL,
    is_current INTEGER NOT NULL DEFAULT 0, num_replicas INTEGER NOT NULL DEFAULT 1,
    options TEXT NOT NULL DEFAULT '{}',
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS links (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    model TEXT NOT NULL,
    UNIQUE (app, model)
);
CREATE INDEX IF NOT EXISTS links_by_model ON links (model);
CREATE TABLE IF NOT EXISTS policy_states (
    app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    uid TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, uid)
);
CREATE TABLE IF NOT EXISTS policy_state_users (
    app TEXT PRIMARY KEY REFERENCES apps (name) ON DELETE CASCADE,
    users INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    model TEXT PRIMARY KEY, spec TEXT NOT NULL, evidence TEXT
);
"""
# policy_states.updated_seq orders an app's states by their last write (larger
# is more recent; rows from before version 4 have 0, the oldest); the user-state
# cap removes the smallest first. policy_state_users counts each app's user
# states (uid "" excluded), so checking the cap costs no scan.

# Indexes on columns that migrations add: created once the schema is current.
_INDEXES = ("CREATE INDEX IF NOT EXISTS policy_states_by_age ON policy_states (app, updated_seq)",)


def _add_updated_seq(conn: sqlite3.Connection) -> None:
    # A file of version 1 or 2 got policy_states from _SCHEMA, column included.
    columns = [row[1] for row in conn.execute("PRAGMA table_info(policy_states)")]
    if "updated_seq" not in columns:
        conn.execute("ALTER TABLE policy_states ADD COLUMN updated_seq INTEGER NOT NULL DEFAULT 0")


# Schema version -> the statements (or functions of the connection) that bring a
# file of that version to the next one.
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
    1: (
        "ALTER TABLE apps ADD COLUMN options TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE model_versions ADD COLUMN options TEXT NOT NULL DEFAULT '{}'",
    ),
    # _SCHEMA has already created the table by now; this keeps the step explicit.
    2: (
        """CREATE TABLE IF NOT EXISTS policy_states (
            app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
            uid TEXT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (app, uid)
        )""",
    ),
    # Version 4: the user-state cap. Old states keep loading; they count as
    # the least recently written ones.
    3: (
        _add_updated_seq,
        """CREATE TABLE IF NOT EXISTS policy_state_users (
            app TEXT PRIMARY KEY REFERENCES apps (name) ON DELETE CASCADE,
            users INTEGER NOT NULL
        )""",
        """INSERT OR REPLACE INTO policy_state_users (app, users)
            SELECT app, count(*) FROM policy_states WHERE uid != '' GROUP BY app""",
    ),
    # Version 5: rollouts (_SCHEMA has created the table already; explicit all the same).
    4: (
        """CREATE TABLE IF NOT EXISTS rollouts (
            model TEXT PRIMARY KEY, spec TEXT NOT NULL, evidence TEXT
        )""",
    ),
}

# The columns of apps and model_versions are named after the record fields
# (see base.py); the structured ones hold JSON text (NULL for None).
_APP_COLUMNS = ", ".join(APP_FIELDS)
_APP_INSERT = f"INSERT INTO apps ({_APP_COLUMNS}) VALUES ({', '.join(f':{f}' for f in APP_FIELDS)})"
_APP_UPDATE = (
    "UPDATE apps SET "
    + ", ".join(f"{field} = :{field}" for field in APP_FIELDS if field != "name")
    + " WHERE name = :name"
)
_MODEL_COLUMNS = ", ".join(MODEL_FIELDS)
_MODEL_INSERT = (
    f"INSERT INTO model_versions ({_MODEL_COLUMNS}) "
    f"VALUES ({', '.join(f':{f}' for f in MODEL_FIELDS)})"
)
_MODEL_UPDATE = (
    "UPDATE model_versions SET "
    + ", ".join(f"{field} = :{field}" for field in MODEL_FIELDS if field not in ("name", "version"))
    + " WHERE name = :name AND version = :version"
)


def _to_row(record: dict[str, Any], structured: frozenset[str]) -> dict[str, Any]:
    return {
        field: dump_json(value, field) if field in structured and value is not None else value
        for field, value in record.items()
    }


def _from_row(row: sqlite3.Row, structured: frozenset[str]) -> dict[str, Any]:
    return {
        field: json.loads(value) if field in structured and value is not None else value
        for field, value in zip(row.keys(), row, strict=True)
    }


def _app_row(spec: AppSpec) -> dict[str, Any]:
    return _to_row(app_to_record(spec), APP_STRUCTURED_FIELDS)


def _app_from_row(row: sqlite3.Row) -> AppSpec:
    return app_from_record(_from_row(row, APP_STRUCTURED_FIELDS))


def _model_row(spec: ModelSpec) -> dict[str, Any]:
    return _to_row(model_to_record(spec), MODEL_STRUCTURED_FIELDS)


def _model_from_row(row: sqlite3.Row) -> ModelSpec:
    return model_from_record(_from_row(row, MODEL_STRUCTURED_FIELDS))


class SQLiteStore(ConfigStore):
    """A :class:`ConfigStore` kept in the SQLite file at ``path``.

    One connection, shared by all threads behind a lock. Each change runs in
    its own ``BEGIN IMMEDIATE`` transaction, so other processes opening the
    same file see either all of it or none of it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the directory of {self.path}: {e}") from e
        try:
            # isolation_level=None: no implicit transactions; writes open their own below.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the config store {self.path}: {e}") from e
        try:
            self._init_db()
        except BaseException as e:
            self._conn.close()
            self._closed = True
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"cannot open the config store {self.path}: {e}") from e
            raise

    def _init_db(self) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        with conn:
            # Not executescript(): it would commit the transaction that makes this atomic.
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', 0)")
            elif row["value"] != SCHEMA_VERSION:
                self._migrate(conn, row["value"])
            for statement in _INDEXES:
                conn.execute(statement)

    def _migrate(self, conn: sqlite3.Connection, version: object) -> None:
        """Bring a file of an older schema version up to date, in the open transaction.

        The caller's transaction makes it all or nothing: a failure part way
        leaves the file at its old version, untouched.
        """
        if not isinstance(version, int) or version not in _MIGRATIONS:
            raise StoreError(
                f"config store {self.path} has schema version {version}, "
                f"this version of clipper reads version {SCHEMA_VERSION}"
            )
        try:
            while version < SCHEMA_VERSION:
                for step in _MIGRATIONS[version]:
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step)
                version += 1
        except sqlite3.Error as e:
            raise StoreError(
                f"cannot migrate config store {self.path} to schema version {version + 1}: {e}"
            ) from e
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        log.info("migrated config store %s to schema version %d", self.path, SCHEMA_VERSION)

    @contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"config store {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise StoreError(f"config store {self.path}: cannot {what}: {e}") from e

    @contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so checks made inside the
        # transaction still hold when it commits, even with other processes.
        with self._reading(what) as conn, conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    @staticmethod
    def _app_exists(conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone() is not None

    # Applications

    def add_app(self, spec: AppSpec) -> None:
        """Register an application; ValidationError if the name is taken."""
        row = _app_row(spec)
        with self._writing("add an application") as conn:
            try:
                conn.execute(_APP_INSERT, row)
            except sqlite3.IntegrityError:
                raise duplicate_app(spec.name) from None
            self._bump(conn)

    def get_app(self, name: str) -> AppSpec | None:
        """Return the application called ``name``, or None."""
        with self._reading("read an application") as conn:
            sql = f"SELECT {_APP_COLUMNS} FROM apps WHERE name = ?"
            row = conn.execute(sql, (name,)).fetchone()
            return _app_from_row(row) if row is not None else None

    def list_apps(self) -> list[AppSpec]:
        """Return every application, sorted by name."""
        with self._reading("list applications") as conn:
            rows = conn.execute(f"SELECT {_APP_COLUMNS} FROM apps ORDER BY name").fetchall()
            return [_app_from_row(row) for row in rows]

    def update_app(self, spec: AppSpec) -> None:
        """Replace the record of an existing application; NotFoundError if absent."""
        row = _app_row(spec)
        with self._writing("update an application") as conn:
            cursor = conn.execute(_APP_UPDATE, row)
            if cursor.rowcount == 0:
                raise missing_app(spec.name)
            self._bump(conn)

    def delete_app(self, name: str) -> bool:
        """Delete an application and its links; False if there was none."""
        with self._writing("delete an application") as conn:
            # The links and policy states go with it: ON DELETE CASCADE.
            if conn.execute("DELETE FROM apps WHERE name = ?", (name,)).rowcount == 0:
                return False
            self._bump(conn)
            return True

    # Models

    def add_model(self, spec: ModelSpec, make_current: bool = True) -> None:
        """Add a model version, optionally making it the current one."""
        row = _model_row(spec)
        with self._writing("add a model version") as conn:
            try:
                conn.execute(_MODEL_INSERT, row)
            except sqlite3.IntegrityError:
                raise duplicate_model(spec.name, spec.version) from None
            if make_current:
                self._make_current(conn, spec.name, spec.version)
            self._bump(conn)

    def update_model(self, spec: ModelSpec) -> None:
        """Replace the record of an existing model version; NotFoundError if absent."""
        row = _model_row(spec)
        with self._writing("update a model version") as conn:
            # is_current and num_replicas are not in the record, so they stay.
            if conn.execute(_MODEL_UPDATE, row).rowcount == 0:
                raise missing_version(spec.name, spec.version)
            self._bump(conn)

    def get_model(self, name: str, version: str) -> ModelSpec | None:
        """Return one model version, or None."""
        with self._reading("read a model version") as conn:
            row = conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM model_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            return _model_from_row(row) if row is not None else None

    def list_models(self, name: str | None = None) -> list[ModelSpec]:
        """Return model versions, sorted by name, then by the order they were added."""
        with self._reading("list models") as conn:
            rows = conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM model_versions "
                "WHERE ?1 IS NULL OR name = ?1 ORDER BY name, seq",
                (name,),
            ).fetchall()
            return [_model_from_row(row) for row in rows]

    def delete_model_version(self, name: str, version: str) -> bool:
        """Delete a model version; False if there was none."""
        with self._writing("delete a model version") as conn:
            cursor = conn.execute(
                "DELETE FROM model_versions WHERE name = ? AND version = ?", (name, version)
            )
            if cursor.rowcount == 0:
                return False
            left = conn.execute("SELECT 1 FROM model_versions WHERE name = ?", (name,)).fetchone()
            if left is None:
                conn.execute("DELETE FROM links WHERE model = ?", (name,))
            self._bump(conn)
            return True

    def get_current_version(self, name: str) -> str | None:
        """Return the model's current version, or None."""
        with self._reading("read the current version") as conn:
            row = conn.execute(
                "SELECT version FROM model_versions WHERE name = ? AND is_current = 1", (name,)
            ).fetchone()
            return row["version"] if row is not None else None

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current one; NotFoundError if it does not exist."""
        with self._writing("set the current version") as conn:
            if not self._make_current(conn, name, version):
                raise missing_version(name, version)
            self._bump(conn)

    @staticmethod
    def _make_current(conn: sqlite3.Connection, name: str, version: str) -> bool:
        cursor = conn.execute(
            "UPDATE model_versions SET is_current = (version = ?) WHERE name = ? "
            "AND EXISTS (SELECT 1 FROM model_versions WHERE name = ? AND version = ?)",
            (version, name, name, version),
        )
        return cursor.rowcount > 0

    # Links

    def add_links(self, app: str, models: list[str]) -> None:
        """Link models to an application, keeping order; already linked ones are skipped."""
        with self._writing("link models") as conn:
            if not self._app_exists(conn, app):
                raise missing_app(app)
            cursor = conn.executemany(
                "INSERT OR IGNORE INTO links (app, model) VALUES (?, ?)",
                [(app, model) for model in models],
            )
            if cursor.rowcount > 0:
                self._bump(conn)

    def remove_links(self, app: str, models: list[str]) -> None:
        """Unlink models from an application; ones not linked are ignored."""
        with self._writing("unlink models") as conn:
            if not self._app_exists(conn, app):
                raise missing_app(app)
            cursor = conn.executemany(
                "DELETE FROM links WHERE app = ? AND model = ?",
                [(app, model) for model in models],
            )
            if cursor.rowcount > 0:
                self._bump(conn)

    def get_links(self, app: str) -> list[str]:
        """Return the models linked to an application in link order; [] if unknown."""
        with self._reading("read links") as conn:
            rows = conn.execute("SELECT model FROM links WHERE app = ? ORDER BY seq", (app,))
            return [row["model"] for row in rows.fetchall()]

    def apps_linked_to(self, model: str) -> list[str]:
        """Return the names of the applications linked to a model, sorted."""
        with self._reading("read links") as conn:
            rows = conn.execute("SELECT app FROM links WHERE model = ? ORDER BY app", (model,))
            return [row["app"] for row in rows.fetchall()]

    # Replicas

    def set_num_replicas(self, name: str, version: str, n: int) -> None:
        """Set a model version's replica count."""
        check_replicas(n)
        with self._writing("set the number of replicas") as conn:
            cursor = conn.execute(
                "UPDATE model_versions SET num_replicas = ? WHERE name = ? AND version = ?",
                (n, name, version),
            )
            if cursor.rowcount == 0:
                raise missing_version(name, version)
            self._bump(conn)

    def get_num_replicas(self, name: str, version: str) -> int:
        """Return a model version's replica count (1 unless set); NotFoundError if absent."""
        with self._reading("read the number of replicas") as conn:
            row = conn.execute(
                "SELECT num_replicas FROM model_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                raise missing_version(name, version)
            return int(row["num_replicas"])

    # Policy states (not configuration: they leave the generation alone)

    def get_policy_state(self, app: str, uid: str) -> dict[str, Any] | None:
        """Return the state stored for (``app``, ``uid``), or None."""
        check_uid(uid)
        with self._reading("read a policy state") as conn:
            row = conn.execute(
                "SELECT state FROM policy_states WHERE app = ? AND uid = ?", (app, uid)
            ).fetchone()
        return load_policy_state(row["state"]) if row is not None else None

    def update_policy_states(
        self, app: str, uids: Sequence[str], update: StatesUpdate, *, max_user_states: int = 0
    ) -> States:
        """Atomically replace several states of one application, in one step;
        past ``max_user_states`` user states, the least recently written go.

        The reads and the writes (the removals too) share one ``BEGIN
        IMMEDIATE`` transaction, so no other writer, in this process or
        another, can come between them.
        """
        uids = check_uids(uids)
        cap = check_max_user_states(max_user_states)
        with self._writing("update policy states") as conn:
            if not self._app_exists(conn, app):
                raise missing_app(app)
            marks = ", ".join("?" * len(uids))
            rows = conn.execute(
                f"SELECT uid, state FROM policy_states WHERE app = ? AND uid IN ({marks})",
                (app, *uids),
            ).fetchall()
            stored = {row["uid"]: load_policy_state(row["state"]) for row in rows}
            # If update() or the check raises, the transaction rolls back untouched.
            texts = dump_policy_states(uids, update({u: stored.get(u) for u in uids}))
            seq = conn.execute(
                "SELECT coalesce(max(updated_seq), 0) FROM policy_states WHERE app = ?", (app,)
            ).fetchone()[0]
            conn.executemany(
                "INSERT INTO policy_states (app, uid, state, updated_seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app, uid) DO UPDATE "
                "SET state = excluded.state, updated_seq = excluded.updated_seq",
                [(app, u, text, seq + i) for i, (u, text) in enumerate(texts.items(), 1)],
            )
            new_users = sum(1 for u in uids if u != SHARED and u not in stored)
            if new_users:
                self._count_new_users(conn, app, new_users, cap)
        return {u: load_policy_state(text) for u, text in texts.items()}

    @staticmethod
    def _count_new_users(conn: sqlite3.Connection, app: str, new: int, cap: int) -> None:
        """Count ``new`` user states of ``app``; past ``cap`` (if any), delete the oldest."""
        # No RETURNING: it needs SQLite 3.35, and some systems' Python has an older one.
        conn.execute(
            "INSERT INTO policy_state_users (app, users) VALUES (?, ?) "
            "ON CONFLICT (app) DO UPDATE SET users = users + excluded.users",
            (app, new),
        )
        users = conn.execute(
            "SELECT users FROM policy_state_users WHERE app = ?", (app,)
        ).fetchone()[0]
        if cap and users > cap:
            removed = conn.execute(
                "DELETE FROM policy_states WHERE rowid IN (SELECT rowid FROM policy_states "
                "WHERE app = ? AND uid != '' ORDER BY updated_seq LIMIT ?)",
                (app, users - cap),
            ).rowcount
            conn.execute(
                "UPDATE policy_state_users SET users = users - ? WHERE app = ?", (removed, app)
            )

    def delete_policy_states(self, app: str) -> int:
        """Delete every policy state of an application; return how many there were."""
        with self._writing("delete policy states") as conn:
            conn.execute("DELETE FROM policy_state_users WHERE app = ?", (app,))
            return conn.execute("DELETE FROM policy_states WHERE app = ?", (app,)).rowcount

    # Rollouts (the spec and its evidence share a row, so they go together)

    def put_rollout(self, spec: RolloutSpec) -> None:
        """Store the rollout of ``spec.model``, replacing the one it had."""
        text = rollout_to_json(spec)
        with self._writing("store a rollout") as conn:
            conn.execute(
                "INSERT INTO rollouts (model, spec) VALUES (?, ?) "
                "ON CONFLICT (model) DO UPDATE SET spec = excluded.spec",
                (spec.model, text),
            )
            self._bump(conn)

    def list_rollouts(self) -> list[RolloutSpec]:
        """Return every rollout, sorted by model name."""
        with self._reading("list rollouts") as conn:
            rows = conn.execute("SELECT spec FROM rollouts ORDER BY model").fetchall()
        return [rollout_from_json(row["spec"]) for row in rows]

    def delete_rollout(self, model: str) -> bool:
        """Delete a model's rollout and its evidence; False if it had none."""
        with self._writing("delete a rollout") as conn:
            if conn.execute("DELETE FROM rollouts WHERE model = ?", (model,)).rowcount == 0:
                return False
            self._bump(conn)
            return True

    def save_rollout_evidence(self, model: str, evidence: dict[str, Any]) -> None:
        """Keep the figures of a model's rollout (the generation stays)."""
        text = dump_evidence(evidence)
        with self._writing("save rollout evidence") as conn:
            conn.execute("UPDATE rollouts SET evidence = ? WHERE model = ?", (text, model))

    def get_rollout_evidence(self, model: str) -> dict[str, Any] | None:
        """Return the evidence last kept for ``model``, or None."""
        with self._reading("read rollout evidence") as conn:
            row = conn.execute("SELECT evidence FROM rollouts WHERE model = ?", (model,)).fetchone()
        if row is None or row["evidence"] is None:
            return None
        return load_evidence(row["evidence"])

    # Housekeeping

    def generation(self) -> int:
        """Return the change counter, as stored in the file."""
        with self._reading("read the generation") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            if row is None:
                raise StoreError(f"config store {self.path} has no generation counter")
            return int(row["value"])

    def close(self) -> None:
        """Close the connection; later calls raise StoreError."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
