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
    ("data: /d\nbatchsize: 3\n", "unknown config key(s) ['batchsize']"),
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
