"""Separate users' recordings with a trained separator (``spksep separate``, and
:class:`PretrainedSeparator` for Python callers).

The model comes from any folder :func:`spksep_modules.loading.load_separator` takes: a
run folder (what ``train.py`` leaves in ``output_folder``), a package, a SpeechBrain
separator or training folder.

Recordings may have any sample rate, any number of channels and any length: channels are
averaged to mono, the signal is resampled to the model's rate, long signals are separated in
overlapping chunks whose speaker order is matched before they are cross-faded, and each
output is resampled back to the recording's own rate.
"""

import itertools
import os
import sys

from tqdm import tqdm
import torch
import torchaudio.functional as AF

from spksep_modules import SpkSepError, one_line
from spksep_modules.nnet.precision import native_bf16_cpu
from spksep_modules.audio import read_any, write_wav
from spksep_modules.loading import load_separator
from spksep_modules.models import fuse_for_inference


PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``"auto"`` -> ``"bf16"`` on a CPU with native bf16, else ``"fp32"``; others as given.

    bf16 outputs agree with fp32 to ~40 dB SNR (far below any separation error) at ~1.5x
    the speed on such CPUs; on GPUs fp32 is fast enough to be the automatic choice.

    Example
    -------
    >>> resolve_precision("bf16"), resolve_precision("auto", "cuda")
    ('bf16', 'fp32')
    >>> resolve_precision("auto") == ("bf16" if native_bf16_cpu() else "fp32")
    True
    >>> resolve_precision("fp16")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: precision: expected auto or one of fp32, bf16, got 'fp16'
    """
    if precision == "auto":
        return "bf16" if str(device).startswith("cpu") and native_bf16_cpu() else "fp32"
    if precision not in PRECISIONS:
        raise SpkSepError(
            f"precision: expected auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _estimates(separator, mix: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``mix [1, T]`` -> ``[T, C]`` (fp32) with any separator.

    ``precision="bf16"`` runs the separator under bf16 autocast: matrix products and
    convolutions in bf16, reductions and the models' residual sums in fp32.
    """
    with torch.autocast(mix.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = separator(mix)
    return out[0].float()


def _best_order(prev: torch.Tensor, new: torch.Tensor) -> list:
    """Speaker order of ``new [T, C]`` that best matches ``prev [T, C]`` (on the overlap)."""
    num_spks = prev.shape[1]
    prev = prev - prev.mean(0)
    new = new - new.mean(0)
    corr = (prev.T @ new) / (prev.norm(dim=0)[:, None] * new.norm(dim=0)[None] + 1e-8)
    perms = list(itertools.permutations(range(num_spks)))
    scores = [sum(corr[i, p[i]] for i in range(num_spks)) for p in perms]
    return list(perms[int(torch.tensor(scores).argmax())])


@torch.no_grad()
def separate_waveform(
    separator, mix: torch.Tensor, chunk_seconds: float = 30.0, overlap_seconds: float = 2.0,
    sample_rate: int = 16000, precision: str = "fp32", progress: bool = False,
) -> torch.Tensor:
    """Separate a mono signal ``mix [T]`` at the model's rate -> ``[T, C]``.

    Signals longer than ``chunk_seconds`` are cut into chunks overlapping by
    ``overlap_seconds``; each chunk's outputs are put in the speaker order of the previous
    chunk (best correlation on the overlap) and cross-faded linearly, which bounds memory
    for hour-long recordings. ``precision``: ``"fp32"``, ``"bf16"`` (see ``_estimates``) or
    ``"auto"`` (see ``resolve_precision``). ``progress``: a progress bar over the chunks
    (on stderr, only when there are several).

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model, mix = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1).eval(), torch.randn(2000)
    >>> est = separate_waveform(model, mix, sample_rate=8000)  # one chunk: the model's output
    >>> est.shape, torch.allclose(est, model(mix)[0], atol=1e-6)
    (torch.Size([2000, 2]), True)
    >>> separate_waveform(model, mix, chunk_seconds=0.1, overlap_seconds=0.02,
    ...                   sample_rate=8000).shape  # 3 chunks of 800 samples, 160 overlapping
    torch.Size([2000, 2])
    """
    precision = resolve_precision(precision, str(mix.device))
    chunk = int(chunk_seconds * sample_rate)
    overlap = int(overlap_seconds * sample_rate)
    if mix.numel() <= chunk:
        return _estimates(separator, mix[None], precision)
    hop = chunk - overlap
    starts = list(range(0, mix.numel() - overlap, hop))
    out, filled = None, 0  # out[:filled] is written
    for start in tqdm(starts, desc="chunks", unit="chunk", leave=False,
                      disable=not progress or len(starts) < 2):
        piece = _estimates(separator, mix[None, start : start + chunk], precision)
        if out is None:  # one buffer for the whole signal, not a copy per chunk
            out = piece.new_empty(mix.numel(), piece.shape[1])
        ov = min(overlap, piece.shape[0], filled - start) if filled else 0
        if ov > 0:
            piece = piece[:, _best_order(out[start : start + ov], piece[:ov])]
            fade = torch.linspace(0, 1, ov, device=out.device)[:, None]
            out[start : start + ov].mul_(1 - fade).add_(piece[:ov] * fade)
        end = start + piece.shape[0]
        out[start + ov : end] = piece[ov:]
        filled = end
    return out


def _match_mixture_scale(est: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Rescale ``est [T, C]`` so that their sum best fits ``mix [T]`` (least squares).

    SI-SNR training leaves each output's gain arbitrary; these gains give the outputs the
    loudness they have in the recording.
    """
    gains = torch.linalg.lstsq(est.double(), mix.double()[:, None]).solution[:, 0]
    gains = torch.where(gains.abs() > 1e-3, gains, torch.ones_like(gains))
    return (est.double() * gains).float()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def is_silent(wav: torch.Tensor) -> bool:
    """Whether ``wav`` is all zeros (digital silence): nothing to separate.

    Example
    -------
    >>> is_silent(torch.zeros(100)), is_silent(torch.tensor([0.0, 1e-9]))
    (True, False)
    """
    return not bool(wav.abs().max() > 0)


def separate_recording(separator, path, model_rate: int, out_dir: str, device: str = "cpu",
                       precision: str = "fp32", progress: bool = False, notice=_stderr,
                       separate=None, **chunking):
    """Separate one recording ``path``; write ``out_dir/<name>_s<i>.wav``; return their paths.

    Channels are averaged, the signal is resampled to ``model_rate`` and back, outputs are
    scaled to add up to the mixture. An all-zero recording gives all-zero outputs (no model
    call) and one ``notice`` line. ``separate(mix [T]) -> [T, C]`` replaces the chunked
    :func:`separate_waveform` (e.g. a streaming separator). Every problem of the file is
    a one-line :class:`SpkSepError`.

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1).eval()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_wav(os.path.join(tmp, "quiet.wav"), torch.zeros(800), 8000)
    ...     paths = separate_recording(model, os.path.join(tmp, "quiet.wav"), 8000, tmp,
    ...                                notice=print)  # doctest: +ELLIPSIS
    ...     [os.path.basename(p) for p in paths]
    notice: ...quiet.wav: silent input (all zeros): the outputs are silent too
    ['quiet_s1.wav', 'quiet_s2.wav']
    """
    path = os.fspath(path)
    wav, rate = read_any(path)  # [T, channels]
    mono = wav.mean(dim=1)
    num_spks = int(getattr(separator, "num_spks", 2))
    if is_silent(mono):
        notice(f"notice: {path}: silent input (all zeros): the outputs are silent too")
        est = torch.zeros(mono.numel(), num_spks)
    else:
        mix = AF.resample(mono, rate, model_rate) if rate != model_rate else mono
        if separate is None:
            est = separate_waveform(separator, mix.to(device), sample_rate=model_rate,
                                    precision=precision, progress=progress, **chunking)
        else:
            est = separate(mix.to(device))
        est = est.cpu()
        if not torch.isfinite(est).all():
            raise SpkSepError(f"{path}: the model gave NaN or Inf outputs")
        est = _match_mixture_scale(est, mix)
        if rate != model_rate:
            est = AF.resample(est.T, model_rate, rate).T
        est = est[: mono.numel()]
    stem = os.path.splitext(os.path.basename(path))[0]
    written = []
    for i in range(est.shape[1]):
        target = os.path.join(out_dir, f"{stem}_s{i + 1}.wav")
        write_wav(target, est[:, i], rate)
        written.append(target)
    return written


def separate_files(files, run_dir: str, out_dir: str, device: str = "cpu",
                   precision: str = "auto", on_error=None, progress: bool = False,
                   notice=_stderr, stream: bool = False, stream_chunk_ms: float = 10.0,
                   refresh_seconds: float = 1.0, window_seconds: float = 3.0, **chunking):
    """Separate each recording in ``files``; write ``out_dir/<name>_s<i>.wav`` (one per speaker).

    ``run_dir``: a run folder, a package (``spksep_modules.deploy.package``) or a
    SpeechBrain separator folder. ``precision``: ``"auto"`` (bf16 on CPUs with native
    bf16, else fp32), ``"fp32"`` or ``"bf16"``; ``chunking``: ``chunk_seconds`` and ``overlap_seconds`` of
    :func:`separate_waveform`. ``stream``: run the causal model chunk by chunk instead,
    in chunks of ``stream_chunk_ms`` at the model's rate: a Conv-TasNet with
    ``spksep_modules.deploy.streaming``, a conditioned model with
    ``spksep_modules.deploy.streaming_conditioned`` (speaker embeddings refreshed every
    ``refresh_seconds`` from the last ``window_seconds`` of its estimates). Returns the
    list of written paths.

    A bad recording (missing, unreadable, empty, NaN samples, a folder...) raises its
    one-line :class:`SpkSepError` when ``on_error`` is None; otherwise
    ``on_error(path, message)`` is called and the next recordings are still separated.
    ``progress``: progress bars over the files and over the chunks of long ones;
    ``notice``: where notices (silent inputs) go (default: stderr).

    Example
    -------
    >>> separate_files(["talk.wav"], "no/such/run", "separated", precision="fp32")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: no/such/run: not a training run folder (no hyperparams.yaml); train one with recipes/LibriMix/separation/train.py
    """
    precision = resolve_precision(precision, device)
    separator, model_rate = load_separator(run_dir, device)
    separate = None
    if stream:
        from spksep_modules.deploy.streaming_conditioned import chunk_samples, make_streamer

        chunk = chunk_samples(model_rate, stream_chunk_ms)
        streamer = make_streamer(separator, model_rate, refresh_seconds, window_seconds)

        def separate(mix):
            return streamer.separate_signal(mix, chunk=chunk)
    else:
        separator = fuse_for_inference(separator)
    written = []
    files = list(files)
    for path in tqdm(files, desc="files", unit="file", disable=not progress or len(files) < 2):
        try:
            written += separate_recording(separator, path, model_rate, out_dir, device,
                                          precision, progress, notice, separate, **chunking)
        except Exception as err:  # one bad file must not stop the others
            if on_error is None:
                raise
            message = one_line(err) if isinstance(err, SpkSepError) else (
                f"{os.fspath(path)}: {type(err).__name__}: {one_line(err)}")
            on_error(path, message)
    return written


class PretrainedSeparator:
    """Load once, separate many: the inference interface, in SpeechBrain's style.

    ``from_folder(path)`` takes a run folder, a package (``spksep_modules.deploy.package``)
    or a SpeechBrain separator folder; ``separate_batch(mix [B, T])`` -> ``[B, T, C]`` at the
    model's rate (``sample_rate``), ``separate_file(path)`` -> ``[T, C]`` at the model's
    rate, for a recording of any rate and channel count (down-mixed and resampled, long
    ones in chunks, outputs scaled to add up to the mixture; silence gives silence).

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.models import ConvTasNet
    >>> from spksep_modules.deploy.package import save_package
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = save_package(ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1), 8000, tmp)
    ...     model = PretrainedSeparator.from_folder(tmp)
    ...     write_wav(os.path.join(tmp, "mix.wav"), torch.randn(16000), 16000)
    ...     est = model.separate_file(os.path.join(tmp, "mix.wav"))  # 1 s, at 8 kHz
    >>> model.sample_rate, est.shape, model.separate_batch(torch.randn(3, 800)).shape
    (8000, torch.Size([8000, 2]), torch.Size([3, 800, 2]))
    """

    def __init__(self, separator, sample_rate: int, device: str = "cpu",
                 precision: str = "fp32"):
        self.separator = separator.to(device).eval()
        self.fused = fuse_for_inference(self.separator)
        self.sample_rate = int(sample_rate)
        self.device = device
        self.precision = resolve_precision(precision, device)

    @classmethod
    def from_folder(cls, path, device: str = "cpu", precision: str = "fp32"):
        """Load a run folder, a package or a SpeechBrain separator folder."""
        separator, rate = load_separator(os.fspath(path), device)
        return cls(separator, rate, device, precision)

    @property
    def num_spks(self) -> int:
        """Number of output sources."""
        return int(self.separator.num_spks)

    @torch.no_grad()
    def separate_batch(self, mix: torch.Tensor) -> torch.Tensor:
        """``mix [B, T]`` (or ``[T]``) at ``sample_rate`` -> estimates ``[B, T, C]``."""
        mix = mix.to(self.device)
        with torch.autocast(mix.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            out = self.fused(mix)
        return out.as_subclass(torch.Tensor).float()

    @torch.no_grad()
    def separate_file(self, path, **chunking) -> torch.Tensor:
        """One recording -> its estimates ``[T', C]`` at ``sample_rate``."""
        wav, rate = read_any(path)
        mono = wav.mean(dim=1)
        mix = AF.resample(mono, rate, self.sample_rate) if rate != self.sample_rate else mono
        if is_silent(mix):
            return torch.zeros(mix.numel(), self.num_spks)
        est = separate_waveform(self.fused, mix.to(self.device), sample_rate=self.sample_rate,
                                precision=self.precision, **chunking).cpu()
        return _match_mixture_scale(est, mix)
