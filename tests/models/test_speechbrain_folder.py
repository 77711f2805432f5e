"""SpeechBrain's trained separators as they are on disk: folders in the layout SpeechBrain
publishes (hyperparams.yaml + encoder/masknet/decoder.ckpt), written here at tiny sizes
by SpeechBrain's own modules, used to separate, as a basic model, and to start a
fine-tuning run; malformed folders are one-line errors."""

import os

import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.loading import initialised, load_basic_model, load_separator
from spksep_modules.models import ConditionedSeparator, SepFormer
from spksep_modules.models.speechbrain_folder import (
    is_speechbrain_folder,
    load_speechbrain_folder,
    save_speechbrain_folder,
    sepformer_arguments,
)

torch.set_num_threads(1)

# The keys and layout of speechbrain/sepformer-libri2mix's hyperparams.yaml (its
# Hugging Face repository), at tiny sizes.
HPARAMS = """
# ################################
# Model: Pretrained SepFormer for source separation
# Dataset : Libri2mix
# ################################

# Experiment params
num_spks: 2
sample_rate: {rate}

# Encoder parameters
N_encoder_out: 16
out_channels: 16
kernel_size: 16
kernel_stride: 8

# Specifying the network
Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
  kernel_size: 16
  out_channels: 16

SBtfintra: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
  num_layers: 1
  d_model: 16
  nhead: 2
  d_ffn: 32
  dropout: 0
  use_positional_encoding: true
  norm_before: true

SBtfinter: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
  num_layers: 2
  d_model: 16
  nhead: 2
  d_ffn: 32
  dropout: 0
  use_positional_encoding: true
  norm_before: true

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
  num_spks: 2
  in_channels: 16
  out_channels: 16
  num_layers: 2
  K: 10
  intra_model: !ref <SBtfintra>
  inter_model: !ref <SBtfinter>
  norm: ln
  linear_layer_after_inter_intra: false
  skip_around_intra: true

Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
  in_channels: 16
  out_channels: 1
  kernel_size: 16
  stride: 8
  bias: false

modules:
  encoder: !ref <Encoder>
  decoder: !ref <Decoder>
  masknet: !ref <MaskNet>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
     encoder: !ref <Encoder>
     masknet: !ref <MaskNet>
     decoder: !ref <Decoder>
"""


def write_folder(folder, rate=16000, text=None, seed=0):
    """A trained SpeechBrain separator folder in miniature: SpeechBrain builds the modules
    from the yaml, their (random, reinitialised) weights stand for trained ones."""
    text = text or HPARAMS.format(rate=rate)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hyperparams.yaml"), "w") as f:
        f.write(text)
    torch.manual_seed(seed)
    hp = load_hyperpyyaml(text)
    for name, module in hp["modules"].items():
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        torch.save(module.state_dict(), os.path.join(folder, f"{name}.ckpt"))
    return hp


def speechbrain_separate(hp, mix):
    """SepformerSeparation.separate_batch, on the modules the yaml built."""
    mods = hp["modules"]
    mix_w = mods["encoder"](mix)
    sep_h = torch.stack([mix_w] * hp["num_spks"]) * mods["masknet"](mix_w)
    est = torch.cat([mods["decoder"](sep_h[i]).unsqueeze(-1) for i in range(hp["num_spks"])], -1)
    T, T_est = mix.shape[1], est.shape[1]
    return torch.nn.functional.pad(est, (0, 0, 0, T - T_est)) if T > T_est else est[:, :T]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sepformer-libri2mix")
    return path, write_folder(path)


def test_a_folder_gives_speechbrains_own_outputs(folder):
    path, hp = folder
    model, rate = load_speechbrain_folder(path)
    assert rate == 16000 and type(model).__name__ == "SepFormer" and not model.training
    assert model.config["intra_layers"] == 1 and model.config["inter_layers"] == 2
    for module in hp["modules"].values():
        module.eval()
    for length in (808, 1001):
        mix = torch.randn(2, length)
        with torch.no_grad():
            torch.testing.assert_close(model(mix).estimates, speechbrain_separate(hp, mix),
                                       rtol=1e-5, atol=1e-6)


def test_symlinked_folders_load(folder, tmp_path):
    # SepformerSeparation.from_hparams(savedir=...) leaves links into the HF cache.
    path, _ = folder
    for name in os.listdir(path):
        os.symlink(os.path.join(path, name), tmp_path / name)
    assert is_speechbrain_folder(tmp_path)
    assert load_speechbrain_folder(tmp_path)[0].config == load_speechbrain_folder(path)[0].config


