"""Per-GPU utilisation and memory, sampled in the background for /metrics, the status and
the dashboard.

A server on a machine without an NVIDIA driver starts no monitor (the check
imports and runs nothing: :func:`~clipper.managers.devices.gpus_likely_present`),
so the GPU gauges are absent there, not zero. Where a driver is present the
monitor reads NVML through ``nvidia-ml-py`` when it is installed (microseconds
a read), else runs ``nvidia-smi`` (tens of milliseconds), every
``interval_s`` in a daemon thread: a scrape only reads the last sample, and
never waits for the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .managers.devices import gpus_likely_present

log = logging.getLogger("clipper.metrics")

Reader = Callable[[], list["GpuSample"]]


@dataclasses.dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one moment."""

    index: int
    name: str
    utilization: float  # the share of the last sample period a kernel ran, 0 to 1
    memory_used_bytes: int
    memory_total_bytes: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SMI_QUERY = "--query-gpu=index,name,utilization.gpu,memory.used,memory.total"


def parse_smi(text: str) -> list[GpuSample]:
    """``nvidia-smi {SMI_QUERY} --format=csv,noheader,nounits`` (MiB, percent);
    a field the driver does not report (``[N/A]``) reads as 0."""

    def number(field: str) -> float:
        try:
            return float(field)
        except ValueError:
            return 0.0

    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        mib = 1024 * 1024
        out.append(
            GpuSample(
                index=int(parts[0]),
                name=parts[1],
                utilization=number(parts[2]) / 100.0,
                memory_used_bytes=int(number(parts[3]) * mib),
                memory_total_bytes=int(number(parts[4]) * mib),
            )
        )
    return out


def smi_reader(smi: str) -> Reader:
    def read() -> list[GpuSample]:
        done = subprocess.run(
            [smi, SMI_QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return parse_smi(done.stdout)

    return read


def nvml_reader() -> Reader | None:
    """A reader through NVML, or None without ``nvidia-ml-py`` or a driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    names = []
    for h in handles:
        name = pynvml.nvmlDeviceGetName(h)
        names.append(name.decode() if isinstance(name, bytes) else str(name))

    def read() -> list[GpuSample]:
        out = []
        for i, (handle, name) in enumerate(zip(handles, names, strict=True)):
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(GpuSample(i, name, rates.gpu / 100.0, int(memory.used), int(memory.total)))
        return out

    return read


class GpuMonitor:
    """Samples every GPU every ``interval_s`` in a daemon thread; :meth:`samples`
    returns the last sample (empty before the first, or after a failed read)."""

    def __init__(self, reader: Reader, interval_s: float = 2.0) -> None:
        self.reader = reader
        self.interval_s = interval_s
        self._last: list[GpuSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def sample_once(self) -> None:
        try:
            self._last = self.reader()
            self._failed = False
        except Exception as exc:  # a driver hiccup: report nothing, log once
            if not self._failed:
                log.warning("reading the GPUs failed: %s", exc)
            self._failed, self._last = True, []

    def samples(self) -> Sequence[GpuSample]:
        return self._last

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=15)


def start_gpu_monitor(interval_s: float = 2.0) -> GpuMonitor | None:
    """A started monitor where an NVIDIA driver is present, else None (nothing
    imported, nothing run: the gauges are absent)."""
    if not gpus_likely_present():
        return None
    reader = None
    with contextlib.suppress(Exception):
        reader = nvml_reader()
    if reader is None:
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return None
        reader = smi_reader(smi)
    monitor = GpuMonitor(reader, interval_s)
    monitor.start()
    return monitor
