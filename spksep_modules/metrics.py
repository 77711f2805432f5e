"""Separation metrics: SI-SNR(i), BSS-eval SDR(i), STOI and, optionally, PESQ.

Conventions follow the LibriMix literature (Asteroid's evaluation):

- SI-SNR zero-means both signals, then measures the estimate against its projection on
  the reference.
- SDR is BSS-eval v3's ``bss_eval_sources`` SDR: the estimate may differ from the
  reference by a 512-tap FIR filter without penalty (a "distortion filter").
- The improvement versions (SI-SNRi, SDRi) subtract the score the unprocessed mixture gets
  against the same reference.
- Estimates are aligned to the references by the permutation that maximises the mean
  SI-SNR before anything is scored.
- PESQ (ITU-T P.862, the ``pesq`` package) is wideband (P.862.2) at 16 kHz, as Asteroid
  and most separation papers report it, and narrowband at 8 kHz (the only rates PESQ is
  defined for). It is slow (~0.1 s per second of audio), hence optional.
"""

from functools import lru_cache
from itertools import permutations

import numpy as np
import torch
from pystoi import stoi as _pystoi

# Length of BSS-eval's distortion filter (mir_eval and Asteroid default).
BSS_FILTER_LENGTH = 512


def si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio in dB.

    Both signals are zero-meaned; the estimate is split into its projection on the
    reference (the target) and the rest (the noise). ``eps`` keeps silent references and
    perfect estimates finite; it is placed as in SpeechBrain's ``cal_si_snr`` so the two
    agree to float precision.

    Arguments
    ---------
    est, ref : torch.Tensor
        ``[..., time]``; leading dimensions broadcast against each other.

    Returns
    -------
    torch.Tensor
        ``[...]`` SI-SNR in dB (differentiable in both inputs).

    Example
    -------
    >>> t = torch.arange(8000) / 8000
    >>> clean, hum = torch.sin(2 * torch.pi * 100 * t), torch.sin(2 * torch.pi * 300 * t)
    >>> si_snr(clean + 0.1 * hum, clean), si_snr(2 * (clean + 0.1 * hum), clean)  # 20 dB, any gain
    (tensor(20.), tensor(20.))
    >>> x = torch.randn(3, 800)
    >>> si_snr(x, x).shape, bool((si_snr(x, x) > 60).all())
    (torch.Size([3]), True)
    """
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    dot = (est * ref).sum(dim=-1, keepdim=True)
    ref_energy = (ref**2).sum(dim=-1, keepdim=True) + eps
    target = dot / ref_energy * ref
    noise = est - target
    ratio = (target**2).sum(dim=-1) / ((noise**2).sum(dim=-1) + eps)
    return 10 * torch.log10(ratio + eps)


def pairwise_si_snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SI-SNR of every estimate against every reference.

    Arguments
    ---------
    est, ref : torch.Tensor
        ``[..., num_spks, time]``.

    Returns
    -------
    torch.Tensor
        ``[..., num_spks (reference i), num_spks (estimate j)]``: entry ``[..., i, j]`` is
        ``si_snr(est_j, ref_i)``.

    Example
    -------
    >>> ref = torch.randn(4, 2, 800)  # [batch, num_spks, time]
    >>> scores = pairwise_si_snr(ref.flip(1), ref)  # estimates in swapped order
    >>> scores.shape, bool((scores[:, 0, 1] > 60).all()), bool((scores[:, 0, 0] < 0).all())
    (torch.Size([4, 2, 2]), True, True)
    """
    # Broadcasting builds a [..., C, C, time] tensor: C times the input, and the noise is
    # computed explicitly (not as |e|^2 - 2<e,t> + |t|^2, which cancels catastrophically
    # in float32 when the estimate is good).
    return si_snr(est.unsqueeze(-3), ref.unsqueeze(-2))


