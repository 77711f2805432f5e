"""Dynamic mixing: new training mixtures drawn on the fly from single-speaker utterances.

A static LibriMix training split pairs every utterance with one other, once, forever.
Dynamic mixing instead builds every training item anew, the way LibriMix's own scripts
(``scripts/create_librimix_metadata.py``) build a mixture:

1. ``num_spks`` distinct speakers, each drawn with a probability proportional to its
   number of utterances (what drawing utterances uniformly, as LibriMix does, amounts
   to), and a uniformly random utterance of each;
2. a segment of each: ``segment_seconds`` long (or as long as the shortest utterance, if
   shorter: LibriMix's "min" mode) at its own random offset, so the speakers' segments are
   not aligned as they are in the static files;
3. each segment's loudness set to a target drawn uniformly from [-33, -25] LUFS
   (ITU-R BS.1770 integrated loudness, measured with ``pyloudnorm``); a segment that would
   then reach full scale is instead scaled to a 0.9 peak. With ``loudness="train_split"``
   the targets are instead the loudness of the sources of a random mixture of the training
   split (``split_loudness``): new mixtures then keep the levels, and the level differences,
   of the data set they stand in for, whatever rule made it. With ``level_on="utterance"``
   the loudness (and the clipping peak) is that of the whole utterance the segment is cut
   from (measured once, when the dataset is made), as LibriMix levels whole utterances
   before a recipe crops them: a segment then keeps its level within its utterance (a pause
   stays quiet, a quiet passage stays quiet) instead of every segment being brought to the
   target. The noise crop is levelled by itself either way;
4. with a noise folder (``dm_noise_folder``), a random crop of a random noise file, its
   loudness set to a target drawn uniformly from [-38, -30] LUFS (LibriMix draws WHAM!'s
   noise 5 dB below the speech's range), by the same clipping rule; only the first channel
   of a multi-channel file is used (WHAM!'s are stereo; LibriMix keeps the first);
5. the sources (and noise) summed, and the mixture, its sources and noise scaled together
   to a 0.9 peak if the mixture exceeds it (LibriMix's ``MAX_AMP = 0.9``,
   ``MIN_LOUDNESS = -33``, ``MAX_LOUDNESS = -25``).

The noise is part of the mixture only: the targets stay the clean sources, as in
LibriMix's ``mix_both`` (and ``mix_single`` with ``num_spks=1``).

Segments shorter than the segment length are zero-padded to it (``short_policy="pad"``)
or never drawn (``"skip"``: only utterances at least that long take part), as in the
static training set. BS.1770 measures loudness on 400 ms gating blocks, so a shorter
segment is measured on copies of itself laid end to end (same mean square, so the same
loudness); a silent segment (below the -70 LUFS absolute gate) keeps its level, rather
than receiving an infinite gain.

The utterances come from the training split's own sources (``s1/``, ``s2/``...: the
speaker of each is the LibriSpeech prefix of its utterance ID in the mixture ID, as in
``prepare_librimix``) or from a LibriSpeech-style folder
``<folder>/<speaker>/<chapter>/<utterance>.flac|wav`` (e.g. ``LibriSpeech/train-clean-100``
at the recipe's sample rate: nothing is resampled). LibriMix's "min" sources are
utterances cut where their partner ended, so a LibriSpeech folder offers more speech.

Determinism: mixture ``i`` of epoch ``e`` on DDP process ``r`` is drawn from its own
``numpy.random.SeedSequence([seed, e, r, i])`` and nothing else (no global random state).
So a run is reproducible under its seed, a resumed run draws the same mixtures for the
same epoch, each DDP process draws its own mixtures, and so does each DataLoader worker:
workers build different item indices, and an item does not depend on which worker
builds it. The Brain tells the dataset the epoch (``set_epoch``) before each training
epoch's DataLoader iterator, and so its workers, are created.

The dataset is a SpeechBrain ``DynamicItemDataset`` with the static training set's
output keys (``id``, ``mix_sig [time]``, ``sources [time, num_spks]``, ``spk_ids``), so
``Brain.fit`` batches it with ``PaddedBatch`` and every model and loss trains on it
unchanged; ``id`` is the LibriMix-style ID of the utterances mixed
(``<utt1>_<utt2>``).
"""

import csv
import logging
import operator
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from spksep_modules import SpkSepError
from spksep_modules.audio import _reason, read_wav
from spksep_modules.data.librimix import check_header, speakers_from_mixture_id

