"""Reading what a finished run leaves in its folder: the per-epoch log and the per-mixture
test results, with one-line errors for a folder that lacks them."""

import csv
import math
import os
import re

from spksep_modules import SpkSepError


def _number(text):
    try:
        return float(text.removesuffix(" min"))  # the budget's minutes are logged with a unit
    except ValueError:
        return None


def parse_log_line(line: str) -> dict:
    """One line of SpeechBrain's ``FileTrainLogger`` as ``{key: float}``; keys keep their
    ``train`` / ``valid`` / ``test`` prefix; minutes (``4.12 min``) are read as numbers,
    other values that are not numbers are left out.

    Example
    -------
    >>> parse_log_line("epoch: 2, lr: 1.00e-03 - train loss: -5.10, train si_snr: 5.10 "
    ...                "- valid loss: -4.20e+00, valid si_snr: 4.20")
    {'epoch': 2.0, 'lr': 0.001, 'train loss': -5.1, 'train si_snr': 5.1, 'valid loss': -4.2, 'valid si_snr': 4.2}
    >>> parse_log_line("epoch: 3, steps: 600, budget_spent: 4.12 min, lr: 1.00e-03")
    {'epoch': 3.0, 'steps': 600.0, 'budget_spent': 4.12, 'lr': 0.001}
    """
    out = {}
    for part in line.strip().split(" - "):
        for item in part.split(", "):
            key, sep, value = item.partition(": ")
            number = _number(value) if sep else None
            if number is not None:
                out[key.strip()] = number
    return out


def read_train_log(run_dir) -> list:
    """The per-epoch statistics of a run, from its ``train_log.txt``.

    A resumed run may log an epoch twice; the last line of each epoch wins. Test lines
    (``Epoch loaded: ...``) are left out.

    Arguments
    ---------
    run_dir : str or Path

    Returns
    -------
    list of dict
        One dict per epoch, in epoch order, with ``epoch`` (int), ``lr`` and keys such as
        ``train loss``, ``train si_snr``, ``valid si_snr``, ``train D_pos``,
        ``valid si_snr_intermediate``.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "train_log.txt"), "w") as f:
    ...         print("epoch: 1, lr: 1.00e-03 - train loss: 3.00e-01 - valid loss: -2.50", file=f)
    ...         print("epoch: 2, lr: 1.00e-03 - train loss: -3.20 - valid loss: -4.10", file=f)
    ...         print("Epoch loaded: 2 - test loss: -4.00", file=f)
    ...     [(e["epoch"], e["valid loss"]) for e in read_train_log(run)]
    [(1, -2.5), (2, -4.1)]
    """
    path = os.path.join(run_dir, "train_log.txt")
    if not os.path.isfile(path):
        raise SpkSepError(f"{path}: missing (not a training run folder)")
    epochs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("epoch: "):
                continue
            stats = parse_log_line(line)
            if "epoch" in stats:
                stats["epoch"] = int(stats["epoch"])
                epochs[stats["epoch"]] = stats
    if not epochs:
        raise SpkSepError(f"{path}: no epoch logged yet")
    return [epochs[e] for e in sorted(epochs)]


