"""A small synthetic Libri2Mix look-alike, for trying the whole pipeline without LibriMix.

:func:`make_demo_data` writes the exact folder layout, file names, metadata CSVs and
mixing conventions of LibriMix's own scripts, so preparation, training and evaluation
cannot tell the difference:

    <root>/Libri2Mix/wav16k/min/{train-100,dev,test}/{mix_clean,s1,s2}/<mixture_ID>.wav
    <root>/Libri2Mix/wav16k/min/metadata/mixture_<split>_mix_clean.csv

With ``noise=True`` it also writes LibriMix's noisy types, from the same sources:

    <root>/Libri2Mix/wav16k/min/{train-100,dev,test}/{mix_both,mix_single,noise}/<mixture_ID>.wav
    <root>/Libri2Mix/wav16k/min/metadata/mixture_<split>_{mix_both,mix_single}.csv

``mix_both = s1 + s2 + noise`` and ``mix_single = s1 + noise``. The noise stands in for
WHAM!'s ambient recordings: coloured noise (power falling as f^-0.5 to f^-2, loudest low
down as rooms and streets are) with a slow random swell, 5 dB below each speaker's level on
average, as LibriMix's loudness ranges put it (speech U[-33, -25] LUFS, noise U[-38, -30]).

The "speech" is a source-filter synthesis. Each synthetic speaker has fixed traits: a
pitch register and range, a vocal-tract length (which scales all formants), its own
version of each vowel's formants, a speaking rate, a glottal pulse shape (open quotient,
spectral tilt), breathiness, a fricative colour and a pause habit. An utterance is a
sequence of syllables (optional fricative onset + vowel) with amplitude envelopes and
pauses, voiced by a Rosenberg glottal pulse train that follows a declining, wandering
pitch contour, and shaped by per-syllable formant resonators. Two speakers thus differ in
pitch, timbre and rhythm, as real ones do, which is what separation and speaker
conditioning rely on.

Mixing follows LibriMix: each source is loudness-normalised (RMS here), then gets a
random gain so that the level difference between any two sources lies in
[-gain_range_db, +gain_range_db]; the mixture is scaled down if it would clip; "min" mode
truncates every source to the shortest one. Files are 16-bit PCM like LibriMix's, and the
mixture is computed from the already-quantised sources, so ``mix == s1 + s2`` holds
exactly for the files as read back (and ``mix_both == s1 + s2 + noise``).

Everything is drawn from ``numpy.random.SeedSequence([seed, ...])`` streams keyed by
speaker and mixture index, so the same arguments give byte-identical files.
"""

import csv
import json
import os
import shutil

import numpy as np
import scipy.signal
import soundfile as sf

from spksep_modules import SpkSepError
from spksep_modules.data.librimix import check_librimix_options

# Mean formants F1..F3 (Hz) of American English vowels, adult male (Peterson & Barney,
# 1952). Speakers scale them by their vocal-tract factor and perturb each vowel a little.
_VOWEL_FORMANTS = np.array(
    [
        [730, 1090, 2440],  # a (father)
        [270, 2290, 3010],  # i (beet)
        [300, 870, 2240],  # u (boot)
        [530, 1840, 2480],  # e (bet)
        [570, 840, 2410],  # o (bought)
        [660, 1720, 2410],  # ae (bat)
        [490, 1350, 1690],  # er (bird)
        [440, 1020, 2240],  # U (book)
        [390, 1990, 2550],  # I (bit)
    ],
    dtype=np.float64,
)
_F4 = 3500.0  # a fixed fourth formant gives the vowels a more natural top end
_SPLIT_DIRS = ("train-100", "dev", "test")
_NOISE_BELOW_SPEECH_DB = 5.0  # LibriMix: noise U[-38, -30] LUFS, speech U[-33, -25] LUFS
_MARKER = "spksep_demo.json"


