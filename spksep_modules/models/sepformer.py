"""SepFormer (Subakan et al., 2021) built from SpeechBrain's own dual-path modules.

The paper's basic model "is not unique": any separator with a learned filterbank can
serve. This one is SpeechBrain's SepFormer, assembled from
``speechbrain.lobes.models.dual_path`` exactly as SpeechBrain's Libri2Mix recipe
(``sepformer-libri2mix.yaml``) assembles it: an encoder (1-D conv + ReLU, kernel 16,
stride 8, 256 filters), a ``Dual_Path_Model`` mask network whose intra- and inter-chunk
models are ``SBTransformerBlock``s (2 dual-path blocks of 8 + 8 transformer layers,
8 heads, 1024 feed-forward units, chunks of 250 frames, no dropout, pre-norm, positional
encodings) and a ``Decoder`` (transposed conv) per source. The defaults are those sizes.

What is ours is the contract around it (``models.base``): plain-number constructor
arguments (recorded, so a checkpoint rebuilds the model), ``[batch, time]`` in and
``[batch, time, C]`` out of the input's length, and the filterbank exposed as ``encoder``
(an ``nn.Conv1d``) and ``decoder`` (SpeechBrain's ``Decoder``, a ``ConvTranspose1d``), so
a SepFormer can be the conditioned model's basic model. The encoder is the ``nn.Conv1d``
that SpeechBrain's ``Encoder`` wraps (``Encoder.conv1d``): the weights of a SpeechBrain
folder load into it under that one renamed key (``models.speechbrain_folder``).

The framing is SpeechBrain's too: the encoder drops the last ``< stride`` samples that
do not fill a frame, and the output is zero-padded back to the input's length, so a
SpeechBrain folder's weights give here what SpeechBrain's ``separate_batch`` gives, on
every length (Conv-TasNet instead pads the input to whole frames).
"""

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.models.base import Separator, SeparatorOutput, as_batch
from spksep_modules.nnet.filterbank import overlap_add_decode

ACTIVATIONS = ("relu", "gelu")
NORMS = ("ln", "gln", "cln", "bn")


def transformer_block(num_layers, d_model, nhead, d_ffn, dropout, use_positional_encoding,
                      norm_before, activation):
    """SpeechBrain's ``SBTransformerBlock`` (the intra- or inter-chunk model).

    Shapes: ``[batch, frames, d_model] -> [batch, frames, d_model]``.

    Example
    -------
    >>> block = transformer_block(1, d_model=16, nhead=2, d_ffn=32, dropout=0.0,
    ...                           use_positional_encoding=True, norm_before=True,
    ...                           activation="relu")
    >>> type(block).__name__, block(torch.randn(3, 10, 16)).shape
    ('SBTransformerBlock', torch.Size([3, 10, 16]))
    """
    from speechbrain.lobes.models.dual_path import SBTransformerBlock

    return SBTransformerBlock(
        num_layers=num_layers, d_model=d_model, nhead=nhead, d_ffn=d_ffn, dropout=dropout,
        activation=activation, use_positional_encoding=use_positional_encoding,
        norm_before=norm_before,
    )


