"""`spksep separate` on real batches: bad files, silence, progress; packages."""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from spksep_modules import SpkSepError
from spksep_modules.audio import read_wav, write_wav
from spksep_modules.deploy.package import package_run, save_package
from spksep_modules.deploy.separate import PretrainedSeparator, separate_files
from spksep_modules.loading import is_package, load_separator

from deploy_helpers import RATE, tiny_conditioned, tiny_convtasnet, write_run

torch.set_num_threads(1)


def bad_and_good_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for name in ("a", "c", "e"):
        path = folder / f"{name}.wav"
        write_wav(path, torch.randn(1600) * 0.1, RATE)
        good.append(path)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    sf.write(folder / "empty.wav", np.zeros((0, 1), np.float32), RATE)
    nan = np.full((800, 1), np.nan, np.float32)
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    (folder / "sub.wav").mkdir()
    bad = [folder / "missing.wav", folder / "broken.wav", folder / "empty.wav",
           folder / "nan.wav", folder / "sub.wav"]
    # bad files in between good ones: the good ones after them must still be written
    order = [good[0], bad[0], bad[1], good[1], bad[2], bad[3], bad[4], good[2]]
    return order, good, bad


def test_bad_files_get_one_error_line_each_and_the_others_are_separated(tmp_path):
    run = write_run(tmp_path / "run", tiny_convtasnet())
    files, good, bad = bad_and_good_files(tmp_path / "in")
    errors = []
    written = separate_files(files, str(run), str(tmp_path / "out"), precision="fp32",
                             on_error=lambda path, msg: errors.append((str(path), msg)))
    assert sorted(os.path.basename(p) for p in written) == [
        "a_s1.wav", "a_s2.wav", "c_s1.wav", "c_s2.wav", "e_s1.wav", "e_s2.wav"]
    assert [p for p, _ in errors] == [str(p) for p in bad]
    messages = [m for _, m in errors]
    assert all("\n" not in m for m in messages)
    assert "file not found" in messages[0] and "cannot read audio" in messages[1]
    assert "empty" in messages[2] and "NaN" in messages[3] and "folder" in messages[4]


def test_without_on_error_the_first_bad_file_raises(tmp_path):
    run = write_run(tmp_path / "run", tiny_convtasnet())
    with pytest.raises(SpkSepError, match="file not found"):
        separate_files([tmp_path / "nope.wav"], str(run), str(tmp_path / "out"), precision="fp32")


def test_silent_input_gives_silent_outputs_and_a_notice(tmp_path):
    run = write_run(tmp_path / "run", tiny_convtasnet())
    write_wav(tmp_path / "quiet.wav", torch.zeros(1200), 16000)
    notices = []
    written = separate_files([tmp_path / "quiet.wav"], str(run), str(tmp_path / "out"),
                             precision="fp32", notice=notices.append)
    assert len(notices) == 1 and "silent" in notices[0]
    for path in written:
        out = read_wav(path, 16000)
        assert out.shape == (1200,) and torch.count_nonzero(out) == 0


def test_progress_bars_do_not_change_outputs(tmp_path, capsys):
    run = write_run(tmp_path / "run", tiny_convtasnet())
    write_wav(tmp_path / "long.wav", torch.randn(4000) * 0.1, RATE)
    write_wav(tmp_path / "short.wav", torch.randn(800) * 0.1, RATE)
    files = [tmp_path / "long.wav", tmp_path / "short.wav"]
    plain = separate_files(files, str(run), str(tmp_path / "a"), precision="fp32",
                           chunk_seconds=0.2, overlap_seconds=0.05)
    shown = separate_files(files, str(run), str(tmp_path / "b"), precision="fp32",
                           chunk_seconds=0.2, overlap_seconds=0.05, progress=True)
    err = capsys.readouterr().err
    assert "files" in err and "chunks" in err  # tqdm's bars, on stderr
    for x, y in zip(plain, shown):
        assert torch.equal(read_wav(x), read_wav(y))


