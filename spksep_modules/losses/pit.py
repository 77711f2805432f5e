"""Utterance-level permutation-invariant training (uPIT) on negative SI-SNR.

The pairwise SI-SNR matrix of a batch is computed once, in one vectorised call; every
permutation is then scored from that matrix at once (``metrics.best_permutations``; C!
permutations: 2 for two speakers, 6 for three). SpeechBrain's ``PitWrapper`` gives the
same values but loops over the examples of a batch and over the permutations in Python.
"""

import torch

from spksep_modules.metrics import best_permutations, pairwise_si_snr


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

    Example
    -------
    >>> ref = torch.randn(2, 800, 2)
    >>> neg, aligned, perm = pit_si_snr(ref.flip(-1), ref)   # estimates in swapped order
    >>> perm.tolist(), bool((neg < -100).all()), torch.equal(aligned, ref)
    ([[1, 0], [1, 0]], True, True)
    """
    if est.shape != ref.shape or est.dim() != 3:
        raise ValueError(
            f"pit_si_snr expects est and ref as [batch, time, num_spks], got {tuple(est.shape)} "
            f"and {tuple(ref.shape)}"
        )
    # [B, C (ref), C (est)]
    pairwise = pairwise_si_snr(est.transpose(1, 2), ref.transpose(1, 2))

    best_score, perm = best_permutations(pairwise)  # [B], [B, C]
    est_aligned = torch.gather(est, 2, perm.unsqueeze(1).expand(-1, est.shape[1], -1))
    return -best_score, est_aligned, perm
