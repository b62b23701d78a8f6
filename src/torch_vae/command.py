"""The ``torch-vae`` command's entry point (``[project.scripts]`` and ``python -m torch_vae``).

It imports nothing but the standard library before the command's modules, so that a Ctrl-C
while PyTorch loads ends the command with one line and status 130, as a Ctrl-C later does
(``cli.main``), instead of a traceback."""

import os
import sys
from typing import NoReturn


def run() -> NoReturn:
    """``cli.main.run``: the command, then the end of the process."""
    try:
        from .cli.main import run as run_command
    except KeyboardInterrupt:  # nothing of the command has started
        sys.stderr.write("torch-vae: interrupted\n")
        sys.stderr.flush()
        os._exit(130)  # without tearing down a half-imported PyTorch
    run_command()
