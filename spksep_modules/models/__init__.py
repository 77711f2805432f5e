"""Separators: every family fits the contract of ``models.base``."""

from spksep_modules.models.base import Separator, SeparatorOutput, separator_from_state
from spksep_modules.models.conditioned import ConditionedSeparator, WavesplitStack
from spksep_modules.models.conv_tasnet import ConvTasNet
from spksep_modules.models.film import FiLM, FiLMGenerator
from spksep_modules.models.fused import fuse_for_inference

__all__ = [
    "ConditionedSeparator", "ConvTasNet", "FiLM", "FiLMGenerator", "Separator",
    "SeparatorOutput", "WavesplitStack", "fuse_for_inference", "separator_from_state",
]
