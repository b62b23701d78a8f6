"""The ``torch-vae`` command: train, reconstruct and generate, with the original's flags."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import TorchVaeError, TrainingInterrupted

log = logging.getLogger("torch_vae")

ARCH_CHOICES = ("original", "dcgan")  # as config.ARCHS, without importing it here
DEFAULT_DEPTH = {"original": 3, "dcgan": 4}
DATASET_HELP = (
    "dataset: mnist, fashion-mnist, cifar-10, cifar-100, celeb-a, or a folder of images as "
    "folder:PATH"
)


def _common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("--cpu", action="store_true", help="Use CPU instead of GPU (cuda/mps)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="Random seed (default 0)")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for PyTorch (default: PyTorch's choice)"
    )
    p.add_argument("--quiet", action="store_true", help="No progress bars or log lines")


def _arch_checks(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--latent_dims",
        type=int,
        default=None,
        help="Number of latent dimensions; optional, checked against the model",
    )
    p.add_argument(
        "--max_filters",
        type=int,
        default=None,
        help="Maximum number of filters; optional, checked against the model",
    )


INFERENCE_PRECISION_HELP = (
    "fp32 (default), or bf16/fp16 autocast: faster on CPUs and GPUs with those "
    "instructions, pixels within a grey level or two of fp32; see docs/benchmarks.md"
)


def _precision(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torch-vae", description="Convolutional variational autoencoders in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"torch-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="Train a VAE", description="Train a VAE with PyTorch.")
    _common(t)
    t.add_argument("--config", type=Path, help="JSON file of flag values (flags override it)")
    t.add_argument("--batchsize", type=int, default=32, help="Batch size for training")
    t.add_argument(
        "--max_filters",
        type=int,
        default=128,
        help="Maximum number of filters in the convolutional layers",
    )
    t.add_argument("--epochs", type=int, default=100, help="Number of training epochs")
    t.add_argument("--lr", type=float, default=3e-4, help="Learning rate (AdamW)")
    t.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    t.add_argument(
        "--latent_dims",
        type=int,
        default=8,
        help="Number of latent dimensions (positive integer, default 8)",
    )
    t.add_argument("--image_size", type=int, default=64, help="Image size in pixels (default 64)")
    t.add_argument(
        "--native_size",
        type=int,
        default=0,
        help="The size the images were upsampled from (28 for MNIST and Fashion-MNIST, 32 for "
        "CIFAR): the decoder's output is projected onto such upsampled images, which only "
        "lowers its error (default 0: off). With --init_from it may differ from MODEL's",
    )
    t.add_argument(
        "--arch",
        choices=ARCH_CHOICES,
        default="original",
        help="original: the original torch-vae network (default); dcgan: fully convolutional "
        "DCGAN-style variant (4x4 strided convolutions, batch norm in both networks, no fully "
        "connected hidden layers)",
    )
    t.add_argument(
        "--depth",
        type=int,
        default=None,
        help="Number of stride-2 convolutions in encoder and decoder "
        "(default 3 for original, 4 for dcgan)",
    )
    t.add_argument("--beta", type=float, default=1.0, help="Weight of the KL term (default 1)")
    t.add_argument(
        "--recon_loss",
        choices=("mse", "bce"),
        default="mse",
        help="mse: sum of squared errors (the original); bce: Bernoulli likelihood",
    )
    t.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    t.add_argument(
        "--lr_schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="constant (the original) or cosine decay to 0 over the run",
    )
    t.add_argument(
        "--kl_warmup_epochs",
        type=float,
        default=0.0,
        help="Raise the KL weight linearly from 0 to --beta over this many epochs",
    )
    t.add_argument(
        "--run_dir",
        type=Path,
        default=None,
        help="Run folder to create (default: runs/<dataset>_filters_F_dims_D, "
        "numbered so no run is overwritten)",
    )
    t.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="Where datasets are downloaded and cached (default: data, or $TORCH_VAE_DATA)",
    )
    t.add_argument(
        "--max_steps",
        type=int,
        default=0,
        help="Stop after this many optimizer steps (0: no limit)",
    )
    _precision(t, "fp32 (default), or bf16/fp16 mixed precision (autocast); see docs/benchmarks.md")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument(
        "--dry_run",
        action="store_true",
        help="Quick check: 1 epoch of 2 steps, evaluated on 64 test images",
    )
    t.add_argument(
        "--init_from",
        type=Path,
        default=None,
        metavar="MODEL",
        help="Start from the weights of MODEL (run folder or .safetensors) instead of a random "
        "initialisation: fine-tuning on another dataset, or another training cycle; the "
        "architecture is MODEL's",
    )
    t.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="Continue the run in folder RUN from its last checkpoint, with its own config; "
        "--epochs and --max_steps may extend it",
    )

    r = sub.add_parser(
        "reconstruct",
        help="Reconstruct dataset images",
        description="Reconstruct data samples using a VAE.",
    )
    _common(r, seed=False)
    r.add_argument(
        "--model", type=Path, required=True, help="Run folder or .safetensors weights file"
    )
    r.add_argument(
        "--rec_testdata",
        action="store_true",
        help="Reconstruct test split instead of training split",
    )
    r.add_argument("--dataset", default=None, help=DATASET_HELP + " (default: the model's)")
    _arch_checks(r)
    r.add_argument("--outdir", type=Path, required=True, help="Output directory for the images")
    r.add_argument("--nimages", type=int, default=0, help="Reconstruct only the first N (0: all)")
    r.add_argument("--batchsize", type=int, default=500, help="Images per forward pass")
    r.add_argument("--data_dir", type=Path, default=None, help="Dataset folder (default: data)")
    _precision(r, INFERENCE_PRECISION_HELP)

    g = sub.add_parser(
        "generate", help="Generate samples", description="Generate samples from a VAE."
    )
    _common(g)
    g.add_argument(
        "--model", type=Path, required=True, help="Run folder or .safetensors weights file"
    )
    _arch_checks(g)
    g.add_argument("--nsamples", type=int, default=64, help="Number of samples to generate")
    g.add_argument("--outdir", type=Path, required=True, help="Output directory for the samples")
    g.add_argument(
        "--nimg_channels",
        type=int,
        default=None,
        help="Number of image channels; optional, checked against the model",
    )
    g.add_argument("--batchsize", type=int, default=1000, help="Samples per forward pass")
    _precision(g, INFERENCE_PRECISION_HELP)

    e = sub.add_parser(
        "evaluate",
        help="Evaluate a model on a dataset split",
        description="Evaluate a VAE: objective, MSE, PSNR, KL, active units and an "
        "importance-weighted NLL with bits per dimension.",
    )
    _common(e)
    e.add_argument(
        "--model", type=Path, required=True, help="Run folder or .safetensors weights file"
    )
    e.add_argument("--dataset", default=None, help=DATASET_HELP + " (default: the model's)")
    e.add_argument("--split", choices=("train", "test"), default="test", help="Split (test)")
    e.add_argument(
        "--iw_samples",
        type=int,
        default=128,
        help="Importance samples per image for the NLL (128; 0 skips the NLL)",
    )
    e.add_argument(
        "--refine_steps",
        type=int,
        default=0,
        help="Semi-amortized inference: refine each image's posterior with this many gradient "
        "steps on its objective before measuring (0: the encoder's posterior, as the original)",
    )
    e.add_argument(
        "--refine_lr", type=float, default=0.01, help="Adam step size for --refine_steps (0.01)"
    )
    e.add_argument("--nimages", type=int, default=0, help="Evaluate only the first N (0: all)")
    e.add_argument("--batchsize", type=int, default=100, help="Images per forward pass")
    e.add_argument("--data_dir", type=Path, default=None, help="Dataset folder (default: data)")
    e.add_argument(
        "--report",
        type=Path,
        default=None,
        help="Where to write the JSON report (default: next to the model)",
    )

    a = sub.add_parser(
        "average",
        help="Average the weights of the last epochs of runs (weight averaging)",
        description="Average the weights saved at the end of the last K epochs of one or "
        "more runs of one model, "
        "recompute the batch-norm statistics on the training split, and write the result as a "
        "new model folder. Worth it after a few epochs at a constant learning rate (see "
        "docs/results.md).",
    )
    _common(a)
    a.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="Run folder(s) written by 'torch-vae train', of one model",
    )
    a.add_argument("--last", type=int, required=True, help="Average the last K epochs of each")
    a.add_argument("--out", type=Path, required=True, help="Model folder to create")
    a.add_argument("--batchsize", type=int, default=500, help="Images per forward pass")
    a.add_argument("--data_dir", type=Path, default=None, help="Dataset folder (default: data)")

    im = sub.add_parser(
        "import-torch-vae",
        help="Convert an original torch-vae .pth checkpoint",
        description="Convert a checkpoint of the original torch-vae (a bare "
        "state_dict .pth) into a torch-vae .safetensors file.",
    )
    im.add_argument("checkpoint", type=Path, help="The original's .pth file")
    im.add_argument(
        "--dataset", required=True, help="The dataset it was trained on (stored with the weights)"
    )
    im.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Output .safetensors file (default: imported/<dataset>/<name>.safetensors)",
    )
    im.add_argument("--quiet", action="store_true", help="No log lines")
    im.set_defaults(threads=0)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.config is not None:
        try:
            values = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TorchVaeError(f"cannot read --config {args.config}: {exc}") from None
        train_parser = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
        known = {a.dest for a in train_parser._actions}  # noqa: SLF001
        unknown = sorted(set(values) - known)
        if not isinstance(values, dict) or unknown:
            raise TorchVaeError(f"--config {args.config}: unknown keys {unknown}")
        train_parser.set_defaults(**values)
        args = parser.parse_args(argv)  # flags given on the command line override the file
    if args.command == "train":
        args.given = _given_flags(argv)
    return args


def _given_flags(argv: list[str] | None) -> set[str]:
    """The train options given on the command line (not defaults): parsed again with every
    default suppressed."""
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    for action in train_parser._actions:  # noqa: SLF001
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise TorchVaeError(f"{name} must be a positive integer, got {value}")


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise TorchVaeError(f"{name} must be >= 0, got {value}")


# Options of train that --resume accepts: they extend the run or choose how it runs. Every
# other option describes the run itself, which config.json already fixes.
RESUME_OPTIONS = {"resume", "epochs", "max_steps", "cpu", "device", "threads", "quiet", "data_dir"}
MODEL_OPTIONS = {"latent_dims", "max_filters", "image_size", "depth", "arch", "native_size"}


def cmd_train(args: argparse.Namespace) -> None:
    from .device import pick_device
    from .distributed import setup, teardown

    # Under torchrun: join the job (gloo on the CPU, NCCL with one GPU per process).
    dist, device = setup(pick_device(args.device, args.cpu))
    try:
        try:
            _train_job(args, dist, device)
        except TrainingInterrupted:  # every process stopped at the same step
            dist.barrier()
            raise
        dist.barrier()  # every process is done before the group goes away
    finally:
        teardown()


def _train_job(args: argparse.Namespace, dist, device) -> None:
    import torch

    from .config import ModelConfig, TrainConfig
    from .data import get_dataset, load_split
    from .train import check_new_run_dir, new_run_dir, train

    resume = None
    if args.resume is not None:
        run_dir = args.resume
        model_cfg, train_cfg, resume = _resume_configs(args)
        ds = get_dataset(train_cfg.dataset)
        if ds.channels != model_cfg.in_channels:
            raise TorchVaeError(
                f"dataset {train_cfg.dataset} now has {ds.channels} channel(s) but the run's "
                f"model expects {model_cfg.in_channels}; the images changed since the run began"
            )
        test_limit = None
    else:
        if args.dry_run:
            args.epochs, args.max_steps = 1, 2
        ds = get_dataset(args.dataset)
        init_from, init_sha256 = "", ""
        if args.init_from is not None:
            model_cfg, init_from, init_sha256 = _initial_model(args)
            if ds.channels != model_cfg.in_channels:
                raise TorchVaeError(
                    f"dataset {args.dataset} has {ds.channels} channel(s) but --init_from "
                    f"{args.init_from} is a model of {model_cfg.in_channels}; start from a "
                    "model trained on images with as many channels"
                )
        else:
            model_cfg = ModelConfig(
                in_channels=ds.channels,
                image_size=args.image_size,
                latent_dims=args.latent_dims,
                max_filters=args.max_filters,
                depth=args.depth if args.depth is not None else DEFAULT_DEPTH[args.arch],
                arch=args.arch,
                native_size=args.native_size,
            )
        train_cfg = TrainConfig(
            dataset=args.dataset,
            epochs=args.epochs,
            batchsize=args.batchsize,
            lr=args.lr,
            weight_decay=args.weight_decay,
            beta=args.beta,
            recon_loss=args.recon_loss,
            lr_schedule=args.lr_schedule,
            kl_warmup_epochs=args.kl_warmup_epochs,
            seed=args.seed,
            max_steps=args.max_steps,
            precision=args.precision,
            compile=args.compile,
            init_from=init_from,
            init_sha256=init_sha256,
        )
        if args.run_dir is None:
            stem = ds.source_id(Path()) if args.dataset not in ("mnist",) else "mnist"
            m = model_cfg
            name = f"{stem}_filters_{m.max_filters:04d}_dims_{m.latent_dims:04d}"
            if m.arch != "original":
                name += f"_{m.arch}"

            def choose() -> Path:
                return new_run_dir(Path("runs"), name)
        else:

            def choose() -> Path:
                check_new_run_dir(args.run_dir)
                return args.run_dir

        # Rank 0 alone looks at the file system; every process gets its answer (or its error).
        run_dir = dist.decide(choose)
        test_limit = 64 if args.dry_run else None
    progress = not args.quiet and dist.is_main
    size = model_cfg.image_size

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(
            torch.from_numpy(load_split(train_cfg.dataset, split, size, args.data_dir, progress))
            for split in ("train", "test")
        )

    # The cache is built once, by rank 0; the other processes then read it.
    train_images, test_images = dist.first_then_others(load)
    if test_limit:
        test_images = test_images[:test_limit]
    log.info("run folder: %s", run_dir)
    train(model_cfg, train_cfg, train_images, test_images, run_dir, device, progress, resume, dist)
    log.info("done. Next: torch-vae generate --model %s --outdir samples", run_dir)


def _check_given(args, names, config_of, where: str, why: str) -> None:
    """A one-line error for the first flag in ``names`` whose value differs from the one
    stored in ``config_of(name)`` (a model or training config)."""
    for name in sorted(names):
        value, stored = getattr(args, name), getattr(config_of(name), name, None)
        if value != stored:
            raise TorchVaeError(
                f"--{name} {value} does not match {where}, which has {name}={stored}; "
                f"drop the flag ({why})"
            )


def _initial_model(args: argparse.Namespace):
    """The model config of --init_from, its weights file and their SHA-256; architecture
    flags given beside it must agree with it, except --native_size, which has no weights."""
    import dataclasses

    from .checkpoint import read_metadata
    from .fileio import file_sha256

    meta = read_metadata(args.init_from)
    config = meta["config"]
    why = "the architecture is the initial model's"
    _check_given(
        args,
        args.given & MODEL_OPTIONS - {"native_size"},
        lambda _: config,
        f"--init_from {args.init_from}",
        why,
    )
    if "native_size" in args.given:
        config = dataclasses.replace(config, native_size=args.native_size)
    weights = meta["path"].resolve()
    return config, str(weights), file_sha256(weights)


def _resume_configs(args: argparse.Namespace):
    """The configs of the run to resume (epochs and max_steps possibly extended) and its
    training state; one-line errors for flags that contradict the run or a finished run."""
    import dataclasses

    from .trainstate import load_train_state, read_run_config

    run_dir = args.resume
    if not run_dir.is_dir():
        raise TorchVaeError(f"--resume {run_dir}: no such run folder")
    for flag in ("config", "dry_run", "run_dir", "init_from"):
        if flag in args.given:
            raise TorchVaeError(
                f"--{flag} cannot be combined with --resume, which continues the run in "
                f"{run_dir} with the config stored there"
            )
    model_cfg, train_cfg = read_run_config(run_dir)
    _check_given(
        args,
        args.given - RESUME_OPTIONS,
        lambda name: model_cfg if name in MODEL_OPTIONS else train_cfg,
        f"the run in {run_dir}",
        "--resume continues the run with its own config; only --epochs and --max_steps may change",
    )
    changes = {k: getattr(args, k) for k in ("epochs", "max_steps") if k in args.given}
    try:
        train_cfg = dataclasses.replace(train_cfg, **changes)
    except TypeError as exc:
        raise TorchVaeError(str(exc)) from None
    state = load_train_state(run_dir)
    finished = state["epoch"] >= train_cfg.epochs or (
        state["partial"] is None and train_cfg.max_steps and state["step"] >= train_cfg.max_steps
    )
    if finished:
        raise TorchVaeError(
            f"the run in {run_dir} is already finished ({state['epoch']} epochs, "
            f"{state['step']} steps); pass a larger --epochs (or --max_steps) to train it further"
        )
    return model_cfg, train_cfg, state


def cmd_reconstruct(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import check_flags
    from .data import load_split
    from .outputs import write_reconstructions

    model, dataset, _ = _model_and_dataset(args)
    check_flags(model.config, latent_dims=args.latent_dims, max_filters=args.max_filters)
    _positive("--batchsize", args.batchsize)
    split = "test" if args.rec_testdata else "train"
    images = load_split(dataset, split, model.config.image_size, args.data_dir, not args.quiet)
    if args.nimages:
        images = images[: args.nimages]
    out = write_reconstructions(
        model,
        torch.from_numpy(images),
        args.outdir,
        args.batchsize,
        not args.quiet,
        args.precision,
    )
    log.info(
        "wrote %d reconstructions of the %s split of %s to %s (overview: %s)",
        len(images),
        split,
        dataset,
        args.outdir,
        out,
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from .checkpoint import check_flags, load_model
    from .device import pick_device
    from .outputs import write_samples

    device = pick_device(args.device, args.cpu)
    model = load_model(args.model, device)
    check_flags(
        model.config,
        latent_dims=args.latent_dims,
        max_filters=args.max_filters,
        in_channels=args.nimg_channels,
    )
    _positive("--nsamples", args.nsamples)
    _positive("--batchsize", args.batchsize)
    out = write_samples(
        model,
        args.nsamples,
        args.outdir,
        args.seed,
        args.batchsize,
        not args.quiet,
        args.precision,
    )
    log.info("wrote %d samples to %s (overview: %s)", args.nsamples, args.outdir, out)


def _model_and_dataset(args):
    """Load --model and resolve --dataset (default: the model's), checking channels."""
    from .checkpoint import load_model
    from .data import get_dataset
    from .device import pick_device

    device = pick_device(args.device, args.cpu)
    model = load_model(args.model, device)
    dataset = args.dataset or model.dataset
    if dataset is None:
        raise TorchVaeError(
            f"{args.model} does not say which dataset it was trained on; pass --dataset"
        )
    ds = get_dataset(dataset)
    if ds.channels != model.config.in_channels:
        raise TorchVaeError(
            f"dataset {dataset} has {ds.channels} channel(s) but the model expects "
            f"{model.config.in_channels}; pass the dataset the model was trained on"
        )
    return model, dataset, device


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import resolve_weights
    from .data import load_split
    from .evaluate import calibrate_sigma, evaluate_model

    _positive("--batchsize", args.batchsize)
    _non_negative("--iw_samples", args.iw_samples)
    _non_negative("--refine_steps", args.refine_steps)
    if not 0 < args.refine_lr < float("inf"):
        raise TorchVaeError(
            f"--refine_lr must be a finite number > 0 (default 0.01), got {args.refine_lr}"
        )
    model, dataset, device = _model_and_dataset(args)
    size, progress = model.config.image_size, not args.quiet
    images = torch.from_numpy(load_split(dataset, args.split, size, args.data_dir, progress))
    if args.nimages:
        images = images[: args.nimages]
    train = torch.from_numpy(load_split(dataset, "train", size, args.data_dir, progress))
    sigma = calibrate_sigma(model, train[:10000], device, seed=args.seed)
    report = evaluate_model(
        model, images, device, sigma, args.iw_samples, args.batchsize, args.seed, progress,
        args.refine_steps, args.refine_lr,
    )  # fmt: skip
    weights = resolve_weights(args.model)
    report = {
        "model": str(args.model),
        "dataset": dataset,
        "split": args.split,
        "image_size": size,
        "latent_dims": model.config.latent_dims,
        "native_size": model.config.native_size,
        "parameters": model.num_parameters(),
        "seed": args.seed,
        **report,
    }
    tag = dataset.replace("/", "_").replace(":", "_")
    if args.report is not None:
        path = args.report
    elif args.model.is_dir():
        path = args.model / f"eval-{tag}-{args.split}.json"
    else:
        path = weights.with_name(f"{weights.stem}.eval-{tag}-{args.split}.json")
    from .fileio import write_text_atomic

    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    rows = [
        ("objective (SSE + KL, z sampled)", report["objective"]),
        ("sum of squared errors", report["sse"]),
        ("KL", report["kl"]),
        ("MSE per pixel (posterior mean)", report["mse"]),
        ("PSNR (dB)", report["psnr"]),
        ("active units", f"{report['active_units']} / {model.config.latent_dims}"),
    ]
    if args.iw_samples:
        rows += [
            (f"NLL, nats ({args.iw_samples} importance samples)", report["nll"]),
            ("bits per dimension", report["bits_per_dim"]),
        ]
    print(f"{dataset} {args.split}, {report['n_images']} images at {size}x{size}, per image:")
    if model.config.native_size:
        n = model.config.native_size
        print(f"  (decoder output projected onto upsamplings of {n}x{n} images: --native_size {n})")
    if args.refine_steps:
        print(f"  (posteriors refined with {args.refine_steps} steps at lr {args.refine_lr})")
    for name, value in rows:
        print(
            f"  {name:<42} {value:>12.4f}"
            if isinstance(value, float)
            else f"  {name:<42} {value:>12}"
        )
    print(f"report: {path}")


def cmd_average(args: argparse.Namespace) -> None:
    from .average import average_runs
    from .device import pick_device

    _positive("--batchsize", args.batchsize)
    device = pick_device(args.device, args.cpu)
    average_runs(
        args.runs, args.last, args.out, args.data_dir, device, args.batchsize, args.seed,
        not args.quiet,
    )  # fmt: skip


def cmd_import(args: argparse.Namespace) -> None:
    from .checkpoint import save_model
    from .convert import import_original
    from .data import get_dataset

    ds = get_dataset(args.dataset)
    model = import_original(args.checkpoint)
    if ds.channels != model.config.in_channels:
        raise TorchVaeError(
            f"{args.checkpoint} has {model.config.in_channels} input channel(s) but dataset "
            f"{args.dataset} has {ds.channels}; pass the dataset it was trained on"
        )
    out = args.out or Path("imported") / args.dataset / f"{args.checkpoint.stem}.safetensors"
    if out.exists():
        raise TorchVaeError(f"{out} already exists; pass another --out (nothing was overwritten)")
    save_model(model, out, dataset=args.dataset)
    c = model.config
    log.info(
        "imported %s (C=%d, F=%d, d=%d, %dx%d) -> %s",
        args.checkpoint,
        c.in_channels,
        c.max_filters,
        c.latent_dims,
        c.image_size,
        c.image_size,
        out,
    )


COMMANDS = {
    "train": cmd_train,
    "reconstruct": cmd_reconstruct,
    "generate": cmd_generate,
    "evaluate": cmd_evaluate,
    "import-torch-vae": cmd_import,
    "average": cmd_average,
}


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
        args = _parse(argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(message)s",
            stream=sys.stderr,
        )
        if args.threads:
            import torch

            _positive("--threads", args.threads)
            torch.set_num_threads(args.threads)
        COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        print(f"torch-vae: {exc}", file=sys.stderr)
        return exc.exit_code
    except TorchVaeError as exc:
        print(f"torch-vae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torch-vae: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a collective failed: another process of a distributed job died
        from .distributed import describe_failure, from_env, is_collective_error

        if not is_collective_error(exc):
            raise
        print(f"torch-vae: error: {describe_failure(exc, from_env())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
