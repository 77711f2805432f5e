"""Figures of finished runs (``spksep plot RUN... --out DIR``), as PNG files.

- ``learning_curves.png``: train and valid SI-SNR and loss per epoch of every run on one
  figure, and the model-specific terms when a run logs them (``D_pos``, ``D_neg``, the
  conditioned model's intermediate SI-SNR).
- ``si_snri.png``: the per-mixture SI-SNRi of each model (violins, the mean marked) and,
  beside it, each model's per-mixture difference from the baseline run with its mean and
  95% bootstrap interval (``stats.paired_difference``).
- ``spectrograms.png``: one test mixture (default: the median one), its references, and
  each model's estimates. The test stage keeps no audio, so each run's model separates the
  mixture again here (``loading.load_separator``), reading the files from the run's
  ``test.csv``. Estimates are put in the references' order and scaled to them (SI-SNR
  training leaves their gain free), so all panels share one colour scale.

Matplotlib is used through its object API (``matplotlib.figure.Figure``), which renders
with Agg and never opens a window nor changes the process's backend.
"""

import csv
import os
import re

import numpy as np
import soundfile as sf
import torch

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import prepare_output_folder
from spksep_modules.reports.run_logs import read_test_results, read_train_log

PLOTS = ("curves", "distributions", "spectrograms")
FILES = {"curves": "learning_curves.png", "distributions": "si_snri.png",
         "spectrograms": "spectrograms.png"}
DPI = 100


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - in requirements.txt
        raise SpkSepError("plots need matplotlib (pip install matplotlib)") from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path, dpi):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return str(path)


def _colour(i):
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def run_labels(run_dirs) -> list:
    """A label per run: the paper's name of its model (from ``test_summary.json``, else
    the ``model_name`` of its ``hyperparams.yaml``), else its folder name; runs of the same
    model are told apart by their folder name.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     for name in ("base", "ws_a", "ws_b"):
    ...         os.makedirs(os.path.join(root, name))
    ...     for name, model in (("base", "convtasnet"), ("ws_a", "weighted_sum"), ("ws_b", "weighted_sum")):
    ...         with open(os.path.join(root, name, "hyperparams.yaml"), "w") as f:
    ...             _ = f.write(f"model_name: {model}\\n")
    ...     run_labels([os.path.join(root, n) for n in ("base", "ws_a", "ws_b", "other")])
    ['Conv-TasNet', 'P weighted-sum (ws_a)', 'P weighted-sum (ws_b)', 'other']
    """
    from spksep_modules.reports.tables import model_label, read_summary

    labels = []
    for run in run_dirs:
        model = None
        if os.path.isfile(os.path.join(run, "test_summary.json")):
            model = read_summary(run)["model"]
        elif os.path.isfile(os.path.join(run, "hyperparams.yaml")):
            with open(os.path.join(run, "hyperparams.yaml"), encoding="utf-8") as f:
                found = re.search(r"^model_name:\s*(\S+)", f.read(), re.MULTILINE)
            model = found.group(1) if found else None
        labels.append(model_label(model) if model else os.path.basename(os.path.normpath(str(run))))
    return [
        f"{label} ({os.path.basename(os.path.normpath(str(run)))})" if labels.count(label) > 1
        else label
        for label, run in zip(labels, run_dirs)
    ]


# (title, y label, log key without its "train "/"valid " prefix); the first two always,
# the others when a run logs them.
CURVES = [
    ("SI-SNR", "dB", "si_snr"),
    ("Loss", "", "loss"),
    ("D_pos (perceptual, own target)", "", "D_pos"),
    ("D_neg (perceptual, other speakers)", "", "D_neg"),
    ("Intermediate SI-SNR (basic model)", "dB", "si_snr_intermediate"),
]


