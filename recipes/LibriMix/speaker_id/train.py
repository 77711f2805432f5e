#!/usr/bin/env python3
"""Train a speaker network (RawNet2) as a speaker classifier on LibriMix's training speakers.

    python train.py hparams/rawnet2.yaml --data_folder=/data/Libri2Mix

For users without the authors' pretrained RawNet2: the checkpoint it leaves,
``<output_folder>/rawnet2.pt``, is what the conditioned separation model takes as
``--speaker_net=rawnet2 --speaker_net_ckpt=<output_folder>/rawnet2.pt``.
"""

import os

import speechbrain as sb
from speechbrain.utils.distributed import if_main_process, run_on_main

from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.data.librimix import prepare_librimix
from spksep_modules.data.speakers import speaker_dataset, speaker_utterances, split_by_speaker
from spksep_modules.speakers.rawnet2 import save_rawnet2
from spksep_modules.training.brains import SpeakerIDBrain
from spksep_modules.training.recipe import load_hparams, run, start_run


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = load_hparams(hparams_file, overrides)
    out = hparams["output_folder"]
    start_run(hparams_file, overrides, out)

    # Speakers come from the separation training split only: dev/test speakers stay unseen.
    run_on_main(
        prepare_librimix,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": out,
            "sample_rate": hparams["sample_rate"],
            "mode": hparams["mode"],
            "num_spks": hparams["num_spks"],
            "splits": {"train": hparams["train_split"]},
        },
    )
    items = speaker_utterances(os.path.join(out, "train.csv"), hparams["num_spks"])
    train, valid, speakers = split_by_speaker(items, hparams["valid_share"], hparams["seed"])
    model = hparams["speaker_net"](num_classes=len(speakers))
    window, rate = model.window, hparams["sample_rate"]
    train_set = speaker_dataset(train, speakers, window, rate, random_crop=True)
    valid_set = speaker_dataset(valid, speakers, window, rate, random_crop=False)

    checkpointer = AtomicCheckpointer(
        os.path.join(out, "save"),
        recoverables={
            "speaker_net": model,
            "epoch_counter": hparams["epoch_counter"],
            "lr_scheduler": hparams["lr_scheduler"],
        },
    )
    brain = SpeakerIDBrain(
        modules={"speaker_net": model},
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=hparams["train_loader_opts"],
        valid_loader_kwargs=hparams["valid_loader_opts"],
    )
    checkpointer.recover_if_possible(min_key="error_rate")
    if if_main_process():
        target = os.path.join(out, "rawnet2.pt")
        save_rawnet2(model, target)
        print(f"speaker network saved to {target} ({len(speakers)} speakers)")


if __name__ == "__main__":
    run(main)
