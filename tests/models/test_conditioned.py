"""FiLM, the Wavesplit stack and the speaker-conditioned separator, at tiny sizes."""

import pytest
import torch
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.models.conditioned import ConditionedLayer, ConditionedSeparator, WavesplitStack
from spksep_modules.models.conv_tasnet import ConvTasNet
from spksep_modules.models.fused import FusedConditionedLayer, fuse_for_inference
from spksep_modules.models.film import FiLM, FiLMGenerator

torch.set_num_threads(1)


def tiny_basic(num_spks=2):
    """A real Conv-TasNet at toy size (encoder N=8, L=4)."""
    return ConvTasNet(N=8, L=4, B=4, H=8, P=3, X=2, R=1, num_spks=num_spks)


class TinySpeakerNet(nn.Module):
    """Conv + mean-pool 'speaker network' that counts its embed calls."""

    embedding_dim = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, self.embedding_dim, 9, stride=4)
        self.calls = 0

    def embed(self, wav):  # [N, T] -> [N, D]
        self.calls += 1
        wav = nn.functional.pad(wav, (0, max(0, 9 - wav.shape[-1])))
        return torch.tanh(self.conv(wav.unsqueeze(1))).mean(-1)


def make(num_spks=2, refine=1, freeze=True, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("stack_channels", 8)
    kw.setdefault("num_layers", 4)
    kw.setdefault("layers_per_group", 2)
    kw.setdefault("film_hidden", 16)
    return ConditionedSeparator(
        tiny_basic(num_spks), TinySpeakerNet(), num_spks=num_spks,
        refine_iterations=refine, freeze_basic_model=freeze, **kw,
    )


def perturb_generator(model, std=0.5):
    # Move the generator off its identity initialisation so conditioning has an effect.
    with torch.no_grad():
        model.film_generator.out.weight.normal_(0.0, std)


def test_film_identity_and_affine():
    x = torch.randn(2, 3, 5)
    film = FiLM()
    assert torch.equal(film(x, torch.ones(2, 3), torch.zeros(2, 3)), x)
    scale, shift = torch.randn(2, 3), torch.randn(2, 3)
    y = film(x, scale, shift)
    assert torch.allclose(y[1, 2], x[1, 2] * scale[1, 2] + shift[1, 2])


def test_generator_starts_at_identity_and_learns():
    gen = FiLMGenerator(emb_dim=5, num_layers=3, channels=4, hidden=7)
    scale, shift = gen(torch.randn(2, 5))
    assert scale.shape == shift.shape == (2, 3, 4)
    assert torch.equal(scale, torch.ones_like(scale))
    assert torch.equal(shift, torch.zeros_like(shift))
    # The zero-initialised output layer still receives a gradient, so training moves it.
    scale.sum().backward()
    assert gen.out.weight.grad.abs().sum() > 0


def test_stack_dilations_and_shapes():
    stack = WavesplitStack(in_channels=5, channels=4, out_channels=3)
    assert len(stack.layers) == 40
    assert stack.dilations == [2**i for i in range(10)] * 4
    assert [layer.conv.dilation[0] for layer in stack.layers] == stack.dilations
    x = torch.randn(2, 5, 37)
    y = stack(x, torch.ones(2, 40, 4), torch.zeros(2, 40, 4))
    assert y.shape == (2, 3, 37)
    # An input shared by S=3 conditions gives what three copies of it would.
    s, b = torch.rand(6, 40, 4) + 0.5, torch.randn(6, 40, 4)
    shared = stack(x, s, b)
    assert shared.shape == (6, 3, 37)
    assert torch.allclose(shared, stack(x.repeat_interleave(3, dim=0), s, b), atol=1e-5)
    with pytest.raises(ValueError):
        stack(x, s[:5], b[:5])
    with pytest.raises(ValueError):
        WavesplitStack(5, 4, num_layers=15, layers_per_group=10)


def test_layer_is_conv_gln_film_prelu_residual():
    # The non-causal layer folds its global norm into FiLM: check against the plain chain.
    torch.manual_seed(0)
    layer = ConditionedLayer(channels=4, kernel_size=3, dilation=2, causal=False)
    x, scale, shift = torch.randn(2, 4, 15), torch.randn(2, 4), torch.randn(2, 4)
    y = nn.functional.group_norm(layer.conv(x), 1, eps=1e-8)
    ref = x + layer.act(y * scale[..., None] + shift[..., None])
    assert torch.allclose(layer(x, scale, shift), ref, atol=1e-5)


def test_causal_stack_ignores_the_future():
    torch.manual_seed(0)
    stack = WavesplitStack(3, 4, num_layers=4, layers_per_group=2, causal=True)
    s, b = torch.rand(1, 4, 4) + 0.5, torch.randn(1, 4, 4)
    x = torch.randn(1, 3, 20)
    x2 = x.clone()
    x2[..., 12:] = torch.randn(1, 3, 8)
    y, y2 = stack(x, s, b), stack(x2, s, b)
    assert torch.allclose(y[..., :12], y2[..., :12], atol=1e-6)
    assert not torch.allclose(y[..., 12:], y2[..., 12:])
    # The default (non-causal) stack does look ahead.
    stack_nc = WavesplitStack(3, 4, num_layers=4, layers_per_group=2)
    assert not torch.allclose(stack_nc(x, s, b)[..., :12], stack_nc(x2, s, b)[..., :12])


@pytest.mark.parametrize("num_spks,T", [(2, 101), (3, 64), (2, 3)])
def test_shapes(num_spks, T):
    model = make(num_spks=num_spks)
    out = model(torch.randn(2, T))
    est, inter = out.estimates, out.extras["intermediate"]
    assert est.shape == inter.shape == (2, T, num_spks)
    assert torch.isfinite(est).all()


def unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


@pytest.mark.parametrize("estimate_cue", [True, False])
def test_conditioning_changes_the_output(estimate_cue):
    model = make(estimate_cue=estimate_cue).eval()
    mix = torch.randn(1, 80)
    enc = model.encode(mix)
    emb = unit(1, 2, 6)
    # The same cue for both speakers: only the embeddings can tell the passes apart.
    cue = torch.randn(1, 80, 1).expand(1, 80, 2)
    # At identity init the FiLM layers do nothing: the speakers' outputs are equal.
    out = model.separate_conditioned(enc, emb, cue)
    assert out.shape == (1, 80, 2)
    assert torch.allclose(out[..., 0], out[..., 1])
    perturb_generator(model)
    out = model.separate_conditioned(enc, emb, cue)
    assert not torch.allclose(out[..., 0], out[..., 1])
    assert not torch.allclose(model.separate_conditioned(enc, unit(1, 2, 6), cue), out)


def test_the_estimate_cue_is_read_only_when_enabled():
    mix, cue = torch.randn(1, 80), torch.randn(1, 80, 2)
    for estimate_cue in (True, False):
        model = make(estimate_cue=estimate_cue).eval()
        enc, emb = model.encode(mix), unit(1, 2, 6)
        out = model.separate_conditioned(enc, emb, cue)
        # (2 * cue would give the same: the cue's encoding is normalised.)
        changed = not torch.allclose(model.separate_conditioned(enc, emb, cue.flip(1)), out)
        assert changed == estimate_cue
        # With a cue the speakers differ even at identity FiLM (the cue tells them apart).
        assert (not torch.allclose(out[..., 0], out[..., 1])) == estimate_cue


@pytest.mark.parametrize("interferer_context,estimate_cue", [(True, True), (False, False)])
def test_outputs_follow_the_embeddings_order(interferer_context, estimate_cue):
    # Permutation equivariance: permuting the speakers' embeddings (and cues) permutes
    # the outputs the same way.
    model = make(num_spks=3, interferer_context=interferer_context, estimate_cue=estimate_cue)
    model.eval()
    perturb_generator(model)
    enc = model.encode(torch.randn(1, 60))
    emb, cue = unit(1, 3, 6), torch.randn(1, 60, 3)
    perm = [2, 0, 1]
    out = model.separate_conditioned(enc, emb, cue)
    out_p = model.separate_conditioned(enc, emb[:, perm], cue[..., perm])
    assert torch.allclose(out_p, out[..., perm], atol=1e-6)


def test_refinement_reembeds_and_changes_output():
    mix = torch.randn(2, 90)
    outs, calls = [], []
    for k in (1, 2):
        model = make(refine=k)
        perturb_generator(model)
        model.eval()
        outs.append(model(mix).estimates)
        calls.append(model.speaker_net.net.calls)
    assert calls == [1, 2]
    assert not torch.allclose(outs[0], outs[1])


def test_gradients_and_freezing():
    model = make()
    perturb_generator(model)
    model.train()
    assert not model.basic_model.training and not model.speaker_net.net.training
    enc_before = model.basic_model.encoder.weight.clone()
    basic_before = {k: v.clone() for k, v in model.basic_model.state_dict().items()
                    if torch.is_tensor(v)}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    est = model(torch.randn(2, 70))
    inter = est.extras["intermediate"]
    assert not inter.requires_grad
    est.pow(2).mean().backward()
    assert model.film_generator.out.weight.grad.abs().sum() > 0
    assert all(layer.conv.weight.grad.abs().sum() > 0 for layer in model.stack.layers)
    assert model.encoder.weight.grad is not None  # the copied filterbank trains
    assert all(p.grad is None for p in model.basic_model.parameters())
    assert all(p.grad is None for p in model.speaker_net.parameters())
    opt.step()
    assert torch.equal(model.basic_model.encoder.weight, enc_before)
    assert all(torch.equal(v, basic_before[k]) for k, v in model.basic_model.state_dict().items()
               if torch.is_tensor(v))
    assert not torch.equal(model.encoder.weight, enc_before)


def test_unfrozen_basic_model_gets_gradients():
    model = make(freeze=False, refine=2)
    perturb_generator(model)
    model.train()
    assert model.basic_model.training
    est = model(torch.randn(2, 70))
    inter = est.extras["intermediate"]
    (est.pow(2).mean() + inter.pow(2).mean()).backward()
    assert all(p.grad is not None for p in model.basic_model.parameters())
    assert all(p.grad is None for p in model.speaker_net.parameters())


def test_frozen_speaker_net_is_kept_and_checked():
    net = Frozen(TinySpeakerNet(), net_rate=16000, input_rate=16000)
    model = ConditionedSeparator(tiny_basic(), net, stack_channels=4, num_layers=2,
                                 layers_per_group=2, film_hidden=4)
    assert model.speaker_net is net
    with pytest.raises(SpkSepError, match="embedding_dim"):
        ConditionedSeparator(tiny_basic(), nn.Linear(2, 2))
    with pytest.raises(SpkSepError, match="refine_iterations"):
        ConditionedSeparator(tiny_basic(), TinySpeakerNet(), refine_iterations=0)


def test_separation_filterbank_starts_as_the_basic_models():
    model = make()
    mix = torch.randn(2, 45)
    assert torch.equal(model.encode(mix), model.basic_model.encode(mix))
    assert model.encoder.weight is not model.basic_model.encoder.weight
    rep = torch.rand(2, 8, model.encode(mix).shape[-1])
    assert torch.allclose(model.decode(rep, 45), model.basic_model.decode(rep[:, None], 45)[..., 0],
                          atol=1e-6)
    # decode() is the transposed convolution, bias included when there is one.
    model.decoder = nn.ConvTranspose1d(8, 1, 4, stride=2, bias=True)
    assert torch.allclose(model.decode(rep, 45), model.decoder(rep)[:, 0, :45], atol=1e-6)


def test_input_checks():
    model = make(num_spks=2)
    assert model(torch.randn(50)).estimates.shape == (1, 50, 2)
    with pytest.raises(SpkSepError, match="input"):
        model(torch.randn(1, 1, 50))
    wrong = ConditionedSeparator(tiny_basic(3), TinySpeakerNet(), num_spks=2, stack_channels=4,
                                 num_layers=2, layers_per_group=2, film_hidden=4)
    with pytest.raises(SpkSepError, match="num_spks"):
        wrong(torch.randn(1, 50))


def test_fused_inference_layers_compute_the_trained_function(monkeypatch):
    # Without autograd each stack layer applies norm and FiLM as one in-place affine map.
    calls = []
    original = FusedConditionedLayer.forward
    monkeypatch.setattr(FusedConditionedLayer, "forward",
                        lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(3)
    stack = WavesplitStack(6, 5, num_layers=6, layers_per_group=3).double()
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 6, 90, dtype=torch.float64)
    scale = 1 + torch.randn(4, 6, 5, dtype=torch.float64)
    shift = torch.randn(4, 6, 5, dtype=torch.float64)
    trained = stack(x, scale, shift)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(stack)(x, scale, shift), trained.detach())
    assert len(calls) == 6

    model = make(num_layers=4).double()
    perturb_generator(model)
    mix = torch.randn(2, 900, dtype=torch.float64)
    with torch.enable_grad():
        trained = model(mix)
    with torch.no_grad():
        fused = fuse_for_inference(model)(mix)
    torch.testing.assert_close(fused.estimates, trained.detach())
    torch.testing.assert_close(fused.extras["intermediate"], trained.extras["intermediate"])


