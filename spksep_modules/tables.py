"""Table I and Table II of Sun et al. from finished runs, the paper's numbers beside ours,
and the paired gains of every model over the baseline run given with it.

The gains are computed per test mixture (both runs scored the same mixtures): the mean
difference with a 95% bootstrap interval, the share of mixtures improved and a Wilcoxon
signed-rank p-value (see ``stats``). Runs evaluated on different mixtures cannot be paired.
"""

import csv
import json
import os

from spksep_modules import SpkSepError
from spksep_modules.runs import column, read_test_results
from spksep_modules.stats import paired_difference

# model_name (the yaml's key) -> (row label, paper SI-SNR dB, paper STOI)
TABLE_I = {
    "convtasnet": ("Conv-TasNet", 14.118, 0.928),
    "weighted_sum": ("P weighted-sum", 14.319, 0.930),
    "triplet_like": ("P triplet-like", 14.298, 0.929),
    "conditioning": ("Conditioning", 14.863, 0.936),
}
TABLE_II = {
    "convtasnet": ("Basic loss (Conv-TasNet)", 14.118, 0.928),
    "ablation_pos": ("Basic loss + D_pos", 14.205, 0.929),
    "ablation_neg": ("Basic loss + D_neg", 14.318, 0.929),
    "weighted_sum": ("Basic loss + D_pos + D_neg", 14.319, 0.930),
}


def read_summary(run_dir: str) -> dict:
    """The ``test_summary.json`` of a run folder.

    Arguments
    ---------
    run_dir : str
        A finished run's output folder.

    Returns
    -------
    dict
        The summary; it always has a ``"model"`` key.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "test_summary.json"), "w") as f:
    ...         json.dump({"model": "convtasnet", "si_snr": 14.5}, f)
    ...     read_summary(run)
    {'model': 'convtasnet', 'si_snr': 14.5}
    >>> read_summary("no_such_run")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: no_such_run/test_summary.json: missing (evaluate the run first: train.py ... --test_only)
    """
    path = os.path.join(run_dir, "test_summary.json")
    if not os.path.isfile(path):
        raise SpkSepError(f"{path}: missing (evaluate the run first: train.py ... --test_only)")
    try:
        with open(path) as f:
            summary = json.load(f)
    except json.JSONDecodeError as err:
        raise SpkSepError(f"{path}: not valid JSON ({err.msg})") from None
    if "model" not in summary:
        raise SpkSepError(f"{path}: no 'model' field")
    return summary


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(title: str, rows: dict, summaries: list) -> str:
    """One Markdown table; a paper row without a matching run shows '-' for ours.

    Arguments
    ---------
    title : str
    rows : dict
        model name -> (row label, paper SI-SNR, paper STOI), e.g. ``TABLE_I``.
    summaries : list of dict
        What :func:`read_summary` returns, one per run.

    Returns
    -------
    str
        A ``### title`` heading, a blank line, the header, the rule and one line per row.

    Example
    -------
    >>> ours = {"model": "convtasnet", "si_snr": 14.5, "si_snr_i": 14.49, "sdr_i": 15.0,
    ...         "stoi": 0.93, "num_test": 3000}
    >>> lines = markdown_table("Table I", TABLE_I, [ours]).splitlines()
    >>> for line in lines[:1] + lines[4:6]:  # heading, a row with a run, one without
    ...     print(line)
    ### Table I
    | Conv-TasNet | 14.118 | 14.500 | 14.490 | 15.000 | 0.928 | 0.930 | 3000 |
    | P weighted-sum | 14.319 | - | - | - | 0.930 | - | - |
    """
    ours = {s["model"]: s for s in summaries}
    lines = [
        f"### {title}",
        "",
        "| Model | SI-SNR paper | SI-SNR ours | SI-SNRi ours | SDRi ours | STOI paper | STOI ours | test mixtures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, (label, paper_si_snr, paper_stoi) in rows.items():
        s = ours.get(key, {})
        lines.append(
            f"| {label} | {paper_si_snr:.3f} | {_fmt(s.get('si_snr'), 3)} | "
            f"{_fmt(s.get('si_snr_i'), 3)} | {_fmt(s.get('sdr_i'), 3)} | {paper_stoi:.3f} | "
            f"{_fmt(s.get('stoi'), 3)} | {s.get('num_test', '-')} |"
        )
    return "\n".join(lines)


def tables(run_dirs) -> str:
    """Table I, and Table II when an ablation run is among ``run_dirs``.

    Arguments
    ---------
    run_dirs : list of str
        Run folders, each holding a ``test_summary.json``.

    Returns
    -------
    str
        The Markdown tables and a note on the paper's SI-SNR column.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "test_summary.json"), "w") as f:
    ...         json.dump({"model": "ablation_pos", "si_snr": 14.2}, f)
    ...     text = tables([run])
    >>> [line for line in text.splitlines() if line.startswith("###")]
    ['### Table I: models (Libri2Mix test)', '### Table II: ablation on P weighted-sum']
    """
    summaries = [read_summary(d) for d in run_dirs]
    models = {s["model"] for s in summaries}
    out = [markdown_table("Table I: models (Libri2Mix test)", TABLE_I, summaries)]
    if models & {"ablation_pos", "ablation_neg"}:
        out.append(markdown_table("Table II: ablation on P weighted-sum", TABLE_II, summaries))
    out.append(
        "\nPaper's SI-SNR column: the paper does not say whether it is the output SI-SNR or the "
        "improvement, so both of ours are shown."
    )
    return "\n\n".join(out)