def test_what_we_save_is_what_speechbrain_loads(tmp_path):
    from speechbrain.inference.separation import SepformerSeparation

    torch.manual_seed(0)
    ours = SepFormer(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1, nhead=2,
                     d_ffn=32).eval()
    save_speechbrain_folder(ours, tmp_path / "out", sample_rate=8000)
    theirs = SepformerSeparation.from_hparams(source=str(tmp_path / "out"),
                                              savedir=str(tmp_path / "sb"),
                                              run_opts={"device": "cpu"})
    mix = torch.randn(1, 813)
    with torch.no_grad():
        torch.testing.assert_close(theirs.separate_batch(mix), ours(mix).estimates)
    assert sepformer_arguments(tmp_path / "out") == (ours.config, 8000)


def test_run_folders_and_speechbrain_folders_are_told_apart(folder, tmp_path):
    path, _ = folder
    run = tmp_path / "run"
    (run / "save").mkdir(parents=True)
    (run / "hyperparams.yaml").write_text("sample_rate: 16000\nmodel_name: sepformer\n")
    assert is_speechbrain_folder(path) and not is_speechbrain_folder(run)
    assert not is_speechbrain_folder(tmp_path / "none")


def test_load_separator_and_basic_model_accept_a_folder_and_check_its_rate(tmp_path):
    write_folder(tmp_path / "sb8k", rate=8000)
    separator, rate = load_separator(tmp_path / "sb8k")
    assert type(separator).__name__ == "SepFormer" and rate == 8000
    assert type(load_basic_model(tmp_path / "sb8k", {"N": 16}, sample_rate=8000)).__name__ == "SepFormer"
    with pytest.raises(SpkSepError, match="basic_model: .*sb8k separates at 8000 Hz but "
                                          "sample_rate is 16000: train at its rate"):
        load_basic_model(tmp_path / "sb8k", sample_rate=16000)
    with pytest.raises(SpkSepError, match="trained with N=16, this yaml asks for N=512"):
        load_basic_model(tmp_path / "sb8k", {"N": 512})


def test_conditioned_model_on_a_speechbrain_folder(folder):
    from spksep_modules.speakers.ge2e import load_ge2e

    path, _ = folder
    basic = load_basic_model(path, {"N": None, "num_spks": 2}, sample_rate=16000)
    torch.manual_seed(1)
    model = ConditionedSeparator(basic, load_ge2e(), stack_channels=4, num_layers=2,
                                 layers_per_group=2, film_hidden=4)
    mix = torch.randn(2, 4000)
    out = model(mix)
    assert out.shape == (2, 4000, 2)
    with torch.no_grad():
        torch.testing.assert_close(out.extras["intermediate"], basic(mix).estimates)
    out.square().mean().backward()
    assert model.stack.out.weight.grad is not None


def test_fine_tuning_starts_from_a_folder_or_a_run(folder, tmp_path):
    path, _ = folder
    trained, _ = load_speechbrain_folder(path)
    args = dict(trained.config)
    torch.manual_seed(5)
    model = initialised(SepFormer(**args), path, sample_rate=16000)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), trained.parameters()))
    assert initialised(model, None) is model  # init_from: null

    run = tmp_path / "run"  # a train.py run folder of the same model
    (run).mkdir()
    (run / "hyperparams.yaml").write_text("sample_rate: 16000\n")
    AtomicCheckpointer(run / "save", {"separator": trained}).save_checkpoint(meta={"loss": -1.0})
    torch.manual_seed(6)
    again = initialised(SepFormer(**args), run, sample_rate=16000)
    assert torch.equal(again.masknet.conv1d.weight, trained.masknet.conv1d.weight)

    with pytest.raises(SpkSepError, match="init_from: .*: checkpoint was trained with "
                                          "inter_layers=2, the model here has inter_layers=1"):
        initialised(SepFormer(**{**args, "inter_layers": 1}), path)
    with pytest.raises(SpkSepError, match="init_from: .* separates at 16000 Hz but "
                                          "sample_rate is 8000"):
        initialised(SepFormer(**args), path, sample_rate=8000)
    with pytest.raises(SpkSepError, match="init_from: .* is not a folder"):
        initialised(SepFormer(**args), tmp_path / "nowhere")


