"""Losses: uPIT SI-SNR (``pit``), the perceptual terms (``perceptual``), and
``SeparationLoss``, which composes them as the yaml says."""

from spksep_modules.losses.perceptual import (
    NegativeOnly,
    PositiveOnly,
    TripletLike,
    WeightedSum,
)
from spksep_modules.losses.pit import pit_si_snr
from spksep_modules.losses.separation import SeparationLoss

__all__ = [
    "NegativeOnly", "PositiveOnly", "SeparationLoss", "TripletLike", "WeightedSum", "pit_si_snr",
]
