"""The form ``inference`` (``nnet.forms.as_form(model, "inference")``, also
``fuse_for_inference(model)``): the no-autograd form of a separator, for evaluation.

Without autograd nothing has to be kept for a backward pass, so each gLN can be folded
into the convolution that reads it (``nnet.folding``) and activations updated in place:
one statistics pass per norm instead of centring, scaling and shifting passes. That is
~1.3x faster for Conv-TasNet on CPU (``bench/bench_rtf.py``), in fp32 or under bf16
autocast (residual and skip sums then stay fp32).

The fused form is a *view*: it shares the model's parameters (training the model updates
it too), replaces the layers that have a folded form, and falls back to the plain layers
whenever autograd is on or the tensors are not on the CPU, so it is always safe to call.
"""

import copy

import torch
from torch import nn

from spksep_modules.models.conditioned import ConditionedLayer
from spksep_modules.models.conv_tasnet import TCN
from spksep_modules.nnet.folding import depthwise_folded, gln_as_affine, pointwise_folded, prelu_
from spksep_modules.nnet.forms import view_form
from spksep_modules.nnet.precision import widen_under_autocast


def _folding_applies(x: torch.Tensor) -> bool:
    # In-place updates are safe only where autograd records nothing.
    return not torch.is_grad_enabled() and x.device.type == "cpu"


class FusedTCN(nn.Module):
    """The folded form of a Conv-TasNet :class:`TCN` (one example at a time: gLN's
    statistics are per example). ``[batch, N, frames] -> [batch, C, N, frames]``.

    Example
    -------
    >>> tcn, enc = TCN(N=16, B=8, H=16, P=3, X=2, R=1, num_spks=2), torch.rand(2, 16, 50)
    >>> with torch.no_grad():
    ...     masks = FusedTCN(tcn)(enc)
    ...     masks.shape, torch.allclose(masks, tcn(enc), atol=1e-5)
    (torch.Size([2, 2, 16, 50]), True)
    """

    def __init__(self, tcn: TCN):
        super().__init__()
        self.tcn = tcn

    def forward(self, enc):
        if not _folding_applies(enc) or getattr(self.tcn, "causal", False):
            return self.tcn(enc)  # gLN folding does not apply to a causal TCN's norms
        return torch.cat([self.one_example(e[None]) for e in enc])

    def _block(self, block, x):
        y = prelu_(block.in_conv(x), block.act_norm1.act.weight)
        scale, shift = gln_as_affine(y, block.act_norm1.norm)
        y = prelu_(depthwise_folded(y, block.dconv, scale, shift), block.act_norm2.act.weight)
        scale, shift = gln_as_affine(y, block.act_norm2.norm)
        return block.split_outputs(pointwise_folded(y, block.out_conv, scale, shift))

    def one_example(self, enc):
        """The folded TCN on one example ``[1, N, frames]`` (in place, no autograd)."""
        tcn = self.tcn
        scale, shift = gln_as_affine(enc, tcn.in_norm)
        x = widen_under_autocast(pointwise_folded(enc, tcn.bottleneck, scale, shift))
        skip_sum = None
        for block in tcn.blocks:
            res, skp = self._block(block, x)
            if skp is not None:
                skip_sum = widen_under_autocast(skp) if skip_sum is None else skip_sum.add_(skp)
            if res is not None:
                x.add_(res)
        feats = prelu_(skip_sum if tcn.skip else x, tcn.out_act.weight)
        return tcn.mask(tcn.mask_conv(feats))


class FusedConditionedLayer(nn.Module):
    """The folded form of a :class:`ConditionedLayer` with gLN
    (:meth:`ConditionedLayer.forward_folded`), where it applies.

    Example
    -------
    >>> layer = ConditionedLayer(channels=8, kernel_size=3, dilation=2, causal=False)
    >>> x, scale, shift = torch.randn(2, 8, 50), torch.rand(2, 8), torch.randn(2, 8)
    >>> with torch.no_grad():  # the folded form adds to its input in place: give it a copy
    ...     y = FusedConditionedLayer(layer)(x.clone(), scale, shift)
    ...     y.shape, torch.allclose(y, layer(x, scale, shift), atol=1e-5)
    (torch.Size([2, 8, 50]), True)
    """

    def __init__(self, layer: ConditionedLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x, scale, shift):
        if not (_folding_applies(x) and not self.layer.causal and scale.dim() == 2):
            return self.layer(x, scale, shift)
        return self.layer.forward_folded(x, scale, shift)


_FOLDED = {TCN: FusedTCN, ConditionedLayer: FusedConditionedLayer}


@view_form("inference")
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose layers run their folded inference forms (see above).

    ``model`` itself is not changed; the view shares its parameters and buffers.

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> fused, mix = fuse_for_inference(model), torch.randn(2, 800)
    >>> with torch.no_grad():
    ...     torch.allclose(fused(mix), model(mix), atol=1e-5)
    True
    """
    folded = _FOLDED.get(type(model))
    if folded is not None:
        return folded(model)
    view = copy.copy(model)  # shares parameters, buffers and every attribute...
    view._modules = {  # ...except its children, which get their own views
        name: None if child is None else fuse_for_inference(child)
        for name, child in model._modules.items()
    }
    return view
