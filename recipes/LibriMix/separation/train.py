#!/usr/bin/env python3
"""Train and evaluate any spksep separation model on LibriMix (or the demo set).

    python train.py hparams/convtasnet.yaml --data_folder=/data/Libri2Mix
    torchrun --standalone --nproc_per_node=2 train.py hparams/conditioning.yaml ...
    python train.py hparams/convtasnet.yaml --data_folder=... --test_only   # evaluate a run
    python train.py hparams/convtasnet.yaml --data_folder=... --mixture_type=mix_both   # noisy

Every model is a yaml file (see spksep_modules/training/recipe.py for `extends`); this script only wires data, Brain and checkpointer together.
"""

import os

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.data.dynamic_mixing import dynamic_mixing_set
from spksep_modules.data.librimix import prepare_librimix
from spksep_modules.data.pipeline import build_datasets
from spksep_modules.training.brains import SeparationBrain
from spksep_modules.training.recipe import load_hparams, run, start_run


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = load_hparams(hparams_file, overrides)
    start_run(hparams_file, overrides, hparams["output_folder"])

    # CSVs are written once (by the main process) and reused while the data is unchanged;
    # every process gets their paths back.
    csvs = run_on_main(
        prepare_librimix,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "sample_rate": hparams["sample_rate"],
            "mode": hparams["mode"],
            "num_spks": hparams["num_spks"],
            "splits": hparams["splits"],
            "mixture_type": hparams["mixture_type"],  # the folder the mixtures come from
        },
    )
    datasets = build_datasets(
        csvs,
        sample_rate=hparams["sample_rate"],
        num_spks=hparams["num_spks"],
        segment_seconds=hparams["segment_seconds"],
        short_policy=hparams["short_policy"],
        valid_segment_seconds=hparams["valid_segment_seconds"],
        fixed_crops=hparams["fixed_crops"],
    )
    if hparams["dynamic_mixing"]:  # new training mixtures every epoch, from single utterances
        datasets["train"] = dynamic_mixing_set(csvs["train"], hparams)

    # The loss is a module too: the Brain moves it (and any frozen network in it) to the
    # device and sets its train/eval mode with the separator's.
    modules = {"separator": hparams["separator"], "loss": hparams["loss"]}
    checkpointer = AtomicCheckpointer(
        os.path.join(hparams["output_folder"], "save"),
        recoverables={
            "separator": hparams["separator"],
            "loss": hparams["loss"],  # its step count and calibrated weights, not its networks
            "epoch_counter": hparams["epoch_counter"],
            "lr_scheduler": hparams["lr_scheduler"],
        },
    )
    if hparams.get("training_budget") is not None:  # optional: runs started before it existed
        checkpointer.add_recoverable("training_budget", hparams["training_budget"],
                                     optional_load=True)
    brain = SeparationBrain(
        modules=modules,
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    brain.epoch_datasets = [datasets["train"]]  # told each epoch (dynamic mixing draws by it)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_loader_opts"],
        valid_loader_kwargs=hparams["eval_loader_opts"],
    )
    brain.evaluate(datasets["test"], min_key="loss", test_loader_kwargs=hparams["eval_loader_opts"])


if __name__ == "__main__":
    run(main)
