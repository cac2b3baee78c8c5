"""The batching peers of ``bench/peers.py``: what each is, and its own virtual
environment (``bench/.venvs/<peer>``, and ``naive`` for the FastAPI baseline),
created on first use with ``pip`` from PyPI, the packages it shares with the
project pinned to the project's versions where pip can resolve that. A peer may
name the interpreter its environment is made with (Triton: the system's
``/usr/bin/python3.11``) and which packages it shares (Triton: none)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .harness import ROOT

VENVS = ROOT / "bench" / ".venvs"
NAIVE_VENV = VENVS / "naive"
# Shared packages at the project's versions, so only the framework differs.
SHARED = ("uvicorn", "uvloop", "httptools", "numpy", "orjson")


class PeerFailed(Exception):
    """A peer could not be installed, started or measured; the message says why."""


@dataclass(frozen=True)
class Peer:
    """A batching serving system measured beside Clipper (a benchmark-only dependency)."""

    key: str
    label: str
    requirement: str  # what pip installs
    pin_from: str | None  # pin the requirement to this project package's version
    imports: str  # what must import for the environment to count as ready
    versions: tuple[str, ...]  # distributions whose versions the results record
    start_timeout_s: float
    # The interpreter its environment is made with (None: this one, sys.executable).
    interpreter: str | None = None
    # Packages pinned to the project's versions (None: PEER_SHARED).
    shared: tuple[str, ...] | None = None


PEERS = {
    "mlserver": Peer(
        "mlserver",
        "MLServer",
        "mlserver",
        None,
        "mlserver, mlserver.codecs, numpy, orjson",
        ("mlserver", "fastapi", "starlette", "uvicorn", "pydantic", "numpy", "grpcio"),
        120.0,
    ),
    "litserve": Peer(
        "litserve",
        "LitServe",
        "litserve",
        None,
        "litserve, numpy, orjson",
        ("litserve", "fastapi", "starlette", "uvicorn", "pydantic", "numpy", "pyzmq"),
        120.0,
    ),
    "rayserve": Peer(
        "rayserve",
        "Ray Serve",
        "ray[serve]",
        "ray",
        "ray, ray.serve, starlette, numpy, orjson",
        ("ray", "fastapi", "starlette", "uvicorn", "pydantic", "numpy", "grpcio"),
        240.0,
    ),
    # PyTriton starts Triton's own server (tritonserver, C++), whose Python
    # backend stub links the system's libpython3.11: its environment must be
    # made with that interpreter (one from another 3.11 build fails at model
    # load, "'_thread.RLock' object has no attribute '_recursion_count'").
    # Nothing is pinned to the project's versions: PyTriton wants numpy < 2.
    "triton": Peer(
        "triton",
        "Triton (PyTriton)",
        "nvidia-pytriton",
        None,
        "pytriton.triton, pytriton.decorators, numpy",
        ("nvidia-pytriton", "tritonclient", "numpy", "pyzmq", "grpcio"),
        180.0,
        interpreter="/usr/bin/python3.11",
        shared=(),
    ),
}
PEER_KEYS = tuple(PEERS)
PEER_ALIASES = {
    "ray": "rayserve",
    "ray-serve": "rayserve",
    "ray_serve": "rayserve",
    "pytriton": "triton",
    "tritonserver": "triton",
}
# The peers share pydantic with the project too (MLServer, LitServe and Ray Serve use it).
PEER_SHARED = (*SHARED, "pydantic")


def _pins(packages: tuple[str, ...]) -> list[str]:
    pins = []
    for pkg in packages:
        try:
            pins.append(f"{pkg}=={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(pkg)
    return pins


def _imports_ok(python: Path, imports: str) -> bool:
    try:
        subprocess.run(
            [str(python), "-c", f"import {imports}"], check=True, capture_output=True, timeout=120
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    return True


def _pip_error(stderr: str) -> str:
    """The last lines of pip's stderr that say something (not its index warnings)."""
    lines = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and "is ignored: it is neither a file nor a directory" not in ln
    ]
    return " | ".join(lines[-3:])[-400:] or "no message"


def _made_with(venv: Path, interpreter: str) -> bool:
    """Whether ``venv`` was made with ``interpreter`` (the ``home`` of its pyvenv.cfg)."""
    with contextlib.suppress(OSError):
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()) == Path(interpreter).parent
    return False


