"""What every recipe's ``train.py`` does around its ``main``."""

import sys

import torch
from hyperpyyaml import load_hyperpyyaml

from spksep_modules import SpkSepError, one_line


def load_hparams(hparams_file, overrides):
    """The recipe's yaml with its command-line overrides; an override naming no key of the
    yaml, or a ``!PLACEHOLDER`` left unset, is a one-line ``SpkSepError``."""
    with open(hparams_file, encoding="utf-8") as fin:
        try:
            return load_hyperpyyaml(fin, overrides)
        except (KeyError, ValueError) as err:
            message = " ".join(map(str, err.args))
            if not any(w in message for w in ("Override", "overrides", "PLACEHOLDER")):
                raise
            raise SpkSepError(f"{hparams_file}: {message}") from None


def shutdown_distributed():
    """Leave the process group together: a rank that exits while another still talks to
    it makes gloo abort (SIGABRT) at interpreter exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run(main):
    """Call ``main(argv)``; a user's mistake (``SpkSepError``) ends with one line and exit
    status 2, not a traceback."""
    try:
        main(sys.argv[1:])
        shutdown_distributed()
    except SpkSepError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
