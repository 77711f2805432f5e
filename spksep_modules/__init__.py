"""spksep: speaker-aware speech separation on top of SpeechBrain.

Everything a recipe needs that SpeechBrain lacks lives here: models, frozen feature
networks and their weight loaders, losses, metrics, LibriMix data preparation and the
Brain subclasses.
"""

__version__ = "0.1.0"


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
