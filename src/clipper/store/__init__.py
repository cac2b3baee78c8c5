"""The config store: where applications, models, links and replica counts live.

``open_store(url)`` picks an implementation from a URL:

    memory://                   in this process only (tests)
    sqlite:////abs/path.db      a SQLite file, absolute path (four slashes)
    sqlite:///rel/path.db       a SQLite file, path relative to the working directory
    sqlite:rel/path.db          the same, without the slashes
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from clipper.exceptions import ValidationError
from clipper.store.base import ConfigStore
from clipper.store.memory import MemoryStore
from clipper.store.sqlite import SQLiteStore

__all__ = ["ConfigStore", "MemoryStore", "SQLiteStore", "open_store"]

_ACCEPTED = "memory://, sqlite:///relative/path.db or sqlite:////absolute/path.db"


def open_store(url: str) -> ConfigStore:
    """Open the config store that ``url`` names; ValidationError for a URL it cannot use."""
    if not isinstance(url, str):
        raise ValidationError(f"store URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme == "memory":
        if parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValidationError(f"unsupported store URL {url!r}: use plain memory://")
        return MemoryStore()
    if parts.scheme == "sqlite":
        return SQLiteStore(_sqlite_path(url, parts))
    if parts.scheme in ("redis", "rediss"):
        raise ValidationError("the redis store is not available yet")
    raise ValidationError(f"unsupported store URL {url!r}: expected {_ACCEPTED}")


def _sqlite_path(url: str, parts: SplitResult) -> str:
    # As SQLAlchemy reads them: after "sqlite://" comes an empty host and a
    # slash, so "sqlite:///x.db" is relative and "sqlite:////tmp/x.db" absolute.
    # urlsplit gives "/x.db" both for that and for "sqlite:/x.db", hence the check.
    has_authority = url.strip()[len("sqlite:") :].startswith("//")
    if parts.netloc:
        raise ValidationError(
            f"unsupported store URL {url!r}: a SQLite URL has no host; expected {_ACCEPTED}"
        )
    if parts.query or parts.fragment:
        raise ValidationError(f"unsupported store URL {url!r}: SQLite URLs take no options")
    path = parts.path[1:] if has_authority else parts.path
    if not path:
        raise ValidationError(f"store URL {url!r} names no database file; expected {_ACCEPTED}")
    return path
