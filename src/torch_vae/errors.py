"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class TorchVaeError(Exception):
    """An error caused by user input (flags, files, checkpoints, datasets).

    The message says what is wrong and how to fix it.
    """


class TrainingInterrupted(TorchVaeError):
    """Training stopped on SIGINT or SIGTERM after saving its state; the message says how to
    resume. ``exit_code`` is the shell's convention for the signal: 128 + its number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
