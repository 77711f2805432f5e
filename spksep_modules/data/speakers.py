"""Speaker-ID data from a LibriMix training split: the clean sources, labelled by speaker.

Each LibriMix source is a LibriSpeech utterance whose speaker is the first field of its
ID (``19-198-0001`` -> ``19``); ``prepare_librimix`` writes those as ``spk1, spk2, ...``.
An utterance that appears in several mixtures is used once. A share of every speaker's
utterances is held out for validation (speaker ID is closed-set: same speakers, other
utterances).
"""

import csv
import random

import speechbrain as sb
import torch

from spksep_modules import SpkSepError
from spksep_modules.audio import read_wav


def speaker_utterances(csv_path: str, num_spks: int):
    r"""``[(wav_path, speaker), ...]``, one per distinct source file, in CSV order.

    Arguments
    ---------
    csv_path : str
        A CSV written by ``prepare_librimix`` (columns ``ID, s<i>_wav, spk<i>``).
    num_spks : int

    Returns
    -------
    list of (str, str)
        ``(wav_path, speaker)``; an utterance in several mixtures comes once.

    Example
    -------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open(os.path.join(tmp, "train.csv"), "w") as f:
    ...         _ = f.write("ID,s1_wav,s2_wav,spk1,spk2\n19-1-0_26-2-0,a.wav,b.wav,19,26\n"
    ...                     "19-1-0_40-3-0,a.wav,c.wav,19,40\n")  # a.wav is in both mixtures
    ...     speaker_utterances(os.path.join(tmp, "train.csv"), num_spks=2)
    [('a.wav', '19'), ('b.wav', '26'), ('c.wav', '40')]
    """
    seen, items = set(), []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            for i in range(1, num_spks + 1):
                path, spk = row.get(f"s{i}_wav"), row.get(f"spk{i}")
                if path is None or spk is None:
                    raise SpkSepError(f"{csv_path}: no s{i}_wav/spk{i} columns (num_spks={num_spks}?)")
                utt = row["ID"].split("_")[i - 1] if "_" in row["ID"] else path
                if utt not in seen:
                    seen.add(utt)
                    items.append((path, spk))
    if not items:
        raise SpkSepError(f"{csv_path}: no utterances")
    return items


def split_by_speaker(items, valid_share: float = 0.1, seed: int = 0):
    """Hold out ``valid_share`` of each speaker's utterances (at least one when a speaker has
    two or more). Returns ``(train_items, valid_items, speakers)``; ``speakers`` is sorted,
    so the label of a speaker is its index there.

    Arguments
    ---------
    items : list of (str, str)
        ``(wav_path, speaker)``, as :func:`speaker_utterances` returns.
    valid_share : float
        Share of each speaker's utterances held out.
    seed : int
        Seeds the shuffle that picks the held-out utterances.

    Example
    -------
    >>> items = [("a.wav", "19"), ("b.wav", "19"), ("c.wav", "19"), ("d.wav", "26")]
    >>> train, valid, speakers = split_by_speaker(items, valid_share=0.1)
    >>> len(train), [spk for _, spk in valid], speakers  # 26's only utterance stays in train
    (3, ['19'], ['19', '26'])
    """
    by_spk = {}
    for path, spk in items:
        by_spk.setdefault(spk, []).append(path)
    rng = random.Random(seed)
    train, valid = [], []
    for spk, paths in sorted(by_spk.items()):
        paths = paths[:]
        rng.shuffle(paths)
        n_valid = int(round(valid_share * len(paths))) if len(paths) > 1 else 0
        n_valid = max(n_valid, 1) if len(paths) > 1 and valid_share > 0 else n_valid
        valid += [(p, spk) for p in paths[:n_valid]]
        train += [(p, spk) for p in paths[n_valid:]]
    return train, valid, sorted(by_spk)


def _fixed_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Exactly ``length`` samples: the signal's start, or the signal tiled when shorter
    (RawNet2's own way with short utterances)."""
    if wav.numel() >= length:
        return wav[:length]
    return wav.repeat(-(-length // wav.numel()))[:length]


def speaker_dataset(items, speakers, window: int, sample_rate: int, random_crop: bool):
    """A DynamicItemDataset yielding ``wav [window]`` and ``label`` (a speaker index).

    Arguments
    ---------
    items : list of (str, str)
        ``(wav_path, speaker)``.
    speakers : list of str
        All speakers; a speaker's label is its index here.
    window : int
        Samples per item: a crop of longer files, shorter files tiled to this length.
    sample_rate : int
        Every file must be at this rate.
    random_crop : bool
        Crop at a random offset (training) rather than at the start.

    Returns
    -------
    DynamicItemDataset with output keys ``id, wav, label``.

    Example
    -------
    >>> import os, tempfile
    >>> from spksep_modules.audio import write_wav
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_wav(os.path.join(tmp, "short.wav"), torch.ones(300), 8000)
    ...     data = speaker_dataset([(os.path.join(tmp, "short.wav"), "26")], ["19", "26"],
    ...                            window=800, sample_rate=8000, random_crop=True)
    ...     item = data[0]  # 300 samples tiled to 800
    >>> item["id"], item["wav"].shape, item["label"]
    ('utt0', torch.Size([800]), tensor([1]))
    """
    label_of = {spk: i for i, spk in enumerate(speakers)}
    data = {f"utt{i}": {"path": p, "spk": s} for i, (p, s) in enumerate(items)}
    dataset = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("path")
    @sb.utils.data_pipeline.provides("wav")
    def audio(path):
        wav = read_wav(path, sample_rate, window=window, random_start=random_crop)
        return _fixed_length(wav, window)

    @sb.utils.data_pipeline.takes("spk")
    @sb.utils.data_pipeline.provides("label")
    def label(spk):
        return torch.tensor([label_of[spk]])  # 1-d: PaddedBatch cannot stack 0-d tensors

    dataset.add_dynamic_item(audio)
    dataset.add_dynamic_item(label)
    dataset.set_output_keys(["id", "wav", "label"])
    return dataset
