"""Accelerators for replicas: what a ``devices`` option asks, which GPUs exist, who gets which.

Three parts, kept apart so the pure one is tested without a GPU:

- :func:`parse_devices` reads a model version's ``devices`` option (its syntax
  only; :class:`~clipper.types.ModelOptions` calls it to refuse a bad value
  with a 400) into one :class:`DeviceRequest` per replica form.
- :func:`place` decides, without I/O, which GPUs each replica of a version
  gets, given the GPUs found and how loaded each already is; it raises
  :class:`PlacementError` naming what does not exist.
- :func:`discover_gpus` asks the machine: NVML through ``nvidia-ml-py``
  (imported here, lazily, only when a placement needs GPUs) or, without
  it, ``nvidia-smi``. A machine with neither has no GPU. Nothing here loads
  CUDA itself: a server that serves CPU models never touches a GPU library.

The forms of ``devices`` (DESIGN, "GPU and gRPC"):

``"cpu"``
    No GPU: the replica's ``CUDA_VISIBLE_DEVICES`` is empty.
``"cuda"``
    One whole GPU per replica, spread over the GPUs (the least loaded first).
``"cuda:I[,J...]"``
    Every replica sees exactly these GPUs (several replicas of a version on
    one GPU when asked so; a model split over several GPUs sees them all).
``"cuda:all"``
    Every replica sees every GPU.
a number ``n``
    ``n`` whole GPUs per replica (an integer >= 1, disjoint), or a share of
    one (``0 < n < 1``: ``floor(1/n)`` replicas share each GPU; 0.5: two).
a list
    One of the forms above per replica (replica ``i`` takes entry ``i``).

Unset, nothing is placed: replicas inherit the server's environment, as before.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..exceptions import ValidationError

log = logging.getLogger("clipper.manager")

MAX_DEVICE_LIST = 64  # entries of a per-replica list (as many as replicas may be)
_EXPLICIT = re.compile(r"cuda:(\d{1,4}(?:,\d{1,4}){0,63})")


class PlacementError(ValidationError):
    """A placement that cannot be made: the message names what is missing (a
    ValidationError: the management API answers it with a 400)."""


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One replica's ask, parsed from a ``devices`` form.

    ``kind`` is ``"cpu"``, ``"share"`` (``amount`` of one GPU, <= 1, spread),
    ``"whole"`` (``amount`` whole GPUs, disjoint), ``"explicit"`` (exactly
    ``indices``) or ``"all"``.
    """

    kind: Literal["cpu", "share", "whole", "explicit", "all"]
    amount: float = 0.0
    indices: tuple[int, ...] = ()
    text: str = ""  # the form as given, for messages

    @property
    def gpus_per_replica(self) -> float | None:
        """What Ray's ``num_gpus`` should be for it (None: it names no count)."""
        if self.kind == "cpu":
            return 0.0
        if self.kind in ("share", "whole"):
            return self.amount
        if self.kind == "explicit":
            return float(len(self.indices))
        return None


@dataclass(frozen=True, slots=True)
class Placement:
    """Which GPUs one replica sees: ``()`` is the CPU."""

    gpus: tuple[int, ...]

    @property
    def label(self) -> str:
        """``"cpu"`` or ``"cuda:0"``, ``"cuda:0,1"`` (the machine's GPU indices)."""
        return "cuda:" + ",".join(map(str, self.gpus)) if self.gpus else "cpu"

    def env(self) -> dict[str, str]:
        """The variables a replica process gets: which GPUs it sees (numbered as
        ``nvidia-smi`` numbers them) and the device its deployer should use."""
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA's numbering = nvidia-smi's
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpus)),
            "CLIPPER_DEVICE": "cuda" if self.gpus else "cpu",
        }


@dataclass(frozen=True, slots=True)
class Gpu:
    """A GPU of this machine, as NVML or ``nvidia-smi`` names it."""

    index: int
    name: str = ""
    memory_total_mb: int = 0
    uuid: str = ""


def _one(value: Any, where: str) -> DeviceRequest:
    bad = (
        f'option \'devices\'{where} must be "cpu", "cuda", "cuda:I[,J...]", "cuda:all", '
        f"a number of GPUs per replica (0.5: two replicas share one), or a list of those; "
        f"got {value!r:.60}"
    )
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "cpu":
            return DeviceRequest("cpu", text=text)
        if text == "cuda":
            return DeviceRequest("share", 1.0, text=text)
        if text == "cuda:all":
            return DeviceRequest("all", text=text)
        m = _EXPLICIT.fullmatch(text)
        if m:
            indices = tuple(int(i) for i in m.group(1).split(","))
            if len(set(indices)) != len(indices):
                raise ValueError(f"option 'devices'{where} names a GPU twice: {value!r}")
            return DeviceRequest("explicit", indices=indices, text=text)
        raise ValueError(bad)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if 0 < value < 1:
            return DeviceRequest("share", float(value), text=f"{value:g}")
        if value >= 1 and float(value).is_integer() and value <= 1024:
            return DeviceRequest("whole", float(value), text=f"{value:g}")
        raise ValueError(
            f"option 'devices'{where}: a number of GPUs must be a whole number from 1 to "
            f"1024, or a share of one GPU between 0 and 1; got {value!r}"
        )
    raise ValueError(bad)


def parse_devices(value: Any) -> tuple[DeviceRequest, ...]:
    """The requests of a ``devices`` value: one (all replicas alike) or one per
    replica (a list). ValueError naming what is wrong with it."""
    if isinstance(value, list | tuple):
        if not 1 <= len(value) <= MAX_DEVICE_LIST:
            raise ValueError(
                f"option 'devices' as a list needs 1 to {MAX_DEVICE_LIST} entries, one per replica"
            )
        return tuple(_one(v, f"[{i}]") for i, v in enumerate(value))
    return (_one(value, ""),)