def test_separate_command_takes_a_folder(tmp_path):
    from spksep_modules import cli

    write_folder(tmp_path / "sb8k", rate=8000)
    wav = tmp_path / "talk.wav"
    sf.write(wav, 0.1 * torch.randn(16000 * 2).numpy(), 16000)  # 16 kHz: resampled to 8
    status = cli.main(["separate", str(wav), "--model", str(tmp_path / "sb8k"),
                       "--out", str(tmp_path / "sep"), "--precision=fp32"])
    assert status == 0
    for i in (1, 2):
        info = sf.info(tmp_path / "sep" / f"talk_s{i}.wav")
        assert (info.samplerate, info.frames) == (16000, 32000)


REMOVE_KEY = [
    ("sample_rate: 16000\n", "", "hyperparams.yaml: no sample_rate key"),
    ("  masknet: !ref <MaskNet>\n", "", "hyperparams.yaml: no modules.masknet key"),
    ("  num_layers: 2\n  K: 10\n", "  K: 10\n  bogus: 1\n",
     "modules.masknet: unknown argument bogus of Dual_Path_Model"),
    ("  in_channels: 16\n  out_channels: 1\n", "  out_channels: 1\n",
     "modules.decoder: no in_channels"),
    ("  bias: false\n", "  bias: true\n", "modules.decoder.bias: True, not False"),
    ("speechbrain.lobes.models.dual_path.Dual_Path_Model",
     "speechbrain.lobes.models.resepformer.ResourceEfficientSeparator",
     "modules.masknet: is a speechbrain.lobes.models.resepformer.ResourceEfficientSeparator; "
     "this version loads SepFormer (speechbrain.lobes.models.dual_path.Dual_Path_Model) and "
     "Conv-TasNet (speechbrain.lobes.models.conv_tasnet.MaskNet) folders"),
    ("speechbrain.lobes.models.dual_path.Dual_Path_Model",
     "speechbrain.lobes.models.conv_tasnet.MaskNet",
     "modules.masknet: unknown argument num_spks of MaskNet"),
    ("  nhead: 2\n  d_ffn: 32\n  dropout: 0\n  use_positional_encoding: true\n  norm_before: true\n"
     "\nMaskNet", "  nhead: 4\n  d_ffn: 32\n  dropout: 0\n  use_positional_encoding: true\n"
     "  norm_before: true\n\nMaskNet", "inter_model.nhead: 4, differs from intra_model's 2"),
    ("  inter_model: !ref <SBtfinter>", "  inter_model: !ref <SBtfother>",
     "hyperparams.yaml: not a valid SpeechBrain yaml"),
]


@pytest.mark.parametrize("old, new, message", REMOVE_KEY)
def test_a_malformed_yaml_is_one_line_naming_the_key(old, new, message, folder, tmp_path):
    path, _ = folder
    for name in ("encoder.ckpt", "masknet.ckpt", "decoder.ckpt"):
        os.symlink(path / name, tmp_path / name)
    text = HPARAMS.format(rate=16000)
    assert old in text
    (tmp_path / "hyperparams.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(SpkSepError) as err:
        load_separator(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("missing", ["masknet.ckpt", "hyperparams.yaml", "decoder.ckpt"])
def test_a_missing_file_is_named(missing, folder, tmp_path):
    path, _ = folder
    for name in os.listdir(path):
        if name != missing:
            os.symlink(path / name, tmp_path / name)
    with pytest.raises(SpkSepError, match=f"{tmp_path / missing}: missing; a SpeechBrain "
                                          "separator folder holds hyperparams.yaml, encoder.ckpt"):
        load_separator(tmp_path)


def test_weights_that_do_not_fit_are_named(folder, tmp_path):
    path, _ = folder
    write_folder(tmp_path, text=HPARAMS.format(rate=16000).replace("K: 10", "K: 12"))
    bigger = tmp_path / "bigger"
    write_folder(bigger, text=HPARAMS.format(rate=16000).replace("d_ffn: 32", "d_ffn: 64"))
    os.replace(bigger / "masknet.ckpt", tmp_path / "masknet.ckpt")
    with pytest.raises(SpkSepError, match="masknet.ckpt: not the masknet of .*hyperparams.yaml: "
                                          "shape mismatch for dual_mdl"):
        load_separator(tmp_path)
    (tmp_path / "masknet.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpkSepError, match="masknet.ckpt: cannot read checkpoint"):
        load_separator(tmp_path)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "encoder.ckpt")
    with pytest.raises(SpkSepError, match="encoder.ckpt: not the encoder of .*: missing keys "
                                          "conv1d.weight; unexpected keys weight"):
        load_separator(tmp_path)
