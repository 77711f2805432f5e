"""LibriMix preparation: SpeechBrain CSVs for any sample rate, mode, split and speaker count.

SpeechBrain's own LibriMix preparation is tied to one configuration; this one reads the
layout that LibriMix's scripts write, for every variant:

    Libri2Mix/wav{8k,16k}/{min,max}/{train-100,train-360,dev,test}/<mixture_type>/ID.wav
    Libri2Mix/wav{8k,16k}/{min,max}/{train-100,train-360,dev,test}/{s1,s2[,s3],noise}/ID.wav
    Libri2Mix/wav{8k,16k}/{min,max}/metadata/mixture_<split>_<mixture_type>.csv

and writes ``save_folder/<name>.csv`` with the columns
``ID,duration,mix_wav,s1_wav,s2_wav[,s3_wav],spk1,spk2[,spk3]`` (duration in seconds,
absolute paths, speakers from the mixture ID ``<utt1>_<utt2>`` where each LibriSpeech
utterance ID is ``speaker-chapter-utterance``).

The mixture type picks what the model hears; the targets are always clean sources:

    mix_clean   s1 + ... + sC           separation (the paper's task)
    mix_both    s1 + ... + sC + noise   noisy separation (WHAM! noise), targets s1 ... sC
    mix_single  s1 + noise              one-speaker enhancement (num_spks=1), target s1

LibriMix writes every type from the same sources and noise, keeps the ``Libri{n}Mix``
mixture ID for ``mix_single`` (``<utt1>_<utt2>``: its speaker is the first), and lists the
noise in the noisy types' metadata (``noise_path``), which this preparation does not need.

Everything that would otherwise fail hours into training is checked here, and each
problem is one :class:`SpkSepError` line naming the file or folder.

Cost of ``verify="header"`` (every mixture and source header opened with
``soundfile.info``), measured on a Libri2Mix train-100-sized split (13,900 mixtures,
41,700 files) from the page cache on a busy 2-core machine: 3-4 s; ``verify="exists"``
(only checks that every file exists and trusts the metadata's ``length``): 1 s. Cold or
network storage is slower, but that is paid once: while the data is unchanged the next
call returns at once.

NaN/Inf samples: only floating-point files (WAV ``FLOAT``/``DOUBLE`` subtypes) can hold
them, so only those are read in full (in blocks), once, when the CSVs are (re)built; the
result is cached with them. LibriMix's own files are 16-bit PCM and cost nothing more.
A WAV file shorter than its RIFF header announces (a cut copy or download) is reported as
truncated from the first 12 bytes, before its length is compared with the others'.
"""

import csv
import json
import os
import struct

import numpy as np
import soundfile as sf

from spksep_modules import SpkSepError
from spksep_modules.audio import _reason

DEFAULT_SPLITS = {"train": "train-100", "valid": "dev", "test": "test"}
MIXTURE_TYPES = ("mix_clean", "mix_both", "mix_single")
_STATE_FILE = "librimix_prepare.json"
_FORMAT_VERSION = 2  # 2: truncation, NaN/Inf and metadata-path checks


def check_librimix_options(num_spks, sample_rate, mode, mixture_type="mix_clean"):
    """The LibriMix variants that exist: 2 or 3 speakers, 8 or 16 kHz, min or max mode, and
    a mixture type with as many clean targets as ``num_spks`` (``mix_single``: 1).

    Arguments
    ---------
    num_spks : int
    sample_rate : int
    mode : str
    mixture_type : "mix_clean" | "mix_both" | "mix_single"

    Returns
    -------
    None; a variant LibriMix does not have raises ``SpkSepError``.

    Example
    -------
    >>> check_librimix_options(2, 16000, "min")  # exists: nothing happens
    >>> check_librimix_options(2, 44100, "min")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: sample_rate: LibriMix comes at 8000 or 16000 Hz, got 44100
    >>> check_librimix_options(2, 16000, "min", "mix_single")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: mixture_type: mix_single is s1 + noise, one target: set num_spks=1, got 2
    """
    if mixture_type not in MIXTURE_TYPES:
        raise SpkSepError(f"mixture_type: must be one of {', '.join(MIXTURE_TYPES)}, got {mixture_type!r}")
    if mixture_type == "mix_single":
        if num_spks != 1:
            raise SpkSepError(f"mixture_type: mix_single is s1 + noise, one target: set num_spks=1, got {num_spks}")
    elif num_spks == 1:
        raise SpkSepError(f"num_spks: 1 is for mixture_type=mix_single (s1 + noise); {mixture_type} "
                          "mixes 2 or 3 speakers")
    elif num_spks not in (2, 3):
        raise SpkSepError(f"num_spks: must be 2 or 3 (Libri2Mix / Libri3Mix), got {num_spks}")
    if sample_rate not in (8000, 16000):
        raise SpkSepError(f"sample_rate: LibriMix comes at 8000 or 16000 Hz, got {sample_rate}")
    if mode not in ("min", "max"):
        raise SpkSepError(f"mode: must be 'min' or 'max', got {mode!r}")


