"""SpeechBrain's Conv-TasNet: the separator SpeechBrain's Conv-TasNet recipes train
(``recipes/WSJ0Mix/separation/hparams/convtasnet.yaml``: ``dual_path.Encoder``,
``conv_tasnet.MaskNet``, ``dual_path.Decoder``), built from those same modules.

It is not our :class:`~spksep_modules.models.ConvTasNet`, and its weights do not load into
ours: SpeechBrain's mask network normalises its input per frame (cLN), pads its dilated
convolutions by reflection, has no bias and no PReLU before the mask convolution, and
feeds the masks from the residual stream rather than summed skip outputs. So a folder
SpeechBrain trained is run by SpeechBrain's own ``MaskNet``, inside our contract
(``models.base``: recorded plain-number arguments, ``[batch, time]`` in, ``[batch, time,
C]`` out, the filterbank exposed as ``encoder`` / ``decoder``, so it can be the
conditioned model's basic model), with SpeechBrain's framing (``SpeechBrainFramed``).
``models.speechbrain_folder`` builds it from a SpeechBrain folder.
"""

from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.models.sepformer import SpeechBrainFramed

NORMS = ("gLN", "cLN", "BN")  # conv_tasnet.choose_norm: anything but gLN / cLN is batch norm
MASKS = ("relu", "softmax")


class SpeechBrainConvTasNet(SpeechBrainFramed):
    """Conv-TasNet as SpeechBrain builds it: encoder, ``conv_tasnet.MaskNet``, decoder.

    Arguments (our ``ConvTasNet``'s names; SpeechBrain's WSJ0-2mix recipe's sizes)
    ---------
    N : int
        Encoder filters (256).
    L : int
        Encoder / decoder filter length (16); stride ``L // 2``.
    B, H, P, X, R : int
        Bottleneck channels (256), hidden channels (512), depthwise kernel (3), blocks
        per repeat (6), repeats (4): ``MaskNet``'s B, H, P, X, R.
    num_spks : int
        Output sources (``MaskNet``'s C).
    norm_type : str
        "gLN" (default), "cLN" or "BN" in the temporal blocks.
    causal : bool
        ``MaskNet``'s ``causal`` (left-only padding of the depthwise convolutions; with
        gLN, as the recipe has it, the model still sees the whole signal).
    mask_nonlinear : str
        "relu" or "softmax".

    Example
    -------
    >>> import torch
    >>> model = SpeechBrainConvTasNet(N=16, L=8, B=8, H=16, X=2, R=1)
    >>> model(torch.randn(2, 1001)).shape, type(model.masknet).__module__
    (torch.Size([2, 1001, 2]), 'speechbrain.lobes.models.conv_tasnet')
    """

    def __init__(self, N=256, L=16, B=256, H=512, P=3, X=6, R=4, num_spks=2, norm_type="gLN",
                 causal=False, mask_nonlinear="relu"):
        super().__init__()
        from speechbrain.lobes.models.conv_tasnet import MaskNet
        from speechbrain.lobes.models.dual_path import Decoder

        if L < 2:
            raise SpkSepError(f"L: filter length must be at least 2, got {L}")
        if norm_type not in NORMS:
            raise SpkSepError(f"norm_type: expected one of {', '.join(NORMS)}, got {norm_type!r}")
        if mask_nonlinear not in MASKS:
            raise SpkSepError(f"mask_nonlinear: expected relu or softmax, got {mask_nonlinear!r}")
        self.N, self.kernel_size, self.stride, self.num_spks = N, L, L // 2, num_spks
        # SpeechBrain's Encoder is this conv followed by a ReLU (encode applies it).
        self.encoder = nn.Conv1d(1, N, L, stride=self.stride, bias=False)
        self.masknet = MaskNet(N, B, H, P, X, R, num_spks, norm_type=norm_type, causal=causal,
                               mask_nonlinear=mask_nonlinear)
        self.decoder = Decoder(in_channels=N, out_channels=1, kernel_size=L, stride=self.stride,
                               bias=False)
        self.reset_like_speechbrain()
