"""wav2vec 1.0 without fairseq: checkpoint layouts, key names, the maths, frame rate, errors.

Checkpoints here are written the way fairseq writes them (``args`` Namespace or ``cfg`` dict,
fairseq's parameter names spelled out independently of our module, prediction-head weights
included), with small random weights but the large model's strides.
"""

import argparse
import logging
import math

import numpy as np
import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.features.wav2vec1 import Wav2Vec1, load_wav2vec1, parse_layers

torch.set_num_threads(1)

FEAT = [(32, 10, 5), (32, 8, 4), (32, 4, 2), (32, 4, 2), (32, 4, 2), (32, 1, 1)]  # hop 160
AGG = [(32, 2, 1), (48, 3, 1), (48, 4, 1)]  # 32 -> 48 needs a residual projection
STEPS = 4  # prediction steps of the training-only head


def fairseq_state_dict(feat, agg, steps, conv_bias=True, seed=0):
    """Random weights under fairseq's Wav2VecModel names (as in fairseq's wav2vec.py)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd, in_ch = {}, 1
    for i, (ch, k, _) in enumerate(feat):
        # Sequential(Conv1d(bias=False), Dropout, Fp32GroupNorm, ReLU)
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = rnd(ch, in_ch, k)
        sd[f"feature_extractor.conv_layers.{i}.2.weight"] = 1 + rnd(ch, scale=0.1)
        sd[f"feature_extractor.conv_layers.{i}.2.bias"] = rnd(ch, scale=0.1)
        in_ch = ch
    embed = in_ch
    for i, (ch, k, _) in enumerate(agg):
        # Sequential(ReplicationPad1d, Conv1d, Dropout, Fp32GroupNorm, ReLU)
        if in_ch != ch:
            sd[f"feature_aggregator.residual_proj.{i}.weight"] = rnd(ch, in_ch, 1)
        sd[f"feature_aggregator.conv_layers.{i}.1.weight"] = rnd(ch, in_ch, k)
        if conv_bias:
            sd[f"feature_aggregator.conv_layers.{i}.1.bias"] = rnd(ch, scale=0.1)
        sd[f"feature_aggregator.conv_layers.{i}.3.weight"] = 1 + rnd(ch, scale=0.1)
        sd[f"feature_aggregator.conv_layers.{i}.3.bias"] = rnd(ch, scale=0.1)
        in_ch = ch
    # ConvTranspose2d(agg_dim, embed, (1, steps)): training only, must be skipped.
    sd["wav2vec_predictions.project_to_steps.weight"] = rnd(in_ch, embed, 1, steps)
    sd["wav2vec_predictions.project_to_steps.bias"] = rnd(embed)
    return sd


def fairseq_args(**over):
    """An old-fairseq ``args`` Namespace with the field names fairseq's wav2vec used."""
    fields = dict(
        arch="wav2vec", task="speech_pretraining", criterion="binary_cross_entropy",
        prediction_steps=STEPS, sample_distance=None, cross_sample_negatives=False,
        num_negatives=10, conv_feature_layers=str(FEAT), conv_aggregator_layers=str(AGG),
        dropout=0.0, dropout_features=0.0, dropout_agg=0.0, encoder="cnn", aggregator="cnn",
        gru_dim=512, no_conv_bias=False, agg_zero_pad=False, skip_connections_feat=False,
        skip_connections_agg=True, residual_scale=0.5, log_compression=True,
        balanced_classes=False, project_features="none", non_affine_group_norm=False,
        offset="auto",
    )
    fields.update(over)
    return argparse.Namespace(**fields)


@pytest.fixture
def args_ckpt(tmp_path):
    path = tmp_path / "wav2vec_small_test.pt"
    torch.save({
        "args": fairseq_args(),
        "model": fairseq_state_dict(FEAT, AGG, STEPS),
        "optimizer_history": [{"criterion_name": "BinaryCrossEntropyCriterion",
                               "num_updates": 10}],
        "extra_state": {"epoch": 1, "val_loss": np.float64(2.5)},
    }, path)
    return path


def _wav(seconds, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(16000 * seconds), generator=g)