def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def sdr(
    est: torch.Tensor, ref: torch.Tensor, filter_length: int = BSS_FILTER_LENGTH
) -> torch.Tensor:
    """BSS-eval v3 SDR of each estimate against the reference in the same position.

    Matches ``mir_eval.separation.bss_eval_sources(ref, est, compute_permutation=False)``
    (the SDR Asteroid and the LibriMix papers report). For source ``j`` the estimate is
    projected, by least squares, on the span of ``filter_length`` delayed copies of
    ``ref_j`` (zero-padded by ``filter_length - 1``); SDR is the energy of that projection
    over the energy of what remains. The normal equations have a Toeplitz matrix (the
    reference's autocorrelation), and every correlation is taken with FFTs. Computed in
    float64.

    Arguments
    ---------
    est, ref : torch.Tensor
        ``[num_spks, time]`` for one mixture, sources in matching order.

    Returns
    -------
    torch.Tensor
        ``[num_spks]`` SDR in dB (float64, no gradient). ``+inf`` for a perfect estimate,
        ``-inf`` when the estimate has nothing in common with the reference.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> ref = torch.randn(2, 4000)
    >>> late = torch.nn.functional.pad(ref, (3, 0))[:, :4000]  # 3 samples late: a filter
    >>> sdr(late, ref).shape, bool((sdr(late, ref) > 20).all()), bool((si_snr(late, ref) < 0).all())
    (torch.Size([2]), True, True)
    """
    est = torch.as_tensor(est).detach().cpu().to(torch.float64)
    ref = torch.as_tensor(ref).detach().cpu().to(torch.float64)
    if est.shape != ref.shape or est.dim() != 2:
        raise ValueError(
            "sdr expects est and ref as [num_spks, time], got "
            f"{tuple(est.shape)} and {tuple(ref.shape)}"
        )
    num_samples = ref.shape[-1]
    padded_len = num_samples + filter_length - 1
    # Long enough that circular correlations equal linear ones.
    n_fft = _next_pow2(padded_len)

    ref_f = torch.fft.rfft(ref, n=n_fft)
    est_f = torch.fft.rfft(est, n=n_fft)
    # autocorr[j, k] = sum_t ref_j[t] ref_j[t + k];  xcorr[j, k] = sum_t ref_j[t] est_j[t + k]
    autocorr = torch.fft.irfft(ref_f.abs() ** 2, n=n_fft)[:, :filter_length]
    xcorr = torch.fft.irfft(ref_f.conj() * est_f, n=n_fft)[:, :filter_length]

    # Gram matrix of the delayed references: gram[j, a, b] = autocorr[j, |a - b|].
    lags = torch.arange(filter_length)
    gram = autocorr[:, (lags[:, None] - lags[None, :]).abs()]
    try:
        coefs = torch.linalg.solve(gram, xcorr.unsqueeze(-1)).squeeze(-1)
    except RuntimeError:
        # Singular Gram matrix (e.g. a silent reference): least squares, as mir_eval does.
        coefs = torch.linalg.lstsq(gram, xcorr.unsqueeze(-1)).solution.squeeze(-1)

    # Projection = reference filtered by the distortion filter (full convolution).
    proj = torch.fft.irfft(ref_f * torch.fft.rfft(coefs, n=n_fft), n=n_fft)[:, :padded_len]
    residual = -proj
    residual[:, :num_samples] += est
    return 10 * torch.log10((proj**2).sum(-1) / (residual**2).sum(-1))


def stoi(est, ref, sample_rate: int) -> float:
    """Short-time objective intelligibility (classic, not extended) via ``pystoi``.

    Arguments
    ---------
    est, ref : torch.Tensor or numpy.ndarray
        ``[time]`` single-channel signals.
    sample_rate : int
        Sample rate of both signals (pystoi resamples to 10 kHz itself).

    Returns
    -------
    float
        STOI, at most 1.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> speech = torch.randn(16000)
    >>> stoi(speech, speech, 16000), stoi(speech + torch.randn(16000), speech, 16000) < 0.9
    (1.0, True)
    """
    est = torch.as_tensor(est).detach().cpu().double().numpy()
    ref = torch.as_tensor(ref).detach().cpu().double().numpy()
    return float(_pystoi(ref, est, int(sample_rate), extended=False))


