"""GE2E speaker encoder (Wan et al., 2018) with the weights that ship with ``resemblyzer``.

The ``resemblyzer`` package carries a pretrained GE2E network (3-layer LSTM on 40-band
mel frames at 16 kHz, a linear layer + ReLU, L2-normalised 256-d embeddings) but computes
its features with librosa and trims silence with webrtcvad, neither of which passes
gradients. Here the same network runs on a torch front end that reproduces resemblyzer's
``wav_to_mel_spectrogram`` exactly, so both of its outputs are differentiable with respect
to the waveform:

* ``GE2E.frames(wav)``: per-frame outputs of the last LSTM layer, a representation for a
  perceptual loss (``forward`` returns these, so the network plugs into ``Frozen``);
* ``GE2E.embed(wav)``: the utterance embedding, computed like resemblyzer's
  ``VoiceEncoder.embed_utterance`` (overlapping 1.6 s partials, averaged), for speaker
  conditioning.

Both trace and export as they are: ``embed`` counts and cuts its partials with tensor
operations on the input's length (a trace made on 0.5 s works at 3 s), and while a graph
is traced or exported the front end's STFT is a convolution (ONNX has no complex STFT).

Input level: resemblyzer's ``preprocess_wav`` raises quiet input to -30 dBFS before the
network, which was trained at that level: its front end is a linear power mel with no
logarithm, so the LSTM's outputs move with the input's level. Here every waveform is scaled
to ``level_dbfs`` (-30, both ways; differentiable) in ``frames`` and ``embed``, so neither
depends on the input's level. That matters for separators trained on SI-SNR, which leaves
their output level free: on real speech a Conv-TasNet's estimates came out 37 dB above
their sources, and distances between GE2E features of the raw estimates and the sources
measured that level, not the speech (bench/NOTES.md). ``level_dbfs=None`` keeps the raw
level. Not reproduced: resemblyzer's VAD trimming of long silences; results equal
``embed_utterance`` called on the waveform scaled to -30 dBFS.

The weights are read from the package's ``pretrained.pt`` without importing resemblyzer
itself (which would import librosa and webrtcvad): see ``load_ge2e``.
"""

import importlib.util
from pathlib import Path
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import check_state_dict
from spksep_modules.configurable import Configurable
from spksep_modules.nnet.stft import conv_stft, dft_kernels

# resemblyzer's hparams.py, which fix what the pretrained weights expect.
SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window; librosa's win_length defaults to n_fft
HOP = 160  # 10 ms step
N_MELS = 40
HIDDEN = 256
EMBEDDING = 256
LAYERS = 3
PARTIAL_FRAMES = 160  # 1.6 s of frames per partial utterance
LEVEL_DBFS = -30.0  # audio_norm_target_dBFS: the input level the network was trained at
# Mean power (-100 dBFS) below which a waveform counts as silent and is not raised further.
SILENCE = 1e-10


