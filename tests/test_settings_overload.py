"""The overload settings (issue #28): parsing and range checks, from flags and env."""

import pytest

from clipper.settings import Settings, parse_cpu_list


def test_cpu_lists_are_read_as_taskset_writes_them():
    assert parse_cpu_list("") == set()
    assert parse_cpu_list("3") == {3}
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    assert parse_cpu_list(" 1 , 4-5 ") == {1, 4, 5}
    for bad in ("x", "2-1", "-1", "1-a", "5000"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_overload_settings_have_their_defaults_and_ranges(monkeypatch):
    s = Settings.from_env()
    assert s.shed_at_arrival is True and s.replica_nice == 0 and s.replica_cpus == ""
    monkeypatch.setenv("CLIPPER_SHED_AT_ARRIVAL", "off")
    monkeypatch.setenv("CLIPPER_REPLICA_NICE", "7")
    s = Settings.from_env()
    assert s.shed_at_arrival is False and s.replica_nice == 7
    monkeypatch.setenv("CLIPPER_SHED_AT_ARRIVAL", "sometimes")
    with pytest.raises(ValueError, match="true or false"):
        Settings.from_env()
    monkeypatch.delenv("CLIPPER_SHED_AT_ARRIVAL")
    with pytest.raises(ValueError, match="replica_nice must be 0 to 19"):
        Settings.from_env(replica_nice=20)
    with pytest.raises(ValueError, match="not a CPU list"):
        Settings.from_env(replica_cpus="one")
