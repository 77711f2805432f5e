"""ECAPA-TDNN speaker embeddings from a local SpeechBrain model folder (tiny sizes)."""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from spksep_modules import SpkSepError
from spksep_modules.speakers import build_speaker_net
from spksep_modules.speakers.ecapa import load_ecapa
from spksep_modules.models import ConditionedSeparator, ConvTasNet

torch.set_num_threads(1)

# The layout of spkrec-ecapa-voxceleb's hyperparams.yaml, at toy sizes; its pretrainer
# points at the hub, which loading must never contact.
HPARAMS = """\
n_mels: 24
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [16, 16, 16, 16, 48]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    lin_neurons: <dim>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: speechbrain/spkrec-ecapa-voxceleb/embedding_model.ckpt
"""


def write_folder(path, dim=12, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    text = HPARAMS.replace("<dim>", str(dim))
    (path / "hyperparams.yaml").write_text(text)
    torch.manual_seed(seed)
    model = load_hyperpyyaml(text)["embedding_model"]
    with torch.no_grad():  # trained-looking weights, far from the constructor's
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    torch.save(model.state_dict(), path / "embedding_model.ckpt")
    return path, model


def test_loads_the_folders_weights_and_embeds_any_length(tmp_path):
    folder, trained = write_folder(tmp_path / "ecapa")
    net = load_ecapa(folder)
    assert net.embedding_dim == 12 and not net.training
    wav = torch.randn(2, 16000)
    # SpeechBrain's own pipeline with the saved network gives the same embedding.
    hp = load_hyperpyyaml((folder / "hyperparams.yaml").read_text())
    trained.eval()
    lengths = torch.ones(2)
    ref = trained(hp["mean_var_norm"](hp["compute_features"](wav), lengths), lengths)[:, 0]
    torch.testing.assert_close(net.embed(wav), ref)
    fresh = hp["embedding_model"].eval()
    assert not torch.allclose(fresh(hp["compute_features"](wav), lengths)[:, 0], ref)
    for length in (4000, 16000, 40000):
        assert net.embed(torch.randn(3, length)).shape == (3, 12)


def test_speaker_net_key_builds_it_frozen_and_it_conditions(tmp_path):
    folder, _ = write_folder(tmp_path / "ecapa", dim=10)
    net = build_speaker_net("ecapa", str(folder), sample_rate=8000)
    assert net.embedding_dim == 10
    assert all(not p.requires_grad for p in net.parameters())
    wav = torch.randn(2, 8000, requires_grad=True)
    net.embed(wav).sum().backward()  # differentiable: usable in refinement passes
    assert wav.grad.abs().sum() > 0
    basic = ConvTasNet(N=8, L=4, B=4, H=8, P=3, X=2, R=1)
    model = ConditionedSeparator(basic, net, stack_channels=8, num_layers=4,
                                 layers_per_group=2, film_hidden=16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4000))
    assert out.estimates.shape == (1, 4000, 2)


def test_bad_folders_give_one_clear_error(tmp_path):
    with pytest.raises(SpkSepError, match="speaker_net_ckpt: required"):
        build_speaker_net("ecapa", None)
    with pytest.raises(SpkSepError, match="not a folder"):
        load_ecapa(tmp_path / "nowhere")
    folder, _ = write_folder(tmp_path / "a")
    (folder / "embedding_model.ckpt").unlink()
    with pytest.raises(SpkSepError, match="embedding_model.ckpt: missing"):
        load_ecapa(folder)
    folder, _ = write_folder(tmp_path / "b")
    (folder / "embedding_model.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpkSepError, match="cannot read checkpoint"):
        load_ecapa(folder)
    folder, _ = write_folder(tmp_path / "c", dim=12)
    other, _ = write_folder(tmp_path / "d", dim=7)
    (folder / "embedding_model.ckpt").write_bytes((other / "embedding_model.ckpt").read_bytes())
    with pytest.raises(SpkSepError, match="not weights that fit"):
        load_ecapa(folder)


def test_a_yaml_whose_parts_do_not_fit_is_a_clear_error(tmp_path):
    folder, _ = write_folder(tmp_path / "e")
    text = (folder / "hyperparams.yaml").read_text().replace("n_mels: 24", "n_mels: 24\nfbank_mels: 30")
    text = text.replace("    n_mels: !ref <n_mels>\nmean_var_norm", "    n_mels: !ref <fbank_mels>\nmean_var_norm")
    (folder / "hyperparams.yaml").write_text(text)
    with pytest.raises(SpkSepError, match="hyperparams.yaml: its front end and network do not fit"):
        load_ecapa(folder)
