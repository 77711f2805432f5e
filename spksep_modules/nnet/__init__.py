"""Building blocks shared by the separators: norms, filterbanks, layers, the frozen-network
wrapper, and the speed layer (CPU kernels, export adapters and the one switch between
layer forms, ``forms.as_form``; precision helpers)."""

# The modules that define layer forms register them with nnet.forms when imported.
from spksep_modules.nnet import cpu_kernels, exportable  # noqa: F401
from spksep_modules.nnet.forms import as_form, forms_of
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.nnet.filterbank import encode_padded, overlap_add_decode, padded_length
from spksep_modules.nnet.layers import DepthwiseConv1d, PReLUGLN
from spksep_modules.nnet.norms import ChannelNorm, GlobalLayerNorm, plain_norm

__all__ = [
    "ChannelNorm", "DepthwiseConv1d", "Frozen", "GlobalLayerNorm", "PReLUGLN", "encode_padded",
    "as_form", "forms_of", "overlap_add_decode", "padded_length", "plain_norm",
]
