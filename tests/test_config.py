import json
from pathlib import Path

import pytest
import yaml

from pretrain3d.cli import main
from pretrain3d.config import Params, config_hash, deep_merge, json_schema, load_config, validate_config
from pretrain3d.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_is_valid_and_equals_the_model_defaults():
    cfg = load_config(REPO / "params.yaml")
    # params.yaml spells out the defaults: a reader of either sees the same benchmark.
    assert cfg == Params()


def test_unknown_key_names_its_path(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 0.1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.learning_rate" in str(e.value) and "unknown key" in str(e.value)
    assert str(p) in str(e.value)


def test_wrong_type_names_its_path(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.epochs" in str(e.value) and "many" in str(e.value)


def test_broken_yaml_names_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "YAML" in str(e.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_out_of_range_and_wrong_length():
    with pytest.raises(ConfigError, match="model.channels"):
        validate_config({"model": {"channels": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="train.lr"):
        validate_config({"train": {"lr": -1}})
    with pytest.raises(ConfigError, match="seeds must be unique"):
        validate_config({"experiment": {"seeds": [1, 1]}})


def test_overlay_merges_and_hash_changes(tmp_path):
    over = tmp_path / "o.yaml"
    over.write_text("train:\n  lr: 0.2\n")
    base = load_config(REPO / "params.yaml")
    merged = load_config(REPO / "params.yaml", over)
    assert merged.train.lr == 0.2 and merged.train.epochs == base.train.epochs
    assert config_hash(base) != config_hash(merged)
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_schema_is_exported_and_rejects_extra_keys():
    s = json_schema()
    assert s["additionalProperties"] is False
    assert "train" in s["properties"]


def test_cli_reports_config_errors_cleanly(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  num_classes: zero\n")
    assert main(["validate-config", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "data.num_classes" in err and "Traceback" not in err
    assert main(["validate-config", "--quiet", "--config", str(REPO / "params.yaml")]) == 0
