"""The local manager (child processes) passes the container-manager contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipper.managers.local import LocalProcessManager

from .contract import Harness, MakeManager, ManagerContract


class TestLocalProcessManager(ManagerContract):
    @pytest.fixture
    def make_manager(self, tmp_path: Path) -> MakeManager:
        def make(h: Harness) -> LocalProcessManager:
            return LocalProcessManager(
                rpc_address=h.address,
                state_dir=tmp_path / "state",
                on_exit=h.on_exit,
                secret=h.secret,
                server_key=h.server_key,
                backoff_initial=0.2,
            )

        return make
