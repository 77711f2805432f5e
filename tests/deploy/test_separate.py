"""Separating long recordings in chunks, scaling outputs, tables, one-line errors."""

import json

import pytest
import torch

from spksep_modules import SpkSepError, one_line
from spksep_modules.deploy.separate import _match_mixture_scale, separate_waveform
from spksep_modules.reports.tables import tables


class SwapEveryCall(torch.nn.Module):
    """A 'separator' whose output order flips on every call: chunks must be re-ordered."""

    def __init__(self, sources):
        super().__init__()
        self.sources = sources  # [T, 2], the true sources of the whole signal
        self.calls = 0
        self.offset = 0

    def forward(self, mix):
        # Find where this chunk sits in the full mixture, return the matching sources.
        full = self.sources.sum(1)
        n = mix.shape[1]
        for start in range(0, full.numel() - n + 1):
            if torch.equal(full[start : start + n], mix[0]):
                break
        piece = self.sources[start : start + n]
        self.calls += 1
        return (piece.flip(1) if self.calls % 2 == 0 else piece)[None]


def test_chunked_separation_keeps_speaker_order_across_chunks():
    torch.manual_seed(0)
    rate, T = 100, 1000
    sources = torch.stack([torch.sin(torch.arange(T) * 0.3), torch.randn(T) * 0.5], dim=1)
    model = SwapEveryCall(sources)
    out = separate_waveform(model, sources.sum(1), chunk_seconds=2.0, overlap_seconds=0.5, sample_rate=rate)
    assert model.calls > 3  # it really was chunked
    assert out.shape == (T, 2)
    torch.testing.assert_close(out, sources, atol=1e-5, rtol=0)


def test_short_signal_is_one_pass():
    model = SwapEveryCall(torch.randn(50, 2))
    out = separate_waveform(model, model.sources.sum(1), chunk_seconds=1.0, sample_rate=100)
    assert model.calls == 1 and out.shape == (50, 2)


def test_outputs_are_scaled_to_add_up_to_the_mixture():
    torch.manual_seed(1)
    sources = torch.randn(800, 2)
    est = sources * torch.tensor([0.1, 7.0])  # arbitrary gains, as SI-SNR training leaves them
    scaled = _match_mixture_scale(est, sources.sum(1))
    torch.testing.assert_close(scaled, sources, atol=1e-4, rtol=0)


def test_tables_show_table_two_only_with_ablations(tmp_path):
    runs = []
    for model, value in [("convtasnet", 10.0), ("ablation_neg", 11.0)]:
        run = tmp_path / model
        run.mkdir()
        summary = dict(si_snr=value, si_snr_i=value + 1, sdr=value, sdr_i=value + 2, stoi=0.9,
                       model=model, num_test=3)
        (run / "test_summary.json").write_text(json.dumps(summary))
        runs.append(run)
    text = tables(runs[:1])
    assert "Table II" not in text and "| Conv-TasNet | 14.118 | 10.000 | 11.000 | 12.000 |" in text
    text = tables(runs)
    assert "| Basic loss + D_neg | 14.318 | 11.000 |" in text
    assert "| Basic loss + D_pos | 14.205 | - |" in text


def test_table_of_a_run_without_summary_is_a_clear_error(tmp_path):
    with pytest.raises(SpkSepError, match="test_summary.json: missing"):
        tables([tmp_path])


def test_one_line_takes_the_real_message_out_of_a_worker_traceback():
    wrapped = SpkSepError(
        "Caught SpkSepError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  File \"x.py\", line 1\nspksep_modules.SpkSepError: /d/a.wav: expected mono, got 2 channels\n"
    )
    assert one_line(wrapped) == "/d/a.wav: expected mono, got 2 channels"
    assert one_line(SpkSepError("/d/b.wav: empty")) == "/d/b.wav: empty"


def test_bf16_separation_is_close_to_fp32_and_precision_is_checked():
    from spksep_modules.models import ConvTasNet

    torch.manual_seed(0)
    model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=3, R=2).eval()
    mix = torch.randn(3000)
    ref = separate_waveform(model, mix, sample_rate=1000, chunk_seconds=10)
    low = separate_waveform(model, mix, sample_rate=1000, chunk_seconds=10, precision="bf16")
    assert low.dtype == torch.float32 and low.shape == ref.shape
    snr = 10 * torch.log10(ref.square().sum() / (ref - low).square().sum())
    assert 25 < snr < 200  # close, and really computed in bf16 (not bit-identical)
    with pytest.raises(SpkSepError, match="precision"):
        separate_waveform(model, mix, sample_rate=1000, precision="fp16")


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    import spksep_modules.deploy.separate as inference

    monkeypatch.setattr(inference, "native_bf16_cpu", lambda: True)
    assert inference.resolve_precision("auto", "cpu") == "bf16"
    assert inference.resolve_precision("auto", "cuda:0") == "fp32"
    assert inference.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(inference, "native_bf16_cpu", lambda: False)
    assert inference.resolve_precision("auto", "cpu") == "fp32"
    assert inference.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(SpkSepError, match="precision: expected auto"):
        inference.resolve_precision("half", "cpu")


def test_keep_freed_memory_is_a_setting_that_can_be_turned_off():
    import subprocess
    import sys

    code = "from spksep_modules.allocator import keep_freed_memory as k; print(k())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ, "SPKSEP_MALLOC": "system"})
    assert on.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")
    assert off.stdout.strip() == "False"