# LibriMix's constants (scripts/create_librimix_metadata.py).
LOUDNESS_RANGE = (-33.0, -25.0)  # LUFS: each source's target, drawn uniformly
NOISE_LOUDNESS_RANGE = (-38.0, -30.0)  # LUFS: the noise's target (MIN_LOUDNESS - 5, MAX_LOUDNESS - 5)
MAX_AMP = 0.9  # peak a clipping source or mixture is scaled to
AUDIO_EXTENSIONS = (".flac", ".wav")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    """One single-speaker recording that dynamic mixing may draw."""

    utt_id: str  # LibriSpeech ID, ``speaker-chapter-utterance``
    path: str
    speaker: str
    num_samples: int


@dataclass(frozen=True)
class NoiseFile:
    """One noise recording that dynamic mixing may add (``noise_files``)."""

    path: str
    num_samples: int


@dataclass
class Mixture:
    """One drawn mixture, with what was drawn for it.

    ``mix [time]`` is exactly ``sources.sum(-1)`` (both float32), plus ``noise [time]``
    when a noise folder is given (else ``noise`` is None); ``target_lufs`` holds the
    loudness drawn for each source (``noise_lufs`` the noise's), ``peak_scale`` the factor
    applied to all of them afterwards to keep the mixture's peak at ``MAX_AMP`` (1.0 when
    it did not clip).
    """

    mixture_id: str
    mix: torch.Tensor
    sources: torch.Tensor
    speakers: list
    target_lufs: list
    peak_scale: float
    noise: Optional[torch.Tensor] = None
    noise_lufs: Optional[float] = None


def _csv_rows(csv_path):
    """The rows of a CSV as dicts; an unreadable file is a one-line error naming it."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpkSepError(f"{csv_path}: cannot read CSV ({err})") from None


def loudness_meter(sample_rate):
    """pyloudnorm's BS.1770 meter at ``sample_rate``; without pyloudnorm, a one-line error."""
    try:
        import pyloudnorm
    except ImportError:
        raise SpkSepError("dynamic_mixing: needs pyloudnorm (pip install pyloudnorm)") from None
    return pyloudnorm.Meter(int(sample_rate))


def split_utterances(csv_path, num_spks, sample_rate):
    """The sources of a ``prepare_librimix`` CSV as utterances, one per source file.

    Arguments
    ---------
    csv_path : str
        A CSV written by ``prepare_librimix`` (``ID, duration, s<i>_wav`` columns).
    num_spks : int
    sample_rate : int
        Converts the CSV's durations (seconds) to samples.

    Returns
    -------
    list of Utterance
        In CSV order. An utterance in several mixtures comes once per mixture: a data set
        that reuses an utterance cuts it at another place each time (``min`` mode cuts it
        where its partner ends), and every copy is speech the static split trains on (one
        copy per utterance ID drew from 171 of the real-speech development set's 1,600
        sources; ``bench/NOTES.md``).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open(os.path.join(tmp, "train.csv"), "w") as f:
    ...         _ = f.write("ID,duration,mix_wav,s1_wav,s2_wav,spk1,spk2\\n"
    ...                     "19-198-0001_26-495-0002,0.5,m.wav,a.wav,b.wav,19,26\\n"
    ...                     "19-198-0001_40-222-0003,0.25,n.wav,c.wav,d.wav,19,40\\n")
    ...     [(u.utt_id, u.path, u.speaker, u.num_samples)
    ...      for u in split_utterances(os.path.join(tmp, "train.csv"), 2, 8000)]
    [('19-198-0001', 'a.wav', '19', 4000), ('26-495-0002', 'b.wav', '26', 4000), ('19-198-0001', 'c.wav', '19', 2000), ('40-222-0003', 'd.wav', '40', 2000)]
    """
    by_path = {}
    rows = _csv_rows(csv_path)
    for row in rows:
        utt_ids = row.get("ID", "").split("_")
        if num_spks == 1:  # mix_single keeps the Libri{n}Mix ID; its one source is the first
            utt_ids = utt_ids[:1]
        speakers = speakers_from_mixture_id("_".join(utt_ids), num_spks, csv_path)
        num_samples = int(round(float(row["duration"]) * sample_rate))
        for k, (utt_id, speaker) in enumerate(zip(utt_ids, speakers)):
            path = row[f"s{k + 1}_wav"]
            old = by_path.get(path)  # a CSV listing one file twice gives it once
            if old is None or num_samples > old.num_samples:
                by_path[path] = Utterance(utt_id, path, speaker, num_samples)
    return list(by_path.values())


