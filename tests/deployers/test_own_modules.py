"""The user's own code travels: modules found by value, code_paths, named packages.

The user's files are written to a temporary folder outside the repository's
import path; only this test process has it on ``sys.path`` (as a user's
script has its own folder), never the server or its replicas.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clipper.admin.exceptions import ClipperException
from clipper.container import code
from clipper.deployers.python import deploy_python_closure, ship_model
from tests.cli.runner import global_args, run_cli
from tests.fixtures import running_clipper
from tests.helpers import Clipper

HELPERS = """
SCALE = 10


def scaled(row):
    return [v * SCALE for v in row]
"""

MODEL = """
import numpy as np

import ownmod_helpers
from ownmod_helpers import scaled


def predict(batch):
    return [float(np.sum(scaled(row))) for row in batch]


def predict_module_ref(batch):
    return [ownmod_helpers.SCALE + len(row) for row in batch]


class Doubler:
    def __init__(self, factor):
        self.factor = factor

    def predict(self, batch):
        return [self.factor * float(sum(row)) for row in batch]


def predict_with_vocab(batch):
    import os
    import textkit  # shipped with code_paths, imported at run time

    shipped = os.environ.get("CLIPPER_CODE_DIR") == os.path.dirname(textkit.__path__[0])
    return [f"{textkit.word(int(row[0]))}:{shipped}" for row in batch]
"""

TEXTKIT = """
from pathlib import Path

WORDS = (Path(__file__).parent / "vocab.txt").read_text().split()


def word(i):
    return WORDS[i]
