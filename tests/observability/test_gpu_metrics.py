"""Per-GPU gauges: present with GPUs, absent (not zero) without; the monitor's reading."""

from __future__ import annotations

import threading

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clipper.gpu_metrics import GpuMonitor, GpuSample, parse_smi, start_gpu_monitor
from clipper.managers.devices import gpus_likely_present
from clipper.metrics import Metrics, ServerStatistics

H100 = GpuSample(0, "NVIDIA H100 80GB HBM3", 0.75, 3 * 2**30, 80 * 2**30)


def families(stats: ServerStatistics) -> dict[str, dict[tuple, float]]:
    text = generate_latest(Metrics(lambda: stats).registry).decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_gauges_per_gpu_when_there_are_gpus() -> None:
    got = families(ServerStatistics(uptime_s=1.0, gpus=[H100]))
    labels = (("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3"))
    assert got["clipper_gpu_utilization_ratio"] == {labels: 0.75}
    assert got["clipper_gpu_memory_used_bytes"] == {labels: 3 * 2**30}
    assert got["clipper_gpu_memory_total_bytes"] == {labels: 80 * 2**30}
    assert ServerStatistics(uptime_s=1.0, gpus=[H100]).to_json()["gpus"][0]["index"] == 0


def test_no_gpu_no_gauges_and_no_status_key() -> None:
    got = families(ServerStatistics(uptime_s=1.0))
    assert not [name for name in got if name.startswith("clipper_gpu_")]
    assert "gpus" not in ServerStatistics(uptime_s=1.0).to_json()


def test_nvidia_smi_readings() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 42, 1024, 81559\n1, NVIDIA H100 80GB HBM3, [N/A], 0, 81559\n"
    first, second = parse_smi(text)
    assert first == GpuSample(0, "NVIDIA H100 80GB HBM3", 0.42, 1024 * 2**20, 81559 * 2**20)
    assert second.utilization == 0.0 and second.index == 1
    assert parse_smi("garbage\n") == []


def test_the_monitor_keeps_the_last_sample_and_survives_a_failed_read() -> None:
    reads: list[int] = []
    sampled = threading.Event()

    def reader() -> list[GpuSample]:
        reads.append(1)
        sampled.set()
        if len(reads) == 2:
            raise RuntimeError("driver hiccup")
        return [H100]

    monitor = GpuMonitor(reader, interval_s=3600)
    monitor.sample_once()
    assert list(monitor.samples()) == [H100]
    monitor.sample_once()  # fails: nothing reported rather than a stale reading
    assert list(monitor.samples()) == []
    sampled.clear()
    monitor.start()
    assert sampled.wait(10)
    monitor.stop()
    assert list(monitor.samples()) == [H100]


def test_without_a_driver_no_monitor_starts() -> None:
    if gpus_likely_present():
        return  # a GPU machine: the other tests cover the gauges
    assert start_gpu_monitor() is None
