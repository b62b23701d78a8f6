"""The ``torch-vae`` command: parses the flags and hands each command to the module that does
the work. Every option is a field of a dataclass (config.py, options.py), with its type,
default, choices and help; the original torch-vae's flag names are the field names."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any

from .config import ModelConfig, TrainConfig
from .errors import TorchVaeError, TrainingInterrupted, describe_os_error
from .flags import add_options, defaults, pick, read_config_file
from .options import (
    AverageOptions,
    ClassifierOptions,
    EmbedOptions,
    EvaluateOptions,
    ExploreOptions,
    FitSamplerOptions,
    GenerateOptions,
    ImportOptions,
    InterpolateOptions,
    ManifoldOptions,
    PlotOptions,
    ReconstructOptions,
    RunOptions,
    Runtime,
    SampleQualityOptions,
    TraverseOptions,
)
from .version import __version__

log = logging.getLogger("torch_vae")


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    options: tuple[type, ...]  # the dataclasses whose fields are this command's flags
    run: Callable[[dict[str, Any], set[str]], None]  # carries it out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torch-vae", description="Convolutional variational autoencoders in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"torch-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.description)
        for cls in c.options:
            add_options(p, cls)
    return parser


def parse(argv: list[str] | None) -> tuple[str, dict[str, Any], set[str]]:
    """The command, every option's value (defaults < --config file < flags), and the names of
    the options given on the command line."""
    given = vars(build_parser().parse_args(argv))
    command = given.pop("command")
    values = defaults(COMMANDS[command].options)
    if given.get("config") is not None:
        values.update(read_config_file(given["config"], COMMANDS[command].options))
    values.update(given)
    return command, values, set(given)


def cmd_train(values: dict[str, Any], given: set[str]) -> None:
    from .device import pick_device
    from .distributed import setup, teardown
    from .run import load_run_data, plan_run, removed_if_unused
    from .train import train

    runtime = pick(Runtime, values)
    # Under torchrun: join the job (gloo on the CPU, NCCL with one GPU per process).
    dist, device = setup(pick_device(runtime.device, runtime.cpu))
    if not dist.is_main:  # progress lines come from rank 0 alone; warnings and errors from all
        log.setLevel(logging.WARNING)
    progress = not runtime.quiet and dist.is_main
    try:
        try:
            plan = plan_run(values, given, dist)
            with removed_if_unused(plan, dist):
                train_images, test_images = load_run_data(plan, progress, dist)
                train(plan, train_images, test_images, device, progress, dist)
            log.info("done. Next: torch-vae generate --model %s --outdir samples", plan.run_dir)
        except TrainingInterrupted:  # every process stopped at the same step
            dist.barrier()
            raise
        dist.barrier()  # every process is done before the group goes away
    finally:
        teardown()


def cmd_reconstruct(values: dict[str, Any], given: set[str]) -> None:
    from .outputs import reconstruct_command

    reconstruct_command(pick(ReconstructOptions, values), pick(Runtime, values))


def cmd_generate(values: dict[str, Any], given: set[str]) -> None:
    from .outputs import generate_command

    generate_command(pick(GenerateOptions, values), pick(Runtime, values))


def cmd_evaluate(values: dict[str, Any], given: set[str]) -> None:
    from .evaluate import evaluate_command

    evaluate_command(pick(EvaluateOptions, values), pick(Runtime, values))


def cmd_average(values: dict[str, Any], given: set[str]) -> None:
    from .average import average_runs
    from .device import pick_device

    o, runtime = pick(AverageOptions, values), pick(Runtime, values)
    device = pick_device(runtime.device, runtime.cpu)
    average_runs(
        list(o.runs), o.last, o.out, o.data_dir, device, o.batchsize, o.seed, not runtime.quiet
    )


def cmd_explore(values: dict[str, Any], given: set[str]) -> None:
    from .server import explore_command

    explore_command(pick(ExploreOptions, values), pick(Runtime, values))


def cmd_import(values: dict[str, Any], given: set[str]) -> None:
    from .convert import import_command

    import_command(pick(ImportOptions, values))


def cmd_fit_sampler(values: dict[str, Any], given: set[str]) -> None:
    from .samplers import fit_sampler_command

    fit_sampler_command(pick(FitSamplerOptions, values), pick(Runtime, values))


def cmd_sample_quality(values: dict[str, Any], given: set[str]) -> None:
    from .quality import quality_command

    quality_command(pick(SampleQualityOptions, values), pick(Runtime, values))


def cmd_train_classifier(values: dict[str, Any], given: set[str]) -> None:
    from .classifier import train_classifier

    runtime = pick(Runtime, values)
    train_classifier(pick(ClassifierOptions, values), not runtime.quiet)


def cmd_interpolate(values: dict[str, Any], given: set[str]) -> None:
    from .pictures import interpolate_command

    interpolate_command(pick(InterpolateOptions, values), pick(Runtime, values))


def cmd_traverse(values: dict[str, Any], given: set[str]) -> None:
    from .pictures import traverse_command

    traverse_command(pick(TraverseOptions, values), pick(Runtime, values))


def cmd_manifold(values: dict[str, Any], given: set[str]) -> None:
    from .pictures import manifold_command

    manifold_command(pick(ManifoldOptions, values), pick(Runtime, values))


def cmd_embed(values: dict[str, Any], given: set[str]) -> None:
    from .pictures import embed_command

    embed_command(pick(EmbedOptions, values), pick(Runtime, values))


def cmd_plot(values: dict[str, Any], given: set[str]) -> None:
    from .pictures import plot_command

    plot_command(pick(PlotOptions, values))


COMMANDS = {
    c.name: c
    for c in (
        Command("train", "Train a VAE", "Train a VAE with PyTorch.",
                (Runtime, TrainConfig, ModelConfig, RunOptions), cmd_train),
        Command("reconstruct", "Reconstruct dataset images",
                "Reconstruct data samples using a VAE.", (Runtime, ReconstructOptions),
                cmd_reconstruct),
        Command("generate", "Generate samples", "Generate samples from a VAE.",
                (Runtime, GenerateOptions), cmd_generate),
        Command("evaluate", "Evaluate a model on a dataset split",
                "Evaluate a VAE: objective, MSE, PSNR, KL, active units and an "
                "importance-weighted NLL with bits per dimension.",
                (Runtime, EvaluateOptions), cmd_evaluate),
        Command("average", "Average the weights of the last epochs of runs",
                "Average the weights saved at the end of the last K epochs of one or more runs "
                "of one model, recompute the batch-norm statistics on the training split, and "
                "write the result as a new model folder (see docs/training.md).",
                (Runtime, AverageOptions), cmd_average),
        Command("explore", "Explore a model in the browser",
                "Serve the live explorer: a page (and a JSON API) where sliders, a 2-D map of "
                "the test split, random samples, interpolations and uploaded images decode "
                "as the pointer moves (see docs/explore.md).",
                (Runtime, ExploreOptions), cmd_explore),
        Command("import-torch-vae", "Convert an original torch-vae .pth checkpoint",
                "Convert a checkpoint of the original torch-vae (a bare state_dict .pth) into "
                "a torch-vae .safetensors file.", (ImportOptions,), cmd_import),
        Command("train-classifier", "Train the classifier that measures sample quality",
                "Train a small CNN classifier on an MNIST-style dataset; its 128-d penultimate "
                "layer is the feature space of 'torch-vae sample-quality'.",
                (Runtime, ClassifierOptions), cmd_train_classifier),
        Command("fit-sampler", "Fit a latent sampler to the training posterior means",
                "Fit a full-covariance Gaussian or a Gaussian mixture to the posterior means of "
                "the training split and save it beside the model, for generate --sampler.",
                (Runtime, FitSamplerOptions), cmd_fit_sampler),
        Command("sample-quality", "Measure generated samples against the test split",
                "Frechet distance, precision and recall (k-NN balls) and the class histogram "
                "of generated samples against the test split, in a classifier's feature space "
                "(or the model's encoder's), with the training split as the floor.",
                (Runtime, SampleQualityOptions), cmd_sample_quality),
        Command("interpolate", "Decode the way between two images or codes",
                "Decode the codes between two images (of the dataset, or files) or two random "
                "codes: a strip PNG and an animated GIF (see docs/explore.md).",
                (Runtime, InterpolateOptions), cmd_interpolate),
        Command("traverse", "Vary one latent dimension at a time",
                "Decode codes that vary one latent dimension at a time, the dimensions with the "
                "largest average KL first, inactive ones marked (see docs/explore.md).",
                (Runtime, TraverseOptions), cmd_traverse),
        Command("manifold", "Decode a grid over the latent space",
                "Decode a grid of codes: the prior's quantiles for a latent-2 model, else the "
                "plane of the data's two leading principal directions (see docs/explore.md).",
                (Runtime, ManifoldOptions), cmd_manifold),
        Command("embed", "Map the dataset's posterior means in 2-D",
                "A scatter plot of the posterior means of a split, coloured by class: the code "
                "itself for a latent-2 model, else PCA (or UMAP) (see docs/explore.md).",
                (Runtime, EmbedOptions), cmd_embed),
        Command("plot", "Plot the training curves of runs",
                "Training curves (loss, reconstruction, KL, test loss per epoch) of one or "
                "more runs, overlaid, from their metrics.jsonl, into a PNG.",
                (PlotOptions,), cmd_plot),
    )
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-vae`` command; returns the exit status.

    A process of a torchrun job ends here, through ``distributed.end_process``: otherwise about
    one run in ten had a process abort in the interpreter's shutdown, and torchrun reported the
    finished run as failed. Nothing of the run is left to do at that point.
    """
    rc = _main(argv)
    if "torch" in sys.modules:
        from .distributed import end_process, joined_a_job

        if joined_a_job():
            end_process(rc)
    return rc


def _main(argv: list[str] | None) -> int:
    try:
        command, values, given = parse(argv)
        logging.basicConfig(
            level=logging.WARNING if values.get("quiet") else logging.INFO,
            format="%(message)s",
            stream=sys.stderr,
        )
        if values.get("threads"):
            import torch

            pick(Runtime, values)  # checks --threads
            torch.set_num_threads(values["threads"])
        COMMANDS[command].run(values, given)
    except TrainingInterrupted as exc:
        print(f"torch-vae: {exc}", file=sys.stderr)
        return exc.exit_code
    except TorchVaeError as exc:
        print(f"torch-vae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torch-vae: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment: a full disk, a read-only folder, a file in the way
        print(f"torch-vae: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a collective failed: another process of a distributed job died
        from .distributed import describe_failure, from_env, is_collective_error

        if not is_collective_error(exc):
            raise
        print(f"torch-vae: error: {describe_failure(exc, from_env())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