def plot_learning_curves(run_dirs, path, labels=None, dpi: int = DPI) -> str:
    """Train (dashed) and valid (solid) curves of every run, one colour per run.

    Arguments
    ---------
    run_dirs : list of str
        Run folders holding ``train_log.txt``.
    path : str
        The PNG to write.
    labels : list of str or None
        Legend names (default: :func:`run_labels`).

    Returns
    -------
    str
        ``path``.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "train_log.txt"), "w") as f:
    ...         for epoch in (1, 2, 3):  # [3 epochs] x (loss, si_snr, D_pos)
    ...             print(f"epoch: {epoch}, lr: 1.00e-03 - train loss: {-epoch}.00, "
    ...                   f"train si_snr: {epoch}.00, train D_pos: 0.{epoch} - "
    ...                   f"valid loss: {-epoch}.50, valid si_snr: {epoch}.50", file=f)
    ...     png = plot_learning_curves([run], os.path.join(run, "curves.png"))
    ...     os.path.getsize(png) > 10000
    True
    """
    from matplotlib.ticker import MaxNLocator

    labels = labels or run_labels(run_dirs)
    logs = [read_train_log(run) for run in run_dirs]
    present = [c for i, c in enumerate(CURVES)
               if i < 2 or any(f"{s} {c[2]}" in e for log in logs for e in log
                               for s in ("train", "valid"))]
    cols = 2 if len(present) <= 4 else 3
    rows = -(-len(present) // cols)
    fig = _figure(4.6 * cols, 3.1 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, unit, key) in zip(axes, present):
        for i, log in enumerate(logs):
            for split, style in (("train", "--"), ("valid", "-")):
                points = [(e["epoch"], e[f"{split} {key}"]) for e in log if f"{split} {key}" in e]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, style, color=_colour(i), marker="." if len(x) < 30 else None)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    for ax in axes[len(present):]:
        ax.set_axis_off()
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour(i), label=label) for i, label in enumerate(labels)]
    handles += [Line2D([], [], color="grey", ls="--", label="train"),
                Line2D([], [], color="grey", ls="-", label="valid")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
               fontsize=9, frameon=False)
    return _save(fig, path, dpi)


