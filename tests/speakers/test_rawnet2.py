"""RawNet2: official checkpoint layout, any-length embedding, loading errors, gradients."""

import math
import time

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.configurable import spec
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.rawnet2 import (
    RawNet2, SincFilterbank, load_rawnet2, save_rawnet2, window_starts)

torch.set_num_threads(1)

# A small network for behaviour tests: the same structure at a fraction of the cost.
SMALL = dict(window=6561, hop=4000, sinc_filters=8, sinc_length=31,
             block_channels=(8, 8, 16, 16, 16, 16), gru_units=24, gru_layers=1,
             embedding_dim=20, num_classes=5)


def official_state_dict(num_classes=6112):
    """Random tensors under the key names and shapes of the authors'
    ``rawnet2_best_weights.pt`` (``model_RawNet2_original_code.py``), written out by hand
    so that the test does not depend on the module it checks."""
    shapes = {"ln.gamma": (59049,), "ln.beta": (59049,),
              "first_conv.low_hz_": (128, 1), "first_conv.band_hz_": (128, 1)}

    def bn(name, c):
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,),
                       f"{name}.running_mean": (c,), f"{name}.running_var": (c,),
                       f"{name}.num_batches_tracked": ()})

    bn("first_bn", 128)
    for i, (cin, cout) in enumerate([(128, 128), (128, 128), (128, 256),
                                     (256, 256), (256, 256), (256, 256)]):
        p = f"block{i}.0"
        if i > 0:
            bn(f"{p}.bn1", cin)
        shapes.update({f"{p}.conv1.weight": (cout, cin, 3), f"{p}.conv1.bias": (cout,),
                       f"{p}.conv2.weight": (cout, cout, 3), f"{p}.conv2.bias": (cout,)})
        bn(f"{p}.bn2", cout)
        if cin != cout:
            shapes.update({f"{p}.conv_downsample.weight": (cout, cin, 1),
                           f"{p}.conv_downsample.bias": (cout,)})
        shapes.update({f"fc_attention{i}.0.weight": (cout, cout),
                       f"fc_attention{i}.0.bias": (cout,)})
    bn("bn_before_gru", 256)
    shapes.update({"gru.weight_ih_l0": (3072, 256), "gru.weight_hh_l0": (3072, 1024),
                   "gru.bias_ih_l0": (3072,), "gru.bias_hh_l0": (3072,),
                   "fc1_gru.weight": (1024, 1024), "fc1_gru.bias": (1024,),
                   "fc2_gru.weight": (num_classes, 1024), "fc2_gru.bias": (num_classes,)})
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("low_hz_"):
            state[key] = torch.linspace(30, 6000, 128).view(128, 1)
        elif key.endswith("band_hz_"):
            state[key] = torch.linspace(20, 400, 128).view(128, 1)
        elif key == "ln.gamma":
            state[key] = torch.ones(shape)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 16
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rawnet2") / "rawnet2_best_weights.pt"
    torch.save(official_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def official_model(official_file):
    return load_rawnet2(official_file)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = RawNet2(**SMALL).eval()
    # Non-trivial batch-norm statistics, so eval mode differs from identity.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_default_model_matches_official_layout_strictly():
    model = RawNet2()
    model.load_state_dict(official_state_dict(), strict=True)
    assert model.sample_rate == 16000 and model.embedding_dim == 1024
    assert model.num_classes == 6112


def test_official_checkpoint_embeds_any_length(official_model, capsys):
    model = official_model
    assert not model.training and model.num_classes == 6112
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for length in (8000, 59049, 64000):  # 0.5 s, exactly one window, 4 s
            wav = torch.randn(2, length, generator=gen)
            torch.set_num_threads(2)  # the reported timing: 2 threads
            start = time.perf_counter()
            emb = model.embed(wav)
            elapsed = time.perf_counter() - start
            torch.set_num_threads(1)
            assert emb.shape == (2, 1024)
            assert torch.isfinite(emb).all()
            assert not torch.allclose(emb[0], emb[1])
        logits = model.classify(emb)
    assert logits.shape == (2, 6112)
    with capsys.disabled():
        print(f"\nRawNet2.embed 2 x 4 s (16 kHz, 2 windows each), 2 threads: {elapsed:.2f} s")


def test_module_prefix_and_dropping_the_classifier(tmp_path, official_model):
    state = {f"module.{k}": v for k, v in official_state_dict().items()}
    path = tmp_path / "dp.pt"
    torch.save(state, path)
    model = load_rawnet2(path)
    for key, value in official_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    headless = load_rawnet2(path, num_classes=0)
    assert headless.fc2_gru is None
    with pytest.raises(ValueError, match="no classifier"):
        headless.classify(torch.zeros(1, 1024))


def test_own_format_round_trip(tmp_path, small_model):
    path = tmp_path / "sub" / "rawnet2.ckpt"
    save_rawnet2(small_model, path)
    loaded = load_rawnet2(path)
    assert spec(loaded) == spec(small_model)  # block_channels: saved as a list
    assert torch.load(path, weights_only=True)["config"]["block_channels"] == [8, 8, 16, 16, 16, 16]
    wav = torch.randn(2, 7000)
    with torch.no_grad():
        assert torch.allclose(loaded.embed(wav), small_model.embed(wav))
    assert load_rawnet2(path, hop=1000).hop == 1000


def test_num_classes_inferred_without_config(tmp_path):
    torch.save(official_state_dict(num_classes=1211), tmp_path / "vox1.pt")
    assert load_rawnet2(tmp_path / "vox1.pt").classify(torch.randn(3, 1024)).shape == (3, 1211)


def test_loading_errors_name_the_file(tmp_path):
    with pytest.raises(SpkSepError, match="missing.pt: file not found"):
        load_rawnet2(tmp_path / "missing.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SpkSepError, match="garbage.pt: cannot read checkpoint"):
        load_rawnet2(garbage)

    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(SpkSepError, match=r"other.pt: not a RawNet2 checkpoint: missing keys"):
        load_rawnet2(other)

    wrong = tmp_path / "wrong.pt"
    state = official_state_dict()
    state["fc1_gru.weight"] = torch.zeros(512, 1024)
    torch.save(state, wrong)
    with pytest.raises(SpkSepError, match=r"wrong.pt: not a RawNet2 checkpoint: shape mismatch for fc1_gru.weight"):
        load_rawnet2(wrong)

    for err_path in (tmp_path / "missing.pt", garbage, other, wrong):
        try:
            load_rawnet2(err_path)
        except SpkSepError as err:
            assert "\n" not in str(err) and str(err).startswith(str(err_path))


def test_window_starts_cover_the_signal():
    assert window_starts(100, 100, 30) == [0]
    assert window_starts(101, 100, 30) == [0, 1]
    assert window_starts(130, 100, 30) == [0, 30]
    assert window_starts(131, 100, 30) == [0, 30, 31]
    starts = window_starts(1000, 100, 30)
    assert starts[-1] + 100 == 1000
    assert all(b - a <= 30 for a, b in zip(starts, starts[1:]))


def test_embed_equals_forward_for_one_window(small_model):
    wav = torch.randn(3, SMALL["window"])
    with torch.no_grad():
        assert torch.allclose(small_model.embed(wav), small_model(wav), atol=1e-6)


def test_embed_tiles_short_and_averages_long_inputs(small_model):
    m, win = small_model, SMALL["window"]
    with torch.no_grad():
        short = torch.randn(2, 2500)
        tiled = short.repeat(1, 3)[:, :win]
        assert torch.allclose(m.embed(short), m(tiled), atol=1e-6)

        long = torch.randn(2, 12000)  # windows at 0, 4000 and 12000 - win
        starts = window_starts(12000, win, SMALL["hop"])
        assert len(starts) == 3
        by_hand = torch.stack([m(long[:, s:s + win]) for s in starts]).mean(0)
        assert torch.allclose(m.embed(long), by_hand, atol=1e-6)
        # Batched embedding equals one utterance at a time.
        assert torch.allclose(m.embed(long[1:]), m.embed(long)[1:], atol=1e-6)


def test_forward_rejects_other_lengths(small_model):
    with pytest.raises(ValueError, match="use RawNet2.embed"):
        small_model(torch.randn(1, 5000))


def test_classify_rescales_the_embedding(small_model):
    emb = torch.randn(4, SMALL["embedding_dim"])
    assert torch.allclose(small_model.classify(emb), small_model.classify(7 * emb), atol=1e-5)


def test_sinc_filters_pass_their_own_band():
    bank = SincFilterbank(3, 251)
    bank.low_hz_.data = torch.tensor([[200.0], [1500.0], [4000.0]])
    bank.band_hz_.data = torch.tensor([[300.0], [800.0], [1500.0]])
    taps = bank.filters().detach()[:, 0]
    assert torch.allclose(taps, taps.flip(1))  # symmetric, linear phase
    resp = torch.fft.rfft(taps, n=4096).abs()
    freqs = torch.fft.rfftfreq(4096, 1 / 16000)
    low = 50 + bank.low_hz_.view(-1)
    high = low + 50 + bank.band_hz_.view(-1)
    for f in range(3):
        inside = (freqs > low[f]) & (freqs < high[f])
        outside = (freqs < low[f] - 1500) | (freqs > high[f] + 1500)
        assert resp[f][inside].mean() > 100 * resp[f][outside].mean()


def test_gradients_reach_the_input_not_the_weights():
    frozen = Frozen(RawNet2(**SMALL), net_rate=16000, input_rate=8000)
    frozen.train()
    assert not frozen.net.training
    wav = torch.randn(2, 2000, requires_grad=True)  # 0.25 s at 8 kHz, tiled after resampling
    emb = frozen.embed(wav)
    assert emb.shape == (2, SMALL["embedding_dim"])
    emb.pow(2).sum().backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all()
    assert wav.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.net.parameters())


def test_silent_input_has_finite_gradient():
    model = RawNet2(**SMALL).eval()
    wav = torch.zeros(1, 3000, requires_grad=True)
    model.embed(wav).sum().backward()
    assert torch.isfinite(wav.grad).all()
