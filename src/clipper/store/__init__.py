"""The config store: where applications, models, links and replica counts live.

``open_store(url)`` picks an implementation from a URL:

    memory://                   in this process only (tests)
    sqlite:////abs/path.db      a SQLite file, absolute path (four slashes)
    sqlite:///rel/path.db       a SQLite file, path relative to the working directory
    sqlite:rel/path.db          the same, without the slashes
    redis://host:port/db        a Redis server, shared by several frontends
    rediss://host:port/db       the same over TLS; both take ?prefix=name (keys
                                under name:..., default clipper) besides
                                redis-py's own options
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from clipper.exceptions import ValidationError
from clipper.store.base import ConfigStore
from clipper.store.memory import MemoryStore
from clipper.store.sqlite import SQLiteStore

__all__ = ["ConfigStore", "MemoryStore", "SQLiteStore", "open_store"]

_ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db or redis://host:port/db"
)


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
        return _open_redis(parts)
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


def _open_redis(parts: SplitResult) -> ConfigStore:
    # Imported here: redis-py is an optional extra, and only this URL needs it.
    try:
        from clipper.store.redis import RedisStore
    except ImportError as e:
        raise ValidationError(
            f"a redis:// store needs the redis package ({e}); "
            "install clipper-serve[redis] or pip install 'redis>=5'"
        ) from None
    # prefix is ours; the other options are redis-py's, so they stay in the URL.
    options = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in options if key == "prefix"]
    if len(prefixes) > 1:
        raise ValidationError("the store URL gives ?prefix= more than once")
    if prefixes and not prefixes[0]:
        raise ValidationError("the store URL's ?prefix= is empty")
    rest = urlencode([(key, value) for key, value in options if key != "prefix"])
    url = urlunsplit(parts._replace(query=rest))
    if prefixes:
        return RedisStore(url, prefix=prefixes[0])
    return RedisStore(url)
