"""``clipper replicas``: a Device column when a replica was placed or reports a device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipper.cli.render import replica_device, replicas_table
from tests.cli.test_helpers import text_of

BASE: dict[str, Any] = {"model_name": "m", "model_version": "1", "pid": 1, "live": True}


def test_no_device_no_column() -> None:
    text = text_of(replicas_table([{**BASE, "replica": "m-1-0"}]))
    assert "Device" not in text


def test_each_replica_shows_what_it_runs_on() -> None:
    replicas: list[Mapping[str, Any]] = [
        {**BASE, "replica": "m-1-0", "device": "cuda:0",
         "runtime": {"device": "cuda:0", "precision": "fp16"}},
        {**BASE, "replica": "m-1-1", "device": "cuda:1",
         "runtime": {"device": "cpu", "warning": "no CUDA"}},
        {**BASE, "replica": "m-1-2", "device": None, "error": "names GPU 3", "pid": None},
        {**BASE, "replica": "m-1-3", "runtime": {"device": "cpu",
                                                 "provider": "CPUExecutionProvider"}},
    ]  # fmt: skip
    assert [replica_device(r) for r in replicas] == [
        "cuda:0 fp16",
        "cpu !",
        "! unplaced",
        "cpu CPU",
    ]
    lines = text_of(replicas_table(replicas)).splitlines()
    assert any("Device" in line for line in lines[:5])
    assert "cuda:0 fp16" in next(line for line in lines if "m-1-0" in line)
