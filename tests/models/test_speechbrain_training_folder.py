"""SpeechBrain's own training run folders (a recipe's output_folder: hyperparams.yaml and
save/CKPT+*/) as models: the checkpoint SpeechBrain's recipe would test, SpeechBrain's own
outputs, `spksep separate`, a basic model, init_from; broken folders are one-line errors.
The recipes' train.py runs on them in tests/test_recipe.py."""

import os
import re
import shutil
import sys

import pytest
import soundfile as sf
import torch
import yaml

from spksep_modules import SpkSepError, cli
from spksep_modules.loading import initialised, load_basic_model, load_separator
from spksep_modules.models import ConvTasNet, SepFormer, SpeechBrainConvTasNet
from spksep_modules.models.speechbrain_folder import (
    is_speechbrain_folder,
    is_speechbrain_training_folder,
    training_checkpoint,
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from speechbrain_training import (  # noqa: E402
    CONVTASNET,
    SEPFORMER,
    speechbrain_separate,
    write_training_folder,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def convtasnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sb_convtasnet") / "1234"
    hp, best = write_training_folder(folder, CONVTASNET, losses=(-5.0, -6.0, -5.5))
    return folder, best


def test_the_best_checkpoint_separates_as_speechbrain_does(convtasnet):
    folder, best = convtasnet
    assert is_speechbrain_training_folder(folder) and not is_speechbrain_folder(folder)
    # epochs 1 to 3 scored -5.0, -6.0, -5.5: the recipe keeps epochs 2 (best) and 3
    # (latest) and tests epoch 2
    kept = {yaml.safe_load((c / "CKPT.yaml").read_text())["si-snr"]: str(c)
            for c in (folder / "save").glob("CKPT+*")}
    assert sorted(kept) == [-6.0, -5.5] and training_checkpoint(folder) == kept[-6.0]
    model, rate = load_separator(folder)
    assert type(model) is SpeechBrainConvTasNet and rate == 16000 and not model.training
    assert model.config["causal"] is True and model.config["X"] == 2
    for length in (8000, 8003):  # whole frames, and a tail that fills none
        mix = torch.randn(2, length)
        with torch.no_grad():
            ours = model(mix)
        torch.testing.assert_close(ours.estimates, speechbrain_separate(best, 2, mix),
                                   atol=1e-5, rtol=1e-4)


def test_spksep_separate_takes_a_training_folder(convtasnet, tmp_path):
    folder, best = convtasnet
    mix = 0.1 * torch.randn(16000)
    sf.write(tmp_path / "talk.wav", mix.numpy(), 16000, subtype="FLOAT")
    assert cli.main(["separate", str(tmp_path / "talk.wav"), "--model", str(folder),
                     "--out", str(tmp_path / "sep"), "--precision=fp32", "--no_progress"]) == 0
    want = speechbrain_separate(best, 2, mix[None])[0]
    for i in range(2):  # each output is SpeechBrain's estimate, scaled to fit the mixture
        got = torch.from_numpy(sf.read(tmp_path / "sep" / f"talk_s{i + 1}.wav")[0]).float()
        cosine = torch.nn.functional.cosine_similarity(got, want[:, i], dim=0)
        assert abs(cosine) > 0.99999  # the fitted gain may be negative (SI-SNR has no sign)


def test_a_basic_model_and_a_start_of_the_same_family_only(convtasnet):
    folder, _ = convtasnet
    basic = load_basic_model(str(folder), {"N": 16, "L": 16, "num_spks": 2}, sample_rate=16000)
    assert type(basic) is SpeechBrainConvTasNet
    with pytest.raises(SpkSepError, match="trained with B=8, this yaml asks for B=128"):
        load_basic_model(str(folder), {"B": 128})
    with pytest.raises(SpkSepError, match="separates at 16000 Hz but sample_rate is 8000"):
        load_basic_model(str(folder), sample_rate=8000)
    # init_from: the same family and sizes (sepformer.yaml starts from SepFormer folders)
    start = initialised(SpeechBrainConvTasNet(N=16, L=16, B=8, H=16, X=2, R=1, causal=True),
                        str(folder), sample_rate=16000)
    assert torch.equal(start.encoder.weight, basic.encoder.weight)
    with pytest.raises(SpkSepError, match="init_from: .*: checkpoint holds a SpeechBrainConvTasNet, "
                                          "not a ConvTasNet: use the yaml it was trained with"):
        initialised(ConvTasNet(N=16, L=16, B=8, H=16, X=2, R=1), str(folder))


def test_a_sepformer_training_folder(tmp_path):
    _, best = write_training_folder(tmp_path / "sf", SEPFORMER, losses=(-3.0, -2.0))
    model, _ = load_separator(tmp_path / "sf")
    assert type(model) is SepFormer and model.config["K"] == 10
    mix = torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(model(mix).estimates, speechbrain_separate(best, 2, mix),
                                   atol=1e-5, rtol=1e-4)


def broken(convtasnet, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(convtasnet[0], folder)
    return folder, training_checkpoint(folder)


def test_missing_files_are_named(convtasnet, tmp_path):
    folder, ckpt = broken(convtasnet, tmp_path)
    os.remove(os.path.join(ckpt, "masknet.ckpt"))
    with pytest.raises(SpkSepError, match=re.escape(ckpt) + "/masknet.ckpt: missing; a SpeechBrain training "
                                          "checkpoint holds encoder.ckpt, masknet.ckpt, decoder.ckpt$"):
        load_separator(folder)
    os.remove(folder / "hyperparams.yaml")
    with pytest.raises(SpkSepError, match="hyperparams.yaml: missing; a SpeechBrain training folder "
                                          "holds hyperparams.yaml and save/CKPT"):
        load_separator(folder)
    empty = tmp_path / "empty"  # started, no epoch finished
    (empty / "save").mkdir(parents=True)
    shutil.copy(convtasnet[0] / "hyperparams.yaml", empty)
    with pytest.raises(SpkSepError, match="save: no checkpoint \\(the SpeechBrain run has not "
                                          "finished an epoch\\)"):
        load_separator(empty)


def test_an_unknown_architecture_is_named(convtasnet, tmp_path):
    folder, _ = broken(convtasnet, tmp_path)
    text = (folder / "hyperparams.yaml").read_text()
    (folder / "hyperparams.yaml").write_text(text.replace(
        "speechbrain.lobes.models.conv_tasnet.MaskNet",
        "speechbrain.lobes.models.resepformer.ResourceEfficientSeparator"))
    with pytest.raises(SpkSepError, match="modules.masknet: is a speechbrain.lobes.models.resepformer."
                                          "ResourceEfficientSeparator; this version loads SepFormer"):
        load_separator(folder)


def test_corrupt_checkpoints_are_one_line(convtasnet, tmp_path):
    folder, ckpt = broken(convtasnet, tmp_path)
    with open(os.path.join(ckpt, "masknet.ckpt"), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(SpkSepError, match="masknet.ckpt: cannot read checkpoint"):
        load_separator(folder)
    torch.save({"conv1d.weight": torch.zeros(3, 1, 16)}, os.path.join(ckpt, "encoder.ckpt"))
    with pytest.raises(SpkSepError, match="encoder.ckpt: not the encoder of .*hyperparams.yaml"):
        load_separator(folder)
    for meta in (folder / "save").glob("CKPT+*/CKPT.yaml"):
        meta.write_text("si-snr: [-5.0\n")  # truncated
    with pytest.raises(SpkSepError, match="save: cannot read the checkpoints' CKPT.yaml"):
        load_separator(folder)
    assert cli.main(["separate", "any.wav", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
