"""What every recipe's ``train.py`` does around its ``main``."""

import sys

import torch

from spksep_modules import SpkSepError, one_line


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
