from __future__ import annotations

from pathlib import Path

import pytest

from clipper.exceptions import StoreError, ValidationError
from clipper.store import MemoryStore, SQLiteStore, open_store
from tests.helpers import free_port


def test_memory_url() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    store.close()


def test_four_slashes_is_an_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    with open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == path
    assert path.exists()


def test_three_slashes_is_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///data/x.db") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == Path("data/x.db")
    assert (tmp_path / "data" / "x.db").exists()


def test_no_slashes_is_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:rel/y.db") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == Path("rel/y.db")
    assert (tmp_path / "rel" / "y.db").exists()


def test_one_slash_is_an_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "z.db"
    with open_store(f"sqlite:{path}") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == path


def test_redis_url_without_a_server_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"127\.0\.0\.1"):
        open_store(f"redis://127.0.0.1:{free_port()}/0")


@pytest.mark.parametrize(
    "url", ["postgres://db/x", "", "store.db", "/tmp/store.db", "file:///tmp/x.db", "memory"]
)
def test_unknown_schemes_are_rejected(url: str) -> None:
    with pytest.raises(ValidationError, match=r"memory://.*sqlite:") as info:
        open_store(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:",
        "sqlite://host/x.db",
        "sqlite:///x.db?mode=ro",
        "memory://somewhere",
    ],
)
def test_malformed_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValidationError, match="store URL"):
        open_store(url)