def _shares(request: DeviceRequest) -> tuple[int, float]:
    """(GPUs each replica takes, the share of each it uses)."""
    if request.kind == "whole":
        return int(request.amount), 1.0
    # A share n: floor(1/n) replicas fit on one GPU, each promised 1/floor(1/n)
    # of it (0.3: three, a third each), so a GPU is never promised beyond its whole.
    return 1, 1.0 / max(1, math.floor(1.0 / request.amount + 1e-9))


def place(
    requests: Sequence[DeviceRequest],
    count: int,
    gpus: Sequence[int],
    load: Mapping[int, float] | None = None,
    found_by: str = "",
) -> list[Placement]:
    """Each of ``count`` replicas' GPUs (pure: no I/O).

    ``requests`` is what :func:`parse_devices` made (one for all replicas, or
    one per replica); ``gpus`` the indices of the GPUs found; ``load`` how much
    of each the replicas of *other* versions already use (spread order only:
    the least loaded first, then by index; another version never makes a
    placement fail). Within the version a GPU is never promised beyond its
    whole. PlacementError says what does not exist or does not fit.
    """
    load = load or {}
    where = f" ({found_by})" if found_by else ""
    have = sorted(set(gpus))
    if len(requests) > 1 and count > len(requests):
        raise PlacementError(
            f"option 'devices' lists {len(requests)} entries, one per replica, "
            f"but {count} replicas are wanted"
        )
    per_replica = [requests[i] if len(requests) > 1 else requests[0] for i in range(count)]
    used: dict[int, float] = {}  # this version's own use of each GPU
    out: list[Placement] = []
    for i, request in enumerate(per_replica):
        if request.kind == "cpu":
            out.append(Placement(()))
            continue
        if not have:
            raise PlacementError(
                f"option 'devices' {request.text!r} asks for a GPU, but this machine has "
                f"none{where}; deploy with devices=\"cpu\" or leave 'devices' unset"
            )
        if request.kind == "all":
            out.append(Placement(tuple(have)))
            continue
        if request.kind == "explicit":
            missing = [g for g in request.indices if g not in have]
            if missing:
                raise PlacementError(
                    f"option 'devices' {request.text!r} names GPU "
                    f"{', '.join(map(str, missing))}, but this machine has GPU(s) "
                    f"{', '.join(map(str, have))}{where}"
                )
            out.append(Placement(request.indices))
            continue
        take, share = _shares(request)
        free = [g for g in have if used.get(g, 0.0) + share <= 1.0 + 1e-9]
        if len(free) < take:
            need = sum(_shares(r)[0] * _shares(r)[1] for r in per_replica if r.kind != "cpu")
            raise PlacementError(
                f"option 'devices' {request.text!r}: {count} replica(s) need "
                f"{need:g} GPU(s), but this machine has {len(have)}{where} "
                f"(replica {i} does not fit; a share such as 0.5 puts several on one GPU)"
            )
        free.sort(key=lambda g: (used.get(g, 0.0) + load.get(g, 0.0), g))
        chosen = tuple(sorted(free[:take]))
        for g in chosen:
            used[g] = used.get(g, 0.0) + share
        out.append(Placement(chosen))
    return out


def usage(placements: Sequence[Placement]) -> dict[int, float]:
    """How many replicas sit on each GPU (the ``load`` of :func:`place`)."""
    out: dict[int, float] = {}
    for p in placements:
        for g in p.gpus:
            out[g] = out.get(g, 0.0) + 1.0 / len(p.gpus)
    return out


# -- discovery (I/O) --------------------------------------------------------------------


def visible_filter(gpus: Sequence[Gpu], env: Mapping[str, str]) -> list[Gpu]:
    """The GPUs of ``gpus`` that the server's own ``CUDA_VISIBLE_DEVICES`` lets it
    use (indices only; unset: all of them): replicas are placed among those."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(gpus)
    wanted = {v.strip() for v in visible.split(",") if v.strip()}
    return [g for g in gpus if str(g.index) in wanted or (g.uuid and g.uuid in wanted)]


def _nvml_gpus() -> list[Gpu] | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # the library without a driver: no GPU
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(
                Gpu(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mb=int(memory.total) // (1024 * 1024),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        memory = int(parts[3]) if parts[3].isdigit() else 0
        out.append(Gpu(int(parts[0]), name=parts[2], memory_total_mb=memory, uuid=parts[1]))
    return out


def _smi_gpus() -> list[Gpu] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = "--query-gpu=index,uuid,name,memory.total"
    try:
        done = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): no GPU is used", exc)
        return []
    if done.returncode != 0:
        log.warning("nvidia-smi failed: %s", done.stderr.strip()[:200])
        return []
    return parse_nvidia_smi(done.stdout)


def discover_gpus(env: Mapping[str, str] | None = None) -> tuple[list[Gpu], str]:
    """This machine's GPUs the server may use, and how they were found (for
    messages): NVML if ``nvidia-ml-py`` is installed, else ``nvidia-smi``."""
    env = os.environ if env is None else env
    found = _nvml_gpus()
    how = "NVML"
    if found is None:
        found, how = _smi_gpus(), "nvidia-smi"
    if found is None:
        return [], "neither nvidia-smi nor nvidia-ml-py was found"
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        how += ", within the server's CUDA_VISIBLE_DEVICES"
    return visible_filter(found, env), f"{how} found {len(found)}"


def gpus_likely_present() -> bool:
    """A cheap guess, importing and running nothing: an NVIDIA driver or tool is here."""
    return os.path.isdir("/proc/driver/nvidia/gpus") or shutil.which("nvidia-smi") is not None
