"""Freezing and rate adaptation for pretrained networks used inside a loss or a pipeline."""

import functools

import torch
import torchaudio.functional as AF
from torch import nn

from spksep_modules.configurable import Configurable


class Frozen(Configurable, nn.Module):
    """Wraps a pretrained network so that it never trains but still passes gradients.

    The wrapped network stays in eval mode (dropout off, batch-norm statistics fixed) even
    when the surrounding model is put in train mode, and its parameters have
    ``requires_grad=False``, so an optimiser step never changes them. Gradients still flow
    *through* it to its input: that is how a perceptual loss trains the separator.

    Inputs at ``input_rate`` are resampled once, here, to the network's own ``net_rate``.

    As a :class:`~spksep_modules.configurable.Configurable`, ``spec(frozen)`` describes the
    wrapper with its network (which must be Configurable too, e.g. RawNet2 or GE2E).

    Arguments
    ---------
    net : nn.Module
        Maps ``wav [batch, time]`` at ``net_rate`` to features (any shape).
    net_rate : int
        Sample rate the network was trained at.
    input_rate : int
        Sample rate of the waveforms this wrapper receives.

    Example
    -------
    >>> net = Frozen(nn.Conv1d(1, 4, 3), net_rate=16000, input_rate=8000)
    >>> wav = torch.randn(2, 1, 800, requires_grad=True)  # 0.1 s at 8 kHz
    >>> feats = net(wav)  # resampled to 1600 samples first
    >>> feats.shape
    torch.Size([2, 4, 1598])
    >>> feats.sum().backward()
    >>> wav.grad.shape, net.net.weight.grad is None
    (torch.Size([2, 1, 800]), True)
    """

    def __init__(self, net: nn.Module, net_rate: int, input_rate: int):
        super().__init__()
        self.net = net
        self.net_rate = int(net_rate)
        self.input_rate = int(input_rate)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):
        # Keep the pretrained network in eval mode whatever the parent does.
        super().train(mode)
        self.net.eval()
        return self

    @property
    def embedding_dim(self) -> int:
        """Speaker networks: the wrapped network's ``embedding_dim``."""
        return self.net.embedding_dim

    def resample(self, wav: torch.Tensor) -> torch.Tensor:
        """``[..., time]`` at ``input_rate`` -> ``[..., time']`` at ``net_rate``."""
        if self.input_rate == self.net_rate:
            return wav
        return AF.resample(wav, self.input_rate, self.net_rate)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Speaker networks: ``wav [batch, time]`` -> ``net.embed`` of it, ``[batch, dim]``."""
        return self.net.embed(self.resample(wav))

    def forward(self, wav: torch.Tensor, *args, **kwargs):
        """``wav [batch, time]`` at ``input_rate`` -> whatever ``net`` returns."""
        return self.net(self.resample(wav), *args, **kwargs)


def keeps_global_rng(build):
    """Decorates a builder of pretrained networks so that it leaves torch's global random
    stream as it found it: the random initialisation their weights then replace must not
    shift the separator's initialisation or the data order, or two runs that differ only
    in their loss would also differ in everything random.

    Example
    -------
    >>> @keeps_global_rng
    ... def build():
    ...     return nn.Linear(4, 4)   # draws its initial weights
    >>> _ = torch.manual_seed(0); _ = build(); after = torch.rand(1)
    >>> _ = torch.manual_seed(0); bool(torch.rand(1) == after)
    True
    """

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return build(*args, **kwargs)

    return wrapper
