"""SpeechBrain data pipelines for separation: CSV rows -> mixture, stacked sources, speakers.

Each dataset item provides

- ``id``: the mixture ID,
- ``mix_sig``: Tensor [time], the mixture,
- ``sources``: Tensor [time, num_spks], the clean sources (SpeechBrain's layout),
- ``spk_ids``: list of num_spks speaker-ID strings (for the speaker-ID recipe).

The ``"train"`` set gives a random ``segment_seconds`` crop of every mixture, taken at the
same offset in the mixture and all its sources, and only that crop is read from disk.
Mixtures shorter than the segment are zero-padded (``short_policy="pad"``) or left out
(``"skip"``, decided from the CSV durations when the dataset is built). ``"valid"`` gives
whole utterances, optionally cut to their first ``valid_segment_seconds`` to bound
memory; every other set gives whole utterances.

Batch with ``speechbrain.dataio.batch.PaddedBatch``: ``mix_sig`` -> [batch, time],
``sources`` -> [batch, time, num_spks], zero-padded to the longest item.
"""

import csv
import operator
import os
import zlib

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from spksep_modules import SpkSepError
from spksep_modules.audio import read_wav

OUTPUT_KEYS = ["id", "mix_sig", "sources", "spk_ids"]


def build_datasets(
    csv_paths,
    sample_rate,
    num_spks,
    segment_seconds=3.0,
    short_policy="pad",
    valid_segment_seconds=None,
    fixed_crops=False,
):
    """One DynamicItemDataset per CSV written by ``prepare_librimix``.

    Arguments
    ---------
    csv_paths : dict name -> CSV path
        ``"train"`` gets random crops, ``"valid"`` the optional start crop, others whole.
    sample_rate : int
        Every file must be at this rate (checked when read).
    num_spks : int
    segment_seconds : float or None
        Training crop length; None trains on whole utterances.
    short_policy : "pad" | "skip"
        What happens to training mixtures shorter than ``segment_seconds``.
    valid_segment_seconds : float or None
        If set, validation items are cut to their first this many seconds.
    fixed_crops : bool
        Training crops at one offset per mixture (drawn from its file name) instead of a
        new random one every epoch: less augmentation, but the same segment each epoch, so
        a frozen basic model's outputs can be cached (``ConditionedSeparator``'s
        ``basic_cache_mb``).

    Returns
    -------
    dict name -> DynamicItemDataset with output keys ``id, mix_sig, sources, spk_ids``.

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.data.demo import make_demo_data
    >>> from spksep_modules.data.librimix import prepare_librimix
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     root = make_demo_data(tmp, 2, 1, 1, seconds=0.5, sample_rate=8000, num_train_speakers=2,
    ...                           num_dev_speakers=2, num_test_speakers=2)  # tiny Libri2Mix
    ...     datasets = build_datasets(prepare_librimix(root, tmp, 8000), 8000, 2, segment_seconds=0.25)
    ...     item = datasets["train"][0]  # a random 0.25 s crop: 2000 samples
    >>> sorted(datasets), item["mix_sig"].shape, item["sources"].shape, len(item["spk_ids"])
    (['test', 'train', 'valid'], torch.Size([2000]), torch.Size([2000, 2]), 2)
    >>> build_datasets({}, 8000, 2, short_policy="drop")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: short_policy: must be 'pad' or 'skip', got 'drop'
    """
    if short_policy not in ("pad", "skip"):
        raise SpkSepError(f"short_policy: must be 'pad' or 'skip', got {short_policy!r}")
    for key, value in (("segment_seconds", segment_seconds), ("valid_segment_seconds", valid_segment_seconds)):
        if value is not None and not value > 0:
            raise SpkSepError(f"{key}: must be positive (or None for whole utterances), got {value}")

    datasets = {}
    for name, path in csv_paths.items():
        path = os.path.abspath(os.fspath(path))
        _check_csv(path, num_spks)
        if name == "train" and segment_seconds is not None:
            loader = _SignalLoader(sample_rate, segment_seconds, random_crop=True,
                                   fixed=fixed_crops)
        elif name == "valid" and valid_segment_seconds is not None:
            loader = _SignalLoader(sample_rate, valid_segment_seconds, random_crop=False)
        else:
            loader = _SignalLoader(sample_rate, None, random_crop=False)

        dataset = DynamicItemDataset.from_csv(path)
        wav_keys = ["mix_wav"] + [f"s{i + 1}_wav" for i in range(num_spks)]
        # Top-level callables (no closures), so datasets pickle for spawned DataLoader workers.
        dataset.add_dynamic_item(loader, takes=["duration"] + wav_keys, provides="signals")
        dataset.add_dynamic_item(operator.itemgetter(0), takes="signals", provides="mix_sig")
        dataset.add_dynamic_item(operator.itemgetter(1), takes="signals", provides="sources")
        dataset.add_dynamic_item(_as_list, takes=[f"spk{i + 1}" for i in range(num_spks)], provides="spk_ids")
        dataset.set_output_keys(OUTPUT_KEYS)

        if name == "train" and segment_seconds is not None and short_policy == "skip":
            # Half a sample of slack: CSV durations are rounded to 7 decimals.
            min_duration = (loader.segment - 0.5) / sample_rate
            dataset = dataset.filtered_sorted(key_min_value={"duration": min_duration})
            if len(dataset) == 0:
                raise SpkSepError(
                    f"{path}: no mixture lasts at least segment_seconds={segment_seconds} "
                    "(short_policy='skip'); lower segment_seconds or use short_policy='pad'"
                )
        datasets[name] = dataset
    return datasets


