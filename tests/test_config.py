"""Settings: params.yaml is validated before any work; errors name the file, the key and the value."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import models.nets.networks  # noqa: F401  (adds timm's check of architecture names to the settings)
from lab2prod.core.errors import ConfigError
from lab2prod.core.settings import Params, apply_overrides, load_params, validate_params
from tests.conftest import ROOT


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_params_file_is_valid_and_complete() -> None:
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # every section and key in the file is a known setting, and every known setting is in the file
    for section, model in Params.model_fields.items():
        assert set(raw[section]) == set(model.annotation.model_fields), section
    assert params.augment.horizontal_flip is False  # digits must not be mirrored by default


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": {"epohcs": 3}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "train.epohcs" in str(err.value) and "unknown key" in str(err.value)


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_params(write(tmp_path, {"trian": {"epochs": 3}}))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "epochs", "many"),
        ("train", "lr", -1.0),
        ("ingest", "channels", 2),
        ("augment", "offline_copies", -1),
        ("ingest", "test_fraction", 1.5),
        ("train", "architecture", "vgg"),
    ],
)
def test_wrong_type_or_range_names_key_and_value(tmp_path: Path, section: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, {section: {key: value}}))
    message = str(err.value)
    assert f"{section}.{key}" in message and repr(value) in message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        validate_params({"train": {"epochs": 0, "batch_size": "x"}})
    assert "train.epochs" in str(err.value) and "train.batch_size" in str(err.value)


def test_splits_must_leave_training_data() -> None:
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction"):
        validate_params({"ingest": {"val_fraction": 0.5, "test_fraction": 0.45}})


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_are_applied_then_validated() -> None:
    raw = {"train": {"epochs": 3}}
    merged = apply_overrides(raw, {"train.epochs": 5, "augment.offline_copies": 0})
    assert validate_params(merged).train.epochs == 5 and validate_params(merged).augment.offline_copies == 0
    assert raw == {"train": {"epochs": 3}}  # the original is untouched
    with pytest.raises(ConfigError, match="train.epochs"):
        validate_params(apply_overrides(raw, {"train.epochs": "lots"}))


def test_section_hash_changes_only_with_its_section() -> None:
    a = validate_params({})
    b = validate_params({"export": {"atol": 0.01}})
    assert a.section_hash("train") == b.section_hash("train")
    assert a.section_hash("export") != b.section_hash("export")


@pytest.mark.parametrize("args", [["run", "-S", "train.epochs=3"], ["registry", "list"], ["predict", "x.png"]])
def test_a_broken_params_file_is_one_clear_error_and_stays_as_it_was(args: list[str], tmp_path: Path) -> None:
    broken = "train: [epochs: 3\n"  # a YAML syntax error
    (tmp_path / "params.yaml").write_text(broken)
    proc = subprocess.run(
        [sys.executable, "-m", "lab2prod.cli.main", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "params.yaml: not valid YAML" in out and "Traceback" not in out, out
    assert (tmp_path / "params.yaml").read_text() == broken
