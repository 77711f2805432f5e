"""wav2vec 2.0 / HuBERT / WavLM from local torchaudio-format weights: inference, outputs, errors."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchaudio.models as tam

from spksep_modules import SpkSepError
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.features.ssl_models import infer_config, load_ssl

torch.set_num_threads(1)

# The standard conv encoder (320 samples per frame), with few channels.
CONV = [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2


def tiny_wav2vec2(mode="group_norm", aux=None, conv=CONV):
    torch.manual_seed(0)
    return tam.wav2vec2_model(
        extractor_mode=mode, extractor_conv_layer_config=conv,
        extractor_conv_bias=mode == "layer_norm", encoder_embed_dim=32,
        encoder_projection_dropout=0.1, encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4,
        encoder_num_layers=3, encoder_num_heads=4, encoder_attention_dropout=0.1,
        encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.1, encoder_dropout=0.1,
        encoder_layer_norm_first=mode == "layer_norm", encoder_layer_drop=0.1,
        aux_num_out=aux).eval()


def tiny_wavlm():
    torch.manual_seed(0)
    return tam.wavlm_model(
        extractor_mode="group_norm", extractor_conv_layer_config=CONV,
        extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4, encoder_num_layers=2,
        encoder_num_heads=4, encoder_num_buckets=16, encoder_max_distance=800,
        encoder_attention_dropout=0.1, encoder_ff_interm_features=48,
        encoder_ff_interm_dropout=0.1, encoder_dropout=0.1, encoder_layer_norm_first=False,
        encoder_layer_drop=0.1, aux_num_out=None).eval()


def save(model, tmp_path, name, heads=4, state=None):
    """Save a state dict; tiny widths need the head count in the JSON beside it."""
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict() if state is None else state, path)
    if heads is not None:
        (tmp_path / f"{name}.json").write_text(json.dumps({"encoder_num_heads": heads}))
    return path


def _wav(seconds, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(16000 * seconds), generator=g)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_wav2vec2_and_hubert_match_the_original(tmp_path, kind):
    ref = tiny_wav2vec2()
    net = load_ssl(kind, save(ref, tmp_path, kind))
    wav = _wav(0.5)
    with torch.no_grad():
        out = net(wav)
        expected = ref.extract_features(wav)[0][-1]
    assert not net.training and not net.normalize_waveform
    assert out.shape == (2, 24, 32) and net.dim == 32 and net.hop == 320
    torch.testing.assert_close(out, expected)


def test_layer_norm_models_normalise_each_waveform(tmp_path):
    ref = tiny_wav2vec2(mode="layer_norm")  # the "large" recipe: layer-norm conv encoder
    net = load_ssl("hubert", save(ref, tmp_path, "large_like"))
    assert net.normalize_waveform
    assert net.model.encoder.transformer.layers[0].layer_norm_first
    wav = _wav(0.5) * torch.tensor([[1.0], [30.0]])
    with torch.no_grad():
        out = net(wav)
        expected = ref.extract_features(F.layer_norm(wav, wav.shape[-1:]))[0][-1]
        # Per-utterance normalisation: the loud example does not change the quiet one.
        alone = net(wav[:1])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[:1], alone)


def test_wavlm_needs_no_json(tmp_path):
    ref = tiny_wavlm()
    net = load_ssl("wavlm", save(ref, tmp_path, "wavlm", heads=None))
    wav = _wav(0.5)
    with torch.no_grad():
        torch.testing.assert_close(net(wav), ref.extract_features(wav)[0][-1])


def test_layer_selection(tmp_path):
    ref = tiny_wav2vec2()
    path = save(ref, tmp_path, "w2v")
    wav = _wav(0.5, batch=1)
    with torch.no_grad():
        per_layer = ref.extract_features(wav)[0]
        for layer in (1, 2, 3):
            torch.testing.assert_close(load_ssl("wav2vec2", path, layer=layer)(wav),
                                       per_layer[layer - 1])
        assert not torch.allclose(per_layer[0], per_layer[2])
    with pytest.raises(SpkSepError, match="1..3"):
        load_ssl("wav2vec2", path, layer=4)


def test_frame_rate_is_50_per_second(tmp_path):
    net = load_ssl("wav2vec2", save(tiny_wav2vec2(), tmp_path, "w2v"))
    with torch.no_grad():
        one, two = net(_wav(1.0, batch=1)), net(_wav(2.0, batch=1))
    assert one.shape[1] == 49  # (16000 - 400) // 320 + 1
    assert two.shape[1] - one.shape[1] == 50


def test_old_weight_norm_names_and_asr_head(tmp_path):
    # Bundle files predate torch's parametrized weight norm (weight_g / weight_v), and ASR
    # bundles carry an "aux" output layer; both must load.
    ref = tiny_wav2vec2(aux=7)
    state = ref.state_dict()
    base = "encoder.transformer.pos_conv_embed.conv."
    state[base + "weight_g"] = state.pop(base + "parametrizations.weight.original0")
    state[base + "weight_v"] = state.pop(base + "parametrizations.weight.original1")
    net = load_ssl("wav2vec2", save(ref, tmp_path, "asr", state=state))
    wav = _wav(0.3)
    with torch.no_grad():
        torch.testing.assert_close(net(wav), ref.extract_features(wav)[0][-1])


def test_json_supplies_what_shapes_cannot(tmp_path):
    conv = [(16, 400, 320)]  # one strided conv: kernels alone do not give the stride
    ref = tiny_wav2vec2(conv=conv)
    path = save(ref, tmp_path, "odd", heads=None)
    with pytest.raises(SpkSepError, match="extractor_conv_layer_config"):
        load_ssl("wav2vec2", path)
    (tmp_path / "odd.json").write_text(json.dumps(
        {"extractor_conv_layer_config": conv, "encoder_num_heads": 4}))
    net = load_ssl("wav2vec2", path)
    wav = _wav(0.3)
    with torch.no_grad():
        torch.testing.assert_close(net(wav), ref.extract_features(wav)[0][-1])


@pytest.mark.parametrize("name,normalize", [
    ("wav2vec2_base", False), ("wav2vec2_large", False), ("wav2vec2_large_lv60k", True),
    ("hubert_base", False), ("hubert_xlarge", True), ("wavlm_base", False),
    ("wavlm_large", True)])
def test_inference_recovers_released_architectures(name, normalize):
    # Shapes only: the released architectures are built on the meta device (no memory).
    with torch.device("meta"):
        ref = getattr(tam, name)()
        state = ref.state_dict()
        kwargs, norm = infer_config(state, wavlm=name.startswith("wavlm"))
        built = (tam.wavlm_model if name.startswith("wavlm") else tam.wav2vec2_model)(**kwargs)
    assert norm == normalize
    assert {k: v.shape for k, v in built.state_dict().items()} == \
        {k: v.shape for k, v in state.items()}
    for a, b in zip(ref.encoder.transformer.layers, built.encoder.transformer.layers):
        assert a.layer_norm_first == b.layer_norm_first
        assert a.attention.num_heads == b.attention.num_heads
    assert [c.conv.stride for c in built.feature_extractor.conv_layers] == \
        [c.conv.stride for c in ref.feature_extractor.conv_layers]


@pytest.mark.parametrize("case", ["missing", "text", "tensor", "not_ssl", "kind", "wavlm_as",
                                  "heads", "shape", "bad_kind"])
def test_bad_files_give_one_line_errors(tmp_path, case):
    path = tmp_path / f"{case}.pth"
    kind = "wav2vec2"
    if case == "text":
        path.write_text("not a checkpoint")
    elif case == "tensor":
        torch.save(torch.zeros(2), path)
    elif case == "not_ssl":
        torch.save({"encoder.weight": torch.zeros(2)}, path)
    elif case == "kind":
        save(tiny_wav2vec2(), tmp_path, case)
        kind = "wavlm"
    elif case == "wavlm_as":
        save(tiny_wavlm(), tmp_path, case)
        kind = "hubert"
    elif case == "heads":
        save(tiny_wav2vec2(), tmp_path, case, heads=None)
    elif case == "shape":
        state = tiny_wav2vec2().state_dict()
        state["encoder.transformer.layers.1.final_layer_norm.weight"] = torch.ones(5)
        save(None, tmp_path, case, state=state)
    elif case == "bad_kind":
        kind = "wav2vec3"
    expected = {"missing": "file not found", "text": "not loadable",
                "tensor": "not a state dict", "not_ssl": "not a torchaudio",
                "kind": "wav2vec 2.0/HuBERT weights", "wavlm_as": "WavLM weights",
                "heads": "encoder_num_heads", "shape": "shape mismatch for",
                "bad_kind": "unknown representation"}[case]
    with pytest.raises(SpkSepError) as info:
        load_ssl(kind, path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert "\n" not in message


def test_gradient_flows_to_input_through_frozen(tmp_path):
    frozen = Frozen(load_ssl("wavlm", save(tiny_wavlm(), tmp_path, "w", heads=None)),
                    net_rate=16000, input_rate=8000)
    frozen.train()
    assert not frozen.net.training
    wav = _wav(0.5).requires_grad_(True)  # treated as 8 kHz, i.e. 1 s
    feats = frozen(wav)
    assert feats.shape[:2] == (2, 49)
    feats.pow(2).mean().backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.parameters())