def test_args_checkpoint_loads_with_safe_unpickling(args_ckpt, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_wav2vec1(args_ckpt)
    # Namespace and numpy scalars are allowlisted: no full (unsafe) unpickle needed.
    assert "weights_only=False" not in caplog.text
    assert not model.training
    assert model.dim == 48 and model.hop == 160
    # Every checkpoint weight except the prediction head was used.
    sd = fairseq_state_dict(FEAT, AGG, STEPS)
    ours = model.state_dict()
    assert set(ours) == {k for k in sd if not k.startswith("wav2vec_predictions.")}
    for key, value in ours.items():
        assert torch.equal(value, sd[key]), key


class TrainerState:
    """Stands for any training-state object fairseq may have pickled into a checkpoint."""


def test_other_pickled_objects_fall_back_to_full_unpickle(tmp_path, caplog):
    path = tmp_path / "trusted.pt"
    torch.save({"args": fairseq_args(), "model": fairseq_state_dict(FEAT, AGG, STEPS),
                "extra_state": {"trainer": TrainerState()}}, path)
    with caplog.at_level(logging.WARNING):
        model = load_wav2vec1(path)
    assert "weights_only=False" in caplog.text
    assert model.dim == 48


@pytest.mark.parametrize("output", ["z", "c"])
def test_frame_rate_is_100_per_second(args_ckpt, output):
    model = load_wav2vec1(args_ckpt, output=output)
    dim = 32 if output == "z" else 48
    with torch.no_grad():
        one = model(_wav(1.0))
        two = model(_wav(2.0, batch=1))
    assert one.shape[0] == 2 and one.shape[2] == dim
    assert 95 <= one.shape[1] <= 100
    assert two.shape[1] - one.shape[1] == 100  # one more second, exactly 100 more frames
    assert torch.isfinite(one).all()


def _numpy_reference(sd, wav, feat, agg):
    """Straight numpy forward of fairseq's feature extractor + cnn aggregator (c)."""

    def conv(x, w, stride, b=None):  # x [C, T], w [O, C, K]
        k = w.shape[2]
        n = (x.shape[1] - k) // stride + 1
        cols = np.stack([x[:, t * stride: t * stride + k] for t in range(n)])  # [n, C, K]
        y = np.einsum("nck,ock->on", cols, w)
        return y if b is None else y + b[:, None]

    def gn_relu(x, gamma, beta):  # one group: statistics over channels and time together
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
        return np.maximum(x * gamma[:, None] + beta[:, None], 0.0)

    x = wav[None, :]
    for i, (_, _, s) in enumerate(feat):
        p = f"feature_extractor.conv_layers.{i}."
        x = gn_relu(conv(x, sd[p + "0.weight"], s), sd[p + "2.weight"], sd[p + "2.bias"])
    z = np.log(np.abs(x) + 1.0)
    c = z
    for i, (_, k, s) in enumerate(agg):
        p = f"feature_aggregator.conv_layers.{i}."
        padded = np.concatenate([np.repeat(c[:, :1], k - 1, axis=1), c], axis=1)
        y = gn_relu(conv(padded, sd[p + "1.weight"], s, sd[p + "1.bias"]),
                    sd[p + "3.weight"], sd[p + "3.bias"])
        proj = sd.get(f"feature_aggregator.residual_proj.{i}.weight")
        res = c if proj is None else proj[:, :, 0] @ c
        c = (y + res) * math.sqrt(0.5)
    return z.T, c.T


def test_matches_numpy_reference(args_ckpt):
    sd = {k: v.double().numpy() for k, v in fairseq_state_dict(FEAT, AGG, STEPS).items()}
    wav = _wav(0.3, batch=1)
    z_ref, c_ref = _numpy_reference(sd, wav[0].double().numpy(), FEAT, AGG)
    with torch.no_grad():
        z = load_wav2vec1(args_ckpt, output="z")(wav)[0].numpy()
        c = load_wav2vec1(args_ckpt, output="c")(wav)[0].numpy()
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-5)


def test_cfg_checkpoint_and_layout_specific_defaults(tmp_path):
    # Newer fairseq: hydra cfg as a plain dict, "args" None. A field the config lacks takes
    # the dataclass default (log_compression=True) ...
    model_cfg = {"_name": "wav2vec", "conv_feature_layers": str(FEAT),
                 "conv_aggregator_layers": str(AGG), "skip_connections_agg": True}
    path = tmp_path / "cfg.pt"
    torch.save({"args": None, "cfg": {"model": model_cfg, "task": {"_name": "x"}},
                "model": fairseq_state_dict(FEAT, AGG, STEPS)}, path)
    model = load_wav2vec1(path)
    assert model.feature_extractor.log_compression is True
    with torch.no_grad():
        assert model(_wav(1.0, batch=1)).shape == (1, 98, 48)
    # ... while an old Namespace lacking it takes base_wav2vec_architecture's (False).
    args = fairseq_args()
    del args.log_compression
    path2 = tmp_path / "args.pt"
    torch.save({"args": args, "model": fairseq_state_dict(FEAT, AGG, STEPS)}, path2)
    assert load_wav2vec1(path2).feature_extractor.log_compression is False


