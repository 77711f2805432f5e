"""Utterance-level permutation-invariant training (uPIT) on negative SI-SNR.

The pairwise SI-SNR matrix of a batch is computed once, in one vectorised call; every
permutation is then scored from that matrix with one matrix product (C! permutations:
2 for two speakers, 6 for three). SpeechBrain's ``PitWrapper`` gives the same values but
loops over the examples of a batch and over the permutations in Python.
"""

from functools import lru_cache
from itertools import permutations

import torch
from torch import nn

from spksep_modules.metrics import pairwise_si_snr


@lru_cache(maxsize=None)
def _permutations(num_spks: int) -> torch.Tensor:
    """``[num_perms, num_spks]``: row ``p`` maps reference ``i`` to estimate ``perms[p, i]``."""
    return torch.tensor(list(permutations(range(num_spks))), dtype=torch.long)


def pit_si_snr(est: torch.Tensor, ref: torch.Tensor):
    """Negative SI-SNR under the best source assignment, per example.

    Arguments
    ---------
    est, ref : torch.Tensor
        ``[batch, time, num_spks]`` estimates and clean sources (SpeechBrain's layout).

    Returns
    -------
    neg_si_snr : torch.Tensor
        ``[batch]`` minus the mean SI-SNR (dB) over sources for the best assignment;
        gradients flow to ``est`` (and ``ref``).
    est_aligned : torch.Tensor
        ``[batch, time, num_spks]``: ``est_aligned[:, :, i]`` is the estimate assigned to
        reference ``i``.
    perm : torch.Tensor
        ``[batch, num_spks]`` long: ``perm[b, i]`` is the index of that estimate in ``est``.
    """
    if est.shape != ref.shape or est.dim() != 3:
        raise ValueError(
            f"pit_si_snr expects est and ref as [batch, time, num_spks], got {tuple(est.shape)} "
            f"and {tuple(ref.shape)}"
        )
    num_spks = est.shape[-1]
    # [B, C (ref), C (est)]
    pairwise = pairwise_si_snr(est.transpose(1, 2), ref.transpose(1, 2))

    perms = _permutations(num_spks).to(est.device)  # [P, C]
    # One-hot form [P, C, C] so all permutations are scored by one contraction.
    one_hot = nn.functional.one_hot(perms, num_spks).to(pairwise.dtype)
    scores = torch.einsum("bij,pij->bp", pairwise, one_hot) / num_spks  # [B, P]
    best_score, best = scores.max(dim=1)

    perm = perms[best]  # [B, C]
    est_aligned = torch.gather(est, 2, perm.unsqueeze(1).expand(-1, est.shape[1], -1))
    return -best_score, est_aligned, perm


class PITSISNRLoss(nn.Module):
    """uPIT negative SI-SNR loss, the training objective of every model here.

    Non-finite values are not handled here: the Brain checks the loss, skips the batch
    and counts it (SpeechBrain's ``check_loss_isfinite``), so this module stays a pure
    function of its inputs.

    Example
    -------
    >>> loss_fn = PITSISNRLoss()
    >>> ref = torch.randn(2, 800, 2)
    >>> out = loss_fn(ref.flip(-1) + 0.01 * torch.randn(2, 800, 2), ref)
    >>> bool(out["si_snr"] > 30)
    True
    """

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> dict:
        """
        Arguments
        ---------
        est, ref : torch.Tensor
            ``[batch, time, num_spks]``.

        Returns
        -------
        dict
            ``loss``: scalar mean over the batch (to minimise);
            ``si_snr``: scalar mean SI-SNR in dB, detached (for logging);
            ``est_aligned``: ``[batch, time, num_spks]`` estimates in reference order;
            ``perm``: ``[batch, num_spks]`` the chosen assignment;
            ``per_example``: ``[batch]`` loss of each example.
        """
        per_example, est_aligned, perm = pit_si_snr(est, ref)
        loss = per_example.mean()
        return {
            "loss": loss,
            "si_snr": -loss.detach(),
            "est_aligned": est_aligned,
            "perm": perm,
            "per_example": per_example,
        }
