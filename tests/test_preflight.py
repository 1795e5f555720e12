"""A missing data directory or image store is one clear line and exit 2, from `--local` and
from every rank under mpirun: no traceback from any rank."""
import pytest

from mpi_harness import run_train


@pytest.mark.parametrize("extra,msg", [
    (["--images", "/nonexistent/store", "--model", "dicm"],
     "config key 'images': /nonexistent/store/manifest.json: no image store manifest"),
    (["--data", "/nonexistent/data"], "config key 'data': /nonexistent/data has no schema.json"),
])
@pytest.mark.parametrize("launcher", ["local", "mpirun"])
def test_missing_inputs_give_one_line(tiny_world, tmp_path, extra, msg, launcher):
    res = run_train(3, tiny_world, tmp_path / "run", *extra, timeout=120,
                    local=launcher == "local", servers=1)
    assert res.returncode != 0 and not res.timed_out
    assert res.output.count(msg) == 1, res.output[-3000:]
    assert "Traceback" not in res.output