def budget_spent(run_dir, clock=None) -> float:
    """Minutes of ``fit`` (training and validation) a run spent on its ``budget_clock``:
    the ``budget_spent`` of its last epoch line (a resumed run's count goes on from its
    checkpoint, so the last line is the whole run's).

    Arguments
    ---------
    run_dir : str or Path
    clock : "wall" | "cpu" | None
        When given, the run's ``budget_clock`` (its ``hyperparams.yaml``) must be this one:
        minutes of one clock are no budget on the other.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> with open(os.path.join(folder.name, "train_log.txt"), "w") as f:
    ...     print("epoch: 1, steps: 25, budget_spent: 0.51 min, lr: 2.00e-03 - train "
    ...           "loss: -1.00 - valid loss: -2.00", file=f)
    ...     print("epoch: 2, steps: 50, budget_spent: 1.02 min, lr: 2.00e-03 - train "
    ...           "loss: -3.00 - valid loss: -4.00", file=f)
    >>> with open(os.path.join(folder.name, "hyperparams.yaml"), "w") as f:
    ...     print("budget_clock: cpu", file=f)
    >>> budget_spent(folder.name, clock="cpu")
    1.02
    >>> budget_spent(folder.name, clock="wall")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: .../hyperparams.yaml: budget_clock is cpu, not wall: its budget_spent is no budget on the wall clock
    >>> folder.cleanup()
    """
    last = read_train_log(run_dir)[-1]
    if "budget_spent" not in last:
        raise SpkSepError(f"{os.path.join(run_dir, 'train_log.txt')}: no budget_spent logged "
                          "(trained before training budgets: train it again)")
    if clock is not None:
        path = os.path.join(run_dir, "hyperparams.yaml")
        try:
            with open(path, encoding="utf-8") as f:
                found = re.search(r"^budget_clock:\s*(\w+)", f.read(), re.MULTILINE)
        except OSError:
            raise SpkSepError(f"{path}: missing (not a training run folder)") from None
        saved = found.group(1) if found else None
        if saved != clock:
            raise SpkSepError(f"{path}: budget_clock is {saved}, not {clock}: its "
                              f"budget_spent is no budget on the {clock} clock")
    return last["budget_spent"]


def read_test_results(run_dir) -> dict:
    """The per-mixture test metrics of a run, from its ``test_results.csv``.

    Arguments
    ---------
    run_dir : str or Path

    Returns
    -------
    dict
        ``mixture_ID -> {column: float}``, in the file's order.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with open(os.path.join(run, "test_results.csv"), "w") as f:
    ...         _ = f.write("mixture_ID,si_snr,si_snr_i\\nm1,10.0,9.5\\nm2,12.0,11.0\\n")
    ...     read_test_results(run)
    {'m1': {'si_snr': 10.0, 'si_snr_i': 9.5}, 'm2': {'si_snr': 12.0, 'si_snr_i': 11.0}}
    >>> read_test_results("no/such/run")
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: no/such/run/test_results.csv: missing (evaluate the run first: train.py ... --test_only)
    """
    path = os.path.join(run_dir, "test_results.csv")
    if not os.path.isfile(path):
        raise SpkSepError(f"{path}: missing (evaluate the run first: train.py ... --test_only)")
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "mixture_ID" not in (reader.fieldnames or []):
            raise SpkSepError(f"{path}: no mixture_ID column")
        for line, row in enumerate(reader, start=2):
            mixture = row.pop("mixture_ID")
            if mixture in rows:
                raise SpkSepError(f"{path}: line {line}: mixture {mixture} appears twice")
            try:
                rows[mixture] = {k: float(v) for k, v in row.items() if k is not None}
            except (TypeError, ValueError):
                raise SpkSepError(f"{path}: line {line}: a value is not a number") from None
    if not rows:
        raise SpkSepError(f"{path}: no test mixtures")
    return rows


def column(results: dict, name: str, ids, where: str = "test_results.csv") -> list:
    """Values of column ``name`` for mixtures ``ids`` (in that order) of
    :func:`read_test_results`'s output; a missing column or a non-finite value is a
    one-line error naming ``where``.

    Example
    -------
    >>> column({"a": {"si_snr_i": 1.0}, "b": {"si_snr_i": 2.0}}, "si_snr_i", ["b", "a"])
    [2.0, 1.0]
    """
    values = []
    for mixture in ids:
        row = results[mixture]
        if name not in row:
            raise SpkSepError(f"{where}: no {name} column (present: {', '.join(row)})")
        if not math.isfinite(row[name]):
            raise SpkSepError(f"{where}: {name} of mixture {mixture} is not finite")
        values.append(row[name])
    return values