class GE2EFrontEnd(nn.Module):
    """Power mel spectrogram, equal to resemblyzer's ``wav_to_mel_spectrogram``.

    resemblyzer calls ``librosa.feature.melspectrogram`` with its defaults: periodic Hann
    window of ``n_fft`` samples, ``center=True`` with zero padding (librosa's default
    ``pad_mode`` is "constant" since 0.10), squared magnitude (``power=2``), Slaney-style
    mel filters normalised to constant area, 0 Hz to Nyquist. No logarithm: the encoder
    was trained on the linear power mel.

    The squared magnitude is taken as ``re^2 + im^2`` so that silent bins (where
    ``|X| = 0``) still have a finite gradient. While a graph is traced or exported the
    STFT is a strided convolution with DFT kernels (:mod:`spksep_modules.nnet.stft`),
    which the ONNX exporter takes; otherwise ``torch.stft``, as an FFT is cheaper.

    Arguments
    ---------
    sample_rate, n_fft, hop, n_mels : int
        Defaults are resemblyzer's; change them only for another GE2E checkpoint.

    Example
    -------
    >>> mel = GE2EFrontEnd()
    >>> mel(torch.randn(2, 16000)).shape, mel.num_frames(16000)  # 1 + 16000 // 160 frames
    (torch.Size([2, 101, 40]), 101)
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                 n_mels: int = N_MELS):
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        fbank = AF.melscale_fbanks(
            n_freqs=n_fft // 2 + 1, f_min=0.0, f_max=sample_rate / 2, n_mels=n_mels,
            sample_rate=sample_rate, norm="slaney", mel_scale="slaney",
        )
        # Not in the state dict: they are fixed by the hyperparameters, and leaving them out
        # keeps the key names identical to resemblyzer's checkpoint.
        window = torch.hann_window(n_fft, periodic=True)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("fbank", fbank, persistent=False)  # [freqs, mels]
        self.register_buffer("dft", dft_kernels(window, n_fft), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames that ``forward`` returns for ``num_samples`` samples (centred STFT)."""
        return 1 + num_samples // self.hop

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [batch, time]`` -> power mel ``[batch, frames, n_mels]``."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            re, im = conv_stft(wav, self.dft, self.hop, center=True, pad_mode="constant")
        else:
            spec = torch.stft(
                wav, n_fft=self.n_fft, hop_length=self.hop, window=self.window.to(wav.dtype),
                center=True, pad_mode="constant", return_complex=True,
            )
            re, im = spec.real, spec.imag
        power = re.pow(2) + im.pow(2)  # [batch, freqs, frames]
        return torch.matmul(power.transpose(1, 2), self.fbank.to(power.dtype))


def _partial_step(rate: float) -> int:
    """Frames between the starts of two partials (77 at resemblyzer's 1.3 per second)."""
    step = int(round(SAMPLE_RATE / rate / HOP))
    if not 0 < step <= PARTIAL_FRAMES:
        raise ValueError(f"rate {rate} gives a partial step of {step} frames; "
                         f"it must be in 1..{PARTIAL_FRAMES}")
    return step


def _check_coverage(min_coverage: float) -> None:
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")


def _length(wav: torch.Tensor) -> torch.Tensor:
    """``wav``'s length as a 0-d tensor: under ``torch.jit.trace`` (and so in an ONNX
    export) the traced size, which keeps the arithmetic on it in the graph."""
    length = wav.shape[-1]
    return length if torch.is_tensor(length) else torch.tensor(length)


def _partial_count(num_samples: torch.Tensor, step: int, min_coverage: float) -> torch.Tensor:
    """How many partials cover ``num_samples`` (a 0-d int64 tensor; under ``torch.jit.trace``
    the traced length, so the count stays general). See ``partial_starts``."""
    # resemblyzer counts ceil((n + 1) / hop) frames, which is the centred STFT's 1 + n // hop.
    frames = 1 + torch.div(num_samples, HOP, rounding_mode="floor")
    # Partials start at 0, step, 2 step, ... while below frames - PARTIAL_FRAMES + step + 1.
    upper = (frames - PARTIAL_FRAMES + step + 1).clamp(min=1)
    count = torch.div(upper + step - 1, step, rounding_mode="floor")
    # The last one is dropped when under min_coverage of it is audio, unless it is the only
    # one. float64: the same test as resemblyzer's Python division.
    coverage = (num_samples - (count - 1) * step * HOP).to(torch.float64) / (PARTIAL_FRAMES * HOP)
    return count - ((coverage < min_coverage) & (count > 1)).to(count.dtype)