def prepare_librimix(
    data_folder,
    save_folder,
    sample_rate=16000,
    mode="min",
    num_spks=2,
    splits=None,
    verify="header",
    mixture_type="mix_clean",
):
    """Write SpeechBrain CSVs for the LibriMix variant chosen by the arguments.

    Arguments
    ---------
    data_folder : str or Path
        The ``Libri2Mix`` folder itself (holding ``wav16k``...) or its parent (holding
        ``Libri2Mix``; ``Libri3Mix`` when ``num_spks=3``; for ``mix_single``, ``Libri2Mix``
        or else ``Libri3Mix``).
    save_folder : str or Path
        Receives ``<name>.csv`` per split and a small JSON that records what they were
        made from; while that is unchanged, the call returns without rewriting.
    sample_rate : 8000 | 16000
        Picks ``wav8k`` or ``wav16k``.
    mode : "min" | "max"
    num_spks : 1 | 2 | 3
        Clean targets per mixture: 2 or 3, or 1 with ``mixture_type="mix_single"``.
    splits : dict name -> LibriMix split folder
        Default ``{"train": "train-100", "valid": "dev", "test": "test"}``.
    verify : "header" | "exists"
        "header": open every file's header and check mono, sample rate, not empty, not
        truncated, equal lengths of mixture and sources (and the metadata's ``length``),
        and read floating-point files in full for NaN/Inf samples. "exists": only check
        that every file exists.
    mixture_type : "mix_clean" | "mix_both" | "mix_single"
        The folder the mixtures (``mix_wav``) are read from (module docstring); the
        sources are ``s1 ... s<num_spks>`` in every case. The CSVs are rewritten when it
        changes.

    Returns
    -------
    dict name -> absolute path of the written CSV.

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.data.demo import make_demo_data
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     root = make_demo_data(tmp, 2, 1, 1, seconds=0.5, sample_rate=8000, num_train_speakers=2,
    ...                           num_dev_speakers=2, num_test_speakers=2)  # tiny Libri2Mix
    ...     csvs = prepare_librimix(root, os.path.join(tmp, "csv"), sample_rate=8000)
    ...     with open(csvs["train"], newline="") as f:
    ...         rows = list(csv.DictReader(f))
    >>> sorted(csvs), len(rows), list(rows[0])
    (['test', 'train', 'valid'], 2, ['ID', 'duration', 'mix_wav', 's1_wav', 's2_wav', 'spk1', 'spk2'])
    >>> with tempfile.TemporaryDirectory() as tmp:  # the noisy variant: mix_both, mix_single
    ...     root = make_demo_data(tmp, 2, 1, 1, seconds=0.5, sample_rate=8000, num_train_speakers=2,
    ...                           num_dev_speakers=2, num_test_speakers=2, noise=True)
    ...     csvs = prepare_librimix(root, os.path.join(tmp, "csv"), 8000, num_spks=1,
    ...                             mixture_type="mix_single")
    ...     with open(csvs["train"], newline="") as f:
    ...         row = next(csv.DictReader(f))
    >>> list(row), os.path.basename(os.path.dirname(row["mix_wav"]))
    (['ID', 'duration', 'mix_wav', 's1_wav', 'spk1'], 'mix_single')
    >>> prepare_librimix("no_such_folder", "csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: .../no_such_folder: data folder not found
    """
    if not isinstance(data_folder, (str, os.PathLike)) or not os.fspath(data_folder):
        raise SpkSepError(f"data_folder: expected the LibriMix folder's path, got {data_folder!r}")
    if splits is not None and not isinstance(splits, dict):
        raise SpkSepError(f"splits: expected a mapping such as {DEFAULT_SPLITS}, got {splits!r}")
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    check_librimix_options(num_spks, sample_rate, mode, mixture_type)
    if verify not in ("header", "exists"):
        raise SpkSepError(f"verify: must be 'header' or 'exists', got {verify!r}")
    if not splits:
        raise SpkSepError("splits: no split requested")

    root = _find_root(os.path.abspath(os.fspath(data_folder)), num_spks)
    layout = _Layout(os.path.join(root, f"wav{sample_rate // 1000}k", mode), mixture_type, num_spks)
    save_folder = os.path.abspath(os.fspath(save_folder))
    out_paths = {name: os.path.join(save_folder, f"{name}.csv") for name in splits}

    state = {
        "format": _FORMAT_VERSION,
        "root": root,
        "sample_rate": sample_rate,
        "mode": mode,
        "num_spks": num_spks,
        "mixture_type": mixture_type,  # same CSV names for every type: a change rewrites them
        "splits": splits,
        "verify": verify,
        "inputs": {name: _input_stamp(layout, split) for name, split in splits.items()},
    }
    state_path = os.path.join(save_folder, _STATE_FILE)
    if _read_state(state_path) == state and all(os.path.isfile(p) for p in out_paths.values()):
        return out_paths

    # Build every split before writing any, so a failure leaves nothing half-updated.
    tables = {
        name: _collect_split(layout, split, sample_rate, verify)
        for name, split in splits.items()
    }
    os.makedirs(save_folder, exist_ok=True)
    if os.path.exists(state_path):
        os.remove(state_path)  # a crash while writing must not leave a stale "up to date"
    for name, rows in tables.items():
        _write_csv(out_paths[name], rows, num_spks, sample_rate)
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    return out_paths


