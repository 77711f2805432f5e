"""Speaker-ID data: one item per distinct utterance, held-out utterances per speaker."""

import csv

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.data.speakers import (
    _fixed_length, speaker_utterances, split_by_speaker,
)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "s1_wav", "s2_wav", "spk1", "spk2"])
        w.writeheader()
        w.writerows(rows)


def test_each_utterance_once_with_its_speaker(tmp_path):
    rows = [
        dict(ID="1-2-0001_3-4-0001", s1_wav="a1", s2_wav="b1", spk1="1", spk2="3"),
        dict(ID="1-2-0001_5-6-0001", s1_wav="a2", s2_wav="c1", spk1="1", spk2="5"),  # 1-2-0001 again
    ]
    write_csv(tmp_path / "train.csv", rows)
    items = speaker_utterances(tmp_path / "train.csv", num_spks=2)
    assert items == [("a1", "1"), ("b1", "3"), ("c1", "5")]
    with pytest.raises(SpkSepError, match="s3_wav"):
        speaker_utterances(tmp_path / "train.csv", num_spks=3)


def test_validation_holds_out_utterances_of_every_speaker():
    items = [(f"{spk}-{i}", spk) for spk in "abc" for i in range(10)] + [("d-0", "d")]
    train, valid, speakers = split_by_speaker(items, valid_share=0.2, seed=0)
    assert speakers == ["a", "b", "c", "d"]
    assert sorted(train + valid) == sorted(items) and not set(train) & set(valid)
    for spk in "abc":
        assert sum(s == spk for _, s in valid) == 2
    assert ("d-0", "d") in train  # a speaker with one utterance keeps it for training
    assert split_by_speaker(items, 0.2, seed=0) == (train, valid, speakers)  # deterministic


def test_short_utterances_are_tiled_to_the_window():
    wav = torch.arange(4.0)
    assert _fixed_length(wav, 10).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert _fixed_length(torch.arange(20.0), 5).tolist() == [0, 1, 2, 3, 4]
