"""Deploy an MLflow model directory (pyfunc flavor) as a Clipper model.

The model's directory travels inside the artifact (as ``code_paths`` do,
see :func:`clipper.deployers.python.ship_model`); each replica loads it
with ``mlflow.pyfunc.load_model`` when the model is unpickled, so a model
that does not load fails the deploy, with the server's message, before any
replica starts. Its ``requirements.txt`` is installed in a per-model
environment (the same as ``pkgs_to_install``) unless
``install_requirements=False``; then the server's environment must have
``mlflow`` and the model's framework.

The app's input type comes from the model's input signature
(``MLmodel``'s ``signature.inputs``) when it has one:

============================================  =============
signature                                     input type
============================================  =============
columns all ``double``                        ``doubles``
columns all ``float``                         ``floats``
columns all ``integer``, ``long``, ``boolean``  ``integers``
one ``string`` column                         ``strings``
one ``binary`` column                         ``bytes``
other columns (mixed types, several strings)  ``json``
tensor ``float64``                            ``doubles``
tensor ``float32`` / ``float16``              ``floats``
tensor of (unsigned) integers or ``bool``     ``integers``
tensor of ``str`` / ``object``                ``strings``
tensor of ``bytes``                           ``bytes``
several tensors                               ``json``
no signature                                  ``doubles``
============================================  =============

``input_type=`` overrides it. For a column signature, each query holds one
row: its values in the columns' order (numeric types), the value of the one
column (``strings``, ``bytes``), or a JSON object by column name or a list
in the columns' order (``json``); the model receives a pandas DataFrame
with the signature's column names and types. For a tensor signature it
receives a numpy array of the tensor's dtype, each row reshaped to the
tensor's shape.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .python import CodePaths, _Modules, ship_model

if TYPE_CHECKING:
    from ..admin import ClipperConnection

_COLUMN_TYPES = {
    "double": "doubles",
    "float": "floats",
    "integer": "integers",
    "long": "integers",
    "boolean": "integers",
}
_COLUMN_DTYPES = {
    "double": "float64",
    "float": "float32",
    "integer": "int32",
    "long": "int64",
    "boolean": "bool",
}
_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*([<>=!~;@ ].*)?$")


def _tensor_input_type(dtype: str) -> str:
    kind = dtype.lower()
    if kind in ("float64", "double"):
        return "doubles"
    if kind in ("float32", "float16", "float"):
        return "floats"
    if kind.startswith(("int", "uint")) or kind == "bool":
        return "integers"
    if kind in ("str", "object", "string"):
        return "strings"
    if kind == "bytes":
        return "bytes"
    return "json"


def read_mlmodel(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``MLmodel`` file of a model directory (ValueError if it is none)."""
    mlmodel = Path(path) / "MLmodel"
    if not mlmodel.is_file():
        raise ValueError(f"{path} is not an MLflow model directory (it has no MLmodel file)")
    import yaml

    meta = yaml.safe_load(mlmodel.read_text())
    if not isinstance(meta, dict) or "python_function" not in (meta.get("flavors") or {}):
        raise ValueError(f"the MLflow model in {path} has no python_function (pyfunc) flavor")
    return meta


