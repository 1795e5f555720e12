"""`hvams images ingest` reject limits and `hvams images keys` (the documented id rule)."""
import hashlib
import subprocess
import sys

import pytest

from images import jpeg


def _hvams(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, input=stdin)


@pytest.fixture
def images_csv(tmp_path):
    rows = ["image_key,path"]
    for i in range(19):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(seed=i))
        rows.append(f"k{i},{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    rows.append("bad,bad.jpg")                    # 1 of 20 = 5% rejected
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "images.csv"


@pytest.mark.parametrize("flags,code", [([], 0), (["--max-reject-rate", "0.1"], 0),
                                        (["--max-reject-rate", "0.01"], 1), (["--strict"], 1)])
def test_ingest_reject_limits(tmp_path, images_csv, flags, code):
    res = _hvams("images", "ingest", "--store", tmp_path / "store", "--csv", images_csv, *flags)
    assert res.returncode == code, res.stderr
    assert "rejected 1" in res.stdout and "rejects.jsonl" in res.stdout
    if code:
        assert "1 of 20 inputs rejected (5.0%)" in res.stderr and "rejects.jsonl" in res.stderr


def test_keys_follow_the_documented_rule():
    url = "https://cdn.example/ad/1.jpg"
    res = _hvams("images", "keys", url, "42", "  spaced  ")
    assert res.returncode == 0, res.stderr
    got = dict(line.split("\t") for line in res.stdout.splitlines())
    rule = int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "little") & (2**63 - 1)
    assert int(got[url]) == rule and int(got["42"]) == 42
    spaced = int.from_bytes(hashlib.blake2b(b"spaced", digest_size=8).digest(), "little") & (2**63 - 1)
    assert int(got["  spaced  "]) == spaced
    from_file = _hvams("images", "keys", "--file", "-", stdin=f"{url}\n7\n")
    assert from_file.stdout.splitlines() == [f"{url}\t{rule}", "7\t7"]
    assert _hvams("images", "keys").returncode == 2
