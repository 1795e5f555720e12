"""The baselines really learn on the demo world: above chance, below the oracle."""
import json

import pytest

from mpi_harness import metrics_of, train_ok


def _train(world, out, model):
    train_ok(4, world, out, timeout=420, servers=2, model=model, batch_size=256)
    return metrics_of(out)[-1]


@pytest.mark.parametrize("model", ["idonly", "din"])
def test_baselines_learn_on_demo(demo_world, tmp_path, model):
    m = _train(demo_world, tmp_path / model, model)
    assert m["n"] == 20000
    assert 0.68 < m["auc"] < m["oracle_auc"] - 0.05, m
    assert 0.66 < m["gauc"] < m["oracle_gauc"], m
    summary = json.loads((tmp_path / model / "summary.json").read_text())
    assert summary["samples"] == 60000 and summary["steps"] == 120
    for cat in ("id_keys", "id_rows", "id_grads", "allreduce_workers", "control"):
        assert summary["bytes"][cat] > 0, cat