PESQ_MODES = {16000: "wb", 8000: "nb"}


def pesq_mode(sample_rate: int) -> str:
    """PESQ's mode at ``sample_rate``: ``"wb"`` (16 kHz) or ``"nb"`` (8 kHz); any other rate
    is a one-line error.

    Example
    -------
    >>> pesq_mode(16000), pesq_mode(8000)
    ('wb', 'nb')
    >>> pesq_mode(44100)
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: pesq: defined at 16000 Hz (wideband) and 8000 Hz (narrowband) only, the data is at 44100 Hz
    """
    if int(sample_rate) not in PESQ_MODES:
        from spksep_modules import SpkSepError

        raise SpkSepError(
            "pesq: defined at 16000 Hz (wideband) and 8000 Hz (narrowband) only, the data is "
            f"at {sample_rate} Hz"
        )
    return PESQ_MODES[int(sample_rate)]


def pesq_score(est, ref, sample_rate: int) -> float:
    """PESQ of one estimate against its reference: wideband at 16 kHz, narrowband at 8 kHz.

    Arguments
    ---------
    est, ref : torch.Tensor or numpy.ndarray
        ``[time]`` single-channel signals, at least 0.25 s long.
    sample_rate : int
        16000 or 8000.

    Returns
    -------
    float
        MOS-LQO, between about 1 and 4.64 (wideband) / 4.55 (narrowband); NaN when PESQ finds
        no speech in the reference.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> t = torch.arange(16000) / 16000
    >>> ref = torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)  # a warble
    >>> clean = pesq_score(ref, ref, 16000)
    >>> noisy = pesq_score(ref + 0.3 * torch.randn(16000), ref, 16000)
    >>> clean > 4, noisy < clean - 1
    (True, True)
    >>> pesq_score(ref, torch.zeros(16000), 16000)  # no speech in the reference
    nan
    """
    try:
        from pesq import PesqError
        from pesq import pesq as _pesq
    except ImportError:  # pragma: no cover - in requirements.txt
        from spksep_modules import SpkSepError

        raise SpkSepError("pesq: the 'pesq' package is not installed (pip install pesq)") from None
    mode = pesq_mode(sample_rate)
    est = torch.as_tensor(est).detach().cpu().double().numpy()
    ref = torch.as_tensor(ref).detach().cpu().double().numpy()
    try:
        return float(_pesq(int(sample_rate), ref, est, mode))
    except PesqError:  # no utterance in the reference, or shorter than 0.25 s
        return float("nan")


@lru_cache(maxsize=None)
def _permutations(num_spks: int, device: torch.device) -> torch.Tensor:
    """``[num_perms, num_spks]`` on ``device`` (cached: no host-to-device copy per call)."""
    return torch.tensor(list(permutations(range(num_spks))), dtype=torch.long, device=device)


def best_permutations(pairwise: torch.Tensor):
    """The assignments maximising the mean of ``[..., C (ref), C (est)]`` score matrices.

    All C! permutations are scored at once by indexing. Returns ``(best_mean [...],
    perm [..., C])`` with ``perm[..., i]`` the estimate assigned to reference ``i``.

    Example
    -------
    >>> pairwise = torch.tensor([[[1.0, 5.0], [4.0, 0.0]], [[6.0, 1.0], [0.0, 2.0]]])
    >>> best_permutations(pairwise)  # [batch=2, C=2 refs, C=2 ests]
    (tensor([4.5000, 4.0000]), tensor([[1, 0],
            [0, 1]]))
    """
    num_spks = pairwise.shape[-1]
    perms = _permutations(num_spks, pairwise.device)  # [P, C]
    rows = torch.arange(num_spks, device=pairwise.device)
    scores = pairwise[..., rows, perms].mean(-1)  # [..., P]
    best_mean, best = scores.max(dim=-1)
    return best_mean, perms[best]


