"""Toy models and run folders for the deployment tests."""

import os
import pathlib

import torch

from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.models import ConditionedSeparator, ConvTasNet
from spksep_modules.nnet.frozen import Frozen

RATE = 8000


def tiny_convtasnet(seed=0, **kw):
    torch.manual_seed(seed)
    sizes = dict(N=16, L=8, B=8, H=16, P=3, X=3, R=2)
    sizes.update(kw)
    return ConvTasNet(**sizes).eval()


def tiny_conditioned(seed=0, causal=False, speaker="ge2e", **kw):
    """A conditioned model whose speaker network is Configurable (GE2E at 16 kHz, resampled)."""
    from spksep_modules.speakers.ge2e import GE2E

    torch.manual_seed(seed)
    basic = tiny_convtasnet(seed, causal=causal) if causal else tiny_convtasnet(seed)
    net = Frozen(GE2E(), net_rate=16000, input_rate=RATE)
    model = ConditionedSeparator(basic, net, stack_channels=8, num_layers=4, layers_per_group=2,
                                 film_hidden=8, causal=causal, **kw)
    with torch.no_grad():  # a non-zero correction, so the stack matters in the outputs
        for p in model.stack.out.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def write_run(folder, model, rate=RATE):
    """What train.py leaves, in miniature: hyperparams.yaml and save/ with one checkpoint."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(f"sample_rate: {rate}\n")
    saver = AtomicCheckpointer(os.path.join(folder, "save"), {"separator": model})
    saver.save_checkpoint(meta={"loss": -10.0})
    return folder