def _rng(*keys):
    """Independent generator for one (purpose, index) key: order-free determinism."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _resonator_sos(freq, bandwidth, sample_rate):
    """Second-order all-pole resonator at ``freq`` Hz, unit gain at DC, as one sos row."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    c = -2.0 * r * np.cos(2.0 * np.pi * freq / sample_rate)
    return [1.0 + c + r * r, 0.0, 0.0, 1.0, c, r * r]


class _Speaker:
    """The fixed traits of one synthetic speaker, drawn from its own random stream."""

    def __init__(self, rng, sample_rate):
        self.sample_rate = sample_rate
        low_voice = rng.random() < 0.5
        # Pitch register (Hz) and excursion (semitones): typical male / female ranges.
        self.f0 = rng.uniform(85, 145) if low_voice else rng.uniform(165, 255)
        self.f0_range = rng.uniform(2.0, 6.0)
        # Vocal-tract length: shorter tracts have higher formants.
        tract = rng.uniform(0.88, 1.02) if low_voice else rng.uniform(1.05, 1.2)
        # The speaker's own vowel space: every vowel shifted by up to +-8 % per formant.
        self.formants = _VOWEL_FORMANTS * tract * rng.uniform(0.92, 1.08, _VOWEL_FORMANTS.shape)
        self.f4 = _F4 * tract
        self.bandwidth_scale = rng.uniform(0.8, 1.4)
        # Rhythm: syllables per second, how often pauses occur and how long they are.
        self.rate = rng.uniform(3.0, 6.0)
        self.pause_prob = rng.uniform(0.08, 0.25)
        self.pause_len = rng.uniform(0.1, 0.3)
        # Glottal pulse: open quotient and closing-phase share (Rosenberg), breathiness.
        self.breathiness = rng.uniform(0.01, 0.08)
        self.pulse_table = self._pulse_table(open_quotient=rng.uniform(0.4, 0.65),
                                             closing_share=rng.uniform(0.25, 0.45))
        # Fricatives: a speaker-specific noise band and how often syllables start with one.
        nyquist = sample_rate / 2
        center = min(rng.uniform(2500, 6500), 0.7 * nyquist)
        self.fricative_sos = scipy.signal.butter(
            2, [0.7 * center, min(1.3 * center, 0.95 * nyquist)],
            btype="bandpass", fs=sample_rate, output="sos",
        )
        self.fricative_prob = rng.uniform(0.2, 0.6)
        self.fricative_gain = rng.uniform(0.1, 0.3)
        self.vowel_prefs = rng.dirichlet(np.ones(len(_VOWEL_FORMANTS)))
        # The speaker's vowel filters are fixed: design them once, not per syllable.
        self.vowel_sos = [self._vowel_sos(v) for v in range(len(_VOWEL_FORMANTS))]

    def _pitch_contour(self, rng, n):
        """f0 in Hz for every sample: declination plus a slow random wander."""
        # Pitch moves slowly: compute it every 5 ms and interpolate (much cheaper).
        hop = max(1, self.sample_rate // 200)
        t = np.arange(0, n + hop, hop) / self.sample_rate
        semitones = np.linspace(self.f0_range / 2, -self.f0_range / 2, len(t))
        for _ in range(3):
            rate_hz = rng.uniform(0.3, 2.5)
            semitones += (self.f0_range / 3) * np.sin(2 * np.pi * rate_hz * t + rng.uniform(0, 2 * np.pi))
        f0 = self.f0 * 2.0 ** (semitones / 12.0)
        return np.interp(np.arange(n) / self.sample_rate, t, f0)

    def _glottal_source(self, rng, n):
        """Differentiated Rosenberg pulse train (lip radiation included) plus breath noise."""
        phase = np.cumsum(self._pitch_contour(rng, n) / self.sample_rate) % 1.0
        table = self.pulse_table
        source = table[(phase * len(table)).astype(np.int64)]
        return source + self.breathiness * rng.standard_normal(n)

    @staticmethod
    def _pulse_table(open_quotient, closing_share, size=2048):
        """One period of the differentiated Rosenberg pulse, peak-normalised, on a grid.

        The source then costs one table look-up per sample whatever the pitch.
        """
        phase = np.arange(size) / size
        t_open = open_quotient * (1.0 - closing_share)
        t_close = open_quotient * closing_share
        pulse = np.where(
            phase < t_open,
            0.5 * (1.0 - np.cos(np.pi * phase / t_open)),
            np.where(phase < t_open + t_close, np.cos(0.5 * np.pi * (phase - t_open) / t_close), 0.0),
        )
        # Derivative over one period (circular, so the period wraps without a jump).
        deriv = pulse - np.roll(pulse, 1)
        return deriv / np.abs(deriv).max()

    def _vowel_sos(self, vowel):
        nyquist = self.sample_rate / 2
        freqs = list(self.formants[vowel]) + [self.f4]
        bandwidths = self.bandwidth_scale * np.array([60.0, 90.0, 120.0, 180.0])
        rows = [
            _resonator_sos(f, b, self.sample_rate)
            for f, b in zip(freqs, bandwidths)
            if f < 0.9 * nyquist
        ]
        return np.array(rows)

    def utterance(self, rng, n):
        """One utterance of ``n`` samples, float64, RMS-normalised to 1."""
        sr = self.sample_rate
        source = self._glottal_source(rng, n)
        out = np.zeros(n)
        pos = int(rng.uniform(0.0, 0.15) * sr)  # leading silence, as in read speech
        while pos < n:
            if rng.random() < self.pause_prob:
                pos += int(self.pause_len * rng.uniform(0.5, 1.5) * sr)
                continue
            length = int(rng.uniform(0.7, 1.3) * sr / self.rate)
            if rng.random() < self.fricative_prob:
                fric_len = int(rng.uniform(0.04, 0.09) * sr)
                end = min(pos + fric_len, n)
                noise = scipy.signal.sosfilt(self.fricative_sos, rng.standard_normal(end - pos))
                out[pos:end] += self.fricative_gain * noise * np.hanning(end - pos)
                pos, length = end, max(length - fric_len, int(0.05 * sr))
            end = min(pos + length, n)
            if end - pos < 16:
                break
            vowel = rng.choice(len(_VOWEL_FORMANTS), p=self.vowel_prefs)
            voiced = scipy.signal.sosfilt(self.vowel_sos[vowel], source[pos:end])
            out[pos:end] += rng.uniform(0.5, 1.0) * voiced * self._envelope(end - pos)
            # A short gap between syllables keeps the rhythm audible.
            pos = end + int(rng.uniform(0.0, 0.04) * sr)
        rms = np.sqrt(np.mean(out**2))
        return out / (rms + 1e-9)

    def _envelope(self, n):
        """Syllable amplitude: raised-cosine attack (~20 ms) and decay (~50 ms)."""
        attack = min(int(0.02 * self.sample_rate), n // 3)
        decay = min(int(0.05 * self.sample_rate), n // 3)
        env = np.ones(n)
        env[:attack] = 0.5 * (1 - np.cos(np.pi * np.arange(attack) / max(attack, 1)))
        env[n - decay:] = 0.5 * (1 + np.cos(np.pi * np.arange(decay) / max(decay, 1)))
        return env


def _ambient_noise(rng, n, sample_rate):
    """``n`` samples of synthetic ambient noise, float64, RMS-normalised to 1.

    Gaussian noise whose power falls as ``f^-tilt`` (tilt in [0.5, 2]: between pink-ish and
    brown: a room or street is loudest low down, unlike white noise) above 20 Hz, times a
    slow swell of a few dB (real ambiences are not stationary).

    Example
    -------
    >>> noise = _ambient_noise(_rng(0), 8000, 8000)
    >>> noise.shape, round(float(np.sqrt(np.mean(noise**2))), 6)
    ((8000,), 1.0)
    """
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum *= np.maximum(freqs, 20.0) ** (-rng.uniform(0.5, 2.0) / 2)  # amplitude: half the power's
    noise = np.fft.irfft(spectrum, n)
    t = np.arange(n) / sample_rate
    swell_db = rng.uniform(1.0, 4.0) * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t + rng.uniform(0, 2 * np.pi))
    noise *= 10.0 ** (swell_db / 20.0)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _quantise(x):
    """float -> int16 on LibriMix's 16-bit grid (the read-back float is x_int / 32768)."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def make_demo_data(
    root,
    num_train=160,
    num_dev=24,
    num_test=24,
    seconds=3.0,
    length_jitter=0.3,
    sample_rate=16000,
    num_spks=2,
    mode="min",
    num_train_speakers=20,
    num_dev_speakers=6,
    num_test_speakers=6,
    rms_dbfs=-25.0,
    gain_range_db=5.0,
    peak=0.9,
    seed=0,
    noise=False,
):
    """Write a deterministic synthetic LibriMix-layout set under ``root``.

    Arguments
    ---------
    root : str or Path
        Folder that receives ``Libri{num_spks}Mix``. An existing ``Libri{num_spks}Mix``
        that this function did not write is never touched (error instead); one it wrote
        with the same arguments is kept as is, one with other arguments is rewritten.
    num_train, num_dev, num_test : int
        Mixtures in ``train-100``, ``dev`` and ``test``.
    seconds, length_jitter : float
        Every source utterance lasts ``seconds * U(1, 1 + length_jitter)``, so "min"
        mixtures are at least ``seconds`` long and have varying lengths, as in LibriMix.
    sample_rate : 8000 | 16000
    num_spks : 2 | 3
    mode : "min" | "max"
        "min": sources truncated to the shortest; "max": zero-padded to the longest.
    num_*_speakers : int
        Speakers per split; no speaker appears in two splits.
    rms_dbfs, gain_range_db : float
        Level of every source before its random gain, and the largest level difference
        (dB) between two sources of a mixture (each gets ``U(-g/2, g/2)`` dB).
    peak : float
        Mixtures (and their sources, by the same factor) are scaled down to this peak
        if they would exceed it: no clipping.
    seed : int
    noise : bool
        Also write LibriMix's noisy types, ``mix_both`` (sources + noise) and
        ``mix_single`` (s1 + noise), the ``noise`` folder and their metadata CSVs (module
        docstring). The peak rule then covers every mixture type, so the sources may be
        scaled down where the noise pushes a mixture over ``peak``, as in LibriMix. The
        speech is drawn from the same streams either way, and ``noise=False`` writes exactly
        the files (and marker) it wrote before the option existed.

    Returns
    -------
    str: the ``Libri{num_spks}Mix`` folder (what ``--data_folder`` may point to).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     root = make_demo_data(tmp, 1, 1, 1, seconds=0.5, sample_rate=8000, num_train_speakers=2,
    ...                           num_dev_speakers=2, num_test_speakers=2)
    ...     split = os.path.join(root, "wav8k", "min", "train-100")
    ...     name = os.listdir(os.path.join(split, "mix_clean"))[0]  # <spk>-<chapter>-<utt>_...
    ...     mix, s1, s2 = (sf.read(os.path.join(split, sub, name), dtype="int16")[0]
    ...                    for sub in ("mix_clean", "s1", "s2"))
    >>> os.path.basename(root), mix.shape[0] >= 4000, bool((mix == s1 + s2).all())
    ('Libri2Mix', True, True)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     root = make_demo_data(tmp, 1, 1, 1, seconds=0.5, sample_rate=8000, num_train_speakers=2,
    ...                           num_dev_speakers=2, num_test_speakers=2, noise=True)
    ...     split = os.path.join(root, "wav8k", "min", "train-100")
    ...     name = os.listdir(os.path.join(split, "mix_both"))[0]
    ...     both, single, s1, s2, n = (sf.read(os.path.join(split, sub, name), dtype="int16")[0].astype(int)
    ...                                for sub in ("mix_both", "mix_single", "s1", "s2", "noise"))
    >>> bool((both == s1 + s2 + n).all()), bool((single == s1 + n).all())
    (True, True)
    """
    check_librimix_options(num_spks, sample_rate, mode)
    counts = {"train-100": (num_train, num_train_speakers), "dev": (num_dev, num_dev_speakers),
              "test": (num_test, num_test_speakers)}
    for split, (n_mix, n_spk) in counts.items():
        if n_mix < 1 or n_spk < num_spks:
            raise SpkSepError(
                f"{split}: needs at least 1 mixture and {num_spks} speakers, "
                f"got {n_mix} mixtures and {n_spk} speakers"
            )

    params = dict(
        num_train=num_train, num_dev=num_dev, num_test=num_test, seconds=seconds,
        length_jitter=length_jitter, sample_rate=sample_rate, num_spks=num_spks, mode=mode,
        num_train_speakers=num_train_speakers, num_dev_speakers=num_dev_speakers,
        num_test_speakers=num_test_speakers, rms_dbfs=rms_dbfs, gain_range_db=gain_range_db,
        peak=peak, seed=seed,
    )
    if noise:  # only when set: clean sets made before the option keep their marker, and are reused
        params["noise"] = True
    mix_root = os.path.abspath(os.path.join(os.fspath(root), f"Libri{num_spks}Mix"))
    base = os.path.join(mix_root, f"wav{sample_rate // 1000}k", mode)
    if _reuse_existing(mix_root, base, params):
        return mix_root
    os.makedirs(os.path.join(base, "metadata"), exist_ok=True)

    # Distinct LibriSpeech-style speaker IDs (and one chapter each) for all splits at once,
    # which is what keeps the splits' speaker sets disjoint.
    id_rng = _rng(seed, 0)
    total = sum(n for _, n in counts.values())
    spk_ids = id_rng.choice(np.arange(10, 9000), size=total, replace=False)
    chapters = id_rng.integers(1000, 300000, size=total)
    speakers = [_Speaker(_rng(seed, 1, i), sample_rate) for i in range(total)]

    first = 0
    for split_index, (split, (n_mix, n_spk)) in enumerate(counts.items()):
        members = list(range(first, first + n_spk))
        first += n_spk
        _write_split(base, split, split_index, n_mix, members, speakers, spk_ids, chapters, params)

    with open(os.path.join(mix_root, _MARKER), "w", encoding="utf-8") as f:
        json.dump(params, f, indent=1, sort_keys=True)
    return mix_root


def _reuse_existing(mix_root, base, params):
    """True if ``mix_root`` already holds this exact demo set; clears an outdated one."""
    if not os.path.exists(mix_root):
        return False
    marker = os.path.join(mix_root, _MARKER)
    if not os.path.isfile(marker):
        raise SpkSepError(
            f"{mix_root}: exists and was not written by spksep demo-data; "
            "choose another folder (real LibriMix data is never overwritten)"
        )
    try:
        with open(marker, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if old == params and os.path.isdir(base):
        return True
    # Ours but made with other arguments: start clean so no stale file survives.
    shutil.rmtree(mix_root)
    return False


def _write_split(base, split, split_index, n_mix, members, speakers, spk_ids, chapters, params):
    """Synthesise, mix and write one split plus its LibriMix metadata CSV(s)."""
    sr, num_spks, seed = params["sample_rate"], params["num_spks"], params["seed"]
    noisy = params.get("noise", False)
    split_dir = os.path.join(base, split)
    source_dirs = [f"s{i + 1}" for i in range(num_spks)]
    mix_types = ["mix_clean"] + (["mix_both", "mix_single"] if noisy else [])
    for sub in mix_types + source_dirs + (["noise"] if noisy else []):
        os.makedirs(os.path.join(split_dir, sub), exist_ok=True)
    utt_counter = {m: 0 for m in members}
    target_rms = 10.0 ** (params["rms_dbfs"] / 20.0)
    rows = {t: [] for t in mix_types}
    for k in range(n_mix):
        rng = _rng(seed, 2, split_index, k)
        chosen = rng.choice(members, size=num_spks, replace=False)
        utt_ids, sources = [], []
        for m in chosen:
            utt_ids.append(f"{spk_ids[m]}-{chapters[m]}-{utt_counter[m]:04d}")
            utt_counter[m] += 1
            n = int(round(params["seconds"] * rng.uniform(1.0, 1.0 + params["length_jitter"]) * sr))
            gain_db = rng.uniform(-params["gain_range_db"] / 2, params["gain_range_db"] / 2)
            sources.append(speakers[m].utterance(rng, n) * target_rms * 10.0 ** (gain_db / 20.0))
        length = min(len(s) for s in sources) if params["mode"] == "min" else max(len(s) for s in sources)
        sources = np.stack([np.pad(s[:length], (0, max(0, length - len(s)))) for s in sources])
        noise = None
        if noisy:  # its own stream: the speech is drawn as without noise
            noise_rng = _rng(seed, 3, split_index, k)
            level_db = (params["rms_dbfs"] - _NOISE_BELOW_SPEECH_DB
                        + noise_rng.uniform(-params["gain_range_db"] / 2, params["gain_range_db"] / 2))
            # The noise spans the whole mixture, in "max" mode too (as LibriMix's does).
            noise = _ambient_noise(noise_rng, length, sr) * 10.0 ** (level_db / 20.0)
        # Scale before quantising, so the int16 mixtures (sums of int16 files) cannot clip;
        # every mixture type counts, so all types share one set of sources, as in LibriMix.
        mixes = [sources.sum(axis=0)]
        if noisy:
            mixes += [mixes[0] + noise, sources[0] + noise]
        mix_peak = max(np.abs(m).max() for m in mixes)
        if mix_peak > params["peak"]:
            sources *= params["peak"] / mix_peak
            if noisy:
                noise *= params["peak"] / mix_peak
        sources_q = _quantise(sources)
        clean_q = sources_q.astype(np.int32).sum(axis=0)
        mixtures_q = {"mix_clean": clean_q}
        if noisy:
            noise_q = _quantise(noise).astype(np.int32)
            mixtures_q.update(mix_both=clean_q + noise_q, mix_single=sources_q[0].astype(np.int32) + noise_q)

        mixture_id = "_".join(utt_ids)
        name = mixture_id + ".wav"
        source_paths = [os.path.join(split_dir, sub, name) for sub in source_dirs]
        # int16 arrays go to PCM_16 unchanged; float input would be rescaled by 32767.
        for path, src in zip(source_paths, sources_q):
            sf.write(path, src, sr, subtype="PCM_16")
        if noisy:
            noise_path = os.path.join(split_dir, "noise", name)
            sf.write(noise_path, noise_q.astype(np.int16), sr, subtype="PCM_16")
        for mix_type, mix_q in mixtures_q.items():
            mix_path = os.path.join(split_dir, mix_type, name)
            sf.write(mix_path, mix_q.astype(np.int16), sr, subtype="PCM_16")
            # LibriMix's columns: mix_clean lists the sources, mix_both adds the noise,
            # mix_single lists s1 and the noise.
            targets = source_paths[:1] if mix_type == "mix_single" else source_paths
            rows[mix_type].append([mixture_id, mix_path, *targets]
                                  + ([noise_path] if mix_type != "mix_clean" else []) + [length])

    for mix_type, type_rows in rows.items():
        spks = 1 if mix_type == "mix_single" else num_spks
        header = (["mixture_ID", "mixture_path"] + [f"source_{i + 1}_path" for i in range(spks)]
                  + (["noise_path"] if mix_type != "mix_clean" else []) + ["length"])
        csv_path = os.path.join(base, "metadata", f"mixture_{split}_{mix_type}.csv")
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(type_rows)
