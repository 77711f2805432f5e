"""Separators: every family fits the contract of ``models.base``."""

from spksep_modules.models.base import Separator, SeparatorOutput, separator_from_state
from spksep_modules.models.conditioned import ConditionedSeparator, WavesplitStack
from spksep_modules.models.conv_tasnet import ConvTasNet
from spksep_modules.models.film import FiLM, FiLMGenerator
from spksep_modules.models.fused import fuse_for_inference
from spksep_modules.models.sb_conv_tasnet import SpeechBrainConvTasNet
from spksep_modules.models.sepformer import SepFormer
from spksep_modules.models.speechbrain_folder import (
    load_speechbrain_folder,
    save_speechbrain_folder,
)

__all__ = [
    "ConditionedSeparator", "ConvTasNet", "FiLM", "FiLMGenerator", "Separator",
    "SepFormer", "SeparatorOutput", "SpeechBrainConvTasNet", "WavesplitStack",
    "fuse_for_inference",
    "load_speechbrain_folder", "save_speechbrain_folder", "separator_from_state",
]