def folder_utterances(folder, sample_rate):
    """The utterances of a LibriSpeech-style folder ``<speaker>/<chapter>/<utt>.flac|wav``.

    Every file's header is checked (mono, ``sample_rate``, not empty) once, here, so that a
    bad file is a one-line error now rather than hours into training.

    Arguments
    ---------
    folder : str
        E.g. ``LibriSpeech/train-clean-100``; files at other depths are ignored.
    sample_rate : int

    Returns
    -------
    list of Utterance, sorted by path (the draws do not depend on listing order).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     os.makedirs(os.path.join(tmp, "19", "198"))
    ...     sf.write(os.path.join(tmp, "19", "198", "19-198-0001.flac"), np.zeros(800), 8000)
    ...     [(u.utt_id, u.speaker, u.num_samples) for u in folder_utterances(tmp, 8000)]
    [('19-198-0001', '19', 800)]
    >>> folder_utterances("no_such_folder", 8000)
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: no_such_folder: dm_folder not found
    """
    folder = _existing_folder(folder, "dm_folder")
    paths = []
    for speaker in sorted(os.listdir(folder)):
        speaker_dir = os.path.join(folder, speaker)
        if not os.path.isdir(speaker_dir):
            continue
        for chapter in sorted(os.listdir(speaker_dir)):
            chapter_dir = os.path.join(speaker_dir, chapter)
            if not os.path.isdir(chapter_dir):
                continue
            for name in sorted(os.listdir(chapter_dir)):
                if name.lower().endswith(AUDIO_EXTENSIONS):
                    paths.append((os.path.join(chapter_dir, name), speaker))
    if not paths:
        raise SpkSepError(
            f"{folder}: no LibriSpeech-style <speaker>/<chapter>/<utterance>.flac|wav files"
        )
    utterances = []
    for path, speaker in paths:
        info = check_header(path, sample_rate, rate_hint=(
            " (dynamic mixing does not resample: give dm_folder a copy at the recipe's rate)"))
        utt_id = os.path.splitext(os.path.basename(path))[0]
        utterances.append(Utterance(utt_id, path, speaker, info.frames))
    return utterances


def noise_files(folder, sample_rate):
    """The noise recordings of ``folder``: every ``.wav``/``.flac`` file at any depth.

    Every header is checked once, here (readable, at ``sample_rate``, not empty), so that a
    bad file is a one-line error now rather than hours into training. Files may have
    several channels: the first is used (WHAM!'s noise is stereo).

    Arguments
    ---------
    folder : str
        E.g. ``wham_noise/tr`` (resampled to the recipe's rate) or a LibriMix split's
        ``noise/`` folder.
    sample_rate : int

    Returns
    -------
    list of NoiseFile, sorted by path (the draws do not depend on listing order).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sf.write(os.path.join(tmp, "cafe.wav"), np.zeros((800, 2)), 8000)  # stereo is fine
    ...     [(os.path.basename(n.path), n.num_samples) for n in noise_files(tmp, 8000)]
    [('cafe.wav', 800)]
    >>> noise_files("no_such_folder", 8000)
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: no_such_folder: dm_noise_folder not found
    """
    folder = _existing_folder(folder, "dm_noise_folder")
    paths = sorted(
        os.path.join(parent, name)
        for parent, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(AUDIO_EXTENSIONS)
    )
    if not paths:
        raise SpkSepError(f"{folder}: dm_noise_folder holds no .wav or .flac files")
    files = []
    for path in paths:
        info = check_header(path, sample_rate, mono=False, rate_hint=(
            " (dynamic mixing does not resample: give dm_noise_folder a copy at the recipe's rate)"))
        files.append(NoiseFile(path, info.frames))
    return files


