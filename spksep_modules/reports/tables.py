"""Table I and Table II of Sun et al. from finished runs, the paper's numbers beside ours,
and the paired gains of every model over the baseline run given with it.

The conditioned model starts from the trained baseline and trains on, so part of its gain
may be the extra training alone. A ``convtasnet_continued`` run (the baseline trained on
from its final weights for the conditioned run's extra compute, as ``make demo`` does)
separates the two: given with a conditioning run, it adds a row to Table I and the
conditioned model's paired gains over it.

The gains are computed per test mixture (both runs scored the same mixtures): the mean
difference with a 95% bootstrap interval, the share of mixtures improved and a Wilcoxon
signed-rank p-value (see ``stats``). Runs evaluated on different mixtures cannot be paired.

One run per model cannot tell a gap from training randomness (on the demo, two seeds of
the same baseline differ by 0.39 dB). Runs of the same model are therefore grouped as its
seeds (or named: ``NAME=RUN,RUN``); with several seeds the tables show the means over
seeds and each gain gets two more intervals, over seeds and over both seeds and mixtures
(:func:`seed_gains`, ``stats.seeded_difference``). With one run per model the output is
what it always was.
"""

import csv
import glob
import json
import os

from spksep_modules import SpkSepError
from spksep_modules.reports.run_logs import column, read_test_results
from spksep_modules.reports.stats import paired_difference, seeded_difference

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
# The baseline trained on for the conditioned model's extra compute (not in the paper).
CONTINUED_MODEL = "convtasnet_continued"
CONTINUED_ROW = {CONTINUED_MODEL: ("Conv-TasNet (continued)", None, None)}


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


