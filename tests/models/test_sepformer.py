"""SepFormer from SpeechBrain's modules: the separator contract (shapes, output type,
gradients, rebuilt from a checkpoint), SpeechBrain's function, and every paper model on it
(perceptual losses, conditioning)."""

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.losses import SeparationLoss, TripletLike, WeightedSum
from spksep_modules.models import (
    ConditionedSeparator,
    SepFormer,
    SeparatorOutput,
    fuse_for_inference,
    separator_from_state,
)

TINY = dict(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1, nhead=2, d_ffn=32)

torch.set_num_threads(1)


def tiny(**kw):
    torch.manual_seed(0)
    return SepFormer(**{**TINY, **kw})


class SpeechBrainSepFormer(torch.nn.Module):
    """SpeechBrain's modules wired as its separation recipe wires them (train.py's
    compute_forward and SepformerSeparation.separate_batch)."""

    def __init__(self, ours: SepFormer):
        super().__init__()
        from speechbrain.lobes.models.dual_path import Decoder, Encoder

        c = ours.config
        self.encoder = Encoder(kernel_size=c["kernel_size"], out_channels=c["N"])
        self.encoder.conv1d.load_state_dict(ours.encoder.state_dict())
        self.masknet = ours.masknet  # SpeechBrain's Dual_Path_Model itself
        self.decoder = Decoder(in_channels=c["N"], out_channels=1, kernel_size=c["kernel_size"],
                               stride=c["kernel_size"] // 2, bias=False)
        self.decoder.load_state_dict(ours.decoder.state_dict())
        self.num_spks = c["num_spks"]

    def forward(self, mix):
        mix_w = self.encoder(mix)
        sep_h = torch.stack([mix_w] * self.num_spks) * self.masknet(mix_w)
        est = torch.cat([self.decoder(sep_h[i]).unsqueeze(-1) for i in range(self.num_spks)], -1)
        T, T_est = mix.shape[1], est.shape[1]
        return torch.nn.functional.pad(est, (0, 0, 0, T - T_est)) if T > T_est else est[:, :T]


def test_defaults_are_speechbrains_libri2mix_recipe():
    from speechbrain.lobes.models.dual_path import Dual_Path_Model, SBTransformerBlock

    model = SepFormer()
    c = model.config
    assert (c["N"], c["kernel_size"], c["num_layers"], c["K"]) == (256, 16, 2, 250)
    assert (c["intra_layers"], c["inter_layers"], c["nhead"], c["d_ffn"]) == (8, 8, 8, 1024)
    assert c["dropout"] == 0 and c["norm_before"] and c["use_positional_encoding"]
    assert c["norm"] == "ln" and c["skip_around_intra"] and not c["linear_layer_after_inter_intra"]
    assert isinstance(model.masknet, Dual_Path_Model)
    assert isinstance(model.masknet.dual_mdl[0].intra_mdl, SBTransformerBlock)
    assert len(model.masknet.dual_mdl[0].intra_mdl.mdl.layers) == 8
    assert sum(p.numel() for p in model.parameters()) == 25_679_361  # SepFormer's 25.7 M


@pytest.mark.parametrize("num_spks", [2, 3])
@pytest.mark.parametrize("length", [1, 15, 16, 21, 808, 1001])
def test_output_has_input_length_and_type(num_spks, length):
    out = tiny(num_spks=num_spks)(torch.randn(2, length))
    assert isinstance(out, SeparatorOutput) and out.extras == {}
    assert out.shape == (2, length, num_spks) and torch.isfinite(out).all()


def test_it_computes_speechbrains_function_on_every_length():
    ours = tiny().eval()
    theirs = SpeechBrainSepFormer(ours).eval()
    for length in (16, 808, 813, 1001):
        mix = torch.randn(2, length)
        with torch.no_grad():
            torch.testing.assert_close(ours(mix).estimates, theirs(mix), rtol=1e-5, atol=1e-6)


def test_time_only_input_and_bad_input():
    model = tiny().eval()
    mix = torch.randn(900)
    torch.testing.assert_close(model(mix), model(mix[None]))
    with pytest.raises(SpkSepError, match="SepFormer input"):
        model(torch.randn(2, 1, 100))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(SpkSepError, match="nhead"):
        tiny(nhead=3)
    with pytest.raises(SpkSepError, match="activation"):
        tiny(activation="tanh")
    with pytest.raises(SpkSepError, match="kernel_size"):
        tiny(kernel_size=1)


def test_every_parameter_gets_a_gradient():
    # DistributedDataParallel without find_unused_parameters needs this.
    model = tiny()
    model(torch.randn(2, 800)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_dual_path_blocks_do_not_start_equal():
    # Dual_Path_Model deep-copies one block; the recipe re-initialises every layer.
    model = tiny(num_layers=2)
    a, b = (m.intra_mdl.mdl.layers[0].pos_ffn.ffn[0].weight for m in model.masknet.dual_mdl)
    assert not torch.equal(a, b)


def test_a_checkpoint_rebuilds_it_and_other_sizes_are_refused():
    model = tiny()
    twin = separator_from_state(model.state_dict(), "test")
    mix = torch.randn(1, 800)
    assert type(twin).__name__ == "SepFormer" and twin.config == model.config
    torch.testing.assert_close(twin.eval()(mix), model.eval()(mix))
    with pytest.raises(SpkSepError, match="K=10, the model here has K=20"):
        tiny(K=20).load_state_dict(model.state_dict())
    tiny(dropout=0.1).load_state_dict(model.state_dict())  # a training setting only


def test_fused_inference_view_is_the_same_function():
    model = tiny().eval()
    mix = torch.randn(2, 1001)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(model)(mix), model(mix))


def test_bf16_autocast_runs_and_stays_close():
    model, mix = tiny().eval(), torch.randn(1, 1600)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(mix).float()
    with torch.no_grad():
        ref = model(mix)
    assert torch.isfinite(low).all()
    assert (low - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize("term", [WeightedSum, TripletLike])
def test_perceptual_losses_train_a_sepformer(term):
    from spksep_modules.features import build_representation

    model = tiny()
    loss = SeparationLoss(auxiliary=term(representation=build_representation("ge2e",
                                                                             sample_rate=16000)))
    mix, sources = torch.randn(2, 4000), torch.randn(2, 4000, 2)
    terms = loss(model(mix), sources)
    assert "perceptual" in terms and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert model.masknet.conv1d.weight.grad.abs().sum() > 0


def test_conditioned_model_on_a_sepformer_basic_model():
    from spksep_modules.speakers.ge2e import load_ge2e

    basic = tiny().eval()
    torch.manual_seed(1)
    model = ConditionedSeparator(basic, load_ge2e(), stack_channels=4, num_layers=2,
                                 layers_per_group=2, film_hidden=4)
    assert (model.kernel, model.stride) == (16, 8)
    assert torch.equal(model.encoder.weight, basic.encoder.weight)
    mix = torch.randn(2, 4000)
    out = model(mix)
    assert out.shape == (2, 4000, 2)
    with torch.no_grad():
        torch.testing.assert_close(out.extras["intermediate"], basic(mix).estimates)
    out.square().mean().backward()
    assert all(p.grad is None for p in basic.parameters())  # frozen
    assert model.decoder.weight.grad is not None
    twin = separator_from_state(model.state_dict(), "test")  # the basic model travels too
    assert type(twin.basic_model).__name__ == "SepFormer"
    assert twin.basic_model.config == basic.config