def _existing_folder(folder, key):
    """``folder`` as a string, once it is known to be a folder (``key``: the recipe key that
    names it, for the error)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise SpkSepError(f"{folder}: {key} not found")
    return folder


def read_noise(noise, start, length):
    """``length`` samples of ``noise`` (a ``NoiseFile``) from ``start``, first channel,
    float64. A file shorter than that is repeated end to end (LibriMix too extends short
    noise files by repeating them; it cross-fades the seams, which this does not).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sf.write(os.path.join(tmp, "n.wav"), np.arange(4) / 8, 8000, subtype="FLOAT")
    ...     read_noise(NoiseFile(os.path.join(tmp, "n.wav"), 4), 2, 6).tolist()
    [0.25, 0.375, 0.0, 0.125, 0.25, 0.375]
    """
    try:
        if noise.num_samples >= start + length:  # only the crop is read
            data, _ = sf.read(noise.path, start=start, stop=start + length, dtype="float64",
                              always_2d=True)
        else:
            data, _ = sf.read(noise.path, dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SpkSepError(f"{noise.path}: cannot read audio ({_reason(err)})") from None
    data = data[:, 0]
    if len(data) < length:
        data = np.take(data, start + np.arange(length), mode="wrap")
    return data


def integrated_loudness(meter, signal):
    """BS.1770 integrated loudness (LUFS) of a mono float64 ``signal``, any length.

    What ``meter.integrated_loudness`` (pyloudnorm) computes, with its K-weighting filters
    and gating, but with the 400 ms blocks' energies taken from one cumulative sum instead
    of a Python loop over blocks (which cost more than reading the audio). pyloudnorm
    refuses input shorter than a block; a shorter signal is measured on copies of itself
    laid end to end, which keeps its mean square. Silence (or anything below the -70 LUFS
    absolute gate) is ``-inf``.

    Example
    -------
    >>> import pyloudnorm
    >>> meter = pyloudnorm.Meter(8000)
    >>> speechy = np.random.default_rng(0).standard_normal(12000) * np.hanning(12000)  # 1.5 s
    >>> round(integrated_loudness(meter, speechy), 6), round(float(meter.integrated_loudness(speechy)), 6)
    (-1.330057, -1.330057)
    >>> tone = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000)  # 1 s at 1 kHz
    >>> round(integrated_loudness(meter, tone), 1), round(integrated_loudness(meter, tone[:800]), 1)
    (-23.2, -23.2)
    >>> integrated_loudness(meter, np.zeros(100))
    -inf
    """
    rate, block_seconds = meter.rate, meter.block_size
    block = int(np.ceil(block_seconds * rate))
    if not signal.size or not np.any(signal):
        return float("-inf")
    if signal.size < block:
        signal = np.tile(signal, -(-block // signal.size))
    weighted = signal
    for stage in meter._filters.values():  # K-weighting: high shelf, then high pass
        weighted = stage.apply_filter(weighted)
    # Blocks and gates exactly as pyloudnorm 0.2 places them (its meter.py, BS.1770-4 eq. 1-7).
    step = 1.0 - meter.overlap
    num_blocks = int(np.round((signal.size / rate - block_seconds) / (block_seconds * step))) + 1
    j = np.arange(num_blocks, dtype=np.float64)
    lower = (block_seconds * (j * step) * rate).astype(np.int64)
    upper = np.minimum((block_seconds * (j * step + 1) * rate).astype(np.int64), signal.size)
    energy = np.concatenate([[0.0], np.cumsum(weighted * weighted)])
    z = np.maximum(energy[upper] - energy[lower], 0.0) / (block_seconds * rate)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
        above_absolute = block_lufs >= -70.0
        if not above_absolute.any():
            return float("-inf")
        relative = -0.691 + 10.0 * np.log10(z[above_absolute].mean()) - 10.0
        gated = (block_lufs > relative) & (block_lufs > -70.0)
        if not gated.any():
            return float("-inf")
        return float(-0.691 + 10.0 * np.log10(z[gated].mean()))


def split_loudness(csv_path, num_spks, sample_rate, max_mixtures=2000):
    """The BS.1770 loudness (LUFS) of the sources of a ``prepare_librimix`` CSV, by mixture.

    What ``loudness="train_split"`` draws targets from: one row per mixture, so the levels
    of a mixture's sources, and their differences, are drawn together. Mixtures with a
    silent source (no finite loudness) are left out. At most ``max_mixtures`` mixtures,
    evenly spaced in the CSV, are measured: enough to describe a distribution of levels, and
    a start-up of seconds rather than of reading all of train-360.

    Returns
    -------
    numpy.ndarray ``[mixtures, num_spks]``, float64.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rng, rows = np.random.default_rng(0), ["ID,duration,mix_wav,s1_wav,s2_wav"]
    ...     for i, (a, b) in enumerate([(0.1, 0.01), (0.05, 0.0)]):  # the second has a silent source
    ...         for name, scale in (("a", a), ("b", b)):
    ...             sf.write(os.path.join(tmp, f"{name}{i}.wav"), scale * rng.standard_normal(8000), 8000)
    ...         rows.append(f"19-1-{i}_26-1-{i},1.0,m.wav,{tmp}/a{i}.wav,{tmp}/b{i}.wav")
    ...     with open(os.path.join(tmp, "train.csv"), "w") as f:
    ...         _ = f.write("\\n".join(rows) + "\\n")
    ...     table = split_loudness(os.path.join(tmp, "train.csv"), 2, 8000)
    >>> table.shape, round(float(table[0, 0] - table[0, 1]))  # 20 dB apart, as written
    ((1, 2), 20)
    """
    rows = _csv_rows(csv_path)
    columns = [f"s{k + 1}_wav" for k in range(num_spks)]
    if rows and any(c not in rows[0] for c in columns):
        raise SpkSepError(f"{csv_path}: needs the columns {', '.join(columns)} of num_spks={num_spks} sources")
    if len(rows) > max_mixtures:
        rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, max_mixtures).round().astype(int))]
    meter, table = loudness_meter(sample_rate), []
    for row in rows:
        levels = [integrated_loudness(meter, read_wav(row[f"s{k + 1}_wav"], sample_rate).numpy()
                                      .astype(np.float64)) for k in range(num_spks)]
        if all(np.isfinite(levels)):
            table.append(levels)
    if not table:
        raise SpkSepError(f"{csv_path}: dm_loudness=train_split needs a mixture whose sources are not silent")
    return np.array(table)


class _Mixer:
    """Draws and builds mixture ``index`` of the current epoch (see the module docstring).

    Kept apart from the dataset so that the dataset's pipeline holds a plain picklable
    callable and ``set_epoch`` reaches it.
    """

    def __init__(self, utterances, sample_rate, num_spks, segment, seed, rank,
                 loudness=LOUDNESS_RANGE, max_amp=MAX_AMP, noises=(), level_on="segment"):
        self.sample_rate = int(sample_rate)
        self.num_spks = int(num_spks)
        self.segment = segment  # samples, or None for whole (shortest) utterances
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = 0
        # (low, high): LibriMix's uniform draw; or a [mixtures, num_spks] table of levels.
        self.loudness = np.asarray(loudness, dtype=np.float64)
        self.max_amp = float(max_amp)
        self.noises = list(noises)  # NoiseFile list; empty: clean mixtures
        self._meter = None
        if level_on not in ("segment", "utterance"):
            raise SpkSepError(f"dm_level_on: must be 'segment' or 'utterance', got {level_on!r}")
        self.level_on = level_on  # what the loudness is given to
        # path -> (loudness, peak) of each whole utterance, measured here, in the main process,
        # so that DataLoader workers (made anew every epoch) inherit it instead of re-measuring.
        self._utterance_levels = {}
        if level_on == "utterance":
            for utt in utterances:
                self.utterance_level(utt)
        by_speaker = {}
        for utt in utterances:
            by_speaker.setdefault(utt.speaker, []).append(utt)
        self.speakers = sorted(by_speaker)
        self.by_speaker = [by_speaker[s] for s in self.speakers]
        counts = np.array([len(u) for u in self.by_speaker], dtype=np.float64)
        self.speaker_weights = counts / counts.sum()

    def meter(self):
        if self._meter is None:  # made on first use: cheap to pickle to workers
            self._meter = loudness_meter(self.sample_rate)
        return self._meter

    def draw(self, index):
        """The random choices for mixture ``index``: utterances, offsets, length, LUFS, and
        ``(NoiseFile, offset, LUFS)`` of the noise (None without a noise folder)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.rank, int(index)]))
        chosen = rng.choice(len(self.speakers), size=self.num_spks, replace=False, p=self.speaker_weights)
        utterances = [self.by_speaker[s][rng.integers(len(self.by_speaker[s]))] for s in chosen]
        shortest = min(u.num_samples for u in utterances)
        length = shortest if self.segment is None else min(self.segment, shortest)
        starts = [int(rng.integers(0, u.num_samples - length + 1)) for u in utterances]
        if self.loudness.ndim == 1:
            targets = [float(t) for t in rng.uniform(*self.loudness, size=self.num_spks)]
        else:  # the levels of one mixture of the training split, drawn together
            targets = [float(t) for t in self.loudness[rng.integers(len(self.loudness))]]
        noise = None
        if self.noises:  # drawn last: without noise, every other draw is what it was before
            chosen_noise = self.noises[rng.integers(len(self.noises))]
            # A random crop; a file shorter than the segment is repeated from a random offset.
            spare = chosen_noise.num_samples - length
            start = int(rng.integers(0, spare + 1) if spare >= 0 else rng.integers(chosen_noise.num_samples))
            noise = (chosen_noise, start, float(rng.uniform(*NOISE_LOUDNESS_RANGE)))
        return utterances, starts, length, targets, noise

    def _at_loudness(self, wav, target, level=None):
        """``wav`` scaled to ``target`` LUFS, or to a ``max_amp`` peak if that would clip.

        ``level``: the ``(loudness, peak)`` to set the gain from (the whole utterance's);
        None: ``wav``'s own.
        """
        if level is None:
            level = integrated_loudness(self.meter(), wav), np.abs(wav).max()
        loudness, peak = level
        # A silent segment has no level to set (its gain would be infinite).
        gain = 10.0 ** ((target - loudness) / 20.0) if np.isfinite(loudness) else 1.0
        if gain * peak >= 1.0:  # LibriMix: a source that would clip gets a 0.9 peak instead
            gain = self.max_amp / peak
        return wav * gain

    def utterance_level(self, utt):
        """``(loudness, peak)`` of the whole utterance ``utt``: its BS.1770 loudness in LUFS
        (-inf for a silent file, which then keeps its level) and its largest absolute sample,
        both floats; measured on first call, then remembered."""
        if utt.path not in self._utterance_levels:
            wav = read_wav(utt.path, self.sample_rate).numpy().astype(np.float64)
            self._utterance_levels[utt.path] = (integrated_loudness(self.meter(), wav), np.abs(wav).max())
        return self._utterance_levels[utt.path]

    def __call__(self, index):
        utterances, starts, length, targets, noise_draw = self.draw(index)
        # Speaker-major [num_spks (+ 1 noise row), time]: contiguous per signal.
        signals = np.empty((self.num_spks + (noise_draw is not None), length))
        for k, (utt, start, target) in enumerate(zip(utterances, starts, targets)):
            wav = read_wav(utt.path, self.sample_rate, start, start + length).numpy().astype(np.float64)
            level = self.utterance_level(utt) if self.level_on == "utterance" else None
            signals[k] = self._at_loudness(wav, target, level)
        if noise_draw is not None:
            noise_file, start, target = noise_draw
            signals[-1] = self._at_loudness(read_noise(noise_file, start, length), target)
        mix_peak = np.abs(signals.sum(axis=0)).max()  # the noise counts: it is in the mixture
        peak_scale = self.max_amp / mix_peak if mix_peak > self.max_amp else 1.0
        signals = torch.from_numpy(signals * peak_scale).to(torch.float32)
        if self.segment is not None and length < self.segment:  # short_policy="pad"
            signals = torch.nn.functional.pad(signals, (0, self.segment - length))
        sources = signals[: self.num_spks]
        noise = signals[self.num_spks] if noise_draw is not None else None
        mix = sources.sum(dim=0)  # summed in float32: mix == the returned sources' sum (+ noise)
        return Mixture(
            mixture_id="_".join(u.utt_id for u in utterances),
            mix=mix if noise is None else mix + noise,
            sources=sources.t(),  # [time, num_spks], SpeechBrain's layout (PaddedBatch stacks it)
            speakers=[u.speaker for u in utterances],
            target_lufs=targets,
            peak_scale=float(peak_scale),
            noise=noise,
            noise_lufs=None if noise_draw is None else noise_draw[2],
        )


