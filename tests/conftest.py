import pytest
import soundfile as sf


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
