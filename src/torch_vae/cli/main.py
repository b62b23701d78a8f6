"""The ``torch-vae`` command: parses the flags and hands each command to its module in this
package (commands.py), which calls the library. Every option is a field of a dataclass (the
model families' configs, training.TrainConfig, options.py), with its type, default, choices and
help; the original torch-vae's flag names are the field names."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, NoReturn

from ..errors import TorchVaeError, TrainingInterrupted, describe_os_error
from ..runtime.allocator import keep_freed_memory
from ..version import __version__
from .commands import COMMANDS
from .flags import add_options, defaults, model_options, pick, read_config_file
from .launch import check_can_launch, launch, launched_worker, say, worker_threads
from .options import Runtime

log = logging.getLogger("torch_vae")


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown flag, a missing or malformed value) are one
    line, as every other error of the command is, and point at the command's --help, instead
    of the usage block; the exit status stays argparse's, 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="torch-vae", description="Convolutional variational autoencoders in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"torch-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.description)
        for cls in c.options:
            add_options(p, cls)
        parser.commands[c.name] = p
    return parser


def parse(argv: list[str] | None) -> tuple[str, dict[str, Any], set[str]]:
    """The command, every option's value (defaults < --config file < flags), and the names of
    the options given on the command line."""
    parser = build_parser()
    known, extra = parser.parse_known_args(argv)
    if extra:  # told by the command's own parser, which points at its own --help
        parser.commands[known.command].error(
            f"unrecognized arguments: {' '.join(extra)}{_model_flag_hint(known.command, extra)}"
        )
    given = vars(known)
    command = given.pop("command")
    values = defaults(COMMANDS[command].options)
    if given.get("config") is not None:
        values.update(read_config_file(given["config"], COMMANDS[command].options, given))
    values.update(given)
    return command, values, set(given)


def _model_flag_hint(command: str, extra: list[str]) -> str:
    """Words for a flag of the model's own (``--image_size``, ``--arch``...) given to a
    command that uses a trained model, which takes them from the model's file."""
    if command == "train":
        return ""
    own = {f"--{f.name}" for f in dataclasses.fields(model_options())}
    given = [a.split("=")[0] for a in extra if a.split("=")[0] in own]
    if not given:
        return ""
    return (f"; {given[0]} is the model's own, recorded in its file: the command uses the "
            "model as it was trained (images at its --image_size)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-vae`` command; returns the exit status.

    A process of a torchrun job ends here, through ``distributed.end_process``: otherwise about
    one run in ten had a process abort in the interpreter's shutdown, and torchrun reported the
    finished run as failed. Nothing of the run is left to do at that point.
    """
    rc = _main(argv)
    if "torch" in sys.modules:
        from ..training.distributed import end_process, joined_a_job

        if joined_a_job():
            end_process(rc)
    return rc


def run() -> NoReturn:
    """The ``torch-vae`` command and ``python -m torch_vae``: ``main``, then the process ends
    without the interpreter's shutdown, which takes 0.35 s once PyTorch is imported (the
    modules' teardown; nothing of the command is left to do by then: every file is closed,
    every pool joined). Logging, stdout and stderr are flushed first."""
    rc = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(rc)


class _Formatter(logging.Formatter):
    """The message; a warning's begins with "warning: "."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno == logging.WARNING and not text.startswith("warning"):
            return f"warning: {text}"
        return text


class _AboveBars(logging.StreamHandler):
    """Writes each log line above the progress bars showing (tqdm's write clears and redraws
    them), not after a bar's text on its line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging's own handlers do: never an error of the command
            self.handleError(record)


def _log_to_stderr(quiet: bool) -> bool:
    """Log lines to stderr (a warning's marked), from before the flags are parsed, so that
    what reading them says (a --config file's notes) is shown; nothing where the process has
    its own handlers already (an embedding program, pytest). Whether it installed one."""
    root = logging.getLogger()
    if root.handlers:
        return False
    handler = _AboveBars(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    return True


def _main(argv: list[str] | None) -> int:
    try:
        ours = _log_to_stderr("--quiet" in (sys.argv[1:] if argv is None else argv))
        command, values, given = parse(argv)
        if ours:  # --quiet may come from a --config file too
            logging.getLogger().setLevel(logging.WARNING if values.get("quiet") else logging.INFO)
        if command != "explore":  # a server keeps what one large upload took: not there
            keep_freed_memory()  # before the first tensor: 2x faster evaluation on the CPU
        nproc = values.get("nproc_per_node", 1) if command == "train" else 1
        nproc = nproc if isinstance(nproc, int) else 1  # pick(RunOptions) says what is wrong
        _set_threads(values, nproc)
        if nproc > 1 and not launched_worker():  # start the job's processes, each this command
            check_can_launch(nproc)
            argv = sys.argv[1:] if argv is None else argv
            return launch(list(argv), nproc, values.get("threads") or 0)
        if command != "train" and values.get("model") is not None:
            from .common import use_run_data_dir, warn_if_training

            warn_if_training(values["model"])
            if "data_dir" in values:
                use_run_data_dir(values)
        COMMANDS[command].run(values, given)
    except TrainingInterrupted as exc:
        say(f"torch-vae: {exc}")
        return exc.exit_code
    except TorchVaeError as exc:
        say(f"torch-vae: error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("torch-vae: interrupted")
        return 130
    except OSError as exc:  # the environment: a full disk, a read-only folder, a file in the way
        say(f"torch-vae: error: {describe_os_error(exc)}")
        return 1
    except Exception as exc:  # a collective failed: another process of a distributed job died
        from ..training.distributed import describe_failure, from_env, is_collective_error

        if not is_collective_error(exc):
            raise
        say(f"torch-vae: error: {describe_failure(exc, from_env())}")
        return 1
    return 0


def _set_threads(values: dict, nproc: int) -> None:
    """--threads for PyTorch, with a warning (from the command, not each of its processes)
    where the job's threads outnumber the machine's CPUs."""
    if not values.get("threads"):
        return
    import torch

    pick(Runtime, values)  # checks --threads
    torch.set_num_threads(values["threads"])
    cpus = os.cpu_count() or 1
    if values["threads"] * nproc > cpus and not launched_worker():
        each = f" in each of {nproc} processes" if nproc > 1 else ""
        log.warning("--threads %d%s is more than this machine's %d CPUs, which slows "
                    "PyTorch down; pass at most %d, or 0 for PyTorch's choice", values["threads"],
                    each, cpus, worker_threads(nproc, 0))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
