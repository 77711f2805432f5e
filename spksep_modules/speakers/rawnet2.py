"""RawNet2 speaker network (Jung et al., Interspeech 2020), compatible with the official weights.

RawNet2 maps a raw 16 kHz waveform to a 1024-d speaker embedding:

    wav [B, 59049]
     -> layer norm over time (per-sample affine, hence the fixed input length)
     -> sinc band-pass filterbank (128 filters of 251 taps) -> |.| -> max-pool 3
     -> batch norm -> LeakyReLU(0.3)                            [B, 128, 19599]
     -> 6 residual blocks, each followed by feature-map scaling   [B, 256, 26]
     -> batch norm -> LeakyReLU(0.3) -> GRU(1024), last step
     -> fc1_gru: the 1024-d "code" (the speaker embedding)
     -> (speaker-ID training only) L2 norm to 10 -> fc2_gru classifier

The pretrained file of the authors' repository (``rawnet2_best_weights.pt``, trained on
VoxCeleb2, 6112 classes) was produced by ``model_RawNet2_original_code.py``. This module
reproduces that network's computation and state-dict key names, so the file loads with
``strict=True``; two details of that code are kept on purpose because the weights were
trained with them:

- the residual blocks own a pre-activation batch norm ``bn1`` that the forward pass never
  uses (``conv1`` reads the block input directly), so ``bn1`` is loaded but ignored;
- the sinc filterbank's band edges ``low_hz_`` / ``band_hz_`` are trained parameters
  (mel-spaced at initialisation) and the filters are rebuilt from them in every forward;
  its half Hamming window is sampled on ``linspace(0, K/2 - 1, K // 2)`` as in the original.

``forward`` takes exactly ``window`` samples (59049 = 3^10, ~3.7 s). ``embed`` takes any
length and averages the embeddings of overlapping windows, as the authors' test-time
evaluation does; it tiles and windows with tensor operations on the input's length, so a
trace (or an ONNX export) made at one length works at any other.
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import check_state_dict
from spksep_modules.configurable import Configurable, spec

OFFICIAL_WINDOW = 59049
# The authors evaluate long utterances with windows overlapping by 11810 samples (20%).
OFFICIAL_HOP = OFFICIAL_WINDOW - 11810


class WaveformLayerNorm(nn.Module):
    """Normalises each waveform to zero mean and unit standard deviation over time, then
    applies a per-sample affine (``gamma``, ``beta`` of length ``num_samples``).

    ``[B, num_samples] -> [B, num_samples]``. As in the original, ``eps`` is added to the
    (unbiased) standard deviation. The variance is floored at ``eps**2`` before the square
    root so that a constant (e.g. silent) input has a finite gradient; above the floor the
    result is the original's.

    Example
    -------
    >>> out = WaveformLayerNorm(100)(3 + 2 * torch.randn(2, 100))
    >>> out.shape, bool(out.mean(-1).abs().max() < 1e-5)
    (torch.Size([2, 100]), True)
    """

    def __init__(self, num_samples: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_samples))
        self.beta = nn.Parameter(torch.zeros(num_samples))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.var(-1, keepdim=True).clamp_min(self.eps**2).sqrt()
        return self.gamma * (x - mean) / (std + self.eps) + self.beta


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


class SincFilterbank(nn.Module):
    """Band-pass sinc filters with trainable band edges (SincNet), ``[B, 1, T] -> [B, F, T-K+1]``.

    Filter ``f`` passes ``[low_f, high_f]`` with ``low_f = min_low_hz + |low_hz_[f]|`` and
    ``high_f = clamp(low_f + min_band_hz + |band_hz_[f]|, min_low_hz, sr / 2)``. Each filter
    is a windowed difference of two sinc functions, scaled so that its centre tap is 1.
    Only the band edges are stored; the taps are rebuilt in every forward pass.

    Arguments
    ---------
    num_filters : int
        Number of filters ``F``.
    kernel_size : int
        Filter length ``K`` (made odd, so that the filters are symmetric).
    sample_rate : int
        Sample rate in Hz.

    Example
    -------
    >>> sinc = SincFilterbank(num_filters=4, kernel_size=10)  # made odd: 11 taps
    >>> sinc.filters().shape, sinc(torch.randn(2, 1, 100)).shape
    (torch.Size([4, 1, 11]), torch.Size([2, 4, 90]))
    """

    def __init__(self, num_filters: int, kernel_size: int, sample_rate: int = 16000,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0):
        super().__init__()
        kernel_size += 1 - kernel_size % 2
        self.num_filters = num_filters
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low_hz = min_low_hz
        self.min_band_hz = min_band_hz

        # Initial band edges: num_filters + 1 points equally spaced on the mel scale,
        # from 30 Hz to just below Nyquist (the checkpoint overwrites them).
        top_hz = sample_rate / 2 - (min_low_hz + min_band_hz)
        mels = torch.linspace(_hz_to_mel(30.0), _hz_to_mel(top_hz), num_filters + 1,
                              dtype=torch.float64)
        edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
        self.low_hz_ = nn.Parameter(edges[:-1].float().view(-1, 1))
        self.band_hz_ = nn.Parameter(edges.diff().float().view(-1, 1))

        # Left half of the filters only (they are symmetric). These depend on the sizes
        # alone; non-persistent buffers keep them out of the state dict, which the
        # official file expects (there they are plain attributes).
        half = kernel_size // 2
        grid = torch.linspace(0, kernel_size / 2 - 1, steps=half)
        self.register_buffer(
            "half_window", 0.54 - 0.46 * torch.cos(2 * math.pi * grid / kernel_size),
            persistent=False)
        # Angular time axis 2*pi*n/sr for n = -(K-1)/2 .. -1, shape [1, half].
        self.register_buffer(
            "half_time", 2 * math.pi * torch.arange(-half, 0).float().view(1, -1) / sample_rate,
            persistent=False)

    def filters(self) -> torch.Tensor:
        """The current filter taps, ``[F, 1, K]``."""
        low = self.min_low_hz + self.low_hz_.abs()
        high = torch.clamp(low + self.min_band_hz + self.band_hz_.abs(),
                           self.min_low_hz, self.sample_rate / 2)
        band = high - low  # [F, 1]
        # sin(2*pi*f*n/sr) / (pi*n/sr): the ideal band-pass response, times sr.
        left = (torch.sin(high * self.half_time) - torch.sin(low * self.half_time)) \
            / (self.half_time / 2) * self.half_window
        taps = torch.cat([left, 2 * band, left.flip(1)], dim=1) / (2 * band)
        return taps.view(self.num_filters, 1, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters())


class ResidualBlock(nn.Module):
    """Two 3-tap convolutions with a residual connection, then max-pool 3.

    ``[B, C_in, T] -> [B, C_out, T // 3]``. A 1x1 convolution matches the channels of the
    shortcut when ``C_in != C_out``. ``bn1`` exists (except in the first block) so that the
    official weights load, but, as in the network those weights were trained in, the
    first convolution reads the block input directly and ``bn1`` is not used.

    Example
    -------
    >>> ResidualBlock(4, 8)(torch.randn(2, 4, 30)).shape
    torch.Size([2, 8, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, first: bool = False):
        super().__init__()
        if not first:
            self.bn1 = nn.BatchNorm1d(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.conv_downsample = nn.Conv1d(in_channels, out_channels, kernel_size=1)
        else:
            self.conv_downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv2(F.leaky_relu(self.bn2(out), 0.3))
        shortcut = x if self.conv_downsample is None else self.conv_downsample(x)
        return F.max_pool1d(out + shortcut, 3)


class FeatureMapScaling(nn.Sequential):
    """Filter-wise feature-map scaling: ``s = sigmoid(W mean_t(x) + b)``, ``x * s + s``.

    ``[B, C, T] -> [B, C, T]``. A one-layer ``nn.Sequential`` so that the linear layer's
    keys read ``<name>.0.weight`` as in the official checkpoint.

    Example
    -------
    >>> fms = FeatureMapScaling(8)
    >>> fms(torch.randn(2, 8, 10)).shape, list(fms.state_dict())
    (torch.Size([2, 8, 10]), ['0.weight', '0.bias'])
    """

    def __init__(self, channels: int):
        super().__init__(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self[0](x.mean(-1))).unsqueeze(-1)  # [B, C, 1]
        return x * s + s


def _length(wav: torch.Tensor) -> torch.Tensor:
    """``wav``'s length as a 0-d tensor: under ``torch.jit.trace`` (and so in an ONNX
    export) the traced size, which keeps the arithmetic on it in the graph."""
    length = wav.shape[-1]
    return length if torch.is_tensor(length) else torch.tensor(length)


def _window_starts(length: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """``window_starts`` of a 0-d int64 ``length`` as a tensor (under ``torch.jit.trace``,
    of the traced length: the window count stays general)."""
    total = length.clamp(min=window)  # a shorter signal is tiled up to one window
    # ceil((total - window) / hop) + 1 windows, every hop, the last one clamped to end
    # on the last sample.
    count = torch.div(total - window + hop - 1, hop, rounding_mode="floor") + 1
    return torch.minimum(torch.arange(count) * hop, total - window)


def window_starts(length: int, window: int, hop: int) -> list:
    """Start samples of the analysis windows that cover ``length`` samples.

    Windows start every ``hop`` samples; the last one is aligned with the end of the signal
    (so no padding is needed and no window is repeated). A signal no longer than ``window``
    gets a single window at 0 (``RawNet2.embed`` repeats short signals up to ``window``).

    Example
    -------
    >>> window_starts(100, window=100, hop=30), window_starts(131, window=100, hop=30)
    ([0], [0, 30, 31])
    """
    return _window_starts(torch.tensor(length), window, hop).tolist()


class RawNet2(Configurable, nn.Module):
    """RawNet2 speaker embedding network with the official checkpoint's key names.

    Arguments
    ---------
    window : int
        Input length of ``forward`` in samples (59049 in the official model). The input layer
        norm has one affine weight per sample, so this length is fixed.
    hop : int
        Hop between the windows ``embed`` averages over (default: the authors' test-time
        overlap of 11810 samples).
    sinc_filters : int
        Number of sinc band-pass filters of the first layer.
    sinc_length : int
        Length of the sinc filters in taps.
    block_channels : sequence of int
        Output channels of each residual block (each block divides time by 3).
    gru_units : int
        GRU hidden size.
    gru_layers : int
        Number of GRU layers.
    embedding_dim : int
        Size of the speaker embedding (the "code" layer ``fc1_gru``).
    num_classes : int
        Speakers of the classifier ``fc2_gru`` (6112 in the official model); 0: no classifier.

    Example
    -------
    >>> net = RawNet2(window=2187, hop=1000, sinc_filters=4, sinc_length=11,
    ...               block_channels=(4, 8), gru_units=8, embedding_dim=6, num_classes=3)
    >>> net(torch.randn(2, 2187)).shape, net(torch.randn(2, 2187), classify=True).shape
    (torch.Size([2, 6]), torch.Size([2, 3]))
    >>> net.embed(torch.randn(2, 5000)).shape  # any length: windows 0, 1000, 2000, 2813
    torch.Size([2, 6])
    """

    sample_rate = 16000

    def __init__(self, window: int = OFFICIAL_WINDOW, hop: int = OFFICIAL_HOP,
                 sinc_filters: int = 128, sinc_length: int = 251,
                 block_channels=(128, 128, 256, 256, 256, 256),
                 gru_units: int = 1024, gru_layers: int = 1, embedding_dim: int = 1024,
                 num_classes: int = 6112):
        super().__init__()
        block_channels = [int(c) for c in block_channels]
        self.window = int(window)
        self.hop = int(hop)
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        if self.hop < 1:
            raise ValueError(f"RawNet2: hop must be positive, got {hop}")

        # Frames reaching the GRU: sinc conv, then one max-pool 3 up front and one per block.
        sinc_length += 1 - sinc_length % 2
        frames = (self.window - sinc_length + 1) // 3 ** (1 + len(block_channels))
        if frames < 1:
            raise ValueError(f"RawNet2: window={window} is too short for sinc_length="
                             f"{sinc_length} and {len(block_channels)} blocks")

        # Attribute names (ln, first_conv, blockN, fc_attentionN, ...) are the checkpoint's.
        self.ln = WaveformLayerNorm(self.window)
        self.first_conv = SincFilterbank(sinc_filters, sinc_length, self.sample_rate)
        self.first_bn = nn.BatchNorm1d(sinc_filters)
        channels = sinc_filters
        for i, out_channels in enumerate(block_channels):
            block = ResidualBlock(channels, out_channels, first=(i == 0))
            setattr(self, f"block{i}", nn.Sequential(block))
            setattr(self, f"fc_attention{i}", FeatureMapScaling(out_channels))
            channels = out_channels
        self.num_blocks = len(block_channels)
        self.bn_before_gru = nn.BatchNorm1d(channels)
        self.gru = nn.GRU(channels, gru_units, num_layers=gru_layers, batch_first=True)
        self.fc1_gru = nn.Linear(gru_units, embedding_dim)
        self.fc2_gru = nn.Linear(embedding_dim, num_classes) if num_classes > 0 else None

    def forward(self, wav: torch.Tensor, classify: bool = False) -> torch.Tensor:
        """Embedding of fixed-length waveforms: ``wav [B, window]`` -> ``[B, embedding_dim]``,
        or speaker logits ``[B, num_classes]`` with ``classify=True`` (one forward call, so
        DistributedDataParallel sees the classifier too)."""
        if wav.dim() != 2 or wav.shape[1] != self.window:
            raise ValueError(f"RawNet2.forward expects [batch, {self.window}] waveforms, got "
                             f"{tuple(wav.shape)}; use RawNet2.embed for other lengths")
        x = self.ln(wav).unsqueeze(1)  # [B, 1, T]
        x = F.max_pool1d(self.first_conv(x).abs(), 3)
        x = F.leaky_relu(self.first_bn(x), 0.3)  # [B, F, T']
        for i in range(self.num_blocks):
            x = getattr(self, f"block{i}")(x)
            x = getattr(self, f"fc_attention{i}")(x)
        x = F.leaky_relu(self.bn_before_gru(x), 0.3)
        out, _ = self.gru(x.transpose(1, 2))  # [B, frames, gru_units]
        emb = self.fc1_gru(out[:, -1])
        return self.classify(emb) if classify else emb

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Embedding of waveforms of any length: ``wav [B, T]`` -> ``[B, embedding_dim]``.

        Follows the authors' test-time evaluation: a signal shorter than ``window`` is
        repeated (tiled) up to ``window`` samples; a longer one is cut into windows of
        ``window`` samples every ``hop`` samples, the last window ending at the last sample
        (see ``window_starts``). All windows of all utterances go through ``forward`` as one
        batch and the embeddings of each utterance's windows are averaged. Differentiable
        with respect to ``wav``. The authors also peak-normalise each utterance; the input
        layer norm makes the network insensitive to scale, so that step is left out.

        The windows are one index tensor computed from the length, which a trace keeps
        general: sample positions modulo the length, so a short signal's single window
        wraps around (the tiling) and a longer signal's windows, which end on its last
        sample, index it as they are.
        """
        if wav.dim() != 2 or wav.shape[1] == 0:
            raise ValueError(f"RawNet2.embed expects [batch, time>0] waveforms, got "
                             f"{tuple(wav.shape)}")
        length = _length(wav)
        starts = _window_starts(length, self.window, self.hop)
        index = (starts[:, None] + torch.arange(self.window)) % length  # [n, window]
        windows = wav[:, index.to(wav.device)]  # [B, n, window]
        emb = self(windows.reshape(-1, self.window))
        return emb.view(wav.shape[0], -1, emb.shape[-1]).mean(1)

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        """Speaker logits, ``emb [B, embedding_dim]`` -> ``[B, num_classes]``.

        As in the original, the embedding is rescaled to an L2 norm of 10 first.
        """
        if self.fc2_gru is None:
            raise ValueError("RawNet2.classify: this model has no classifier (num_classes=0)")
        return self.fc2_gru(10.0 * F.normalize(emb, dim=-1))


def save_rawnet2(model: RawNet2, path) -> None:
    """Writes ``{"model": state_dict, "config": constructor arguments}`` to ``path``.

    The arguments are saved as plain data (``block_channels`` as a list), which
    ``torch.load(weights_only=True)`` reads back.

    Example
    -------
    >>> import tempfile
    >>> net = RawNet2(window=2187, sinc_filters=4, sinc_length=11, block_channels=(4, 8),
    ...               gru_units=8, embedding_dim=6, num_classes=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_rawnet2(net, os.path.join(folder, "rawnet2.pt"))
    ...     loaded = load_rawnet2(os.path.join(folder, "rawnet2.pt"))
    >>> loaded.config["block_channels"], loaded.embed(torch.randn(1, 3000)).shape
    ([4, 8], torch.Size([1, 6]))
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": spec(model)["args"]}, path)


def load_rawnet2(path, **overrides) -> RawNet2:
    """Loads a RawNet2 checkpoint in eval mode.

    Accepts the authors' file (a plain state dict, with or without DataParallel's
    ``module.`` prefix) and files written by ``save_rawnet2``. Without a saved config the
    official sizes are used and ``num_classes`` is read from the classifier weights.
    ``overrides`` replace constructor arguments (e.g. ``hop``); ``num_classes=0`` drops the
    classifier. Raises ``SpkSepError`` naming ``path`` when the file is missing, cannot be
    read, is not a RawNet2 checkpoint or does not match the model's shapes.

    Example
    -------
    >>> import tempfile
    >>> net = RawNet2(window=2187, sinc_filters=4, sinc_length=11, block_channels=(4, 8),
    ...               gru_units=8, embedding_dim=6, num_classes=3)
    >>> with tempfile.TemporaryDirectory() as folder:  # no config: the official sizes
    ...     torch.save(net.state_dict(), os.path.join(folder, "plain.pt"))
    ...     load_rawnet2(os.path.join(folder, "plain.pt"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    spksep_modules.SpkSepError: ...plain.pt: not a RawNet2 checkpoint: missing keys ...; shape mismatch for ln.gamma: checkpoint (2187,), model (59049,) (+42 more)
    >>> with tempfile.TemporaryDirectory() as folder:  # save_rawnet2 keeps the sizes
    ...     save_rawnet2(net, os.path.join(folder, "rawnet2.pt"))
    ...     loaded = load_rawnet2(os.path.join(folder, "rawnet2.pt"), num_classes=0)
    >>> loaded.embed(torch.randn(2, 3000)).shape, loaded.fc2_gru is None
    (torch.Size([2, 6]), True)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SpkSepError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling / format problem is a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpkSepError(f"{path}: cannot read checkpoint ({reason})") from None

    config = {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        config = ckpt.get("config") or {}
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise SpkSepError(f"{path}: not a RawNet2 checkpoint: expected a state dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}

    if not config:
        weight = state.get("fc2_gru.weight")
        config = {"num_classes": int(weight.shape[0]) if weight is not None else 0}
    config = {**config, **overrides}
    try:
        model = RawNet2(**config)
    except (TypeError, ValueError) as err:
        raise SpkSepError(f"{path}: bad RawNet2 config ({err})") from None
    if model.fc2_gru is None:
        state = {k: v for k, v in state.items() if not k.startswith("fc2_gru.")}

    # Batch-norm step counters are bookkeeping; older files may lack them.
    check_state_dict(model, state, path, "a RawNet2 checkpoint", ignore=("*num_batches_tracked",))
    model.load_state_dict(state, strict=False)
    return model.eval()
