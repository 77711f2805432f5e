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
    """``[(wav_path, speaker), ...]``, one per distinct source file, in CSV order."""
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
    so the label of a speaker is its index there."""
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
    """A DynamicItemDataset yielding ``wav [window]`` and ``label`` (a speaker index)."""
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