def input_signature(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The input specs of an ``MLmodel`` (an empty list when it has no signature)."""
    inputs = (meta.get("signature") or {}).get("inputs")
    if not inputs:
        return []
    specs = json.loads(inputs) if isinstance(inputs, str) else inputs
    return [s for s in specs if isinstance(s, dict)]


def signature_input_type(specs: list[dict[str, Any]]) -> str:
    """Clipper's input type for an MLflow input signature (the table above)."""
    if not specs:
        return "doubles"
    if any(s.get("type") == "tensor" for s in specs):
        if len(specs) > 1:
            return "json"
        return _tensor_input_type(str(specs[0].get("tensor-spec", {}).get("dtype", "")))
    types = {str(s.get("type")) for s in specs}
    if len(specs) == 1 and types == {"string"}:
        return "strings"
    if len(specs) == 1 and types == {"binary"}:
        return "bytes"
    kinds = {_COLUMN_TYPES.get(t) for t in types}
    if len(kinds) == 1 and None not in kinds:
        return str(kinds.pop())
    return "json"


def model_input_type(path: str | os.PathLike[str]) -> str:
    """The input type :func:`deploy_mlflow_model` chooses for the model in ``path``."""
    return signature_input_type(input_signature(read_mlmodel(path)))


def read_requirements(path: str | os.PathLike[str]) -> list[str]:
    """The model's ``requirements.txt`` as PEP 508 requirements (pip options and
    references to other files are left out)."""
    file = Path(path) / "requirements.txt"
    if not file.is_file():
        return []
    found = []
    for line in file.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")) and _REQUIREMENT.match(line):
            found.append(line)
    return found


class MLflowPredictor:
    """What the replica runs: loads the shipped model directory when unpickled.

    Pickled by reference (``clipper`` is importable wherever a replica runs),
    with the directory's name inside the artifact's code folder and the
    signature; ``mlflow`` is imported only in the replica.
    """

    def __init__(self, folder: str, specs: list[dict[str, Any]], input_type: str) -> None:
        self.folder = folder
        self.specs = specs
        self.input_type = input_type
        self.model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "specs": self.specs, "input_type": self.input_type}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder, self.specs = state["folder"], state["specs"]
        self.input_type = state["input_type"]
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(str(self._directory()))

    def _directory(self) -> Path:
        roots = [os.environ.get("CLIPPER_CODE_DIR", ""), *sys.path]
        for root in roots:
            if root and (Path(root) / self.folder / "MLmodel").is_file():
                return Path(root) / self.folder
        raise FileNotFoundError(f"the MLflow model folder '{self.folder}' was not shipped")

    def _frame(self, batch: Any) -> Any:
        """The batch as the signature wants it."""
        import numpy as np

        specs = self.specs
        if not specs:
            return batch if isinstance(batch, np.ndarray) else list(batch)
        if specs[0].get("type") == "tensor":
            if len(specs) > 1:  # several named tensors: one JSON object per query
                return {
                    s["name"]: np.asarray([q[s["name"]] for q in batch], s["tensor-spec"]["dtype"])
                    for s in specs
                }
            tensor = specs[0]["tensor-spec"]
            dtype = tensor.get("dtype", "float64")
            arr = np.asarray(list(batch) if not isinstance(batch, np.ndarray) else batch)
            arr = arr.astype(object if dtype in ("str", "object") else dtype)
            shape = [int(d) for d in tensor.get("shape", [])[1:]]
            if shape and all(d > 0 for d in shape) and arr.ndim >= 1:
                arr = arr.reshape((len(arr), *shape))
            return arr
        import pandas as pd

        names = [str(s.get("name", i)) for i, s in enumerate(specs)]
        if self.input_type in ("strings", "bytes"):
            return pd.DataFrame({names[0]: list(batch)})
        if self.input_type == "json":
            rows = [q if isinstance(q, dict) else dict(zip(names, q, strict=False)) for q in batch]
            frame = pd.DataFrame(rows, columns=names)
        else:
            frame = pd.DataFrame(np.asarray(batch), columns=names)
        dtypes = {
            n: _COLUMN_DTYPES.get(str(s.get("type"))) for n, s in zip(names, specs, strict=True)
        }
        return frame.astype({n: t for n, t in dtypes.items() if t is not None})

    def predict(self, batch: Any) -> list[Any]:
        from clipper.rpc.protocol import plain_value

        out = self.model.predict(self._frame(batch))
        n = len(batch)
        if hasattr(out, "to_dict") and hasattr(out, "columns"):  # a DataFrame
            if len(out.columns) == 1:
                return [plain_value(v) for v in out.iloc[:, 0].tolist()]
            return [{str(k): plain_value(v) for k, v in r.items()} for r in out.to_dict("records")]
        if hasattr(out, "to_list"):  # a pandas Series
            return [plain_value(v) for v in out.tolist()]
        if isinstance(out, dict):  # several named outputs
            return [{str(k): plain_value(v[i]) for k, v in out.items()} for i in range(n)]
        return [plain_value(v) for v in out]


def _requirement_modules(requirements: Iterable[str]) -> list[str]:
    """The top-level modules, installed here, of the distributions ``requirements`` name."""
    wanted = {
        re.split(r"[\[<>=!~;@ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }
    modules = _Modules()
    return sorted(
        top
        for top, dists in modules.dists.items()
        if any(d.lower().replace("_", "-") in wanted for d in dists)
    )


def deploy_mlflow_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str,
    path: str | os.PathLike[str],
    *,
    input_type: str | None = None,
    install_requirements: bool = True,
    labels: list[str] | None = None,
    batch_size: int = -1,
    num_replicas: int = 1,
    pkgs_to_install: list[str] | None = None,
    options: dict[str, Any] | None = None,
    code_paths: CodePaths = None,
    exist_ok: bool = False,
    wait: bool = True,
    timeout: float = 300.0,
) -> str:
    """Deploy the MLflow model (pyfunc flavor) in the directory ``path`` as model
    ``name:version``; returns its input type (register the app with it).

    ``path`` is a local model directory (the one ``mlflow.<flavor>.save_model``
    writes, or a downloaded artifact); a ``runs:/``, ``models:/`` or other
    MLflow URI is downloaded first with ``mlflow.artifacts.download_artifacts``.
    The input type comes from the model's signature (see this module's table)
    unless ``input_type`` is given. The model's ``requirements.txt`` (and
    ``pkgs_to_install``) are installed in the model's own environment; with
    ``install_requirements=False`` only ``pkgs_to_install`` are, and the
    server's environment provides mlflow and the model's framework.

    Each query's output is the model's prediction for it, as plain JSON values
    (one column's value, or an object by column for a DataFrame of several).
    The other keyword arguments are those of
    :func:`~clipper.deployers.python.deploy_python_closure`.
    """
    folder = Path(path)
    if not folder.is_dir() and re.match(r"^[a-z][a-z0-9+.-]*:/", str(path)):
        import mlflow.artifacts

        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(path)))
    meta = read_mlmodel(folder)
    specs = input_signature(meta)
    chosen = input_type or signature_input_type(specs)
    pkgs = list(pkgs_to_install or [])
    requirements = read_requirements(folder)
    if install_requirements:
        pkgs = [*requirements, *(p for p in pkgs if p not in requirements)]
    predictor = MLflowPredictor(folder.resolve().name, specs, chosen)
    artifact = ship_model(
        predictor,
        [folder, *(code_paths or ())],
        also_needs=["mlflow", *_requirement_modules(requirements)],
    )
    clipper_conn.deploy_model(
        name,
        str(version),
        chosen,
        artifact,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs,
        options=options,
        exist_ok=exist_ok,
        wait=wait,
        timeout=timeout,
    )
    return chosen
