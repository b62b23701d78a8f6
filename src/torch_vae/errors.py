"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class TorchVaeError(Exception):
    """An error caused by user input (flags, files, checkpoints, datasets).

    The message says what is wrong and how to fix it.
    """
