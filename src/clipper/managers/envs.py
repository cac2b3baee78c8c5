"""Per-model Python environments: what the paper got from Docker images.

A model deployed with ``pkgs_to_install`` runs in its own virtual
environment, created once per distinct requirement list and cached by its
hash, so two models with conflicting dependency versions run side by side.
The environment sees its own packages first and falls back to the server's
environment (for numpy, pyzmq, msgpack, cloudpickle and clipper itself)
through a ``.pth`` file, so only the requested packages are installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import sys
import sysconfig
import uuid
from pathlib import Path

from ..exceptions import ValidationError

log = logging.getLogger("clipper.envs")

READY = ".clipper-ready"
PIP_TIMEOUT_S = 1800.0
LOAD_TIMEOUT_S = 120.0


def requirements_key(pkgs: list[str]) -> str:
    """A stable hash of a requirement list and the interpreter version."""
    normalised = sorted({p.strip() for p in pkgs if p.strip()})
    text = f"{sys.version_info[:2]}\n" + "\n".join(normalised)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def _run(*cmd: str, timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout:.0f}s"
    return proc.returncode or 0, out.decode(errors="replace")


class EnvironmentBuilder:
    """Creates and caches model environments under ``root``."""

    def __init__(self, root: Path, base_python: str = sys.executable) -> None:
        self.root = root
        self.base_python = base_python
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, pkgs: list[str]) -> str:
        """The interpreter of the environment for ``pkgs``, built if needed.

        Raises ValidationError carrying pip's message when the install fails;
        a failed build leaves nothing behind.
        """
        key = requirements_key(pkgs)
        final = self.root / key
        async with self._locks.setdefault(key, asyncio.Lock()):
            if (final / READY).exists():
                return str(final / "bin" / "python")
            building = self.root / f".{key}-{uuid.uuid4().hex[:8]}"
            try:
                await self._build(building, pkgs)
                if final.exists():  # a stale, unfinished build
                    shutil.rmtree(final)
                building.rename(final)
            finally:
                shutil.rmtree(building, ignore_errors=True)
            # The venv's scripts name their own path; the interpreter link does not.
            log.info("model environment %s ready: %s", key, ", ".join(pkgs))
            return str(final / "bin" / "python")

    async def _build(self, path: Path, pkgs: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("creating a model environment for %s", ", ".join(pkgs))
        code, out = await _run(
            self.base_python, "-m", "venv", "--without-pip", str(path), timeout=120
        )
        if code != 0:
            raise ValidationError(f"could not create a virtual environment: {out.strip()}")
        python = path / "bin" / "python"
        # "--": whatever the list holds, pip reads it as requirements, never as
        # options (the management service accepts PEP 508 requirements only).
        code, out = await _run(
            self.base_python, "-m", "pip", "--python", str(python), "install",
            "--disable-pip-version-check", "--no-input", "--quiet", "--", *pkgs,
            timeout=PIP_TIMEOUT_S,
        )  # fmt: skip
        if code != 0:
            tail = "\n".join(out.strip().splitlines()[-20:])
            raise ValidationError(f"pip install {' '.join(pkgs)} failed:\n{tail}")
        code, site = await _run(
            str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            timeout=60,
        )  # fmt: skip
        if code != 0:
            raise ValidationError(f"the new environment does not run: {site.strip()}")
        base = sysconfig.get_paths()["purelib"]
        # Processed after the env's own packages ('zz'), so the model's pins win.
        Path(site.strip(), "zz_clipper_base.pth").write_text(
            f"import site; site.addsitedir({base!r})\n"
        )
        (path / READY).write_text(" ".join(pkgs) + "\n")


async def check_model_loads(python: str, artifact: Path) -> None:
    """Unpickle the model with ``python`` as a container would; name what is missing.

    The code shipped with the model is extracted as a replica would, into the
    model's folder (``code/`` beside the artifact). A missing installed
    package is named with the version the deployer found (the artifact's
    manifest, see :mod:`clipper.container.code`).
    """
    code, out = await _run(
        python, "-c",
        "import sys, pathlib, cloudpickle\n"
        "from clipper.container import code\n"
        "code.CODE_ROOT = pathlib.Path(sys.argv[1]).parent / 'code'\n"
        "try:\n"
        "    cloudpickle.load(open(sys.argv[1], 'rb'))\n"
        "except code.MissingPackage as e:\n"
        "    print('missing-module:' + str(e)); sys.exit(3)\n"
        "except ModuleNotFoundError as e:\n"
        "    print('missing-module:' + code.missing_message(str(e.name), {})); sys.exit(3)\n",
        str(artifact),
        timeout=LOAD_TIMEOUT_S,
    )  # fmt: skip
    if code == 3 and "missing-module:" in out:
        raise ValidationError(out.rsplit("missing-module:", 1)[1].strip())
    if code != 0:
        tail = "\n".join(out.strip().splitlines()[-10:])
        raise ValidationError(f"the model could not be loaded: {tail}")
