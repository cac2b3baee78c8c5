"""Installing ``clipper-serve`` is quiet (issue #23, point 9).

``license = { text = "Apache-2.0" }`` made setuptools (>= 77) print a
deprecation warning three times on every install. The license is an SPDX
expression (PEP 639), which needs setuptools >= 77 to build.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def test_the_license_is_an_spdx_expression_and_setuptools_can_read_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    (setuptools,) = [
        Requirement(r) for r in project["build-system"]["requires"] if r.startswith("setuptools")
    ]
    # Every setuptools the build may pick understands PEP 639's license field.
    assert "76.9" not in setuptools.specifier and "77.0" in setuptools.specifier


def test_building_the_metadata_prints_no_license_warning(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    # The project's metadata, built from a copy (nothing is written in the checkout).
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "src" / "clipper").mkdir(parents=True)
    shutil.copy(ROOT / "src" / "clipper" / "__init__.py", tmp_path / "src" / "clipper")
    out = tmp_path / "metadata"
    out.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if "licen" in line.lower()]
    assert noise == [], result.stderr
    assert "Deprecat" not in result.stderr, result.stderr
    dist_info = out / result.stdout.strip().splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
