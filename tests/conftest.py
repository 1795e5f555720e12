import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The `tiny` synthetic world, generated once per test session."""
    from hvams.data.synth import preset
    from hvams.pretrain import synthesize_world

    out = tmp_path_factory.mktemp("tiny") / "world"
    synthesize_world(out, preset("tiny"), progress=False)
    return out


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """The `demo` synthetic world (80k samples, 3,400 images), once per session."""
    from hvams.data.synth import preset
    from hvams.pretrain import synthesize_world

    out = tmp_path_factory.mktemp("demo") / "world"
    synthesize_world(out, preset("demo"), progress=False)
    return out