def test_no_conv_bias_and_zero_pad(tmp_path):
    path = tmp_path / "nobias.pt"
    torch.save({"args": fairseq_args(no_conv_bias=True, agg_zero_pad=True),
                "model": fairseq_state_dict(FEAT, AGG, STEPS, conv_bias=False)}, path)
    model = load_wav2vec1(path)
    assert model.feature_aggregator.conv_layers[0][1].bias is None
    with torch.no_grad():
        assert model(_wav(0.5)).shape == (2, 48, 48)


def test_large_config_is_512_dim_at_100_frames_per_second():
    model = Wav2Vec1().eval()  # the defaults are wav2vec large
    with torch.no_grad():
        c = model(_wav(0.5, batch=1))
    assert c.shape == (1, 48, 512)  # 8000 samples -> 48 frames, hop 160
    assert model.hop == 160
    # Parameters from fairseq's layer lists: bias-free encoder convs, biased aggregator
    # convs, an affine one-group GroupNorm after every conv, no residual projections.
    feat = parse_layers("[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2),"
                        " (512, 1, 1), (512, 1, 1), (512, 1, 1)]")
    agg = [(512, k, 1) for k in range(2, 14)]
    expected, in_ch = 0, 1
    for ch, k, _ in feat:
        expected += ch * in_ch * k + 2 * ch
        in_ch = ch
    for ch, k, _ in agg:
        expected += ch * in_ch * k + ch + 2 * ch
    assert sum(p.numel() for p in model.parameters()) == expected
    assert "feature_extractor.conv_layers.7.0.weight" in model.state_dict()
    assert model.state_dict()["feature_aggregator.conv_layers.11.1.weight"].shape == (512, 512, 13)


def test_layer_spec_parser_is_safe():
    assert parse_layers("[(8, 10, 5)] + [(8, 3, 2)] * 2") == [(8, 10, 5), (8, 3, 2), (8, 3, 2)]
    with pytest.raises(ValueError):
        parse_layers("__import__('os').getcwd()")


@pytest.mark.parametrize("case", ["missing", "text", "tensor", "no_config", "missing_key",
                                  "shape", "wav2vec2", "gru"])
def test_bad_checkpoints_give_one_line_errors(tmp_path, case):
    path = tmp_path / f"{case}.pt"
    sd = fairseq_state_dict(FEAT, AGG, STEPS)
    if case == "text":
        path.write_text("this is not a checkpoint\n")
    elif case == "tensor":
        torch.save(torch.zeros(3), path)
    elif case == "no_config":
        torch.save({"model": sd}, path)
    elif case == "missing_key":
        del sd["feature_aggregator.conv_layers.2.3.bias"]
        torch.save({"args": fairseq_args(), "model": sd}, path)
    elif case == "shape":
        wrong_kernel = "[(32, 2, 1), (48, 2, 1), (48, 4, 1)]"  # layer 1 has kernel 3
        torch.save({"args": fairseq_args(conv_aggregator_layers=wrong_kernel), "model": sd}, path)
    elif case == "wav2vec2":
        torch.save({"args": fairseq_args(arch="wav2vec2"), "model": sd}, path)
    elif case == "gru":
        torch.save({"args": fairseq_args(aggregator="gru"), "model": sd}, path)
    expected = {
        "missing": "file not found", "text": "not loadable by torch.load",
        "tensor": "no 'model' state dict", "no_config": "no model config",
        "missing_key": "missing keys feature_aggregator.conv_layers.2.3.bias",
        "shape": "shape mismatch for", "wav2vec2": "not wav2vec 1.0",
        "gru": "not supported",
    }[case]
    with pytest.raises(SpkSepError) as info:
        load_wav2vec1(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert "\n" not in message


def test_gradient_flows_to_input_through_frozen(args_ckpt):
    frozen = Frozen(load_wav2vec1(args_ckpt), net_rate=16000, input_rate=8000)
    frozen.train()
    assert not frozen.net.training
    wav = _wav(0.5, batch=2).requires_grad_(True)  # treated as 8 kHz: resampled to 16 kHz
    feats = frozen(wav)
    assert feats.shape[1] == pytest.approx(100, abs=3)  # 1 s of audio at 16 kHz
    feats.pow(2).mean().backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all()
    assert wav.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.parameters())
