"""Feature-wise linear modulation (FiLM, Perez et al. 2018).

A FiLM *generator* turns a conditioning vector (here: what a speaker network says about
one speaker) into a per-channel scale and shift for every conditioned layer; a FiLM
*layer* applies them to that layer's feature map. The speaker-conditioned separator
(``spksep_modules.models.conditioned``) uses one generator for its whole 40-layer stack.
"""

import torch
from torch import nn


class FiLM(nn.Module):
    """Affine modulation of a feature map, one scale and one shift per channel.

    ``x [B, Ch, T]``, ``scale [B, Ch]``, ``shift [B, Ch]`` ->
    ``x * scale[..., None] + shift[..., None]``, shape ``[B, Ch, T]``; the same affine
    map is applied at every time step, which is what makes it a *global* condition.
    (``scale, shift [B, Ch, T]``, one per step, serve a stream whose embeddings change
    over time: see ``deploy.streaming_conditioned``.)

    Example
    -------
    >>> scale, shift = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    >>> y = FiLM()(torch.ones(1, 3, 5), scale, shift)
    >>> y.shape, y[0, :, 0].tolist()  # channel c: 1 * scale[c] + shift[c], at every step
    (torch.Size([1, 3, 5]), [1.0, 2.0, 2.0])
    """

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if scale.dim() < x.dim():  # one scale per channel: the same at every step
            scale, shift = scale.unsqueeze(-1), shift.unsqueeze(-1)
        # One fused multiply-add over the full-size tensor.
        return torch.addcmul(shift, x, scale)


class FiLMGenerator(nn.Module):
    """Maps a conditioning vector to a scale and a shift for each layer and channel.

    A small MLP: ``Linear(emb_dim, hidden) -> PReLU -> Linear(hidden, 2 * L * Ch)``.

    The last linear layer starts at zero and the scale is read as ``1 + output``, so at
    initialisation every scale is exactly 1 and every shift exactly 0 whatever the
    conditioning vector: the conditioned stack then starts as the plain, unconditioned
    stack, and training only has to learn how far (and how) the speaker should move it.
    Starting from random scales instead would multiply 40 random gains along the stack,
    which makes the first updates noisy and can blow activations up or down.

    Arguments
    ---------
    emb_dim : int
        Size E of the conditioning vector.
    num_layers : int
        Number L of FiLM layers it feeds.
    channels : int
        Number Ch of channels of each FiLM layer.
    hidden : int
        Width of the hidden layer.

    Example
    -------
    >>> gen = FiLMGenerator(emb_dim=8, num_layers=4, channels=16)
    >>> scale, shift = gen(torch.randn(3, 8))
    >>> scale.shape, bool((scale == 1).all()), bool((shift == 0).all())
    (torch.Size([3, 4, 16]), True, True)
    """

    def __init__(self, emb_dim: int, num_layers: int, channels: int, hidden: int = 256):
        super().__init__()
        self.num_layers = int(num_layers)
        self.channels = int(channels)
        self.hidden = nn.Sequential(nn.Linear(emb_dim, hidden), nn.PReLU())
        self.out = nn.Linear(hidden, 2 * self.num_layers * self.channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, cond: torch.Tensor):
        """``cond [B, E]`` -> ``(scale, shift)``, each ``[B, num_layers, channels]``."""
        params = self.out(self.hidden(cond))
        params = params.view(cond.shape[0], 2, self.num_layers, self.channels)
        return 1.0 + params[:, 0], params[:, 1]