def _as_list(*items):
    return list(items)


def _check_csv(path, num_spks):
    """The CSV exists, has the columns for ``num_spks`` sources and at least one row."""
    required = (
        ["ID", "duration", "mix_wav"]
        + [f"s{i + 1}_wav" for i in range(num_spks)]
        + [f"spk{i + 1}" for i in range(num_spks)]
    )
    if not os.path.isfile(path):
        raise SpkSepError(f"{path}: CSV not found (run data preparation first)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            has_rows = next(reader, None) is not None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpkSepError(f"{path}: cannot read CSV ({err})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise SpkSepError(f"{path}: mismatched CSV, missing column(s) {', '.join(missing)} for num_spks={num_spks}")
    if f"s{num_spks + 1}_wav" in header:
        raise SpkSepError(f"{path}: mismatched CSV, it has s{num_spks + 1}_wav but num_spks={num_spks}")
    if not has_rows:
        raise SpkSepError(f"{path}: CSV has no rows")


class _SignalLoader:
    """Reads one aligned (mixture, sources) pair, whole or cropped.

    Arguments
    ---------
    sample_rate : int
    segment_seconds : float or None
        Crop length; None reads whole utterances.
    random_crop : bool
        True: a uniformly random offset (shared by mixture and sources), zero-padding
        shorter items to the segment. False: the first ``segment_seconds`` (no padding).
    fixed : bool
        With ``random_crop``: the offset is drawn once per mixture (from its file name), not
        at every read.
    """

    def __init__(self, sample_rate, segment_seconds, random_crop, fixed=False):
        self.sample_rate = int(sample_rate)
        self.segment = None if segment_seconds is None else int(round(segment_seconds * sample_rate))
        self.random_crop = random_crop
        self.fixed = fixed

    def __call__(self, duration, mix_wav, *source_wavs):
        """Returns (mix [time], sources [time, num_spks])."""
        total = int(round(float(duration) * self.sample_rate))
        start, stop = 0, None
        if self.segment is not None and total > self.segment:
            if self.random_crop and self.fixed:
                start = zlib.crc32(os.path.basename(mix_wav).encode()) % (total - self.segment + 1)
            elif self.random_crop:
                # torch's RNG: seeded by SpeechBrain, and distinct in each DataLoader worker.
                start = int(torch.randint(0, total - self.segment + 1, (1,)))
            stop = start + self.segment
        mix = read_wav(mix_wav, self.sample_rate, start, stop)
        sources = []
        for path in source_wavs:
            src = read_wav(path, self.sample_rate, start, stop)
            if src.shape[0] != mix.shape[0]:
                raise SpkSepError(
                    f"{path}: length mismatch with mixture {mix_wav} "
                    f"({src.shape[0]} vs {mix.shape[0]} samples)"
                )
            sources.append(src)
        sources = torch.stack(sources, dim=-1)
        if self.random_crop and mix.shape[0] < self.segment:
            pad = self.segment - mix.shape[0]
            mix = torch.nn.functional.pad(mix, (0, pad))
            sources = torch.nn.functional.pad(sources, (0, 0, 0, pad))
        return mix, sources
