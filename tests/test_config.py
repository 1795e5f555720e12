"""The typed config: YAML + flags, and errors that name the key."""
import subprocess
import sys

import pytest

from hvams.config import ConfigError, TrainConfig, load_config


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: /d\nmodel: din\nbatch_size: 32\nmlp: [64, 32]\n")
    cfg = load_config(path, {"batch_size": 16, "model": None})
    assert (cfg.data, cfg.model, cfg.batch_size, cfg.mlp) == ("/d", "din", 16, [64, 32])
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("text,msg", [
    ("data: /d\nbatchsize: 3\n", "unknown config key(s) 'batchsize' (did you mean 'batch_size'?)"),
    ("data: /d\nbatch_size: 0\n", "'batch_size': must be at least 1"),
    ("data: /d\nmodel: gpt\n", "'model': must be one of"),
    ("data: /d\nlr: -1\n", "'lr': must be positive"),
    ("- a\n- b\n", "must be a mapping"),
    ("model: din\n", "'data': a data directory is required"),
])
def test_bad_config_names_the_key(tmp_path, text, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert msg in str(err.value)


def test_cli_reports_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: /d\nservers: 0\n")
    res = subprocess.run([sys.executable, "-m", "cli", "train", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "'servers': must be at least 1" in res.stderr


def test_defaults_are_the_papers():
    cfg = TrainConfig(data="x").validate()
    assert (cfg.emb_dim, cfg.mlp, cfg.attention, cfg.lr, cfg.lr_decay, cfg.lr_decay_steps) == \
        (12, [200, 80], [64, 16], 0.001, 0.9, 24000)


@pytest.mark.parametrize("text,key,want", [
    ("lr: 1e-3\n", "lr", 0.001),                  # PyYAML reads 1e-3 as a string
    ("image_lr: 2E-4\nsparse_lr: 5e-2\n", "image_lr", 0.0002),
    ("lr: 1\n", "lr", 1.0),
    ("freeze_backbone: 'no'\n", "freeze_backbone", False),
    ("evaluate: 'false'\n", "evaluate", False),
    ("evaluate: Off\n", "evaluate", False),
    ("freeze_backbone: yes\n", "freeze_backbone", True),    # a YAML boolean
    ("freeze_backbone: 'TRUE'\n", "freeze_backbone", True),
    ("train_days: [day=00, day=01]\n", "train_days", ["day=00", "day=01"]),
])
def test_yaml_values_take_their_declared_type(tmp_path, text, key, want):
    path = tmp_path / "run.yaml"
    path.write_text("data: /d\n" + text)
    value = getattr(load_config(path), key)
    assert value == want and type(value) is type(want)


@pytest.mark.parametrize("text,msg", [
    ("freeze_backbone: maybe\n", "config key 'freeze_backbone': 'maybe' (str) is not a valid boolean"),
    ("evaluate: 1\n", "config key 'evaluate': 1 (int) is not a valid boolean"),
    ("evaluate: 'nope'\n", "is not a valid boolean"),
    ("batch_size: lots\n", "config key 'batch_size': 'lots' (str) is not a valid int"),
    ("max_steps: 2.5\n", "config key 'max_steps': 2.5 (float) is not a valid int | None"),
    ("mlp: [64, x]\n", "config key 'mlp': [64, 'x'] (list) is not a valid list[int]"),
    ("model: 5\n", "config key 'model': 5 (int) is not a valid str"),
    ("batch_szie: 3\n", "'batch_szie' (did you mean 'batch_size'?)"),
])
def test_wrong_types_name_key_value_and_type(tmp_path, text, msg):
    path = tmp_path / "bad.yaml"
    path.write_text("data: /d\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert msg in str(err.value)


def test_cli_wrong_type_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: /d\nfreeze_backbone: maybe\n")
    res = subprocess.run([sys.executable, "-m", "cli", "train", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "'freeze_backbone'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_docs_config_reference_is_current():
    from pathlib import Path

    from hvams.config_reference import BEGIN, END, reference

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    documented = text[text.index(BEGIN):text.index(END) + len(END)]
    assert documented == reference(), "regenerate with: python -m hvams.config_reference"