def partial_starts(num_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> List[int]:
    """First mel frame of each partial utterance, as resemblyzer's ``embed_utterance`` cuts them.

    Partials are ``PARTIAL_FRAMES`` frames long and start every ``1 / rate`` seconds. They
    cover the whole utterance: the last one may run past the end (the audio is then
    zero-padded) and is kept only if at least ``min_coverage`` of it lies on real audio,
    unless it is the only one. Audio shorter than a partial thus gives one partial,
    zero-padded to 1.6 s.

    Arguments
    ---------
    num_samples : int
        Length of the utterance at 16 kHz.
    rate : float
        Partials per second (at least ``1 / 1.6``).
    min_coverage : float
        In ``(0, 1]``.

    Returns
    -------
    list of int, never empty.

    Example
    -------
    >>> partial_starts(16000), partial_starts(48000)  # 1 s, 3 s: a partial every 77 frames
    ([0], [0, 77, 154])
    """
    _check_coverage(min_coverage)
    step = _partial_step(rate)
    count = int(_partial_count(torch.tensor(num_samples), step, min_coverage))
    return list(range(0, count * step, step))


class GE2E(Configurable, nn.Module):
    """GE2E speaker encoder: mel front end, 3-layer LSTM, linear + ReLU.

    Parameter names are resemblyzer's (``lstm.*``, ``linear.*``), so its ``pretrained.pt``
    loads as is (see ``load_ge2e``). The network works on 16 kHz audio, each waveform
    scaled to ``level_dbfs`` first; no VAD (see the module docstring).

    Arguments
    ---------
    rate, min_coverage : float
        How ``embed`` cuts an utterance into partials; defaults are resemblyzer's
        ``embed_utterance`` defaults (see ``partial_starts``).
    level_dbfs : float or None
        Mean power every waveform is scaled to (dB re full scale) before the front end:
        resemblyzer's -30, the level the network was trained at. None: the raw level.

    Example
    -------
    >>> net = GE2E()
    >>> wav = torch.randn(2, 16000)
    >>> net.frames(wav).shape, net.embed(wav).shape
    (torch.Size([2, 101, 256]), torch.Size([2, 256]))
    >>> bool(torch.allclose(net.frames(1000 * wav), net.frames(wav), atol=1e-5))  # any level
    True
    """

    sample_rate = SAMPLE_RATE
    embedding_dim = EMBEDDING
    feature_dim = HIDDEN
    # A description written before ``level_dbfs`` existed rebuilds the raw-level network it
    # was trained with (``configurable.build``).
    absent_args = {"level_dbfs": None}

    def __init__(self, rate: float = 1.3, min_coverage: float = 0.75,
                 level_dbfs: Optional[float] = LEVEL_DBFS):
        super().__init__()
        _check_coverage(min_coverage)
        _partial_step(rate)
        self.rate = rate
        self.min_coverage = min_coverage
        self.level_dbfs = level_dbfs
        self.mel = GE2EFrontEnd()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)

    # cuDNN refuses to backpropagate through an LSTM in eval mode, and a frozen encoder
    # inside a loss is in eval mode yet must pass gradients to its input. This LSTM has no
    # dropout, so its training mode computes exactly what eval mode would: on CUDA it stays
    # in training mode. Elsewhere it follows the module, so that an eval-mode copy is
    # traced and exported in eval mode. Decided again whenever the parameters move
    # (``to``, ``cuda``, ``cpu`` go through ``_apply``).
    def _set_lstm_mode(self) -> None:
        self.lstm.train(self.training or self.lstm.weight_ih_l0.is_cuda)

    def train(self, mode: bool = True):
        super().train(mode)
        self._set_lstm_mode()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._set_lstm_mode()
        return self

    @staticmethod
    def _check(wav: torch.Tensor) -> None:
        if wav.dim() != 2:
            raise ValueError(f"GE2E expects wav [batch, time], got shape {tuple(wav.shape)}")

    def at_level(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [batch, time]``, each waveform scaled to ``level_dbfs`` mean power (as is
        with ``level_dbfs=None``; a silent one stays silent)."""
        if self.level_dbfs is None:
            return wav
        power = wav.pow(2).mean(dim=-1, keepdim=True)
        return wav * torch.sqrt(10.0 ** (self.level_dbfs / 10.0) / power.clamp_min(SILENCE))

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [batch, time]`` at 16 kHz -> last-layer LSTM outputs ``[batch, frames, 256]``.

        One pass over the whole utterance (``frames = 1 + time // 160``), not over 1.6 s
        partials: a frame-level representation for losses, not the embedding path.
        """
        self._check(wav)
        out, _ = self.lstm(self.mel(self.at_level(wav)))
        return out

    def _embed_partials(self, mels: torch.Tensor) -> torch.Tensor:
        """``mels [n, frames, 40]`` -> L2-normalised embeddings ``[n, 256]`` (last frame)."""
        out, _ = self.lstm(mels)
        raw = F.relu(self.linear(out[:, -1]))
        return F.normalize(raw, dim=-1)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [batch, time]`` at 16 kHz -> utterance embeddings ``[batch, 256]``.

        Like resemblyzer's ``embed_utterance``, for a whole batch at once: cut the mel
        spectrogram into overlapping 160-frame partials (``partial_starts``; the audio
        zero-padded so the last one is complete), embed each, average the unit vectors and
        re-normalise. All items share a length, hence the same partials.

        The partials are counted, padded for and cut with tensor operations on the
        length, which a trace keeps general.
        """
        self._check(wav)
        wav = self.at_level(wav)
        step = _partial_step(self.rate)
        length = _length(wav)
        starts = torch.arange(_partial_count(length, step, self.min_coverage)) * step
        # Zero-padded to the last partial's end, by a slice of a fixed 1.6 s padding (a
        # kept partial starts on the audio, so it ends less than 1.6 s past it).
        end = torch.maximum(length, (starts[-1] + PARTIAL_FRAMES) * HOP)
        padded = F.pad(wav, (0, PARTIAL_FRAMES * HOP))[:, :end]
        index = (starts[:, None] + torch.arange(PARTIAL_FRAMES)).to(wav.device)
        mels = self.mel(padded)[:, index]  # [batch, partials, 160, 40]
        partials = self._embed_partials(mels.flatten(0, 1))
        partials = partials.view(wav.shape[0], -1, partials.shape[-1])
        return F.normalize(partials.mean(dim=1), dim=-1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Same as ``frames``: the representation a perceptual loss compares."""
        return self.frames(wav)


def packaged_weights() -> Path:
    """Path of the ``pretrained.pt`` inside the installed ``resemblyzer`` package.

    Found with ``importlib.util.find_spec``, which locates the package without running its
    ``__init__`` (that would import librosa and webrtcvad).

    Example
    -------
    >>> packaged_weights().name
    'pretrained.pt'
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise SpkSepError("resemblyzer: package not installed; `pip install resemblyzer` "
                          "(it carries the GE2E weights) or pass a checkpoint path")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


def load_ge2e(path: Optional[Union[str, Path]] = None,
              level_dbfs: Optional[float] = LEVEL_DBFS) -> GE2E:
    """A pretrained ``GE2E(level_dbfs=level_dbfs)`` in eval mode.

    Arguments
    ---------
    path : str or Path, optional
        A resemblyzer-format checkpoint (``{"model_state": state_dict, ...}``) or a bare
        state dict. Default: the weights packaged with ``resemblyzer``. Entries other than
        the LSTM and linear layer (resemblyzer's ``similarity_weight/bias``) are ignored.

    Raises
    ------
    SpkSepError
        If the file is missing, unreadable, or not a GE2E state dict.

    Example
    -------
    >>> net = load_ge2e()  # resemblyzer's weights
    >>> emb = net.embed(torch.randn(2, 16000))
    >>> emb.shape, emb.norm(dim=-1).round(decimals=4).tolist()  # unit length
    (torch.Size([2, 256]), [1.0, 1.0])
    """
    path = Path(path) if path is not None else packaged_weights()
    if not path.is_file():
        raise SpkSepError(f"{path}: GE2E checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpkSepError(f"{path}: not a readable torch checkpoint ({reason})") from None
    state = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise SpkSepError(f"{path}: not a GE2E checkpoint (no state dict inside)")

    net = GE2E(level_dbfs=level_dbfs)
    state = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
    check_state_dict(net, state, path, "a GE2E checkpoint")
    net.load_state_dict(state)
    return net.eval()