def plot_distributions(run_dirs, path, baseline=None, labels=None, metric: str = "si_snr_i",
                       resamples: int = 10000, seed: int = 0, dpi: int = DPI) -> str:
    """Per-mixture ``metric`` of each run (violins, the mean as a dot) and, when a baseline
    run is among them, each other run's per-mixture difference from it: the mixtures as
    dots, the mean with its 95% bootstrap interval, the share improved and the p-value.

    Arguments
    ---------
    run_dirs : list of str
        Finished runs (``test_results.csv``; ``test_summary.json`` to find the baseline).
    path : str
        The PNG to write.
    baseline : str or None
        The baseline run (default: the ``convtasnet`` run, see ``tables.choose_baseline``).

    Returns
    -------
    str
        ``path``.

    Example
    -------
    >>> import json, tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     runs = []
    ...     for model, shift in (("convtasnet", 0.0), ("weighted_sum", 0.4)):
    ...         runs.append(os.path.join(root, model))
    ...         os.makedirs(runs[-1])
    ...         with open(os.path.join(runs[-1], "test_summary.json"), "w") as f:
    ...             json.dump({"model": model}, f)
    ...         with open(os.path.join(runs[-1], "test_results.csv"), "w") as f:
    ...             _ = f.write("mixture_ID,si_snr_i\\n")  # 20 mixtures
    ...             _ = f.writelines(f"m{i},{5 + i % 7 + shift}\\n" for i in range(20))
    ...     png = plot_distributions(runs, os.path.join(root, "si_snri.png"), resamples=200)
    ...     os.path.getsize(png) > 10000
    True
    """
    from spksep_modules.reports.tables import (
        METRIC_LABELS, choose_baseline, paired_gains, read_summary)

    run_dirs = [str(r) for r in run_dirs]
    labels = labels or run_labels(run_dirs)
    name = METRIC_LABELS.get(metric, metric)
    results = [read_test_results(run) for run in run_dirs]
    values = []
    for run, res in zip(run_dirs, results):
        where = os.path.join(run, "test_results.csv")
        if any(metric not in row for row in res.values()):
            raise SpkSepError(f"{where}: no {metric} column")
        v = np.array([row[metric] for row in res.values()], dtype=np.float64)
        values.append(v[np.isfinite(v)])
    summaries = [read_summary(run) for run in run_dirs]
    index = choose_baseline(run_dirs, summaries, baseline)
    gains = None
    if index is not None and len(run_dirs) > 1:
        gains = paired_gains(run_dirs, summaries, baseline=run_dirs[index], metric=metric,
                             resamples=resamples, seed=seed)
    others = [i for i in range(len(run_dirs)) if i != index]

    fig = _figure(max(5.5, 1.3 * len(run_dirs) + 2.5) + (4.5 if gains else 0), 4.2)
    axes = fig.subplots(1, 2 if gains else 1, squeeze=False,
                        width_ratios=[len(run_dirs), max(len(others), 1)] if gains else None)[0]
    ax = axes[0]
    rng = np.random.default_rng(0)
    positions = np.arange(1, len(run_dirs) + 1)
    parts = ax.violinplot(values, positions, showextrema=False, showmedians=True)
    for i, body in enumerate(parts["bodies"]):
        body.set_facecolor(_colour(i))
        body.set_alpha(0.35)
    for i, v in enumerate(values):
        if v.size <= 300:  # each mixture as a dot while they stay readable
            ax.scatter(positions[i] + rng.uniform(-0.12, 0.12, v.size), v, s=6,
                       color=_colour(i), alpha=0.6, linewidths=0)
        ax.plot(positions[i], v.mean(), "o", color="black", ms=4)
    ax.set_xticks(positions, labels, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(f"{name} (dB)" if metric != "stoi" and metric != "pesq" else name)
    ax.set_title(f"Per-mixture {name} ({max(v.size for v in values)} mixtures; dot: mean, "
                 "line: median)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if gains:
        ax = axes[1]
        base = results[index]
        ids = list(base)
        by_run = {g["run"]: g for g in gains["gains"]}
        for k, i in enumerate(others, start=1):
            diff = np.array([results[i][m][metric] - base[m][metric] for m in ids])
            g = by_run[run_dirs[i]]
            ax.scatter(k + rng.uniform(-0.15, 0.15, diff.size), diff, s=6, color=_colour(i),
                       alpha=0.5, linewidths=0)
            colour = "black" if g["significant"] else "dimgrey"
            ax.errorbar(k, g["mean"], yerr=[[g["mean"] - g["low"]], [g["high"] - g["mean"]]],
                        fmt="D", color=colour, ms=5, capsize=6, lw=2)
            ax.annotate(f"{g['mean']:+.2f}\n[{g['low']:+.2f}, {g['high']:+.2f}]\n"
                        f"{g['improved']:.0%} better\np={g['p_value']:.2g}",
                        (k + 0.22, g["mean"]), fontsize=7.5, va="center")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(range(1, len(others) + 1), [labels[i] for i in others], rotation=20,
                      ha="right", fontsize=9)
        ax.set_xlim(0.5, len(others) + 0.95)
        ax.set_ylabel(f"Δ{name} vs baseline")
        ax.set_title(f"Paired difference from {labels[index]} (mean, 95% CI)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, dpi)


def median_mixture(run_dirs, metric: str = "si_snr_i") -> str:
    """The test mixture whose ``metric``, averaged over the runs, is the median (the lower
    one for an even count) among the mixtures every run scored.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "test_results.csv"), "w") as f:
    ...         _ = f.write("mixture_ID,si_snr_i\\na,9.0\\nb,3.0\\nc,5.0\\nd,1.0\\n")
    ...     median_mixture([run])
    'b'
    """
    results = [read_test_results(run) for run in run_dirs]
    ids = [m for m in results[0] if all(m in r for r in results[1:])]
    if not ids:
        raise SpkSepError("the runs given share no test mixture")
    means = [np.mean([r[m].get(metric, np.nan) for r in results]) for m in ids]
    order = np.argsort(means, kind="stable")
    return ids[order[(len(ids) - 1) // 2]]


def _test_row(run_dirs, mixture):
    for run in run_dirs:
        path = os.path.join(run, "test.csv")
        if not os.path.isfile(path):
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("ID") == mixture:
                    return row
    raise SpkSepError(
        f"mixture {mixture}: not in the test.csv of any run given (the runs' data "
        "preparation writes it)"
    )


def _spectrogram(wav, rate):
    n_fft = 512 if rate >= 16000 else 256
    spec = torch.stft(wav.float(), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    return 20 * torch.log10(spec + 1e-6)


def separate_mixture(run_dir, mix, ref, rate, device="cpu"):
    """The estimates of a run's model for ``mix [T]``, in the order of ``ref [T, C]`` and
    scaled to it (least squares): ``[T, C]`` on CPU, and the per-source SI-SNR.

    Example
    -------
    >>> separate_mixture("no/such/run", torch.zeros(8), torch.zeros(8, 2), 8000)
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: no/such/run: not a training run folder (no hyperparams.yaml); train one with recipes/LibriMix/separation/train.py
    """
    from spksep_modules.deploy.separate import separate_waveform
    from spksep_modules.loading import load_separator
    from spksep_modules.metrics import best_permutation, pairwise_si_snr, si_snr
    from spksep_modules.models import fuse_for_inference

    separator, model_rate = load_separator(str(run_dir), device)
    if model_rate != rate:
        raise SpkSepError(f"{run_dir}: model at {model_rate} Hz, test audio at {rate} Hz")
    est = separate_waveform(fuse_for_inference(separator), mix.to(device), sample_rate=rate,
                            precision="fp32").cpu()
    est = est[:, list(best_permutation(pairwise_si_snr(est.T, ref.T)))]
    gains = (est * ref).sum(0) / (est * est).sum(0).clamp_min(1e-12)
    return est * gains, si_snr(est.T, ref.T)


def plot_spectrograms(run_dirs, path, mixture=None, labels=None, device: str = "cpu",
                      dpi: int = DPI) -> str:
    """Spectrograms of one test mixture, its references and every run's estimates.

    Arguments
    ---------
    run_dirs : list of str
        Finished runs (``save/``, ``hyperparams.yaml``, ``test.csv``, ``test_results.csv``).
    path : str
        The PNG to write.
    mixture : str or None
        A test mixture ID; default :func:`median_mixture`.
    device : str
        Where the models separate it.

    Returns
    -------
    str
        ``path``. The first row holds the mixture and the references; each run has a row
        with its name, its SI-SNRi on this mixture, and its estimates.

    Example
    -------
    >>> plot_spectrograms(["no/such/run"], "spec.png", mixture="m1")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: mixture m1: not in the test.csv of any run given (the runs' data preparation writes it)
    """
    from spksep_modules.audio import read_wav
    from spksep_modules.metrics import si_snr

    run_dirs = [str(r) for r in run_dirs]
    labels = labels or run_labels(run_dirs)
    mixture = mixture or median_mixture(run_dirs)
    row = _test_row(run_dirs, mixture)
    sources = sorted((k for k in row if re.fullmatch(r"s\d+_wav", k)), key=lambda k: int(k[1:-4]))
    mix = read_wav(row["mix_wav"])  # a one-line error when the data has moved
    rate = sf.info(row["mix_wav"]).samplerate
    ref = torch.stack([read_wav(row[k], rate) for k in sources], dim=1)  # [T, C]
    mix_snr = si_snr(mix.expand(ref.shape[1], -1), ref.T)
    panels = [[("Mixture", mix)]
              + [(f"Reference s{c + 1}", ref[:, c]) for c in range(ref.shape[1])]]
    notes = []
    for run, label in zip(run_dirs, labels):
        est, snr = separate_mixture(run, mix, ref, rate, device)
        notes.append(f"{label}\n\nSI-SNRi {float((snr - mix_snr).mean()):.2f} dB\n"
                     + "\n".join(f"s{c + 1}: {float(v):.1f} dB" for c, v in enumerate(snr)))
        panels.append([None] + [(f"{label}: estimate s{c + 1}", est[:, c])
                                for c in range(est.shape[1])])
    specs = [[_spectrogram(p[1], rate) if p else None for p in r] for r in panels]
    top = max(float(s.max()) for r in specs for s in r if s is not None)
    rows, cols = len(panels), len(panels[0])
    fig = _figure(3.4 * cols, 1.9 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    seconds, khz = mix.numel() / rate, rate / 2000
    image = None
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            if panels[r][c] is None:
                ax.set_axis_off()
                ax.text(0.02, 0.5, notes[r - 1], fontsize=8.5, va="center", transform=ax.transAxes)
                continue
            image = ax.imshow(specs[r][c].numpy(), origin="lower", aspect="auto", cmap="magma",
                              vmin=top - 80, vmax=top, extent=(0, seconds, 0, khz),
                              interpolation="nearest")
            ax.set_title(panels[r][c][0], fontsize=9)
            if c == 1 or (r == 0 and c == 0):
                ax.set_ylabel("kHz")
            elif c > 1:
                ax.tick_params(labelleft=False)
            if r == rows - 1:
                ax.set_xlabel("time (s)")
    fig.colorbar(image, ax=axes, shrink=0.6, label="dB")
    fig.suptitle(f"Test mixture {mixture}", fontsize=10)
    return _save(fig, path, dpi)


def plot_runs(run_dirs, out, plots=PLOTS, baseline=None, mixture=None, device: str = "cpu",
              dpi: int = DPI) -> list:
    """Write the figures ``plots`` (of ``PLOTS``) of ``run_dirs`` into folder ``out``; a
    ``baseline`` run not among ``run_dirs`` is plotted too.

    Returns
    -------
    list of str
        The PNGs written (``FILES``), in the order of ``plots``.

    Example
    -------
    >>> plot_runs(["runs/a"], "plots", plots=["histograms"])
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: unknown plot 'histograms' (choose from curves, distributions, spectrograms)
    """
    for name in plots:
        if name not in PLOTS:
            raise SpkSepError(f"unknown plot {name!r} (choose from {', '.join(PLOTS)})")
    run_dirs = [str(r) for r in run_dirs]
    if baseline is not None and not any(
            os.path.realpath(baseline) == os.path.realpath(r) for r in run_dirs):
        run_dirs.insert(0, str(baseline))  # as `spksep table` does
    labels = run_labels(run_dirs)
    out = prepare_output_folder(out)  # one error line, before any figure is drawn
    written = []
    for name in plots:
        path = os.path.join(out, FILES[name])
        if name == "curves":
            written.append(plot_learning_curves(run_dirs, path, labels, dpi=dpi))
        elif name == "distributions":
            written.append(plot_distributions(run_dirs, path, baseline, labels, dpi=dpi))
        else:
            written.append(plot_spectrograms(run_dirs, path, mixture, labels, device, dpi=dpi))
    return written