def test_a_per_condition_cue_reads_like_a_concatenated_input():
    torch.manual_seed(4)
    stack = WavesplitStack(10, 6, num_layers=4, layers_per_group=2, out_channels=4)
    x = torch.randn(2, 4, 50)  # shared by 3 conditions each
    cue = torch.randn(6, 6, 50)  # one per condition
    scale, shift = 1 + torch.randn(6, 4, 6), torch.randn(6, 4, 6)
    concatenated = torch.cat([x.repeat_interleave(3, dim=0), cue], dim=1)
    torch.testing.assert_close(stack(x, scale, shift, cue), stack(concatenated, scale, shift))


def test_a_stack_cast_to_bf16_runs_with_and_without_autograd():
    stack = WavesplitStack(6, 5, num_layers=4, layers_per_group=2).to(torch.bfloat16)
    x = torch.randn(2, 6, 40, dtype=torch.bfloat16)
    scale, shift = torch.ones(2, 4, 5, dtype=torch.bfloat16), torch.zeros(2, 4, 5, dtype=torch.bfloat16)
    out = stack(x, scale, shift)
    with torch.no_grad():
        assert fuse_for_inference(stack)(x, scale, shift).dtype == out.dtype == torch.bfloat16


@pytest.mark.parametrize("refine", [1, 2])
def test_residual_passes_start_as_the_basic_model_and_learn_at_once(refine):
    model = make(refine=refine, residual=True)
    perturb_generator(model)  # whatever the conditions say, the correction starts at zero
    out = model(torch.randn(2, 900))
    inter = out.extras["intermediate"]
    assert torch.equal(out.estimates, inter)  # not just within 0.1 dB: exactly
    out.estimates.square().mean().backward()
    # The zero-initialised last layer still gets a gradient: training starts moving it.
    assert model.stack.out.weight.grad.abs().sum() > 0