def speakers_from_mixture_id(mixture_id, num_spks, where):
    """``"19-198-0001_1069-133699-0000"`` -> ``["19", "1069"]``; ``where`` names the source.

    Arguments
    ---------
    mixture_id : str
        LibriSpeech utterance IDs ``speaker-chapter-utterance`` joined by ``_``.
    num_spks : int
        How many utterance IDs the mixture ID must hold.
    where : str
        The file the ID comes from, named in the error message.

    Returns
    -------
    list of str
        ``num_spks`` speaker IDs, in source order.

    Example
    -------
    >>> speakers_from_mixture_id("19-198-0001_1069-133699-0000", 2, "meta.csv")
    ['19', '1069']
    >>> speakers_from_mixture_id("19-198-0001_1069-133699-0000", 3, "meta.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: meta.csv: mixture ID '19-198-0001_1069-133699-0000' does not hold 3 utterance IDs ...
    """
    utterances = mixture_id.split("_")
    if len(utterances) != num_spks or not all(u.split("-")[0] for u in utterances):
        raise SpkSepError(
            f"{where}: mixture ID {mixture_id!r} does not hold {num_spks} utterance IDs "
            "'speaker-chapter-utterance' joined by '_' (mismatched speaker count?)"
        )
    return [u.split("-")[0] for u in utterances]


def _source_dirs(num_spks):
    return [f"s{i + 1}" for i in range(num_spks)]