class DynamicMixingDataset(DynamicItemDataset):
    """Training mixtures made on the fly, ``epoch_mixtures`` per epoch (module docstring).

    Arguments
    ---------
    utterances : list of Utterance
        What to mix (``split_utterances`` or ``folder_utterances``).
    sample_rate : int
    num_spks : int
        Speakers per mixture; the utterances must come from at least this many.
    epoch_mixtures : int
        Items per epoch (the dataset's length).
    segment_seconds : float or None
        Length of every mixture; None: the shortest drawn utterance, whole.
    short_policy : "pad" | "skip"
        Segments shorter than ``segment_seconds`` are zero-padded, or such utterances are
        never drawn.
    loudness : (low, high) or array ``[mixtures, num_spks]``
        Each source's loudness target (LUFS): drawn uniformly in ``[low, high]``
        (LibriMix's [-33, -25], the default), or a random row of this table
        (``split_loudness``).
    level_on : "segment" | "utterance"
        What the target loudness is given to: the drawn segment (the default), or the whole
        utterance it is cut from (its loudness and peak, measured here for every utterance:
        ~7 ms for an 8 s one, so seconds for a split, minutes for train-clean-100).
    noises : list of NoiseFile or None
        Noise to add to every mixture (``noise_files``), at U[-38, -30] LUFS; the targets
        stay the clean sources. Needed with ``num_spks=1`` (enhancement).
    seed : int
    rank : int or None
        The DDP process; None reads ``RANK`` from the environment (0 without DDP).
    where : str
        Names the utterances' origin (CSV or folder) in error messages.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> from spksep_modules.data.demo import make_demo_data
    >>> from spksep_modules.data.librimix import prepare_librimix
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     root = make_demo_data(tmp, 2, 1, 1, seconds=0.5, sample_rate=8000, num_train_speakers=2,
    ...                           num_dev_speakers=2, num_test_speakers=2)  # tiny Libri2Mix
    ...     train_csv = prepare_librimix(root, tmp, 8000)["train"]
    ...     data = DynamicMixingDataset(split_utterances(train_csv, 2, 8000), 8000, 2,
    ...                                 epoch_mixtures=3, segment_seconds=0.25, seed=1)
    ...     data.set_epoch(1)
    ...     batch = PaddedBatch([data[0], data[1]])
    ...     again = data[0]["mix_sig"]
    >>> len(data), batch.mix_sig.data.shape, batch.sources.data.shape, len(set(batch.spk_ids[0]))
    (3, torch.Size([2, 2000]), torch.Size([2, 2000, 2]), 2)
    >>> torch.equal(again, batch.mix_sig.data[0])  # the same (seed, epoch, rank, index)
    True
    """

    def __init__(self, utterances, sample_rate, num_spks, epoch_mixtures, segment_seconds=3.0,
                 short_policy="pad", seed=0, rank=None, where="dynamic mixing",
                 loudness=LOUDNESS_RANGE, noises=None, level_on="segment"):
        if num_spks == 1 and not noises:
            raise SpkSepError("dm_noise_folder: dynamic mixing with num_spks=1 needs noise "
                              "(one clean source alone would be its own target)")
        if short_policy not in ("pad", "skip"):
            raise SpkSepError(f"short_policy: must be 'pad' or 'skip', got {short_policy!r}")
        if segment_seconds is not None and not segment_seconds > 0:
            raise SpkSepError(f"segment_seconds: must be positive (or None), got {segment_seconds}")
        if isinstance(epoch_mixtures, bool) or not isinstance(epoch_mixtures, int) or epoch_mixtures < 1:
            raise SpkSepError(f"dm_epoch_mixtures: must be a positive integer (or null), got {epoch_mixtures!r}")
        segment = None if segment_seconds is None else int(round(segment_seconds * sample_rate))
        if segment is not None and short_policy == "skip":
            utterances = [u for u in utterances if u.num_samples >= segment]
        speakers = sorted({u.speaker for u in utterances})
        if len(speakers) < num_spks:
            found = ", ".join(speakers) if speakers else "none"
            longer = (f" with utterances of at least segment_seconds={segment_seconds} (short_policy='skip')"
                      if segment is not None and short_policy == "skip" else "")
            raise SpkSepError(
                f"{where}: dynamic mixing needs {num_spks} distinct speakers{longer}, "
                f"found {len(speakers)} ({found})"
            )
        if rank is None:
            rank = int(os.environ.get("RANK", 0))
        loudness = np.asarray(loudness, dtype=np.float64)
        if loudness.shape != (2,) and (loudness.ndim != 2 or loudness.shape[1] != num_spks or not len(loudness)):
            raise SpkSepError(f"{where}: loudness must be (low, high) or a [mixtures, {num_spks}] "
                              f"table, got shape {loudness.shape}")
        self.mixer = _Mixer(utterances, sample_rate, num_spks, segment, seed, rank, loudness,
                            noises=noises or (), level_on=level_on)
        # One row per item: its index is all a mixture is drawn from (with seed, epoch, rank).
        super().__init__({f"dm{i}": {"index": i} for i in range(epoch_mixtures)})
        self.add_dynamic_item(self.mixer, takes="index", provides="mixture")
        # Top-level callables (no closures), so the dataset pickles for spawned workers.
        for attr, key in (("mixture_id", "mixture_id"), ("mix", "mix_sig"), ("sources", "sources"),
                          ("speakers", "spk_ids")):
            self.add_dynamic_item(operator.attrgetter(attr), takes="mixture", provides=key)
        self.set_output_keys({"id": "mixture_id", "mix_sig": "mix_sig", "sources": "sources",
                              "spk_ids": "spk_ids"})

    def set_epoch(self, epoch):
        """Draw the mixtures of ``epoch`` from now on (the Brain calls this every epoch)."""
        self.mixer.epoch = int(epoch)

    def mixture(self, index):
        """Mixture ``index`` of the current epoch with what was drawn for it (``Mixture``)."""
        return self.mixer(index)


