"""The separator contract: one output type, arguments saved with the weights, run folders
rebuilt from their checkpoints (old ones loaded or refused in one line)."""

import os

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.loading import load_basic_model, load_separator
from spksep_modules.models import (
    ConditionedSeparator,
    ConvTasNet,
    SeparatorOutput,
    separator_from_state,
)
from spksep_modules.speakers.ge2e import load_ge2e

TINY = dict(N=16, L=8, B=8, H=16, P=3, X=2, R=1)


def tiny(**kw):
    torch.manual_seed(0)
    return ConvTasNet(**{**TINY, **kw})


def conditioned(basic=None):
    torch.manual_seed(1)
    return ConditionedSeparator(basic or tiny(), load_ge2e(), stack_channels=4, num_layers=2,
                                layers_per_group=2, film_hidden=4)


def test_every_family_returns_one_output_type():
    mix = torch.randn(2, 4000)
    for model in (tiny(), conditioned()):
        out = model(mix)
        assert isinstance(out, SeparatorOutput) and out.shape == (2, 4000, 2)
        assert type(out.estimates) is torch.Tensor and type(out + 1) is torch.Tensor
    assert tiny()(mix).extras == {}
    assert conditioned()(mix).extras["intermediate"].shape == (2, 4000, 2)


def test_output_keeps_the_graph():
    model = tiny()
    out = model(torch.randn(1, 800))
    out.square().sum().backward()
    assert model.encoder.weight.grad.abs().sum() > 0


def test_a_state_dict_rebuilds_its_separator():
    mix = torch.randn(1, 4000)
    for model in (tiny(mask_act="sigmoid", num_spks=3), conditioned()):
        twin = separator_from_state(model.state_dict(), "test").eval()
        assert type(twin) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(twin(mix), model.eval()(mix))
    assert separator_from_state(tiny(X=3).state_dict(), "t").config["X"] == 3


def test_a_checkpoint_of_other_sizes_or_family_is_refused_in_one_line():
    with pytest.raises(SpkSepError, match="trained with N=16.*N=32"):
        ConvTasNet(**{**TINY, "N": 32}).load_state_dict(tiny().state_dict())
    with pytest.raises(SpkSepError, match="holds a ConvTasNet, not a ConditionedSeparator"):
        conditioned().load_state_dict(tiny().state_dict())
    # How a model runs (kernels, activation checkpointing) is not part of what it is.
    tiny(cpu_kernels=False, checkpoint=True).load_state_dict(tiny().state_dict())


def test_a_state_dict_without_description_still_loads_but_cannot_rebuild():
    state = tiny().state_dict()
    del state["_extra_state"]
    tiny().load_state_dict(state)  # strict: the missing description is not an error
    with pytest.raises(SpkSepError, match="no model description"):
        separator_from_state(state, "old.ckpt")


def write_run(folder, model, yaml_text, strip_description=False):
    os.makedirs(folder)
    with open(os.path.join(folder, "hyperparams.yaml"), "w") as f:
        f.write(yaml_text)
    ckpt = AtomicCheckpointer(os.path.join(folder, "save"), {"separator": model})
    path = ckpt.save_checkpoint(meta={"loss": -5.0}).paramfiles["separator"]
    if strip_description:  # as spksep 0.1 saved it
        state = torch.load(path, weights_only=False)
        del state["_extra_state"]
        torch.save(state, path)
    return folder


def test_run_folders_rebuild_from_the_checkpoint_not_the_yaml(tmp_path):
    model = tiny(X=3)
    # The yaml would build another model: the checkpoint's description wins.
    run = write_run(tmp_path / "run", model, "sample_rate: 8000\nseparator: null\n")
    loaded, rate = load_separator(str(run))
    assert rate == 8000 and loaded.config["X"] == 3
    assert load_basic_model(str(run), {"N": 16, "X": None}).config == loaded.config
    with pytest.raises(SpkSepError, match="trained with X=3, this yaml asks for X=2"):
        load_basic_model(str(run), {"X": 2})
    with pytest.raises(SpkSepError, match="has no stack_channels"):
        load_basic_model(str(run), {"stack_channels": 64})


def test_old_run_folders_load_or_are_refused_in_one_line(tmp_path):
    sizes = "".join(f"    {k}: {v}\n" for k, v in TINY.items())
    old_yaml = ("sample_rate: 16000\nseparator: !new:spksep_modules.models.ConvTasNet\n" + sizes
                + "perceptual_loss: !new:spksep_modules.losses.perceptual.PerceptualLoss\n"
                  "    kind: weighted_sum\n")
    model = tiny()
    run = write_run(tmp_path / "old", model, old_yaml, strip_description=True)
    loaded, _ = load_separator(str(run))  # rebuilt from its yaml, training-only keys skipped
    mix = torch.randn(1, 900)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mix), model.eval()(mix))

    moved = old_yaml.replace("spksep_modules.models.ConvTasNet", "spksep_modules.models.RawNet2")
    run = write_run(tmp_path / "moved", model, moved, strip_description=True)
    with pytest.raises(SpkSepError, match="older spksep.*retrain it with"):
        load_separator(str(run))
