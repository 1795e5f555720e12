"""Every command has --help with an example."""
import subprocess
import sys

import pytest

COMMANDS = [["info"], ["smoke"], ["data", "synth"], ["data", "posters"], ["data", "mosaic"], ["images", "ingest"], ["images", "verify"],
            ["images", "stats"], ["train"], ["export"], ["predict"], ["serve"], ["bench", "comm"],
            ["bench", "speed"], ["bench", "quality"], ["bench", "peer"], ["bench", "network"], ["bench", "lifecycle"], ["bench", "shard"], ["bench", "serve"],
            ["images", "place"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_an_example(cmd):
    res = subprocess.run([sys.executable, "-m", "cli", *cmd, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Example:" in res.stdout and "hvams " + cmd[0] in res.stdout


def test_all_commands_are_listed_in_the_docs():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs/cli.md").read_text()
    for cmd in COMMANDS:
        assert f"hvams {' '.join(cmd)}" in doc, cmd
