"""What dynamic mixing costs per training batch, against the static training set.

Both sets are read the way training reads them (``dataset[i]`` then ``PaddedBatch``), in
this one process (``num_workers=0``, one thread), from the page cache, on a synthetic
Libri2Mix (``make_demo_data``: 16-bit WAV like LibriMix's) at 16 kHz:

- ``static``: the prepared training split, a random crop of each mixture and its sources;
- ``dynamic``: ``dynamic_mixing.py`` drawing from the split's own sources (two reads, two
  BS.1770 loudness measurements, the mix);
- ``dynamic-flac``: the same from a LibriSpeech-style folder of FLAC files (LibriSpeech's
  own format: decoding costs more than reading WAV).

Two settings: the recipe's (batches of 4 x 3 s) and the demo's (``make demo``: 8 x 1 s).
Each variant's batches are interleaved with the others' (load from other processes hits
all alike) and timed in CPU time of this process (``time.process_time``: waiting for a
busy machine does not count; from the page cache there is no I/O wait). The median batch
time is reported, with the share of all batches' time spent measuring loudness.

    python bench/bench_dynamic_mixing.py            # both settings, 30 batches each
    python bench/bench_dynamic_mixing.py --batches 60
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch
from speechbrain.dataio.batch import PaddedBatch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from spksep_modules.data import dynamic_mixing  # noqa: E402
from spksep_modules.data.demo import make_demo_data  # noqa: E402
from spksep_modules.data.dynamic_mixing import (  # noqa: E402
    DynamicMixingDataset,
    folder_utterances,
    split_utterances,
)
from spksep_modules.data.librimix import prepare_librimix  # noqa: E402
from spksep_modules.data.pipeline import build_datasets  # noqa: E402

SR = 16000
SETTINGS = {"recipe (4 x 3 s)": (4, 3.0), "demo (8 x 1 s)": (8, 1.0)}


def as_librispeech(utterances, root):
    """The split's sources as ``<root>/<speaker>/<chapter>/<utt>.flac``."""
    for utt in utterances:
        speaker, chapter, _ = utt.utt_id.split("-")
        os.makedirs(os.path.join(root, speaker, chapter), exist_ok=True)
        wav, _ = sf.read(utt.path, dtype="int16")
        sf.write(os.path.join(root, speaker, chapter, utt.utt_id + ".flac"), wav, SR, subtype="PCM_16")
    return root


class LoudnessClock:
    """Counts the time spent in ``integrated_loudness`` (wrapped for the bench only)."""

    def __init__(self):
        self.seconds = 0.0
        self._measure = dynamic_mixing.integrated_loudness

    def __call__(self, meter, signal):
        start = time.process_time()
        try:
            return self._measure(meter, signal)
        finally:
            self.seconds += time.process_time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = LoudnessClock()
    dynamic_mixing.integrated_loudness = clock

    with tempfile.TemporaryDirectory() as tmp:
        # The demo's training set: 200 mixtures of 80 speakers, 3-3.9 s each.
        root = make_demo_data(tmp, num_train=200, num_dev=2, num_test=2, seconds=3.0,
                              num_train_speakers=80, num_dev_speakers=2, num_test_speakers=2)
        train_csv = prepare_librimix(root, os.path.join(tmp, "csv"), SR)["train"]
        split = split_utterances(train_csv, 2, SR)
        flac = folder_utterances(as_librispeech(split, os.path.join(tmp, "LibriSpeech")), SR)
        print(f"{len(split)} utterances of {len({u.speaker for u in split})} speakers, "
              f"{np.mean([u.num_samples for u in split]) / SR:.2f} s on average; "
              f"torch {torch.__version__}, 1 thread")
        print("| setting | set | ms per batch | ms per item | of which loudness |")
        print("|---|---|---|---|---|")
        for setting, (batch, seconds) in SETTINGS.items():
            sets = {
                "static": build_datasets({"train": train_csv}, SR, 2, segment_seconds=seconds)["train"],
                "dynamic": DynamicMixingDataset(split, SR, 2, 10**6, segment_seconds=seconds, seed=1),
                "dynamic-flac": DynamicMixingDataset(flac, SR, 2, 10**6, segment_seconds=seconds, seed=1),
            }
            times = {name: [] for name in sets}
            loudness = {name: 0.0 for name in sets}
            rng = np.random.default_rng(0)
            for step in range(args.batches + 2):  # the first two warm the cache, untimed
                for name, data in sets.items():
                    indices = rng.integers(0, len(data), size=batch)
                    clock.seconds = 0.0
                    start = time.process_time()
                    PaddedBatch([data[int(i)] for i in indices])
                    if step >= 2:
                        times[name].append(time.process_time() - start)
                        loudness[name] += clock.seconds
            for name in sets:
                ms = 1000 * statistics.median(times[name])
                share = loudness[name] / sum(times[name])
                print(f"| {setting} | {name} | {ms:.2f} | {ms / batch:.2f} | "
                      f"{100 * share:.0f}% |")


if __name__ == "__main__":
    main()
