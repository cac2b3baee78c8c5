from __future__ import annotations

from collections.abc import Callable

import pytest

from clipper.store import ConfigStore, MemoryStore

from .contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self) -> Callable[[], ConfigStore]:
        return MemoryStore


def test_config_store_is_abstract() -> None:
    with pytest.raises(TypeError):
        ConfigStore()  # type: ignore[abstract]
