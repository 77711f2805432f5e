"""Reading and writing audio with soundfile, with one-line errors for bad files.

Two readers for two kinds of input:

- :func:`read_wav` is for dataset files. They must be exactly what training expects (mono,
  the recipe's sample rate, finite samples), and a segment can be read without touching the
  rest of the file, which keeps random 3 s crops of long utterances cheap.
- :func:`read_any` is for users' own recordings: any rate, any channel count. Resampling
  and down-mixing are the caller's business.

Every problem a user can cause (missing, unreadable, empty, multichannel, wrong rate,
NaN/Inf) is raised as :class:`spksep_modules.SpkSepError` with a single line
``"<path>: <problem>"``.
"""

import os
import random

import numpy as np
import soundfile as sf
import torch

from spksep_modules import SpkSepError


def _reason(err):
    """First line of a soundfile error, without libsndfile's "Error opening '<path>': "."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if text.startswith("Error opening") and "': " in text:
        text = text.split("': ", 1)[1]
    return text.rstrip(".")


def _open(path):
    """Open ``path`` for reading, turning every soundfile failure into a SpkSepError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not an audio file" if os.path.isdir(path) else "file not found"
        raise SpkSepError(f"{path}: {what}")
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise SpkSepError(f"{path}: cannot read audio ({_reason(err)})") from None


def _read_frames(f, path, start, stop):
    """Read frames [start, stop) of an open SoundFile as float32 [time, channels]."""
    try:
        if start:
            f.seek(start)
        data = f.read(frames=stop - start, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SpkSepError(f"{path}: cannot read audio ({_reason(err)})") from None
    if data.shape[0] != stop - start:
        # The header promised more frames than the file holds (truncated download).
        raise SpkSepError(
            f"{path}: file is truncated (header says {f.frames} samples, "
            f"could read only {start + data.shape[0]})"
        )
    if not np.isfinite(data).all():
        raise SpkSepError(f"{path}: contains NaN or Inf samples")
    return data


def read_wav(path, sample_rate=None, start=0, stop=None, window=None, random_start=False):
    """Read a mono dataset file, or the segment [start, stop) of it, in samples.

    Only the requested segment is read from disk.

    Arguments
    ---------
    path : str or Path
    sample_rate : int or None
        Expected rate in Hz; a file at another rate is an error (no silent resampling).
    start, stop : int
        Segment bounds in samples; ``stop=None`` reads to the end. A segment reaching
        past the end of the file is an error, because it means the dataset CSV no
        longer describes the file.
    window : int or None
        Instead of ``start``/``stop``: at most ``window`` samples, from a uniformly random
        start when ``random_start`` (a training crop), else from the beginning; the file
        is opened once for both its length and its samples.

    Returns
    -------
    Tensor [time], float32 in [-1, 1] for integer files.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_wav(os.path.join(tmp, "a.wav"), torch.linspace(-1, 1, 100), 8000)
    ...     whole = read_wav(os.path.join(tmp, "a.wav"), 8000)
    ...     part = read_wav(os.path.join(tmp, "a.wav"), 8000, start=10, stop=30)
    >>> whole.shape, part.shape, torch.equal(part, whole[10:30])
    (torch.Size([100]), torch.Size([20]), True)
    >>> read_wav("missing.wav")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: missing.wav: file not found
    """
    path = os.fspath(path)
    with _open(path) as f:
        if f.frames == 0:
            raise SpkSepError(f"{path}: file is empty (0 samples)")
        if f.channels != 1:
            raise SpkSepError(f"{path}: expected mono, got {f.channels} channels")
        if sample_rate is not None and f.samplerate != sample_rate:
            raise SpkSepError(
                f"{path}: {sample_rate} Hz expected, file is {f.samplerate} Hz"
            )
        if window is not None:
            start = random.randint(0, max(f.frames - window, 0)) if random_start else 0
            stop = min(start + window, f.frames)
        stop = f.frames if stop is None else int(stop)
        start = int(start)
        if not 0 <= start < stop <= f.frames:
            raise SpkSepError(
                f"{path}: segment [{start}, {stop}) is outside the file "
                f"({f.frames} samples); re-run data preparation if the files changed"
            )
        data = _read_frames(f, path, start, stop)
    return torch.from_numpy(data[:, 0])  # mono [T, 1]: column 0 is contiguous, no copy


def read_any(path):
    """Read a user's recording at its own rate and channel count.

    Returns
    -------
    (Tensor [time, channels] float32, sample_rate int)

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sf.write(os.path.join(tmp, "stereo.wav"), np.zeros((50, 2), np.float32), 44100)
    ...     wav, sample_rate = read_any(os.path.join(tmp, "stereo.wav"))
    >>> wav.shape, wav.dtype, sample_rate
    (torch.Size([50, 2]), torch.float32, 44100)
    """
    path = os.fspath(path)
    with _open(path) as f:
        if f.frames == 0:
            raise SpkSepError(f"{path}: file is empty (0 samples)")
        data = _read_frames(f, path, 0, f.frames)
        sr = f.samplerate
    return torch.from_numpy(data), sr


def write_wav(path, wav, sample_rate, subtype="FLOAT"):
    """Write a mono signal to a WAV file, creating parent folders.

    The default subtype is 32-bit ``FLOAT``: separated estimates are not bounded to
    [-1, 1] (a network may overshoot), and float WAV keeps such peaks instead of clipping
    them, so what is written is exactly what the model produced. Pass ``subtype="PCM_16"``
    for LibriMix-like 16-bit files; samples outside [-1, 1] are then clipped by
    libsndfile, so scale first if that matters.

    Arguments
    ---------
    path : str or Path
    wav : Tensor or ndarray [time]
    sample_rate : int
    subtype : "FLOAT" | "PCM_16" | any soundfile subtype for WAV

    Example
    -------
    >>> import tempfile
    >>> wav = torch.tensor([0.0, 0.5, -0.25, 1.5])  # 1.5: a network's overshoot
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_wav(os.path.join(tmp, "sub", "f.wav"), wav, 8000)  # creates sub/
    ...     write_wav(os.path.join(tmp, "i.wav"), wav, 8000, subtype="PCM_16")
    ...     read_wav(os.path.join(tmp, "sub", "f.wav")), read_wav(os.path.join(tmp, "i.wav"))
    (tensor([ 0.0000,  0.5000, -0.2500,  1.5000]), tensor([ 0.0000,  0.5000, -0.2500,  1.0000]))
    >>> write_wav("x.wav", torch.zeros(2, 10), 8000)
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: x.wav: expected a mono signal [time], got shape (2, 10)
    """
    path = os.fspath(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise SpkSepError(f"{path}: expected a mono signal [time], got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise SpkSepError(f"{path}: refusing to write NaN or Inf samples")
    parent = os.path.dirname(path)
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as err:
            raise SpkSepError(f"{parent}: cannot create the folder ({err.strerror})") from None
    try:
        sf.write(path, wav, int(sample_rate), subtype=subtype, format="WAV")
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as err:
        raise SpkSepError(f"{path}: cannot write audio ({_reason(err)})") from None
