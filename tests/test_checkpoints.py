"""Checkpoints survive a kill at any moment: while saving and while deleting."""

import torch

from spksep_modules.checkpoints import AtomicCheckpointer


def make(tmp_path):
    model = torch.nn.Linear(2, 2)
    return model, AtomicCheckpointer(tmp_path / "save", recoverables={"model": model})


def test_meta_is_written_after_the_parameters(tmp_path, monkeypatch):
    model, ckpt = make(tmp_path)
    seen = []
    original = torch.save

    def spy(obj, path, *a, **k):  # when a parameter file is written, is CKPT.yaml there yet?
        seen.append((path.parent / "CKPT.yaml").exists())
        return original(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", spy)
    saved = ckpt.save_checkpoint(meta={"loss": 1.0})
    assert seen == [False]
    assert (saved.path / "CKPT.yaml").exists() and ckpt.list_checkpoints()[0].meta["loss"] == 1.0


def test_half_written_and_half_deleted_checkpoints_are_ignored(tmp_path):
    model, ckpt = make(tmp_path)
    good = ckpt.save_checkpoint(meta={"loss": 2.0})
    bad = ckpt.save_checkpoint(meta={"loss": 1.0})
    (bad.path / "model.ckpt").unlink()  # killed in the middle of rmtree
    half = tmp_path / "save" / "CKPT+2099-01-01+00-00-00+00"
    half.mkdir()  # killed before CKPT.yaml was written
    (half / "model.ckpt").write_bytes(b"trunc")
    assert [c.path for c in ckpt.list_checkpoints()] == [good.path]
    with torch.no_grad():
        model.weight.zero_()
    assert ckpt.recover_if_possible(min_key="loss").path == good.path
    assert model.weight.abs().sum() > 0  # really loaded
    AtomicCheckpointer(tmp_path / "save", recoverables={"model": model})
    assert not half.exists()  # a new run cleans up what a killed one left