def best_permutation(pairwise: torch.Tensor) -> tuple:
    """The assignment maximising the mean of one ``[C (ref), C (est)]`` score matrix.

    Returns a tuple ``perm`` with ``perm[i]`` the estimate assigned to reference ``i``.

    Example
    -------
    >>> best_permutation(torch.tensor([[1.0, 5.0], [4.0, 0.0]]))  # ref 0 <- est 1
    (1, 0)
    """
    return tuple(best_permutations(pairwise)[1].tolist())


def evaluate_mixture(mix, est, ref, sample_rate: int, pesq: bool = False) -> dict:
    """All test metrics for one mixture, averaged over its sources.

    Estimates are first reordered by the permutation that maximises the mean SI-SNR, so
    callers can pass the network's raw output.

    Arguments
    ---------
    mix : torch.Tensor
        ``[time]`` the mixture.
    est, ref : torch.Tensor
        ``[time, num_spks]`` estimates and clean references (SpeechBrain's layout).
    sample_rate : int
    pesq : bool
        Also PESQ (:func:`pesq_score`; wideband at 16 kHz, narrowband at 8 kHz), averaged
        over the sources PESQ could score (NaN when none).

    Returns
    -------
    dict
        Python floats ``si_snr, si_snr_i, sdr, sdr_i, stoi`` (and ``pesq``).

    Example
    -------
    >>> ref = torch.randn(8000, 2)  # [time, num_spks]
    >>> scores = evaluate_mixture(ref.sum(-1), ref.flip(-1), ref, 8000)  # any order
    >>> sorted(scores), scores["si_snr"] > 60, scores["sdr_i"] > 60, scores["stoi"]
    (['sdr', 'sdr_i', 'si_snr', 'si_snr_i', 'stoi'], True, True, 1.0)
    >>> scores = evaluate_mixture(ref.sum(-1), ref.flip(-1), ref, 8000, pesq=True)
    >>> sorted(scores)[-1], scores["pesq"] > 4
    ('stoi', True)
    """
    mix = torch.as_tensor(mix).detach().cpu().double()
    est = torch.as_tensor(est).detach().cpu().double().t()  # [C, time]
    ref = torch.as_tensor(ref).detach().cpu().double().t()
    if est.shape != ref.shape or mix.dim() != 1 or mix.shape[0] != ref.shape[1]:
        raise ValueError(
            "evaluate_mixture expects mix [time], est and ref [time, num_spks] of one length, got "
            f"{tuple(mix.shape)}, {tuple(est.t().shape)}, {tuple(ref.t().shape)}"
        )
    est = est[list(best_permutation(pairwise_si_snr(est, ref)))]
    mix_as_est = mix.expand_as(ref)

    si_snr_est = si_snr(est, ref)
    si_snr_mix = si_snr(mix_as_est, ref)
    sdr_est = sdr(est, ref)
    sdr_mix = sdr(mix_as_est, ref)
    stoi_est = [stoi(e, r, sample_rate) for e, r in zip(est, ref)]
    scores = {
        "si_snr": si_snr_est.mean().item(),
        "si_snr_i": (si_snr_est - si_snr_mix).mean().item(),
        "sdr": sdr_est.mean().item(),
        "sdr_i": (sdr_est - sdr_mix).mean().item(),
        "stoi": float(np.mean(stoi_est)),
    }
    if pesq:
        values = [pesq_score(e, r, sample_rate) for e, r in zip(est, ref)]
        finite = [v for v in values if np.isfinite(v)]
        scores["pesq"] = float(np.mean(finite)) if finite else float("nan")
    return scores