def _find_root(folder, num_spks):
    """The ``Libri{n}Mix`` folder: ``folder`` itself or its ``Libri{n}Mix`` child
    (``num_spks=1``, ``mix_single``: ``Libri2Mix``, else ``Libri3Mix``; both have one)."""
    if not os.path.isdir(folder):
        raise SpkSepError(f"{folder}: data folder not found")

    def is_root(path):
        return any(os.path.isdir(os.path.join(path, f"wav{k}k")) for k in (8, 16))

    if is_root(folder):
        return folder
    names = ["Libri2Mix", "Libri3Mix"] if num_spks == 1 else [f"Libri{num_spks}Mix"]
    for name in names:
        if is_root(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise SpkSepError(
        f"{folder}: not a LibriMix folder (expected a wav16k/wav8k folder in it, "
        f"or in a {' or '.join(names)} folder under it)"
    )


class _Layout:
    """Where one variant's files are: ``base`` is ``<root>/wav16k/min`` (say); ``mix`` the
    mixture folder's name (the mixture type), ``sources`` the target folders' names."""

    def __init__(self, base, mixture_type, num_spks):
        self.base, self.mix, self.num_spks = base, mixture_type, num_spks
        self.sources = _source_dirs(num_spks)

    def metadata(self, split):
        return os.path.join(self.base, "metadata", f"mixture_{split}_{self.mix}.csv")

    def speakers(self, mixture_id, where):
        """The targets' speakers. A mix_single mixture keeps its ``Libri{n}Mix`` ID (n
        utterances: the file name it shares with mix_clean); its one target is the first."""
        if self.mix != "mix_single":
            return speakers_from_mixture_id(mixture_id, self.num_spks, where)
        return speakers_from_mixture_id(mixture_id, len(mixture_id.split("_")), where)[:1]


def _input_stamp(layout, split):
    """What decides whether the CSVs are stale: metadata and folder modification times.

    A folder's mtime changes when files are added, removed or renamed in it (not when a
    file is rewritten in place; delete the state JSON to force a rebuild then).
    """
    def mtime(path):
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    split_dir = os.path.join(layout.base, split)
    stamp = {"metadata": mtime(layout.metadata(split))}
    for sub in [layout.mix] + layout.sources:
        stamp[sub] = mtime(os.path.join(split_dir, sub))
    return stamp


def _read_state(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _collect_split(layout, split, sample_rate, verify):
    """Rows ``(ID, num_samples, mix_path, [source paths], [speakers])`` of one split."""
    num_spks = layout.num_spks
    split_dir = os.path.join(layout.base, split)
    if not os.path.isdir(split_dir):
        raise SpkSepError(f"{split_dir}: split folder not found")
    mix_dir = os.path.join(split_dir, layout.mix)
    if not os.path.isdir(mix_dir):
        # The noisy types exist only where LibriMix was generated with them (--types).
        hint = "" if layout.mix == "mix_clean" else f" (generate LibriMix with {layout.mix} in --types)"
        raise SpkSepError(f"{mix_dir}: folder not found (mixture_type={layout.mix}){hint}")
    for sub in layout.sources:
        if not os.path.isdir(os.path.join(split_dir, sub)):
            raise SpkSepError(f"{os.path.join(split_dir, sub)}: folder not found (num_spks={num_spks})")
    extra = os.path.join(split_dir, f"s{num_spks + 1}")
    # mix_single has one target, but LibriMix writes every speaker's folder beside it.
    if os.path.isdir(extra) and layout.mix != "mix_single":
        raise SpkSepError(f"{extra}: exists, but num_spks={num_spks} (mismatched speaker count)")

    meta = layout.metadata(split)
    if os.path.isfile(meta):
        entries = _read_metadata(meta, split_dir, layout)
        where = meta
    else:
        entries = _scan_split(split_dir, layout)
        where = mix_dir
    if not entries:
        raise SpkSepError(f"{where}: split {split!r} has no mixtures")

    rows = []
    for mixture_id, paths, length in entries:
        speakers = layout.speakers(mixture_id, where)
        for path in paths:
            if not os.path.isfile(path):
                raise SpkSepError(f"{path}: file not found (mixture {mixture_id})")
        if verify == "header" or length is None:
            length = _check_headers(paths, sample_rate, length)
        rows.append((mixture_id, length, paths, speakers))
    return rows


def _read_metadata(meta, split_dir, layout):
    """Entries ``(ID, [mix, s1, ...] paths, length)`` from a LibriMix metadata CSV.

    LibriMix writes absolute paths of the machine that generated the data. Files are
    always taken from the folder being prepared (``<sub>/<file name>``), so a moved or
    copied dataset is read where it is now. A file missing here that still exists at the
    recorded path is an error: training would otherwise read part of another copy.
    """
    num_spks = layout.num_spks
    columns = ["mixture_path"] + [f"source_{i + 1}_path" for i in range(num_spks)]
    try:
        with open(meta, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpkSepError(f"{meta}: cannot read metadata CSV ({err})") from None
    missing = [c for c in ["mixture_ID"] + columns if c not in header]
    if missing:
        raise SpkSepError(f"{meta}: mismatched CSV, missing column(s) {', '.join(missing)} for num_spks={num_spks}")
    if f"source_{num_spks + 1}_path" in header:
        raise SpkSepError(f"{meta}: mismatched CSV, it has source_{num_spks + 1}_path but num_spks={num_spks}")

    subdirs = [layout.mix] + layout.sources
    entries, seen, elsewhere = [], set(), []
    for line, row in enumerate(rows, start=2):
        mixture_id = (row.get("mixture_ID") or "").strip()
        if not mixture_id or any(not (row.get(c) or "").strip() for c in columns):
            raise SpkSepError(f"{meta}: line {line} has empty fields")
        if mixture_id in seen:
            raise SpkSepError(f"{meta}: line {line} repeats mixture ID {mixture_id}")
        seen.add(mixture_id)
        paths = []
        for sub, column in zip(subdirs, columns):
            recorded = row[column].strip()
            local = os.path.join(split_dir, sub, os.path.basename(recorded.replace("\\", "/")))
            if not os.path.isfile(local) and os.path.isfile(recorded):
                elsewhere.append((local, recorded))
            paths.append(local)
        length = None
        if (row.get("length") or "").strip():
            try:
                length = int(float(row["length"]))
            except ValueError:
                raise SpkSepError(f"{meta}: line {line} has a bad length {row['length']!r}") from None
        entries.append((mixture_id, paths, length))
    if elsewhere:
        # Part of the split is missing here but exists where the metadata was written:
        # reading those would silently mix two copies of the data set.
        local, recorded = elsewhere[0]
        others = f" (and {len(elsewhere) - 1} more files)" if len(elsewhere) > 1 else ""
        raise SpkSepError(
            f"{local}: missing from the data folder{others}, though the metadata's {recorded} "
            f"exists; copy the missing files into {split_dir}, or point --data_folder at the "
            "complete copy"
        )
    return entries


def _scan_split(split_dir, layout):
    """Entries from the ``<mixture_type>/*.wav`` files when no metadata CSV exists."""
    mix_dir = os.path.join(split_dir, layout.mix)
    names = sorted(n for n in os.listdir(mix_dir) if n.lower().endswith(".wav"))
    return [
        (
            os.path.splitext(name)[0],
            [os.path.join(mix_dir, name)] + [os.path.join(split_dir, s, name) for s in layout.sources],
            None,
        )
        for name in names
    ]


def check_header(path, sample_rate, rate_hint="", mono=True):
    """``soundfile`` info of ``path`` after the header checks every reader of training audio
    makes: readable, mono (unless ``mono=False``), at ``sample_rate`` (``rate_hint`` is
    appended to that error), not empty. Each failure is one ``SpkSepError`` line naming
    the file."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SpkSepError(f"{path}: cannot read audio header ({_reason(err)})") from None
    if mono and info.channels != 1:
        raise SpkSepError(f"{path}: expected mono, got {info.channels} channels")
    if info.samplerate != sample_rate:
        raise SpkSepError(f"{path}: {sample_rate} Hz expected, file is {info.samplerate} Hz"
                          + rate_hint)
    if info.frames == 0:
        raise SpkSepError(f"{path}: file is empty (0 samples)")
    return info


def _check_headers(paths, sample_rate, expected_length):
    """Header checks of a mixture and its sources (plus a full read of floating-point
    files for NaN/Inf); returns the length in samples."""
    length = None
    for path in paths:
        info = check_header(path, sample_rate)
        _check_not_truncated(path)
        if info.subtype in ("FLOAT", "DOUBLE"):  # integer samples cannot be NaN or Inf
            _check_finite(path)
        if length is None:
            length = info.frames
        elif info.frames != length:
            raise SpkSepError(
                f"{path}: length mismatch, {info.frames} samples but the mixture has {length}"
            )
    if expected_length is not None and expected_length != length:
        raise SpkSepError(
            f"{paths[0]}: length mismatch, metadata says {expected_length} samples, file has {length}"
        )
    return length


def _check_not_truncated(path):
    """A RIFF/WAVE file must be as long as its header says (libsndfile silently reads a
    cut file as a shorter one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise SpkSepError(f"{path}: cannot read ({err.strerror})") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return  # another container: libsndfile's checks are all we have
    announced = struct.unpack("<I", head[4:8])[0] + 8
    if announced in (8, 0xFFFFFFFF + 8):  # written by a stream that never went back
        return
    if size < announced:
        raise SpkSepError(
            f"{path}: file is truncated (its header announces {announced} bytes, "
            f"the file has {size})"
        )


def _check_finite(path, block=1 << 18):
    """Every sample of a floating-point file is finite (read in blocks: bounded memory)."""
    try:
        with sf.SoundFile(path) as f:
            start = 0
            for data in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                bad = ~np.isfinite(data)
                if bad.any():
                    index = start + int(np.argmax(bad.any(axis=1)))
                    value = data[index - start][bad[index - start]][0]
                    raise SpkSepError(
                        f"{path}: contains NaN or Inf samples (first at sample {index}: {value})"
                    )
                start += len(data)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SpkSepError(f"{path}: cannot read audio ({_reason(err)})") from None


def _write_csv(path, rows, num_spks, sample_rate):
    """SpeechBrain CSV; durations keep enough digits to recover the exact sample count."""
    header = (
        ["ID", "duration", "mix_wav"]
        + [f"s{i + 1}_wav" for i in range(num_spks)]
        + [f"spk{i + 1}" for i in range(num_spks)]
    )
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for mixture_id, length, paths, speakers in rows:
            # 7 decimals: round(duration * sample_rate) gives back the sample count.
            writer.writerow([mixture_id, f"{length / sample_rate:.7f}", *paths, *speakers])
    os.replace(tmp, path)
