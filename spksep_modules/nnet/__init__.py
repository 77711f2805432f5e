"""Building blocks shared by the separators: norms, filterbanks, layers, the frozen-network
wrapper, and the speed layer (CPU kernels, inference-time folding, precision helpers)."""

from spksep_modules.nnet.cpu_kernels import use_cpu_kernels
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.nnet.filterbank import encode_padded, overlap_add_decode, padded_length
from spksep_modules.nnet.layers import DepthwiseConv1d, PReLUGLN
from spksep_modules.nnet.norms import ChannelNorm, GlobalLayerNorm, plain_norm

__all__ = [
    "ChannelNorm", "DepthwiseConv1d", "Frozen", "GlobalLayerNorm", "PReLUGLN", "encode_padded",
    "overlap_add_decode", "padded_length", "plain_norm", "use_cpu_kernels",
]