@pytest.mark.parametrize("family", ["convtasnet", "conditioned"])
def test_package_survives_moving_and_deleting_the_run_and_its_basic_model(tmp_path, family):
    if family == "convtasnet":
        model = tiny_convtasnet()
    else:
        basic_run = write_run(tmp_path / "basic", tiny_convtasnet())
        basic, _ = load_separator(str(basic_run))
        model = tiny_conditioned()
        model.basic_model.load_state_dict(basic.state_dict())
    run = write_run(tmp_path / "run", model)
    mix = torch.randn(2400) * 0.1
    write_wav(tmp_path / "mix.wav", mix, RATE)
    want = PretrainedSeparator.from_folder(run).separate_file(tmp_path / "mix.wav")

    package_run(run, tmp_path / "pkg")
    text = b"".join(p.read_bytes() for p in (tmp_path / "pkg").iterdir())
    assert str(tmp_path).encode() not in text  # no absolute path, no link to the run
    shutil.move(tmp_path / "pkg", tmp_path / "elsewhere" / "pkg")
    shutil.rmtree(run)
    if family == "conditioned":
        shutil.rmtree(tmp_path / "basic")
    moved = tmp_path / "elsewhere" / "pkg"
    assert is_package(moved)

    got = PretrainedSeparator.from_folder(moved).separate_file(tmp_path / "mix.wav")
    torch.testing.assert_close(got, want)
    assert PretrainedSeparator.from_folder(moved).separate_batch(mix[None]).shape == (1, 2400, 2)
    written = separate_files([tmp_path / "mix.wav"], str(moved), str(tmp_path / "out"),
                             precision="fp32")
    assert len(written) == 2


def test_a_speaker_network_without_a_description_cannot_be_packaged(tmp_path):
    from spksep_modules.models import ConditionedSeparator

    class Foreign(torch.nn.Module):  # like ECAPA: built by another toolkit's yaml
        embedding_dim = 4
        sample_rate = RATE

        def embed(self, wav):
            return wav[:, :4]

    model = ConditionedSeparator(tiny_convtasnet(), Foreign(), stack_channels=8, num_layers=2,
                                 layers_per_group=2, film_hidden=8)
    with pytest.raises(SpkSepError, match="cannot package a ConditionedSeparator"):
        save_package(model, RATE, tmp_path / "pkg")


def test_cli_separate_goes_on_after_bad_files_and_fails_at_the_end(tmp_path, capsys):
    from spksep_modules.cli import main

    run = write_run(tmp_path / "run", tiny_convtasnet())
    files, good, bad = bad_and_good_files(tmp_path / "in")
    status = main(["separate", *map(str, files), "--model", str(run), "--out",
                   str(tmp_path / "out"), "--precision", "fp32", "--no_progress"])
    captured = capsys.readouterr()
    assert status == 2
    assert len(captured.out.split()) == 2 * len(good)
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad) + 1 and errors[-1] == f"error: {len(bad)} of 8 files failed"


def test_cli_package_export_and_stream(tmp_path, capsys):
    from spksep_modules.cli import main

    run = write_run(tmp_path / "run", tiny_convtasnet(causal=True))
    write_wav(tmp_path / "mix.wav", torch.randn(1000) * 0.1, RATE)
    assert main(["package", str(run), "--out", str(tmp_path / "pkg")]) == 0
    assert main(["export", str(tmp_path / "pkg"), "--format", "torchscript", "--out",
                 str(tmp_path / "m.pt"), "--example_seconds", "0.2"]) == 0
    assert main(["separate", str(tmp_path / "mix.wav"), "--model", str(tmp_path / "pkg"),
                 "--out", str(tmp_path / "out"), "--stream", "--precision", "fp32"]) == 0
    assert (tmp_path / "out" / "mix_s2.wav").is_file()
    assert torch.jit.load(str(tmp_path / "m.pt"))(torch.randn(1, 500)).shape == (1, 500, 2)
