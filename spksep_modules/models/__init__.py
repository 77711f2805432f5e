"""Separation models and the RawNet2 speaker network."""

from spksep_modules.models.conditioned import ConditionedSeparator, WavesplitStack
from spksep_modules.models.conv_tasnet import ConvTasNet
from spksep_modules.models.film import FiLM, FiLMGenerator
from spksep_modules.models.rawnet2 import RawNet2

__all__ = ["ConvTasNet", "ConditionedSeparator", "WavesplitStack", "FiLM", "FiLMGenerator", "RawNet2"]
