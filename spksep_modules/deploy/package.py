"""Self-contained model folders ("packages"): a trained separator that travels alone.

A package folder holds two files:

- ``model.ckpt``: the separator's state dict. Its ``_extra_state`` entries carry the
  constructor arguments of the separator and of every model inside it (a conditioned
  model's basic model and speaker network), and its tensors hold all their weights, so
  the file alone rebuilds the whole model (``models.base.separator_from_state``);
- ``package.json``: what the state dict does not say: the sample rate, the class, the
  number of speakers, the spksep version that wrote it.

No absolute path, no reference to the run folder, its checkpoints or the basic model's run:
the folder can be moved, copied to another machine or archived, and ``spksep separate
--model DIR``, ``spksep export DIR`` and
``deploy.separate.PretrainedSeparator.from_folder(DIR)`` take it wherever a run folder is
accepted. This module writes packages; :mod:`spksep_modules.loading` reads them
(:func:`~spksep_modules.loading.load_package`), as it reads every other kind of folder.

A model part that does not record its constructor arguments (a speaker network built by
a SpeechBrain yaml, e.g. ECAPA) cannot be described in plain data: packaging such a model
is a one-line error.
"""

import json
import os

import torch

from spksep_modules import SpkSepError, __version__
from spksep_modules.configurable import NotDescribable, spec
from spksep_modules.loading import FORMAT, PACKAGE_FILE, WEIGHTS_FILE, load_separator


def save_package(separator, sample_rate: int, out_dir) -> str:
    """Write ``separator`` (any ``models.base.Separator``) as a package in ``out_dir``.

    Returns ``out_dir``. The weights are saved on CPU.

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.loading import load_package
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder = save_package(model, 8000, os.path.join(tmp, "pkg"))
    ...     twin, rate = load_package(folder)
    ...     sorted(os.listdir(folder))
    ['model.ckpt', 'package.json']
    >>> type(twin).__name__, rate, torch.equal(twin.encoder.weight, model.encoder.weight)
    ('ConvTasNet', 8000, True)
    """
    out_dir = os.fspath(out_dir)
    try:
        description = spec(separator)
    except NotDescribable as err:
        raise SpkSepError(
            f"cannot package a {type(separator).__name__}: {err} (a speaker network built "
            "by another toolkit's yaml, e.g. ECAPA, cannot be rebuilt from plain data; use "
            "RawNet2 or GE2E, or ship the run folder with its speaker network)"
        ) from None
    state = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
             for k, v in separator.state_dict().items()}
    if not state.get("_extra_state"):
        raise SpkSepError(f"cannot package a {type(separator).__name__}: it records no "
                          "description of itself")
    try:
        os.makedirs(out_dir, exist_ok=True)
        torch.save(state, os.path.join(out_dir, WEIGHTS_FILE))
        meta = {
            "format": FORMAT,
            "spksep_version": __version__,
            "class": description["class"],
            "sample_rate": int(sample_rate),
            "num_spks": int(getattr(separator, "num_spks", 0)),
            "weights": WEIGHTS_FILE,
        }
        with open(os.path.join(out_dir, PACKAGE_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
    except OSError as err:
        raise SpkSepError(f"{out_dir}: cannot write the package ({err.strerror})") from None
    return out_dir


def package_run(run_dir, out_dir) -> str:
    """Package the trained separator of ``run_dir`` (a run folder, a SpeechBrain separator
    folder or another package) into ``out_dir``.

    Example
    -------
    >>> package_run("no/such/run", "pkg")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: no/such/run: not a training run folder (no hyperparams.yaml); train one with recipes/LibriMix/separation/train.py
    """
    separator, rate = load_separator(os.fspath(run_dir))
    return save_package(separator, rate, out_dir)
