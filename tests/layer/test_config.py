"""Config files: the happy paths and every kind of mistake, each with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer.config import builtin_names, get_channel_layer, load, parse, resolve
from layer.exceptions import ConfigError, InvalidChannelLayerError
from layer.inmemory import InMemoryChannelLayer

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "layers.yaml"
    path.write_text(text)
    return path


def test_shipped_inmemory_config_builds() -> None:
    layer = get_channel_layer("default", ROOT / "config" / "inmemory.yaml")
    assert isinstance(layer, InMemoryChannelLayer)
    assert layer.capacity == 100
    assert layer.get_capacity("work.http") == 1000


def test_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n")
    monkeypatch.setenv("LAYER_CONFIG", str(path))
    assert isinstance(get_channel_layer(), InMemoryChannelLayer)


def test_environment_substitution_keeps_types(tmp_path: Path) -> None:
    text = """
default:
  BACKEND: layer.inmemory.InMemoryChannelLayer
  CONFIG:
    capacity: ${CAP}
    expiry: ${EXPIRY:-30}
    channel_capacity: {"pre-${NAME:-x}.*": "${SMALL:-5}"}
"""
    specs = parse(__import__("yaml").safe_load(text), "t.yaml", {"CAP": "42", "NAME": "abc"})
    config = specs["default"].config
    assert config == {"capacity": 42, "expiry": 30, "channel_capacity": {"pre-abc.*": 5}}
    layer = specs["default"].build()
    assert layer.capacity == 42 and layer.get_capacity("pre-abc.q") == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0123", "0123"),  # YAML 1.1 read it as octal 83
        ("on", "on"),  # YAML: True
        ("no", "no"),
        ("1e3", 1000.0),
        ("-7", -7),
        ("true", True),
        ("256MB", "256MB"),
        ("~", "~"),  # YAML: None
        ("2026-12-07", "2026-12-07"),  # YAML: a date
        ("k3y/with:colon", "k3y/with:colon"),
        ("", ""),
    ],
)
def test_a_lone_variable_is_json_or_the_exact_string(value: str, expected: object) -> None:
    data = {"default": {"BACKEND": "x.Y", "CONFIG": {"key": "${VALUE}"}}}
    config = parse(data, "t.yaml", {"VALUE": value})["default"].config
    assert config["key"] == expected and type(config["key"]) is type(expected)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("default:\n  BACKEND: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 23\)"):
        load(path)


def test_injected_list(tmp_path: Path) -> None:
    data = {"default": {"BACKEND": "x.Y", "CONFIG": {"hosts": "${HOSTS}"}}}
    specs = parse(data, "t.yaml", {"HOSTS": '["redis://a:1", "redis://b:2"]'})
    assert specs["default"].config["hosts"] == ["redis://a:1", "redis://b:2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default: [1, 2", r"layers\.yaml: not valid YAML"),
        ("- a\n- b\n", r"layers\.yaml: expected a mapping of layer aliases"),
        (
            "default:\n  BACKEND: layer.nope.Layer\n",
            r"default\.BACKEND: cannot import 'layer\.nope'",
        ),
        ("default:\n  BACKEND: layer.inmemory.Nope\n", r"default\.BACKEND: .* not a channel layer"),
        ("default:\n  BACKEND: 5\n", r"default\.BACKEND: expected a dotted class path"),
        (
            "default:\n  BACKEN: layer.inmemory.InMemoryChannelLayer\n",
            r"default\.BACKEN: unknown key",
        ),
        (
            "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n  CONFIG:\n    capcity: 5\n",
            r"default\.CONFIG\.capcity: unknown option for InMemoryChannelLayer; expected one of",
        ),
        (
            "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n  CONFIG:\n    capacity: x\n",
            r"default\.CONFIG: capacity must be an integer >= 1, got 'x'",
        ),
        (
            "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n  CONFIG:\n    expiry: ${NOPE_UNSET_VAR}\n",
            r"default\.CONFIG\.expiry: environment variable NOPE_UNSET_VAR is not set",
        ),
        (
            "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n  CONFIG: [1]\n",
            r"default\.CONFIG: expected a mapping",
        ),
    ],
)
def test_mistakes_name_file_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        get_channel_layer("default", path)
    assert str(path) in str(info.value)


def test_unknown_alias_lists_the_defined_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n")
    with pytest.raises(InvalidChannelLayerError, match="no layer alias 'other'; defined: default"):
        get_channel_layer("other", path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read layer config"):
        load(tmp_path / "missing.yaml")


def test_no_path_and_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYER_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="LAYER_CONFIG"):
        load()


def test_built_in_names_are_the_checkouts_config_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # names do not depend on the working directory
    root = ROOT / "config"
    assert builtin_names() == sorted(path.stem for path in root.glob("*.yaml"))
    for name in builtin_names():
        assert resolve(name).read_bytes() == (root / f"{name}.yaml").read_bytes()
    assert load("redis")["default"].backend == "layer.redis.RedisChannelLayer"


def test_an_unknown_name_lists_the_built_in_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mylayer").write_text("default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n")
    with pytest.raises(
        ConfigError, match=r"'mylayer' is not a built-in .*inmemory, ipc.*\./mylayer"
    ):
        load("mylayer")
    assert load("./mylayer")["default"].source == "mylayer"


def test_a_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "redis.yaml").write_text(
        "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n"
    )
    assert load("redis.yaml")["default"].backend == "layer.inmemory.InMemoryChannelLayer"
    with pytest.raises(ConfigError, match=r"config/inmemory\.yaml: cannot read"):
        load("config/inmemory.yaml")