def dynamic_mixing_set(train_csv, hparams):
    """The recipe's dynamic-mixing training set, from its yaml keys; refuses options that
    only make sense with fixed training crops.

    Keys read: ``sample_rate, num_spks, segment_seconds, short_policy, seed, dm_folder``
    (null: the training split's own sources), ``dm_epoch_mixtures`` (null: as many as the
    static training set), ``dm_loudness`` (``librimix``, the default, or ``train_split``),
    ``dm_level_on`` (``segment``, the default, or ``utterance``),
    ``dm_noise_folder`` (null: no noise; else ``noise_files``), and ``fixed_crops``,
    ``basic_cache_mb`` and ``train_loader_opts: {persistent_workers}``, which must be off.

    Example
    -------
    >>> dynamic_mixing_set("train.csv", {"fixed_crops": False, "basic_cache_mb": 4000})
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: basic_cache_mb: must be 0 with dynamic_mixing (every epoch draws new segments, so a cached example never comes back), got 4000
    """
    if hparams.get("train_loader_opts", {}).get("persistent_workers", False):
        raise SpkSepError(
            "train_loader_opts: persistent_workers must be off with dynamic_mixing "
            "(kept workers would never learn the next epoch, and draw its first epoch's mixtures again)"
        )
    if hparams.get("fixed_crops", False):
        raise SpkSepError("fixed_crops: must be False with dynamic_mixing (every epoch draws new segments)")
    if hparams.get("basic_cache_mb", 0):
        raise SpkSepError(
            "basic_cache_mb: must be 0 with dynamic_mixing (every epoch draws new segments, "
            f"so a cached example never comes back), got {hparams['basic_cache_mb']}"
        )
    sample_rate, num_spks = hparams["sample_rate"], hparams["num_spks"]
    segment_seconds, short_policy = hparams["segment_seconds"], hparams["short_policy"]
    epoch_mixtures = hparams.get("dm_epoch_mixtures")
    if epoch_mixtures is None:  # as many as the static set (which 'skip' filters)
        with open(train_csv, newline="", encoding="utf-8") as f:
            durations = [float(row["duration"]) for row in csv.DictReader(f)]
        if segment_seconds is not None and short_policy == "skip":
            durations = [d for d in durations if round(d * sample_rate) >= round(segment_seconds * sample_rate)]
        epoch_mixtures = max(len(durations), 1)
    folder = hparams.get("dm_folder")
    if folder is None:
        utterances = split_utterances(train_csv, num_spks, sample_rate)
    else:
        utterances = folder_utterances(folder, sample_rate)
    where = train_csv if folder is None else folder
    rule = hparams.get("dm_loudness") or "librimix"
    if rule not in ("librimix", "train_split"):
        raise SpkSepError(f"dm_loudness: must be 'librimix' or 'train_split', got {rule!r}")
    loudness = LOUDNESS_RANGE if rule == "librimix" else split_loudness(train_csv, num_spks, sample_rate)
    noise_folder = hparams.get("dm_noise_folder")
    noises = None if noise_folder is None else noise_files(noise_folder, sample_rate)
    dataset = DynamicMixingDataset(
        utterances, sample_rate, num_spks, epoch_mixtures, segment_seconds=segment_seconds,
        short_policy=short_policy, seed=hparams["seed"], where=where, loudness=loudness,
        noises=noises, level_on=hparams.get("dm_level_on") or "segment",
    )
    logger.info("Dynamic mixing: %d mixtures per epoch from %d utterances of %d speakers (%s), "
                "loudness as %s, set on each %s%s", len(dataset),
                sum(len(u) for u in dataset.mixer.by_speaker), len(dataset.mixer.speakers), where,
                rule, dataset.mixer.level_on,
                "" if noises is None else f", noise from {len(noises)} files ({noise_folder})")
    return dataset
