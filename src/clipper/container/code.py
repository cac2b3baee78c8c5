"""The code a model brings with it, unpacked where the model is loaded.

A deployer writes its artifact as a small pickle whose reduction calls
:func:`load_shipped` with three things: a manifest (the installed packages
the model was pickled against, by top-level module: ``{"sklearn":
["scikit-learn", "1.5.2"]}``), the files given with ``code_paths``
(relative path → bytes) and the cloudpickled model itself. Unpickling the
artifact (in a replica, or in the server's load check) extracts the files,
puts their folder first on ``sys.path``, and only then unpickles the model,
so a model that imports a shipped module finds it.

Where the files go: ``CODE_ROOT`` (the model's folder on the server,
``<state>/models/<name>/<version>/code``, set by the container from its
``--model-path``), else ``$CLIPPER_CODE_ROOT``, else a folder of the user's
in the temporary directory (a Ray node). Each set of files lands in its own
sub-folder named by its digest, written once (atomically), so replicas that
start together share it. The folder is also in ``$CLIPPER_CODE_DIR``.

Imports only the standard library and cloudpickle (the container's side).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

CODE_ROOT: Path | None = None
"""Where :func:`load_shipped` extracts code; set by the container from its model path."""

FORMAT = 1


class MissingPackage(ModuleNotFoundError):
    """The model needs an installed package that the model's environment lacks."""


def files_digest(files: dict[str, bytes]) -> str:
    """A stable digest of a set of files (their paths and bytes)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _code_root() -> Path:
    if CODE_ROOT is not None:
        return CODE_ROOT
    env = os.environ.get("CLIPPER_CODE_ROOT")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"clipper-code-{os.getuid()}"


def _safe(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ValueError(f"a shipped file has an unsafe path: {rel!r}")
    return path


def extract(files: dict[str, bytes], root: Path | None = None) -> Path:
    """Write ``files`` under ``root/<digest>`` (once; concurrent callers share it)."""
    root = root if root is not None else _code_root()
    final = root / files_digest(files)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    building = root / f".building-{uuid.uuid4().hex[:8]}"
    try:
        for rel, data in files.items():
            target = building.joinpath(*_safe(rel).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        try:
            building.rename(final)
        except OSError:  # another replica got there first: the same bytes
            if not final.is_dir():
                raise
    finally:
        if building.exists():
            import shutil

            shutil.rmtree(building, ignore_errors=True)
    return final


def load_shipped(
    manifest: dict[str, Any], files: dict[str, bytes], payload: bytes | bytearray
) -> Any:
    """Unpack an artifact written by a deployer: code first, then the model."""
    import cloudpickle

    if files:
        folder = str(extract(files))
        if folder not in sys.path:
            sys.path.insert(0, folder)
        os.environ["CLIPPER_CODE_DIR"] = folder
    try:
        return cloudpickle.loads(payload)
    except ModuleNotFoundError as exc:
        raise MissingPackage(missing_message(exc.name or "?", manifest), name=exc.name) from exc


def missing_message(module: str, manifest: dict[str, Any]) -> str:
    """What to do about a module that does not import in the model's environment."""
    packages: dict[str, list[str]] = manifest.get("packages", {})
    found = packages.get(module.split(".")[0])
    if found:
        dist, version = found
        return (
            f"the model needs the module '{module}', from the package '{dist}' "
            f"(version {version} where the model was deployed), which is not installed "
            f"in the model's environment; add '{dist}=={version}' to pkgs_to_install"
        )
    return (
        f"the model needs the module '{module}', which does not import in the model's "
        "environment; add the package that provides it to pkgs_to_install, or ship "
        "its files with code_paths"
    )