class SpeechBrainFramed(Separator):
    """SpeechBrain's separation forward around a mask network ``self.masknet`` (``[batch, N,
    frames] -> [C, batch, N, frames]``): ``encoder`` (an ``nn.Conv1d``, kernel
    ``self.kernel_size``, stride ``self.stride``) + ReLU, masks, one transposed-conv
    ``decoder`` pass per source, cut or zero-padded to the input's length, as in
    SpeechBrain's separation recipes (``compute_forward``) and ``separate_batch``.
    Subclasses build the three modules.
    """

    def encode(self, mix):
        """``[batch, time] -> [batch, N, frames]``: ReLU of the encoder conv, SpeechBrain's
        ``Encoder`` (the tail that fills no frame is dropped; a signal shorter than one
        filter is zero-padded to one)."""
        if mix.shape[-1] < self.kernel_size:
            mix = F.pad(mix, (0, self.kernel_size - mix.shape[-1]))
        return F.relu(self.encoder(mix.unsqueeze(1)))

    def decode(self, src_w, length):
        """``[batch, C, N, frames] -> [batch, length, C]``: the decoder's transposed conv
        on every source (as a matrix product plus overlap-add), cut or zero-padded to
        ``length``."""
        batch, C, N, frames = src_w.shape
        wav = overlap_add_decode(src_w.reshape(batch * C, N, frames), self.decoder.weight,
                                 self.stride)
        wav = wav.view(batch, C, -1)
        if wav.shape[-1] < length:
            wav = F.pad(wav, (0, length - wav.shape[-1]))
        return wav[..., :length].transpose(1, 2)

    def forward(self, mix):
        """Separate: ``[batch, time]`` (or ``[time]``) -> estimates ``[batch, time, C]``."""
        mix = as_batch(mix, type(self).__name__)
        enc = self.encode(mix)
        masks = self.masknet(enc)  # SpeechBrain's layout: [C, batch, N, frames]
        src_w = (masks * enc.unsqueeze(0)).transpose(0, 1)
        return SeparatorOutput.of(self.decode(src_w, mix.shape[-1]))

    def reset_like_speechbrain(self):
        """Initialise as SpeechBrain's separation recipes do (``reset_layer_recursively``:
        every layer's ``reset_parameters`` once built)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


class SepFormer(SpeechBrainFramed):
    """SepFormer: encoder, SpeechBrain's dual-path transformer masks, decoder.

    Arguments (SpeechBrain's Libri2Mix recipe values by default)
    ---------
    N : int
        Encoder filters, also the transformers' ``d_model`` (256).
    kernel_size : int
        Encoder / decoder filter length (16); the stride is ``kernel_size // 2``, as
        SpeechBrain's ``Encoder`` fixes it.
    num_spks : int
        Number of output sources.
    num_layers : int
        Dual-path blocks (2).
    K : int
        Chunk length in encoder frames (250).
    intra_layers, inter_layers : int
        Transformer layers of the intra- and inter-chunk models (8 each).
    nhead, d_ffn : int
        Attention heads (8) and feed-forward units (1024) of every transformer layer.
    dropout : float
        Transformer dropout (0). A training setting: a checkpoint loads whatever its value.
    use_positional_encoding, norm_before : bool
        Sinusoidal positional encodings in each transformer block, pre-norm layers (True).
    activation : str
        Feed-forward activation: "relu" or "gelu".
    norm : str
        Norm of the dual-path model: "ln" (SpeechBrain's recipe), "gln", "cln" or "bn".
    skip_around_intra, linear_layer_after_inter_intra, use_global_pos_enc, max_length :
        ``Dual_Path_Model`` options (recipe: True, False, False, 20000).
    out_channels : int or None
        Width inside the dual-path model (None: N, as in the recipe).

    Initialised as SpeechBrain's separation recipe initialises it (every layer's
    ``reset_parameters`` once built), so the copied dual-path blocks do not start equal.

    Example
    -------
    >>> model = SepFormer(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1,
    ...                   nhead=2, d_ffn=32)
    >>> out = model(torch.randn(2, 1001))
    >>> type(out).__name__, out.shape, model.encoder.stride, model.config["K"]
    ('SeparatorOutput', torch.Size([2, 1001, 2]), (8,), 10)
    """

    RUNTIME_ARGS = ("dropout",)

    def __init__(self, N=256, kernel_size=16, num_spks=2, num_layers=2, K=250,
                 intra_layers=8, inter_layers=8, nhead=8, d_ffn=1024, dropout=0.0,
                 use_positional_encoding=True, norm_before=True, activation="relu",
                 norm="ln", skip_around_intra=True, linear_layer_after_inter_intra=False,
                 out_channels=None, use_global_pos_enc=False, max_length=20000):
        super().__init__()
        from speechbrain.lobes.models.dual_path import Decoder, Dual_Path_Model

        if kernel_size < 2:
            raise SpkSepError(f"kernel_size: filter length must be at least 2, got {kernel_size}")
        width = N if out_channels is None else out_channels
        if width % nhead:
            raise SpkSepError(
                f"nhead: the transformers' width ({width}) must be a multiple of nhead, "
                f"got nhead={nhead}")
        if activation not in ACTIVATIONS:
            raise SpkSepError(f"activation: expected one of {', '.join(ACTIVATIONS)}, "
                              f"got {activation!r}")
        if norm not in NORMS:
            raise SpkSepError(f"norm: expected one of {', '.join(NORMS)}, got {norm!r}")
        if K < 2:
            raise SpkSepError(f"K: chunk length must be at least 2 frames, got {K}")
        self.N, self.kernel_size, self.stride = N, kernel_size, kernel_size // 2
        self.num_spks = num_spks
        # SpeechBrain's Encoder is this conv followed by a ReLU (encode applies it).
        self.encoder = nn.Conv1d(1, N, kernel_size, stride=self.stride, bias=False)

        def block(num):
            return transformer_block(num, width, nhead, d_ffn, dropout,
                                     use_positional_encoding, norm_before, activation)

        self.masknet = Dual_Path_Model(
            in_channels=N, out_channels=width, intra_model=block(intra_layers),
            inter_model=block(inter_layers), num_layers=num_layers, norm=norm, K=K,
            num_spks=num_spks, skip_around_intra=skip_around_intra,
            linear_layer_after_inter_intra=linear_layer_after_inter_intra,
            use_global_pos_enc=use_global_pos_enc, max_length=max_length,
        )
        self.decoder = Decoder(in_channels=N, out_channels=1, kernel_size=kernel_size,
                               stride=self.stride, bias=False)
        self.reset_like_speechbrain()
