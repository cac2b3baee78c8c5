import pytest

from clipper.settings import Settings
from clipper.types import InputType, validate_app_name, validate_name


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("i", "integers"),
        ("ints", "integers"),
        ("int", "integers"),
        ("f", "floats"),
        ("d", "doubles"),
        ("double", "doubles"),
        ("DOUBLES", "doubles"),
        ("b", "bytes"),
        ("s", "strings"),
        ("str", "strings"),
        ("strings", "strings"),
        ("json", "json"),
    ],
)
def test_clipper_aliases_map_to_canonical_names(alias, canonical):
    assert InputType.parse(alias).value == canonical


@pytest.mark.parametrize("bad", ["tensor", "", 3, None])
def test_unknown_input_types_name_the_accepted_ones(bad):
    with pytest.raises(ValueError, match="input_type"):
        InputType.parse(bad)


@pytest.mark.parametrize("name", ["a", "digits", "m-1.2_x", "9", "a" * 63])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a b", "a/b", "a" * 64, "é", 5])
def test_invalid_names(name):
    with pytest.raises(ValueError):
        validate_name(name)


@pytest.mark.parametrize("name", ["v2", "health", "ready", "metrics", "admin", "dashboard"])
def test_reserved_app_names(name):
    with pytest.raises(ValueError, match="reserved"):
        validate_app_name(name)


def test_settings_from_env_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPPER_QUERY_PORT", "2000")
    monkeypatch.setenv("CLIPPER_HOME", str(tmp_path))
    s = Settings.from_env(management_port=3000)
    assert (s.query_port, s.management_port, s.rpc_port) == (2000, 3000, 7000)
    assert s.state_dir == tmp_path.resolve()
    assert s.store == f"sqlite:///{tmp_path.resolve()}/clipper.db"
    assert s.rpc_address == "tcp://127.0.0.1:7000"


@pytest.mark.parametrize("name", ["v2\n", "m\n", "a\nb", "digits\r", "\nm", "m\x00"])
def test_names_are_matched_whole_a_trailing_newline_included(name):
    with pytest.raises(ValueError, match="invalid"):
        validate_name(name)
    with pytest.raises(ValueError, match="invalid"):
        validate_app_name(name)