def markdown_table(title: str, rows: dict, summaries: list, seeds: dict = None) -> str:
    """One Markdown table; a paper row without a matching run shows '-' for ours.

    Arguments
    ---------
    title : str
    rows : dict
        model name -> (row label, paper SI-SNR, paper STOI), e.g. ``TABLE_I``; ``None``
        for a number the paper does not have.
    summaries : list of dict
        What :func:`read_summary` returns, one per run (or the means over a model's seeds).
    seeds : dict or None
        model name -> number of runs averaged in its row: adds a ``seeds`` column.

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
    pesq = any("pesq" in s for s in summaries)  # the optional column (yaml key `pesq`)
    lines = [
        f"### {title}",
        "",
        "| Model | SI-SNR paper | SI-SNR ours | SI-SNRi ours | SDRi ours | STOI paper | STOI ours |"
        + (" PESQ ours |" if pesq else "") + " test mixtures |" + (" seeds |" if seeds else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if pesq else "") + "---|"
        + ("---|" if seeds else ""),
    ]
    for key, (label, paper_si_snr, paper_stoi) in rows.items():
        s = ours.get(key, {})
        lines.append(
            f"| {label} | {_fmt(paper_si_snr, 3)} | {_fmt(s.get('si_snr'), 3)} | "
            f"{_fmt(s.get('si_snr_i'), 3)} | {_fmt(s.get('sdr_i'), 3)} | {_fmt(paper_stoi, 3)} | "
            f"{_fmt(s.get('stoi'), 3)} |" + (f" {_fmt(s.get('pesq'), 2)} |" if pesq else "")
            + f" {s.get('num_test', '-')} |" + (f" {seeds.get(key, '-')} |" if seeds else "")
        )
    return "\n".join(lines)


BASELINE_MODEL = "convtasnet"
# Per-mixture columns a gain can be computed on (``--metric``).
METRICS = ("si_snr_i", "si_snr", "sdr_i", "sdr", "stoi", "pesq")
METRIC_LABELS = {"si_snr_i": "SI-SNRi", "si_snr": "SI-SNR", "sdr_i": "SDRi", "sdr": "SDR",
                 "stoi": "STOI", "pesq": "PESQ"}
TEST = "Wilcoxon signed-rank, two-sided"


def model_label(model: str) -> str:
    """The paper's row label of a model name (``Table I`` first), else the name itself.

    Example
    -------
    >>> model_label("weighted_sum"), model_label("ablation_pos"), model_label("sepformer")
    ('P weighted-sum', 'Basic loss + D_pos', 'sepformer')
    >>> model_label("convtasnet_continued")
    'Conv-TasNet (continued)'
    """
    for rows in (TABLE_I, TABLE_II, CONTINUED_ROW):
        if model in rows:
            return rows[model][0]
    return model


def _paper_si_snr(model):
    row = TABLE_I.get(model) or TABLE_II.get(model)
    return row[1] if row else None


def _same(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def choose_baseline(run_dirs, summaries, baseline=None):
    """Index in ``run_dirs`` of the baseline run: ``baseline`` when given (a run folder
    among ``run_dirs``), else the one Conv-TasNet run; ``None`` when there is none.

    Example
    -------
    >>> runs = ["runs/a", "runs/b"]
    >>> choose_baseline(runs, [{"model": "weighted_sum"}, {"model": "convtasnet"}])
    1
    >>> choose_baseline(runs, [{"model": "weighted_sum"}, {"model": "triplet_like"}]) is None
    True
    >>> choose_baseline(runs, [{"model": "convtasnet_continued"}, {"model": "convtasnet"}])
    1
    >>> choose_baseline(runs, [{"model": "convtasnet"}, {"model": "convtasnet"}])
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: several baseline (convtasnet) runs given: runs/a, runs/b; name one with --baseline
    """
    return _baseline_index(run_dirs, (s["model"] for s in summaries), baseline, _same, str)


def _baseline_index(items, models, baseline, holds, name):
    """:func:`choose_baseline` of runs or groups: the first of ``items`` that
    ``holds(item, baseline)`` when ``baseline`` is given, else the one whose model (in
    ``models``, one per item) is the baseline model; ``name(item)``: its name in errors."""
    if baseline is not None:
        for i, item in enumerate(items):
            if holds(item, baseline):
                return i
        raise SpkSepError(f"--baseline {baseline}: not among the runs given")
    found = [i for i, model in enumerate(models) if model == BASELINE_MODEL]
    if len(found) > 1:
        names = ", ".join(name(items[i]) for i in found)
        raise SpkSepError(
            f"several baseline ({BASELINE_MODEL}) runs given: {names}; name one with --baseline"
        )
    return found[0] if found else None


def _labels(run_dirs, summaries):
    """Row labels; runs of the same model are told apart by their folder name."""
    labels = [model_label(s["model"]) for s in summaries]
    return [
        f"{label} ({os.path.basename(os.path.normpath(str(run)))})" if labels.count(label) > 1
        else label
        for label, run in zip(labels, run_dirs)
    ]


def paired_gains(run_dirs, summaries=None, baseline=None, metric: str = "si_snr_i",
                 resamples: int = 10000, seed: int = 0, labels=None) -> dict:
    """Paired per-mixture gains of every run over the baseline run.

    Arguments
    ---------
    run_dirs : list of str
        Finished runs (``test_summary.json`` and ``test_results.csv``), the baseline among them.
    summaries : list of dict or None
        Their :func:`read_summary` (read here when ``None``).
    baseline : str or None
        The baseline run folder; ``None``: the one ``convtasnet`` run (see :func:`choose_baseline`).
    metric : str
        The ``test_results.csv`` column compared (one of ``METRICS``).
    resamples, seed : int
        Of the bootstrap (see ``stats.paired_difference``).
    labels : list of str or None
        Row labels of ``run_dirs`` (default: the paper's label of each model).

    Returns
    -------
    dict
        ``baseline`` (its folder, or ``None`` when no baseline run is among the runs),
        ``metric``, ``resamples``, ``seed``, ``test``, ``num_test`` and ``gains``: one dict per
        other run with ``run``, ``model``, ``label``, ``paper_gap`` (the paper's SI-SNR
        difference between the two models, when it has both) and what
        ``stats.paired_difference`` returns (``mean``, ``low``, ``high``, ``improved``,
        ``p_value``, ``significant``, ``n``).

    Example
    -------
    >>> import tempfile
    >>> def fake_run(root, model, si_snr_i, ids=("m1", "m2", "m3")):
    ...     run = os.path.join(root, model)
    ...     os.makedirs(run)
    ...     with open(os.path.join(run, "test_summary.json"), "w") as f:
    ...         json.dump({"model": model, "num_test": len(ids)}, f)
    ...     with open(os.path.join(run, "test_results.csv"), "w") as f:
    ...         f.write("mixture_ID,si_snr_i\\n")
    ...         f.writelines(f"{i},{v}\\n" for i, v in zip(ids, si_snr_i))
    ...     return run
    >>> with tempfile.TemporaryDirectory() as root:
    ...     base = fake_run(root, "convtasnet", [8.0, 10.0, 12.0])
    ...     ours = fake_run(root, "weighted_sum", [9.0, 10.5, 12.1])  # better on every mixture
    ...     gain = paired_gains([base, ours])["gains"][0]
    ...     other = fake_run(root, "triplet_like", [9.0, 10.5, 12.1], ids=("m1", "m2", "x9"))
    ...     paired_gains([base, other])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: .../triplet_like and .../convtasnet were evaluated on different test sets (1 mixtures not in the baseline's, 1 of its 3 missing, e.g. x9); they cannot be paired
    >>> gain["label"], round(gain["mean"], 3), gain["low"] > 0, gain["improved"], gain["paper_gap"]
    ('P weighted-sum', 0.533, True, 1.0, 0.201)
    """
    if metric not in METRICS:
        raise SpkSepError(f"--metric {metric}: unknown, choose one of {', '.join(METRICS)}")
    run_dirs = [str(r) for r in run_dirs]
    summaries = summaries if summaries is not None else [read_summary(r) for r in run_dirs]
    out = {"baseline": None, "metric": metric, "resamples": resamples, "seed": seed,
           "test": TEST, "num_test": None, "gains": []}
    index = choose_baseline(run_dirs, summaries, baseline)
    if index is None or len(run_dirs) < 2:
        if index is not None:
            out["baseline"] = run_dirs[index]
        return out
    base_dir, base_summary = run_dirs[index], summaries[index]
    ids = list(read_test_results(base_dir))
    base_values = _paired_values(base_dir, base_dir, ids, metric)
    labels = labels or _labels(run_dirs, summaries)
    out.update(baseline=base_dir, num_test=len(ids))
    for i, (run, summary) in enumerate(zip(run_dirs, summaries)):
        if i == index:
            continue
        values = _paired_values(run, base_dir, ids, metric)
        out["gains"].append({
            "run": run, "model": summary["model"], "label": labels[i],
            "paper_gap": _paper_gap(summary["model"], base_summary["model"]),
            **paired_difference(values, base_values, resamples=resamples, seed=seed),
        })
    return out


def _paired_values(run, base_dir, ids, metric):
    """``metric`` of ``run`` for the baseline's mixtures ``ids``, in their order; a run
    evaluated on other mixtures is a one-line error."""
    results = read_test_results(run)
    if set(results) != set(ids):
        missing = [m for m in ids if m not in results]
        extra = [m for m in results if m not in set(ids)]
        example = (extra or missing)[0]
        raise SpkSepError(
            f"{run} and {base_dir} were evaluated on different test sets ({len(extra)} "
            f"mixtures not in the baseline's, {len(missing)} of its {len(ids)} missing, "
            f"e.g. {example}); they cannot be paired"
        )
    return column(results, metric, ids, os.path.join(run, "test_results.csv"))


def _paper_gap(model, base_model):
    """The paper's SI-SNR difference between two models, when it has both."""
    paper, paper_base = _paper_si_snr(model), _paper_si_snr(base_model)
    return round(paper - paper_base, 3) if None not in (paper, paper_base) else None


def _signed(value, digits=3):
    return "-" if value is None else f"{value:+.{digits}f}"


def _p(value):
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def gains_table(gains: dict, summaries=None, title: str = "Gains over the baseline") -> str:
    """The Markdown table of :func:`paired_gains`: the gap of each model over the baseline,
    its 95% interval (in bold when it excludes zero), the share of mixtures improved and the
    p-value. ``title``: the heading's first part (what the baseline is).

    Example
    -------
    >>> gains = {"baseline": "runs/convtasnet", "metric": "si_snr_i", "resamples": 10000,
    ...          "seed": 0, "test": TEST, "num_test": 3000, "gains": [
    ...     {"label": "P weighted-sum", "paper_gap": 0.201, "mean": 0.31, "low": 0.12,
    ...      "high": 0.5, "improved": 0.62, "p_value": 0.0004, "significant": True, "n": 3000}]}
    >>> print(gains_table(gains).splitlines()[-3])
    | P weighted-sum | +0.201 | **+0.310** | **[+0.120, +0.500]** | 62% | 4.0e-04 |
    """
    metric = METRIC_LABELS.get(gains["metric"], gains["metric"])
    return _gains_markdown(
        gains, f"### {title}: paired per-mixture {metric} differences", baseline_runs="run",
        intro=lambda: (
            f"Baseline: `{gains['baseline']}`, {gains['num_test']} test mixtures. Each model's "
            f"{metric} minus the baseline's on the same mixture: the mean and its 95% bootstrap "
            f"interval ({gains['resamples']} resamples, seed {gains['seed']}), the share of "
            f"mixtures improved, and the p-value of the paired test ({gains['test']})."),
        header=f"| Model | paper gap (SI-SNR) | Δ{metric} mean | 95% interval | improved | p |",
        row=_gain_row, note="**Bold**: the 95% interval excludes zero.")


def _gain_row(g):
    mean, interval = _signed(g["mean"]), f"[{_signed(g['low'])}, {_signed(g['high'])}]"
    if g["significant"]:
        mean, interval = f"**{mean}**", f"**{interval}**"
    return (f"| {g['label']} | {_signed(g['paper_gap'])} | {mean} | {interval} | "
            f"{g['improved']:.0%} | {_p(g['p_value'])} |")


def _gains_markdown(gains, title, baseline_runs, intro, header, row, note):
    """A gains table: ``title``, the paragraph ``intro()`` returns, the ``header`` row and
    its rule, ``row(gain)`` per gain, and the ``note``; or, under ``title``, why there is
    nothing to pair (``baseline_runs``: "run" or "runs", what was given of the baseline)."""
    if gains["baseline"] is None:
        return f"{title}\n\nNo baseline ({BASELINE_MODEL}) run given: nothing to pair."
    if not gains["gains"]:
        return f"{title}\n\nOnly the baseline {baseline_runs} given: nothing to pair."
    rule = "|" + "---|" * (header.count("|") - 1)  # one per column
    return "\n".join([title, "", intro(), "", header, rule,
                      *(row(g) for g in gains["gains"]), "", note])


CONDITIONED_MODEL = "conditioning"
OVER_CONTINUED = "Conditioning over the continued baseline (same extra compute)"


def gains_over_continued(run_dirs, summaries=None, **pairing) -> list:
    """The paired gains of the conditioning runs over each ``convtasnet_continued`` run
    among ``run_dirs``: whether the conditioned model beats the baseline trained on for
    the same extra compute, not only the baseline it started from.

    Arguments
    ---------
    run_dirs, summaries
        As for :func:`paired_gains`.
    **pairing
        ``metric``, ``resamples``, ``seed`` of :func:`paired_gains` (a ``baseline`` is
        ignored: each continued run is the baseline of its own pairing).

    Returns
    -------
    list of dict
        One :func:`paired_gains` per continued run; empty without both kinds of run.

    Example
    -------
    >>> gains_over_continued(["runs/a", "runs/b"],
    ...                      [{"model": "convtasnet"}, {"model": "conditioning"}])
    []
    """
    run_dirs = [str(r) for r in run_dirs]
    summaries = summaries if summaries is not None else [read_summary(r) for r in run_dirs]
    pairing = {k: v for k, v in pairing.items() if k != "baseline"}
    conditioned = [i for i, s in enumerate(summaries) if s["model"] == CONDITIONED_MODEL]
    continued = [i for i, s in enumerate(summaries) if s["model"] == CONTINUED_MODEL]
    if not conditioned:
        return []
    return [paired_gains([run_dirs[i] for i in (c, *conditioned)],
                         [summaries[i] for i in (c, *conditioned)], baseline=run_dirs[c],
                         **pairing)
            for c in continued]


# ------------------------------------------------------------------ several seeds
GLOB_CHARACTERS = "*?["


def _expand(item):
    """A quoted glob pattern (``'runs/convtasnet_seed*'``) as the shell would expand it."""
    if any(c in item for c in GLOB_CHARACTERS) and not os.path.exists(item):
        found = sorted(glob.glob(item))
        if not found:
            raise SpkSepError(f"{item}: no run folder matches")
        return found
    return [item]


def group_runs(items) -> list:
    """The runs of ``spksep table`` grouped into models: runs of the same ``model`` (their
    ``test_summary.json``) are that model's seeds.

    Arguments
    ---------
    items : list of str
        Run folders, glob patterns (expanded here when the shell did not) or
        ``NAME=RUN[,RUN...]``: a named group, kept apart from the others even when they
        are runs of the same model (e.g. two training setups of the baseline).

    Returns
    -------
    list of dict
        In the order given: ``name`` (``None`` unless named), ``label`` (the name, else
        the paper's label of the model), ``model``, ``runs`` and their ``summaries``.

    Example
    -------
    >>> import tempfile
    >>> def fake(root, name, model):
    ...     os.makedirs(os.path.join(root, name))
    ...     with open(os.path.join(root, name, "test_summary.json"), "w") as f:
    ...         json.dump({"model": model}, f)
    ...     return os.path.join(root, name)
    >>> with tempfile.TemporaryDirectory() as root:
    ...     runs = [fake(root, f"convtasnet_seed{s}", "convtasnet") for s in (1234, 1235)]
    ...     ws = fake(root, "ws", "weighted_sum")
    ...     groups = group_runs([os.path.join(root, "convtasnet_seed*"), ws])
    ...     named = group_runs([f"two={runs[0]},{runs[1]}", f"one={ws}"])
    >>> [(g["label"], len(g["runs"])) for g in groups]
    [('Conv-TasNet', 2), ('P weighted-sum', 1)]
    >>> [(g["label"], g["model"], len(g["runs"])) for g in named]
    [('two', 'convtasnet', 2), ('one', 'weighted_sum', 1)]
    """
    groups, seen = {}, set()
    for item in map(str, items):
        name, equals, rest = item.partition("=")
        if equals and name and not os.path.exists(item):
            runs = [run for part in rest.split(",") if part for run in _expand(part)]
            if not runs:
                raise SpkSepError(f"{item}: no run folder after '='")
        else:
            name, runs = None, _expand(item)
        for run in runs:
            if os.path.realpath(run) in seen:
                raise SpkSepError(f"{run}: given twice")
            seen.add(os.path.realpath(run))
            summary = read_summary(run)
            key = ("name", name) if name else ("model", summary["model"])
            group = groups.setdefault(key, {"name": name, "model": summary["model"],
                                            "runs": [], "summaries": []})
            if summary["model"] != group["model"]:
                raise SpkSepError(
                    f"{name}=...: {run} is a {summary['model']} run but {group['runs'][0]} "
                    f"a {group['model']} run; a group holds the seeds of one model")
            group["runs"].append(run)
            group["summaries"].append(summary)
    for group in groups.values():
        group["label"] = group["name"] or model_label(group["model"])
    return list(groups.values())


def _holds(group, wanted):
    return group["name"] == wanted or any(_same(run, wanted) for run in group["runs"])


def choose_baseline_group(groups, baseline=None):
    """Index in ``groups`` (:func:`group_runs`) of the baseline: the group named
    ``baseline`` or holding that run folder when given, else the one ``convtasnet``
    group; ``None`` when there is none.

    Example
    -------
    >>> groups = [{"name": None, "model": "weighted_sum", "runs": ["runs/ws"]},
    ...           {"name": None, "model": "convtasnet", "runs": ["runs/c1", "runs/c2"]}]
    >>> choose_baseline_group(groups), choose_baseline_group(groups, "runs/c2")
    (1, 1)
    """
    return _baseline_index(groups, (g["model"] for g in groups), baseline, _holds,
                           lambda group: group["name"] or group["runs"][0])


def seed_gains(groups, baseline=None, metric: str = "si_snr_i", resamples: int = 10000,
               seed: int = 0) -> dict:
    """The gains of every model over the baseline when models have several seeds (runs):
    ``stats.seeded_difference`` of each group against the baseline group.

    Each gain has three 95% intervals, for three questions (see ``docs/evaluation.md``,
    "Several seeds: which interval to read"):

    - ``low, high``, **mixtures**: each mixture's difference (the model's value averaged
      over its seeds, minus the baseline's averaged over its seeds), bootstrapped over
      mixtures. *This test set, these trained models*: it says nothing about retraining.
    - ``seed_low, seed_high``, **seeds**: the runs' test means as two samples of seeds
      (pooled Student t). *Retraining*, on this test set.
    - ``hier_low, hier_high``, **both**: the hierarchical bootstrap (each model's seeds
      resampled, then the mixtures, the same for both models). *Retraining and another
      test set*: the one to read before saying that one model beats the other.

    Arguments
    ---------
    groups : list of dict
        What :func:`group_runs` returns.
    baseline : str or None
        A group name or a run folder of the baseline group (:func:`choose_baseline_group`).
    metric, resamples, seed
        As for :func:`paired_gains`.

    Returns
    -------
    dict
        ``baseline`` (its label; ``None`` without a baseline), ``baseline_runs``,
        ``metric``, ``resamples``, ``seed``, ``test``, ``num_test`` and ``gains``: one dict
        per other group with ``runs``, ``model``, ``label``, ``paper_gap`` and what
        ``stats.seeded_difference`` returns.

    Example
    -------
    >>> import tempfile
    >>> def fake_run(root, name, model, values):
    ...     run = os.path.join(root, name)
    ...     os.makedirs(run)
    ...     with open(os.path.join(run, "test_summary.json"), "w") as f:
    ...         json.dump({"model": model, "num_test": len(values)}, f)
    ...     with open(os.path.join(run, "test_results.csv"), "w") as f:
    ...         f.write("mixture_ID,si_snr_i\\n")
    ...         f.writelines(f"m{i},{v}\\n" for i, v in enumerate(values))
    ...     return run
    >>> mixtures = [8.0, 10.0, 12.0, 9.0]
    >>> with tempfile.TemporaryDirectory() as root:
    ...     runs = [fake_run(root, f"c{s}", "convtasnet", [v + off for v in mixtures])
    ...             for s, off in enumerate((0.0, 0.4, -0.4))]
    ...     runs += [fake_run(root, f"w{s}", "weighted_sum", [v + 0.2 + off for v in mixtures])
    ...              for s, off in enumerate((0.5, -0.5, 0.0))]
    ...     [gain] = seed_gains(group_runs(runs))["gains"]
    >>> gain["label"], gain["seeds"], round(gain["mean"], 3)
    ('P weighted-sum', 3, 0.2)
    >>> gain["significant"], gain["seed_significant"], gain["hier_significant"]
    (True, False, False)
    """
    if metric not in METRICS:
        raise SpkSepError(f"--metric {metric}: unknown, choose one of {', '.join(METRICS)}")
    out = {"baseline": None, "baseline_runs": None, "metric": metric, "resamples": resamples,
           "seed": seed, "test": TEST, "num_test": None, "gains": []}
    index = choose_baseline_group(groups, baseline)
    if index is None:
        return out
    base = groups[index]
    base_dir = base["runs"][0]
    ids = list(read_test_results(base_dir))
    base_values = [_paired_values(run, base_dir, ids, metric) for run in base["runs"]]
    out.update(baseline=base["label"], baseline_runs=list(base["runs"]), num_test=len(ids))
    for i, group in enumerate(groups):
        if i == index:
            continue
        values = [_paired_values(run, base_dir, ids, metric) for run in group["runs"]]
        out["gains"].append({
            "runs": list(group["runs"]), "model": group["model"], "label": group["label"],
            "paper_gap": _paper_gap(group["model"], base["model"]),
            **seeded_difference(values, base_values, resamples=resamples, seed=seed),
        })
    return out


def _interval(low, high, significant):
    if low is None:
        return "-"
    text = f"[{_signed(low)}, {_signed(high)}]"
    return f"**{text}**" if significant else text


def seed_gains_table(gains: dict, title: str = "Gains over the baseline") -> str:
    """The Markdown table of :func:`seed_gains`: per model its seeds, the paper's gap, the
    mean gap and its three 95% intervals (each in bold when it excludes zero), the share of
    mixtures improved (seed-averaged) and the Wilcoxon p-value.

    Example
    -------
    >>> gains = {"baseline": "Conv-TasNet", "baseline_runs": ["a", "b", "c"],
    ...          "metric": "si_snr_i", "resamples": 10000, "seed": 0, "test": TEST,
    ...          "num_test": 3000, "gains": [{"label": "P weighted-sum", "seeds": 3,
    ...          "paper_gap": 0.201, "mean": 0.2, "low": 0.15, "high": 0.25,
    ...          "significant": True, "seed_low": -0.4, "seed_high": 0.8,
    ...          "seed_significant": False, "hier_low": -0.2, "hier_high": 0.6,
    ...          "hier_significant": False, "improved": 0.6, "p_value": 1e-5}]}
    >>> print(seed_gains_table(gains).splitlines()[-3])
    | P weighted-sum | 3 | +0.201 | +0.200 | **[+0.150, +0.250]** | [-0.400, +0.800] | [-0.200, +0.600] | 60% | 1.0e-05 |
    """
    metric = METRIC_LABELS.get(gains["metric"], gains["metric"])
    return _gains_markdown(
        gains, f"### {title}: {metric} differences over seeds and mixtures", baseline_runs="runs",
        intro=lambda: (
            f"Baseline: {gains['baseline']} ({len(gains['baseline_runs'])} seeds: "
            f"{', '.join(f'`{r}`' for r in gains['baseline_runs'])}), {gains['num_test']} test "
            f"mixtures. Each model's {metric} minus the baseline's, averaged over seeds and "
            f"mixtures, with three 95% intervals: over **mixtures** (seed-averaged per-mixture "
            f"differences, bootstrap; this test set, these trained models), over **seeds** (the "
            f"runs' means, pooled Student t; retraining), and over **both** (hierarchical "
            f"bootstrap: seeds, then mixtures; retraining and another test set). Bootstraps: "
            f"{gains['resamples']} resamples, seed {gains['seed']}; improved and p (paired "
            f"test: {gains['test']}) are over the seed-averaged mixtures."),
        header=f"| Model | seeds | paper gap (SI-SNR) | Δ{metric} mean | mixtures 95% | seeds 95% "
        "| both 95% | improved | p |", row=_seed_gain_row,
        note="**Bold**: the 95% interval excludes zero. A gap is a property of the training recipe "
        "only when the *both* interval excludes zero; '-': one seed of each model, no seed "
        "spread to measure.")


def _seed_gain_row(g):
    return (f"| {g['label']} | {g['seeds']} | {_signed(g['paper_gap'])} | {_signed(g['mean'])} | "
            f"{_interval(g['low'], g['high'], g['significant'])} | "
            f"{_interval(g['seed_low'], g['seed_high'], g['seed_significant'])} | "
            f"{_interval(g['hier_low'], g['hier_high'], g['hier_significant'])} | "
            f"{g['improved']:.0%} | {_p(g['p_value'])} |")


def _mean_summary(group):
    """The means over a group's seeds of the numbers of their ``test_summary.json``."""
    summaries = group["summaries"]
    out = {"model": group["model"], "num_test": summaries[0].get("num_test")}
    for key, value in summaries[0].items():
        if (key not in out and isinstance(value, (int, float)) and not isinstance(value, bool)
                and all(isinstance(s.get(key), (int, float)) for s in summaries)):
            out[key] = sum(s[key] for s in summaries) / len(summaries)
    return out


def _over_continued_groups(groups, **pairing):
    pairing = {k: v for k, v in pairing.items() if k != "baseline"}
    conditioned = [g for g in groups if g["model"] == CONDITIONED_MODEL]
    if not conditioned:
        return []
    return [seed_gains([c, *conditioned], baseline=c["name"] or c["runs"][0], **pairing)
            for c in groups if c["model"] == CONTINUED_MODEL]


def _seeds_report(groups, significance, **pairing):
    """:func:`report` when some model has several runs: one row and record per group."""
    gains, over_continued = None, []
    if significance:
        gains = seed_gains(groups, **pairing)
        over_continued = _over_continued_groups(groups, **pairing)
    heads = [{"runs": list(g["runs"]), "model": g["model"], "label": g["label"],
              "seeds": len(g["runs"])} for g in groups]
    return _report_of(heads, [_mean_summary(g) for g in groups], gains, over_continued,
                      seed_gains_table, "label", GAIN_FIELDS + SEED_GAIN_FIELDS,
                      seeds={g["model"]: len(g["runs"]) for g in groups})


def report(run_dirs, significance: bool = True, **pairing) -> tuple:
    """Table I (and II), the gains table, and the same as records for machines.

    Runs of the same model are its seeds (:func:`group_runs`; ``NAME=RUN,RUN`` names a
    group). With one run per model: the paired per-mixture gains of :func:`paired_gains`,
    one record per run. With several runs of some model: means over seeds and the three
    intervals of :func:`seed_gains`, one record per model (``runs`` lists its runs).

    Arguments
    ---------
    run_dirs : list of str
        Run folders, glob patterns or ``NAME=RUN[,RUN...]`` items.
    significance : bool
        Pair every run with the baseline (needs each run's ``test_results.csv``).
    **pairing
        ``baseline`` (a run folder or a group name), ``metric``, ``resamples``, ``seed`` of
        :func:`paired_gains`. A ``baseline`` run folder not among ``run_dirs`` is added to them.

    Returns
    -------
    (str, dict)
        The Markdown, and ``{"runs": [one record per run: run, model, label, num_test, the
        means of test_summary.json, paper_si_snr, paper_stoi, and the gain fields over the
        baseline (none for the baseline)], "pairing": {baseline, metric, resamples, seed,
        test}}``; with a conditioning and a ``convtasnet_continued`` run, also
        ``"over_continued"``: what :func:`gains_over_continued` returns. With several seeds:
        one record per model instead (``runs``, ``seeds``, the means over its seeds, the
        fields of ``stats.seeded_difference``), the pairing and ``over_continued`` as
        :func:`seed_gains` gives them.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "test_summary.json"), "w") as f:
    ...         json.dump({"model": "weighted_sum", "si_snr": 14.5, "num_test": 3}, f)
    ...     text, data = report([run])
    >>> text.splitlines()[-1]
    'No baseline (convtasnet) run given: nothing to pair.'
    >>> record = data["runs"][0]
    >>> record["label"], record["si_snr"], record["paper_si_snr"], record["mean"]
    ('P weighted-sum', 14.5, 14.319, None)
    """
    items = [str(r) for r in run_dirs]
    groups = group_runs(items)
    base = pairing.get("baseline")
    if base is not None and not any(_holds(g, base) for g in groups) and os.path.isdir(base):
        groups = group_runs(items + [str(base)])
    if any(len(g["runs"]) > 1 for g in groups):
        return _seeds_report(groups, significance, **pairing)
    index = choose_baseline_group(groups, base) if significance else None
    if index is not None:  # the baseline as paired_gains takes it: the run of its group
        pairing = {**pairing, "baseline": groups[index]["runs"][0]}
    return _one_run_report([g["runs"][0] for g in groups], [g["label"] for g in groups],
                           significance, **pairing)


def _one_run_report(run_dirs, labels, significance, **pairing):
    """:func:`report` with one run per model."""
    summaries = [read_summary(d) for d in run_dirs]
    gains, over_continued = None, []
    if significance:
        gains = paired_gains(run_dirs, summaries, labels=labels, **pairing)
        over_continued = gains_over_continued(run_dirs, summaries, **pairing)
    heads = [{"run": run, "model": summary["model"], "label": label}
             for run, summary, label in zip(run_dirs, summaries, labels)]
    return _report_of(heads, summaries, gains, over_continued, gains_table, "run", GAIN_FIELDS)


def _report_of(heads, summaries, gains, over_continued, gains_markdown, key, gain_fields,
               seeds=None):
    """:func:`report`'s Markdown and records from one summary per row (a run's, or the
    means over a group's seeds, with ``seeds``: model -> number of runs): each record is
    its ``heads`` entry, the summary's numbers, the paper's, and the ``gain_fields`` of
    its gain (matched on ``key``); ``gains`` is ``None`` without significance."""
    models = {s["model"] for s in summaries}
    rows = {**TABLE_I, **CONTINUED_ROW} if CONTINUED_MODEL in models else TABLE_I
    over_seeds = ", means over seeds" if seeds is not None else ""
    out = [markdown_table(f"Table I: models (Libri2Mix test){over_seeds}", rows, summaries,
                          seeds)]
    if models & {"ablation_pos", "ablation_neg"}:
        out.append(markdown_table(f"Table II: ablation on P weighted-sum{over_seeds}",
                                  TABLE_II, summaries, seeds))
    out.append(
        "Paper's SI-SNR column: the paper does not say whether it is the output SI-SNR or the "
        "improvement, so both of ours are shown."
    )
    if gains is not None:
        out.append(gains_markdown(gains))
        out += [gains_markdown(g, title=OVER_CONTINUED) for g in over_continued]
    by_key = {g[key]: g for g in (gains or {}).get("gains", [])}
    records = []
    for head, summary in zip(heads, summaries):
        paper = TABLE_I.get(summary["model"]) or TABLE_II.get(summary["model"])
        gain = by_key.get(head[key], {})
        record = {**head, "num_test": summary.get("num_test"),
                  **{k: summary.get(k) for k in ("si_snr", "si_snr_i", "sdr", "sdr_i", "stoi")},
                  "paper_si_snr": paper[1] if paper else None,
                  "paper_stoi": paper[2] if paper else None}
        if "pesq" in summary:
            record["pesq"] = summary["pesq"]
        record.update({k: gain.get(k) for k in gain_fields})
        records.append(record)
    pairing_info = {k: v for k, v in (gains or {}).items() if k != "gains"}
    data = {"runs": records, "pairing": pairing_info}
    if over_continued:
        data["over_continued"] = over_continued
    return "\n\n".join(out), data


GAIN_FIELDS = ("paper_gap", "mean", "low", "high", "improved", "p_value", "significant")
SEED_GAIN_FIELDS = ("seed_low", "seed_high", "seed_significant", "hier_low", "hier_high",
                    "hier_significant")


def tables(run_dirs, significance: bool = False, **pairing) -> str:
    """Table I, Table II when an ablation run is among ``run_dirs``, and with
    ``significance`` the paired gains over the baseline run (see :func:`report`).

    Arguments
    ---------
    run_dirs : list of str
        Run folders, each holding a ``test_summary.json`` (and ``test_results.csv`` for
        ``significance``).

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
    return report(run_dirs, significance, **pairing)[0]


def write_records(data: dict, csv_path=None, json_path=None):
    """Write :func:`report`'s records: ``csv_path`` one row per run, ``json_path`` the
    records and the pairing settings. Either may be ``None``.

    Example
    -------
    >>> import tempfile
    >>> data = {"runs": [{"run": "runs/a", "model": "convtasnet", "mean": None}],
    ...         "pairing": {"metric": "si_snr_i"}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_records(data, os.path.join(tmp, "t.csv"), os.path.join(tmp, "t.json"))
    ...     print(open(os.path.join(tmp, "t.csv")).read().strip())
    ...     json.load(open(os.path.join(tmp, "t.json")))["pairing"]
    run,model,mean
    runs/a,convtasnet,
    {'metric': 'si_snr_i'}
    """
    if csv_path:
        fields = list(dict.fromkeys(k for r in data["runs"] for k in r))
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for record in data["runs"]:
                writer.writerow({k: "" if v is None else " ".join(v) if isinstance(v, list)
                                 else v for k, v in record.items()})
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
