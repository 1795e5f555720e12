"""``hvams info`` and ``--version`` report the real stack."""
import subprocess
import sys

from hvams import __version__


def _hvams(*args):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_info_lists_pytorch_mpi_gloo():
    res = _hvams("info")
    assert res.returncode == 0, res.stderr
    for line in ("[X] PyTorch", "[X] MPI", "[X] Gloo", "thread level MULTIPLE", "Open MPI"):
        assert line in res.stdout, res.stdout


def test_info_fails_without_horovod_mpi():
    from hvams.info import stack_ok

    ok, why = stack_ok({"horovod": {"controllers": {"MPI": False, "Gloo": True}}})
    assert not ok and "without MPI" in why
    ok, why = stack_ok({"horovod": {"error": "horovod.torch does not import: x"}})
    assert not ok and "does not import" in why


def test_version():
    res = _hvams("--version")
    assert res.returncode == 0 and __version__ in res.stdout
