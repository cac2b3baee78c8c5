"""Deploy a Python function (closure) as a model: cloudpickled, shipped, served."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    from ..admin import ClipperConnection


def deploy_python_closure(
    clipper_conn: ClipperConnection,
    name: str,
    version: str,
    input_type: str,
    func: Callable[[Any], list[Any]],
    *,
    labels: list[str] | None = None,
    batch_size: int = -1,
    num_replicas: int = 1,
    pkgs_to_install: list[str] | None = None,
    options: dict[str, Any] | None = None,
    exist_ok: bool = False,
    wait: bool = True,
    timeout: float = 300.0,
) -> None:
    """Deploy ``func`` as model ``name:version``.

    ``func`` receives one batch (a 2-D numpy array for same-length numeric
    inputs, else a list) and returns one JSON-serialisable output per input.
    The modules it references must import in the container: the server's
    Python environment, plus ``pkgs_to_install`` (pip requirements), which
    give the model an environment of its own. A deploy whose closure needs a
    missing module fails with a message naming it.

    With ``wait`` (the default) it returns once a replica of the version is
    live, so a query right after it is answered by the model (at once for
    ``num_replicas=0``); ``NotReadyException`` after ``timeout`` seconds.
    ``exist_ok=True`` accepts an identical existing version (nothing
    changes), so a script can run again; a different one is an error naming
    what differs.
    """
    clipper_conn.deploy_model(
        name,
        str(version),
        input_type,
        cloudpickle.dumps(func),
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs_to_install,
        options=options,
        exist_ok=exist_ok,
        wait=wait,
        timeout=timeout,
    )
