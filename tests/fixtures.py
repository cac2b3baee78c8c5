"""Fixtures shared by the test folders that run a real server (e2e, oip, observability).

A folder's ``conftest.py`` ships its models to the containers and names its fixture:

    ship_by_value(models)
    clipper = clipper_fixture("clipper-state")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest

from tests.helpers import Clipper


def ship_by_value(*modules: ModuleType) -> None:
    """Pickle what ``modules`` define by value: the containers cannot import the
    tests package, so a model function deployed from there travels whole."""
    for module in modules:
        cloudpickle.register_pickle_by_value(module)


@contextmanager
def running_clipper(state_dir: Path, **kwargs: Any) -> Iterator[Clipper]:
    """A real server in ``state_dir`` (``Clipper``'s other arguments in ``kwargs``),
    stopped on the way out with every replica it started, whatever happened inside."""
    server = Clipper(state_dir, **kwargs).start()  # a start that fails stops its process
    try:
        yield server
    finally:
        server.stop()


def clipper_fixture(state: str = "clipper-state") -> Callable[..., Any]:
    """A ``clipper`` fixture: one real server per test module, in a fresh state
    folder named after ``state``, stopped after the module's last test."""

    @pytest.fixture(scope="module", name="clipper")
    def clipper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
        """A real server for this test module (``tests.fixtures.clipper_fixture``)."""
        with running_clipper(tmp_path_factory.mktemp(state)) as server:
            yield server

    return clipper
