"""Deploy a Python function (closure) as a model: cloudpickled, shipped, served.

What travels with the model (``ship_model``):

- the function or object itself, cloudpickled;
- **the user's own modules, by value**: every module it references (found
  by pickling it and following what the pickle refers to, until nothing new
  turns up, so a helper module that the user's module imports travels too)
  that no installed distribution provides: not the standard library, not
  site-packages, never ``clipper``. They are registered with
  ``cloudpickle.register_pickle_by_value`` for the time of the pickling;
- ``code_paths``: files or folders read at run time (data files, modules
  imported by name at run time), copied into the artifact under their own
  names and, in the replica, extracted into the model's folder on the
  server and put first on ``sys.path`` (see :mod:`clipper.container.code`);
- a manifest of the installed packages the pickle refers to, with the
  versions found here, so a package missing in the model's environment is
  named, with the version to pin, in the deploy's error.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import pickle
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from ..container.code import FORMAT, load_shipped

if TYPE_CHECKING:
    from ..admin import ClipperConnection

CodePaths = Iterable[str | os.PathLike[str]] | None

_NEVER_BY_VALUE = frozenset({"clipper", "__main__", "builtins"})
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})


class _Artifact:
    """Pickles as a call to :func:`clipper.container.code.load_shipped`."""

    def __init__(
        self,
        manifest: dict[str, Any],
        files: dict[str, bytes],
        payload: bytes | pickle.PickleBuffer,
    ) -> None:
        self.args = (manifest, files, payload)

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_shipped, self.args)


class _Finder(cloudpickle.Pickler):
    """A cloudpickle pickler that records the modules of what it pickles."""

    def __init__(self, file: io.BytesIO, seen: set[str]) -> None:
        super().__init__(file)
        self.seen = seen

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            self.seen.add(obj.__name__)
        elif isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                self.seen.add(module)
        return super().reducer_override(obj)


def _installed_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    dirs.update({sys.base_prefix + os.sep + "lib", sys.prefix + os.sep + "lib"})
    return tuple(os.path.realpath(d) + os.sep for d in dirs if d)


def _module_file(module: types.ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    if file:
        return str(file)
    path = getattr(module, "__path__", None)  # a namespace package
    for entry in path or ():
        return str(entry)
    return None


class _Modules:
    """Sorts module names into the user's own, installed packages, and the rest."""

    def __init__(self) -> None:
        self.dists = importlib.metadata.packages_distributions()
        self._installed = _installed_dirs()

    def package(self, top: str) -> list[str] | None:
        """``[distribution, version]`` of the installed package providing ``top``."""
        for dist in self.dists.get(top, []):
            try:
                return [dist, importlib.metadata.version(dist)]
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    def is_users(self, top: str) -> bool:
        """True for a module of the user's own: no installed distribution provides it."""
        if top in _NEVER_BY_VALUE or top in sys.stdlib_module_names or top in self.dists:
            return False
        module = sys.modules.get(top)
        file = _module_file(module) if module is not None else None
        if not file:
            return False  # built in, or not imported here
        return not os.path.realpath(file).startswith(self._installed)


def _read_code_paths(code_paths: CodePaths) -> dict[str, bytes]:
    """The files of ``code_paths``, each entry under its own name."""
    files: dict[str, bytes] = {}
    for entry in code_paths or ():
        path = Path(entry)
        if not path.exists():
            raise ValueError(f"code_paths: {path} does not exist")
        if path.is_file():
            members = [(path.name, path)]
        else:
            members = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
                for filename in sorted(filenames):
                    if filename.endswith((".pyc", ".pyo")):
                        continue
                    full = Path(dirpath, filename)
                    rel = full.relative_to(path.parent).as_posix()
                    members.append((rel, full))
        for rel, full in members:
            if rel in files:
                raise ValueError(f"code_paths: two entries give the file {rel}")
            files[rel] = full.read_bytes()
    return files


def ship_model(
    model: Any, code_paths: CodePaths = None, *, also_needs: Iterable[str] = ()
) -> bytes:
    """The artifact for ``model`` (a callable or an object with ``predict``):
    the model cloudpickled with the user's own modules by value, the files of
    ``code_paths``, and the manifest of the installed packages it needs
    (those its pickle refers to, plus the top-level modules ``also_needs``,
    which it imports when it loads)."""
    files = _read_code_paths(code_paths)
    modules = _Modules()
    already = set(cloudpickle.list_registry_pickle_by_value())
    registered: list[types.ModuleType] = []
    try:
        while True:
            seen: set[str] = set()
            buffer = io.BytesIO()
            _Finder(buffer, seen).dump(model)
            tops = {name.split(".")[0] for name in seen}
            new = sorted(
                top
                for top in tops
                if top not in already and modules.is_users(top) and top in sys.modules
            )
            if not new:
                break
            for top in new:
                cloudpickle.register_pickle_by_value(sys.modules[top])
                registered.append(sys.modules[top])
                already.add(top)
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
    tops.update(also_needs)
    packages = {top: pkg for top in sorted(tops) if (pkg := modules.package(top)) is not None}
    packages.pop("clipper", None)
    manifest = {"format": FORMAT, "packages": packages}
    # The payload goes into the artifact without a copy of its own (in-band:
    # it unpickles as a bytearray), so a large model is held twice at most.
    with buffer.getbuffer() as view:
        payload = pickle.PickleBuffer(view)
        try:
            return pickle.dumps(_Artifact(manifest, files, payload), protocol=5)
        finally:
            payload.release()


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
    code_paths: CodePaths = None,
    exist_ok: bool = False,
    wait: bool = True,
    timeout: float = 300.0,
    make_current: bool = True,
) -> None:
    """Deploy ``func`` as model ``name:version``.

    ``func`` receives one batch (a 2-D numpy array for same-length numeric
    inputs, else a list) and returns one JSON-serialisable output per input.
    ``func`` may also be an object with a ``predict`` method.

    The user's own modules that ``func`` needs (those no installed
    distribution provides: a ``mymodel.py`` beside the script) travel with
    it by value, found automatically; ``code_paths`` adds files or folders
    read or imported at run time (each lands under its own name in a folder
    first on the replica's ``sys.path``, also named by ``$CLIPPER_CODE_DIR``).
    Installed packages must import in the container: the server's Python
    environment, plus ``pkgs_to_install`` (pip requirements), which give the
    model an environment of its own. A deploy whose model needs a missing
    package fails with a message naming it and the version found here.

    With ``wait`` (the default) it returns once a replica of the version is
    live, so a query right after it is answered by the model (at once for
    ``num_replicas=0``); ``NotReadyException`` after ``timeout`` seconds.
    ``exist_ok=True`` accepts an identical existing version (nothing
    changes), so a script can run again; a different one is an error naming
    what differs. ``make_current=False`` deploys a version beside the
    current one, which keeps serving (a version to roll out).
    """
    clipper_conn.deploy_model(
        name,
        str(version),
        input_type,
        ship_model(func, code_paths),
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs_to_install,
        options=options,
        exist_ok=exist_ok,
        wait=wait,
        timeout=timeout,
        make_current=make_current,
    )
