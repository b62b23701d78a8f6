"""The ``torch-vae`` command's entry point (``[project.scripts]`` and ``python -m torch_vae``).

Nothing is imported before the command's modules but ``os`` and ``signal``, so that a
Ctrl-C while PyTorch loads ends the command with one line and status 130, as a Ctrl-C later
does (``cli.main``), instead of a traceback. During that import a Ctrl-C is handled by a signal
handler that ends the process at once: as an exception it could surface inside PyTorch's C++
start-up (``torch._C._c10d_init``), which aborts the interpreter instead of unwinding."""

import os
import signal
from typing import NoReturn


def _interrupted(signum: int, frame: object) -> None:
    os.write(2, b"torch-vae: interrupted\n")
    os._exit(130)  # nothing of the command has started; a half-imported PyTorch is not torn down


def run() -> NoReturn:
    """``cli.main.run``: the command, then the end of the process."""
    before = signal.getsignal(signal.SIGINT)
    handled = before is signal.default_int_handler  # not ignored (nohup, a background job)
    if handled:
        try:
            signal.signal(signal.SIGINT, _interrupted)
        except ValueError:  # called from another thread than the main one: no handlers there
            handled = False
    try:
        from .cli.main import run as run_command
    except KeyboardInterrupt:  # a handler of the caller's raised it: the same end
        _interrupted(signal.SIGINT, None)
    finally:
        if handled:
            signal.signal(signal.SIGINT, before)
    run_command()
