"""The ``torch-vae`` command line: parsing (flags.py, options.py), the table of commands
(commands.py), one module per command, and the entry point (main.py)."""

from .main import main, run

__all__ = ["main", "run"]
