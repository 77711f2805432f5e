import os
import sys

import pytest
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib
from entrypoints import EntryPoints  # noqa: E402


@pytest.fixture(scope="module")
def ep():
    """The real entry points (``train.py``, ``spksep``), forked from one zygote per test
    module (tests/entrypoints.py)."""
    entry_points = EntryPoints()
    yield entry_points
    entry_points.close()


@pytest.fixture
def soundfile_reads(monkeypatch):
    """The frame counts of every ``SoundFile.read`` call: proves only a segment is read."""
    requested = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    return requested