def test_the_literal_reading_predicts_new_masks_from_scratch():
    model = make(residual=False)
    out = model(torch.randn(2, 900))
    assert not torch.allclose(out.estimates, out.extras["intermediate"], atol=1e-3)


def test_the_basic_model_runs_once_per_segment_with_the_cache():
    model = make(basic_cache_mb=10)
    calls = []
    model.basic_model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    mix = torch.randn(3, 700)
    first = model(mix)
    second = model(torch.cat([mix[1:], torch.randn(1, 700)]))  # two seen, one new
    assert calls == [3, 1] and model.basic_cache.hits == 2
    torch.testing.assert_close(second.extras["intermediate"][:2], first.extras["intermediate"][1:])
    torch.testing.assert_close(second.estimates[:2], first.estimates[1:])
    # Gradients still reach the trained parts; the cached ones never had any.
    second.estimates.square().mean().backward()
    assert model.film_generator.out.weight.grad is not None or model.stack.out.weight.grad is not None


def test_the_cache_is_a_runtime_setting_and_keeps_outputs_exact():
    cached, plain = make(basic_cache_mb=10), make()
    plain.load_state_dict(cached.state_dict())  # loads: the cache size is not architecture
    mix = torch.randn(2, 600)
    torch.testing.assert_close(cached(mix), plain(mix))
    torch.testing.assert_close(cached(mix), plain(mix))  # from the cache the second time
