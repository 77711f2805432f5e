"""spksep: speaker-aware speech separation on top of SpeechBrain.

Everything a recipe needs that SpeechBrain lacks lives here, grouped by stage: the
building blocks at the top (``models``, ``nnet``, ``features``, ``speakers``, ``losses``,
``data``, ``audio``, ``metrics``, ``checkpoints``, ``configurable``, ``allocator``), ``loading`` (any
folder -> a separator), then ``training``, ``deploy`` and ``reports``, and the two
commands (``cli``, ``demo``) on top. ARCHITECTURE.md lists what may import what.

Modules that moved when the top level was regrouped keep their old names (``_MOVED``):
``import spksep_modules.brains`` gives the module ``spksep_modules.training.brains`` itself,
so users' scripts, pickles and the yaml files of earlier run folders keep working.
"""

import importlib
import importlib.abc
import importlib.util
import re
import sys

__version__ = "0.1.0"

# Old module name -> where the module is now. Data, not imports: a module is imported
# only when its old name is (see _MovedModules).
_MOVED = {
    "spksep_modules.brains": "spksep_modules.training.brains",
    "spksep_modules.recipe": "spksep_modules.training.recipe",
    "spksep_modules.nonfinite": "spksep_modules.training.nonfinite",
    "spksep_modules.global_batch": "spksep_modules.training.global_batch",
    "spksep_modules.tensorboard_log": "spksep_modules.training.tensorboard_log",
    "spksep_modules.budget": "spksep_modules.training.budget",
    "spksep_modules.inference": "spksep_modules.deploy.separate",
    "spksep_modules.package": "spksep_modules.deploy.package",
    "spksep_modules.export": "spksep_modules.deploy.export",
    "spksep_modules.streaming": "spksep_modules.deploy.streaming",
    "spksep_modules.streaming_conditioned": "spksep_modules.deploy.streaming_conditioned",
    "spksep_modules.runtime": "spksep_modules.allocator",
    "spksep_modules.deploy.malloc_tuning": "spksep_modules.allocator",
    "spksep_modules.runs": "spksep_modules.reports.run_logs",
    "spksep_modules.tables": "spksep_modules.reports.tables",
    "spksep_modules.stats": "spksep_modules.reports.stats",
    "spksep_modules.plots": "spksep_modules.reports.plots",
}

# Functions the yaml files name that moved to another module (an import cannot alias
# an attribute): only yaml tags are rewritten to them (with_current_names).
_MOVED_NAMES = {
    "spksep_modules.models.speechbrain_folder.initialised": "spksep_modules.loading.initialised",
    "spksep_modules.inference.load_basic_model": "spksep_modules.loading.load_basic_model",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name of ``_MOVED`` as the module it names now: the module is
    registered under both names, so both imports give the same object."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder, replaced in sys.modules by exec_module

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(_MOVED[module.__name__])


if not any(type(finder).__name__ == _MovedModules.__name__ for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())  # after the path finders: real modules first


def current_name(dotted: str) -> str:
    """The name today of a module, class or function ``dotted`` named before a move.

    Example
    -------
    >>> current_name("spksep_modules.budget.TrainingBudget")
    'spksep_modules.training.budget.TrainingBudget'
    >>> current_name("spksep_modules.models.speechbrain_folder.initialised")
    'spksep_modules.loading.initialised'
    >>> current_name("spksep_modules.models.ConvTasNet")  # never moved
    'spksep_modules.models.ConvTasNet'
    """
    if dotted in _MOVED_NAMES:
        return _MOVED_NAMES[dotted]
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        old = ".".join(parts[:end])
        if old in _MOVED:
            return ".".join([_MOVED[old]] + parts[end:])
    return dotted


_YAML_TAG = re.compile(r"(!(?:new|name|apply|applyref|module):)(spksep_modules[\w.]*)")


def with_current_names(yaml_text: str) -> str:
    r"""``yaml_text`` with each HyperPyYAML tag's name (``!new:``, ``!name:``, ``!apply:``...)
    brought up to date (:func:`current_name`): what reads a yaml written before a move
    (a run folder's ``hyperparams.yaml``, a user's copy of a recipe) reads it through this.

    Example
    -------
    >>> with_current_names("budget: !new:spksep_modules.budget.TrainingBudget\n")
    'budget: !new:spksep_modules.training.budget.TrainingBudget\n'
    """
    return _YAML_TAG.sub(lambda m: m[1] + current_name(m[2]), yaml_text)


class SpkSepError(Exception):
    """A user-facing problem (bad file, missing folder, wrong checkpoint...).

    The message is one line that names the file or setting and the problem; the CLI and
    train.py print it as ``error: <message>`` and exit with status 2, without a traceback.

    Example
    -------
    >>> err = SpkSepError("data/train.csv: CSV not found (run data preparation first)")
    >>> print(f"error: {err}")
    error: data/train.csv: CSV not found (run data preparation first)
    >>> isinstance(err, Exception)
    True
    """


def one_line(err: Exception) -> str:
    r"""The one-line message of a ``SpkSepError``, also when it was re-raised from a
    DataLoader worker (torch then prepends the worker's traceback to the message).

    Arguments
    ---------
    err : Exception

    Returns
    -------
    str
        The message's one line; the exception's class name when the message is empty.

    Example
    -------
    >>> one_line(SpkSepError("a.wav: file not found"))
    'a.wav: file not found'
    >>> one_line(RuntimeError("Caught SpkSepError in DataLoader worker process 0.\n"
    ...     "Traceback (most recent call last):\n  ...\nspksep_modules.SpkSepError: a.wav: file not found\n"))
    'a.wav: file not found'
    >>> one_line(ValueError())
    'ValueError'
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    last = lines[-1]
    prefix = "SpkSepError: "
    return last.split(prefix, 1)[1] if prefix in last else last