"""


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's project folder: two modules and run-time files, importable here only."""
    folder = tmp_path_factory.mktemp("user-project")
    (folder / "ownmod_helpers.py").write_text(textwrap.dedent(HELPERS))
    (folder / "ownmod_model.py").write_text(textwrap.dedent(MODEL))
    textkit = folder / "runtime" / "textkit"  # a package read at run time, not imported here
    textkit.mkdir(parents=True)
    (textkit / "__init__.py").write_text(textwrap.dedent(TEXTKIT))
    (textkit / "vocab.txt").write_text("zero one two three\n")
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in ("ownmod_model", "ownmod_helpers"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def mymodel(user_dir: Path):  # type: ignore[no-untyped-def]
    import ownmod_model  # type: ignore[import-not-found]

    return ownmod_model


def load_elsewhere(artifact: bytes, tmp_path: Path, expr: str) -> str:
    """Load the artifact in a fresh interpreter that cannot import the user's folder."""
    path = tmp_path / "model.pkl"
    path.write_bytes(artifact)
    script = (
        "import sys, pathlib, cloudpickle\n"
        "from clipper.container import code\n"
        "code.CODE_ROOT = pathlib.Path(sys.argv[1]).parent / 'code'\n"
        "model = cloudpickle.load(open(sys.argv[1], 'rb'))\n"
        f"print({expr})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# A pickle of a function by reference to a module no one has (protocol 0's GLOBAL).
ABSENT_REFERENCE = b"cownmod_absent\nf\n."


# -- the artifact, without a server -------------------------------------------


def test_a_function_and_its_helper_module_travel_by_value(mymodel, tmp_path):
    artifact = ship_model(mymodel.predict)
    assert load_elsewhere(artifact, tmp_path, "model([[1.0, 2.0]])") == "[30.0]"
    # by value only for the time of the pickling: nothing left registered
    import cloudpickle

    assert "ownmod_model" not in cloudpickle.list_registry_pickle_by_value()


def test_a_module_referenced_as_a_module_travels(mymodel, tmp_path):
    artifact = ship_model(mymodel.predict_module_ref)
    assert load_elsewhere(artifact, tmp_path, "model([[1.0, 2.0]])") == "[12]"


def test_an_object_with_predict_travels(mymodel, tmp_path):
    artifact = ship_model(mymodel.Doubler(3))
    assert load_elsewhere(artifact, tmp_path, "model.predict([[1.0, 2.0]])") == "[9.0]"


def test_code_paths_land_on_sys_path_beside_the_artifact(mymodel, user_dir, tmp_path):
    artifact = ship_model(mymodel.predict_with_vocab, code_paths=[user_dir / "runtime" / "textkit"])
    out = load_elsewhere(artifact, tmp_path, "model([[2.0]]), sys.path[0]")
    answer, folder = out.split(" ")
    assert answer == "['two:True']"
    assert Path(folder).parent == tmp_path / "code"
    assert (tmp_path / "code").is_dir()


def test_installed_packages_are_listed_with_their_versions(mymodel):
    import numpy as np

    manifest, files, _ = shipped_args(ship_model(mymodel.predict))
    assert manifest["packages"]["numpy"] == ["numpy", np.__version__]
    assert "ownmod_model" not in manifest["packages"] and "clipper" not in manifest["packages"]
    assert files == {}


def shipped_args(artifact: bytes) -> tuple[Any, ...]:
    """What the artifact passes to ``load_shipped``: (manifest, files, payload)."""
    captured: list[tuple[Any, ...]] = []
    original = code.load_shipped
    try:
        code.load_shipped = lambda *a: captured.append(a)  # type: ignore[assignment,misc]
        pickle.loads(artifact)
    finally:
        code.load_shipped = original
    return captured[0]


def test_a_missing_package_is_named_with_the_version_found_here(tmp_path):
    manifest = {"packages": {"ownmod_absent": ["absent-dist", "1.2.3"]}}
    payload = ABSENT_REFERENCE
    with pytest.raises(code.MissingPackage) as info:
        code.load_shipped(manifest, {}, payload)
    message = str(info.value)
    assert "'absent-dist'" in message and "1.2.3" in message
    assert "add 'absent-dist==1.2.3' to pkgs_to_install" in message


def test_code_paths_must_exist(mymodel, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ship_model(mymodel.predict, code_paths=[tmp_path / "nope"])


# -- end to end, a real server ------------------------------------------------


@pytest.fixture(scope="module")
def clipper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    with running_clipper(tmp_path_factory.mktemp("own-modules-state")) as server:
        yield server


def serve(clipper: Clipper, name: str, model, **kw) -> None:  # type: ignore[no-untyped-def]
    deploy_python_closure(clipper.conn, name, "1", "doubles", model, **kw)
    clipper.conn.register_application(name, "doubles", "-1", 5_000_000)
    clipper.conn.link_model_to_app(name, name)


def ask(clipper: Clipper, app: str, x: list[float]):  # type: ignore[no-untyped-def]
    r = clipper.predict(app, {"input": x})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default"] is False, body
    return body["output"]


@pytest.mark.slow
def test_e2e_a_function_from_the_users_file(clipper, mymodel):
    serve(clipper, "own-func", mymodel.predict)
    assert ask(clipper, "own-func", [1.0, 2.0, 3.0]) == 60.0


@pytest.mark.slow
def test_e2e_a_class_with_predict_from_the_users_file(clipper, mymodel):
    serve(clipper, "own-class", mymodel.Doubler(2))
    assert ask(clipper, "own-class", [1.0, 2.0]) == 6.0


@pytest.mark.slow
def test_e2e_a_helper_module_imported_by_the_users_module(clipper, mymodel):
    serve(clipper, "own-helper", mymodel.predict_module_ref)
    assert ask(clipper, "own-helper", [1.0, 2.0, 3.0]) == 13


@pytest.mark.slow
def test_e2e_code_paths(clipper, mymodel, user_dir):
    serve(
        clipper,
        "own-paths",
        mymodel.predict_with_vocab,
        code_paths=[user_dir / "runtime" / "textkit"],
    )
    assert ask(clipper, "own-paths", [3.0]) == "three:True"


@pytest.mark.slow
def test_e2e_a_missing_package_is_named(clipper):
    manifest = {"packages": {"ownmod_absent": ["absent-dist", "1.2.3"]}}
    payload = ABSENT_REFERENCE
    from clipper.deployers.python import _Artifact

    artifact = pickle.dumps(_Artifact(manifest, {}, payload), protocol=5)
    with pytest.raises(ClipperException, match=r"absent-dist==1\.2\.3"):
        clipper.conn.deploy_model("own-missing", "1", "doubles", artifact)


@pytest.mark.slow
def test_e2e_the_cli_ships_the_modules_beside_the_file(clipper, tmp_path):
    """`clipper deploy --python-file` runs the file with its folder on sys.path, as
    `python FILE` does: a helper module beside it imports, and travels by value."""
    (tmp_path / "cli_helpers_mod.py").write_text("def triple(v):\n    return 3 * v\n")
    (tmp_path / "cli_model.py").write_text(
        "from cli_helpers_mod import triple\n\n\n"
        "def predict(batch):\n    return [triple(float(sum(row))) for row in batch]\n"
    )
    result = run_cli(
        *global_args(clipper.cm),
        *("deploy", "own-cli", "1", "--input-type", "doubles"),
        *("--python-file", str(tmp_path / "cli_model.py"), "--function", "predict"),
    )
    assert result.returncode == 0, result.stderr
    clipper.conn.register_application("own-cli", "doubles", "-1", 5_000_000)
    clipper.conn.link_model_to_app("own-cli", "own-cli")
    assert ask(clipper, "own-cli", [1.0, 2.0]) == 9.0