def venv_python(
    venv: Path,
    requirements: list[str],
    imports: str,
    log: Callable[[str], None],
    shared: tuple[str, ...] = SHARED,
    fallback: list[str] | None = None,
    interpreter: str | None = None,
) -> Path:
    """The interpreter of ``venv``, created (``pip install``, from PyPI) when
    ``imports`` do not import there. ``shared`` packages are pinned to this
    environment's versions, so only the framework differs; when pip cannot
    resolve that, it tries once more with ``fallback`` (default
    ``requirements``), unpinned. ``interpreter``: the Python the environment
    must be made with (default: this one); one made with another is made
    again. Raises ``PeerFailed`` with pip's own words."""
    python = venv / "bin" / "python"
    base = interpreter or sys.executable
    wrong_base = interpreter is not None and venv.exists() and not _made_with(venv, interpreter)
    if not wrong_base and _imports_ok(python, imports):
        return python
    if interpreter is not None and not Path(interpreter).exists():
        raise PeerFailed(f"its environment must be made with {interpreter}, which is missing")
    VENVS.mkdir(parents=True, exist_ok=True)
    (VENVS / ".gitignore").write_text("*\n")
    name = venv.relative_to(ROOT)
    if wrong_base:
        log(f"{name} was not made with {interpreter}: made again")
    made = subprocess.run(
        [base, "-m", "venv", *(["--clear"] if wrong_base else []), str(venv)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise PeerFailed(f"{base} -m venv {name} failed: {_pip_error(made.stderr)}")
    pinned = [*requirements, *_pins(shared)]
    attempts = [
        pinned,
        *([fallback or requirements] if pinned != (fallback or requirements) else []),
    ]
    why = ""
    for i, reqs in enumerate(attempts):
        log(f"creating {name}: pip install {' '.join(reqs)}")
        t0 = time.perf_counter()
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *reqs],
            capture_output=True,
            text=True,
        )
        if pip.returncode == 0 and _imports_ok(python, imports):
            log(f"  installed in {time.perf_counter() - t0:.0f}s")
            return python
        why = _pip_error(pip.stderr) if pip.returncode else f"'import {imports}' fails"
        log(
            f"  pip failed: {why}"
            + ("; again without the shared pins" if i + 1 < len(attempts) else "")
        )
    raise PeerFailed(f"pip install {' '.join(attempts[-1])} into {name} failed: {why}")


def naive_python(log: Callable[[str], None]) -> Path:
    """The interpreter of bench/.venvs/naive, created (with pip) when missing."""
    try:
        return venv_python(NAIVE_VENV, ["fastapi"], "fastapi, uvicorn, numpy, orjson", log)
    except PeerFailed as exc:
        raise SystemExit(
            f"could not install FastAPI into {NAIVE_VENV} ({exc}); the naive baseline needs "
            f"it: {NAIVE_VENV / 'bin' / 'python'} -m pip install fastapi"
        ) from exc


def peer_python(peer: Peer, log: Callable[[str], None]) -> Path:
    """The interpreter of bench/.venvs/<peer>, created when missing (``PeerFailed``)."""
    requirement = peer.requirement
    if peer.pin_from:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            requirement += f"=={importlib.metadata.version(peer.pin_from)}"
    return venv_python(
        VENVS / peer.key,
        [requirement],
        peer.imports,
        log,
        shared=PEER_SHARED if peer.shared is None else peer.shared,
        fallback=[peer.requirement],
        interpreter=peer.interpreter,
    )


def venv_versions(python: Path, dists: tuple[str, ...]) -> dict[str, str]:
    """Versions of ``dists`` installed for ``python`` (those missing are left out)."""
    code = (
        "import importlib.metadata as m, json, sys\nout = {}\nfor p in sys.argv[1:]:\n"
        "    try:\n        out[p] = m.version(p)\n    except m.PackageNotFoundError:\n"
        "        pass\nprint(json.dumps(out))"
    )
    out = subprocess.run(
        [str(python), "-c", code, *dists], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def naive_versions(python: Path) -> dict[str, str]:
    return venv_versions(python, ("fastapi", "starlette", "pydantic", "uvicorn", "numpy"))
