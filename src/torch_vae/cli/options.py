"""The options of each command that are not model or training config: where files go, which
model to load, how many images. Fields, defaults and help are the command line's one source
(flags.py builds the parser from them, and from the model families' configs and
training.TrainConfig); ``__post_init__`` checks the values, so a command never starts with a
bad one."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..data.datasets import DATASET_HELP
from ..errors import TorchVaeError
from ..evaluation.classifier import ClassifierTraining
from ..fields import (
    check_choice,
    check_fraction,
    check_number,
    check_seed,
    integer_from,
    non_negative,
    option,
    positive,
)
from ..priors import preference
from ..priors.base import FIT_PRECISIONS, ROUND_TRIPS, STORE_PRECISIONS
from ..priors.fit import kinds
from ..priors.neural import FRACTIONS
from ..runtime.precision import PrecisionName

MODEL_HELP = "run folder, model folder or .safetensors weights file"
DATA_DIR_HELP = "where datasets are downloaded and cached (default: data, or $TORCH_VAE_DATA)"
INFERENCE_PRECISION_HELP = (
    "auto: bf16 autocast where the hardware computes bf16 natively (CPUs with AMX or AVX-512 "
    "BF16, GPUs from Ampere on; about 2x faster), else fp32; or fp32, bf16, fp16. 16-bit pixels "
    "are within a grey level or two of fp32 (--precision fp32 for the same files on every "
    "machine); see docs/benchmarks.md"
)
CHECK_HELP = "optional, checked against the model"
SAMPLERS = ("auto", "prior", *preference())
NSAMPLES = 10000  # sample-quality's default: the protocol of papers' FID
IW_SAMPLES = 128  # evaluate's default importance samples for the NLL
REFINE_LR = 0.01  # evaluate's default step size of --refine_steps
SAMPLER_HELP = (
    "where the latents come from: prior (N(0, I)), or a prior fitted after training with "
    f"fit-sampler ({', '.join(preference())}); auto: the best one fitted, else N(0, I)"
)


def sampler_option() -> str:
    return option("auto", SAMPLER_HELP, choices=SAMPLERS)


def temperature_option() -> float:
    return option(
        1.0,
        "a transformer sampler's temperature: its logits divided by it before each code is "
        "drawn (below 1: likelier, more typical samples, less variety; docs/sampling.md)",
    )


def guidance_option() -> float:
    return option(
        0.0,
        "a class-conditional transformer sampler's guidance scale w: the class's codes "
        "favoured by w times their log-ratio to the unconditional ones (0: none; 1 to 3: "
        "samples more clearly of their class, less variety; docs/sampling.md)",
    )


def round_trips_option() -> int | None:
    return option(
        None,
        "a transformer sampler's round trips: each drawn code grid decoded, encoded and "
        "quantized again this many times before it is decoded (0: the grids as drawn; default: "
        f"{ROUND_TRIPS}; docs/sampling.md)",
    )


def check_drawing(value: float, guidance: float = 0.0, round_trips: int | None = None) -> None:
    """--temperature, --guidance and --round_trips in their ranges, else a one-line error."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.05 <= value <= 10):
        raise TorchVaeError(f"--temperature must be a number from 0.05 to 10, got {value!r}")
    if not (isinstance(guidance, int | float) and math.isfinite(guidance) and 0 <= guidance <= 20):
        raise TorchVaeError(f"--guidance must be a number from 0 to 20, got {guidance!r}")
    if round_trips is not None and not (isinstance(round_trips, int) and 0 <= round_trips <= 10):
        raise TorchVaeError(
            f"--round_trips must be a whole number from 0 to 10, got {round_trips!r}"
        )


@dataclass(frozen=True)
class Runtime:
    """Where and how any command runs."""

    cpu: bool = option(False, "use the CPU even if a GPU (CUDA or MPS) is available")
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    threads: int = option(0, "CPU threads for PyTorch (0: PyTorch's choice)")
    quiet: bool = option(False, "no progress bars or log lines")

    def __post_init__(self) -> None:
        non_negative("--threads", self.threads)
        # far more threads than cores only slows PyTorch down, and tens of thousands crash it
        most = 4 * (os.cpu_count() or 1)
        if self.threads > most:
            raise TorchVaeError(
                f"--threads {self.threads} is far more than this machine's {os.cpu_count()} CPUs "
                f"can use; pass at most {most} (4 per CPU), or 0 for PyTorch's choice"
            )


@dataclass(frozen=True)
class ServeRuntime(Runtime):
    """Runtime for explore, whose threads are used otherwise while it serves."""

    threads: int = option(
        0,
        "CPU threads for PyTorch (0: PyTorch's choice while the test split is mapped, then 1 "
        "while serving: a decode is too small to split, and one thread answers fastest)",
    )


@dataclass(frozen=True)
class RunOptions:
    """The train command's options besides the model and training config."""

    config: Path | None = option(None, "JSON file of flag values (flags given override it)")
    run_dir: Path | None = option(
        None,
        "run folder to create (default: runs/<dataset>_filters_F_dims_D, numbered so that no "
        "run is overwritten)",
    )
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    dry_run: bool = option(False, "quick check: 1 epoch of 2 steps, 64 held-out images evaluated")
    init_from: Path | None = option(
        None,
        "start from the weights of MODEL (run folder or .safetensors) instead of a random "
        "initialisation: fine-tuning, or another training cycle; the architecture is MODEL's",
        metavar="MODEL",
    )
    resume: Path | None = option(
        None,
        "continue the run in folder RUN from its last saved state, with its own config; "
        "--epochs and --max_steps may extend it",
        metavar="RUN",
    )
    nproc_per_node: int = option(
        1,
        "train data-parallel in N processes on this machine, forked once PyTorch is imported "
        "so that they share its memory (as torchrun --standalone --nproc_per_node N, with less "
        "memory; docs/distributed.md)",
        metavar="N",
    )

    def __post_init__(self) -> None:
        positive("--nproc_per_node", self.nproc_per_node)


@dataclass(frozen=True)
class ReconstructOptions:
    model: Path = option(None, MODEL_HELP, required=True)
    rec_testdata: bool = option(False, "reconstruct the test split instead of the training split")
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    latent_dims: int | None = option(None, "latent dimensions; " + CHECK_HELP)
    max_filters: int | None = option(None, "maximum number of filters; " + CHECK_HELP)
    outdir: Path = option(None, "output folder for the images", required=True)
    nimages: int = option(0, "reconstruct only the first N (0: all)")
    batchsize: int = option(500, "images per forward pass")
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    precision: PrecisionName = option("auto", INFERENCE_PRECISION_HELP)

    def __post_init__(self) -> None:
        positive("--batchsize", self.batchsize)
        non_negative("--nimages", self.nimages)


# importance samples per image (papers use 1,000-5,000; far more only runs out of memory)
MAX_IW_SAMPLES = 100_000
# generate writes a PNG file per sample (10 million: about 10 GB of small files)
MAX_GENERATE = 10_000_000
# sample-quality holds every sample's features (2,048 numbers each in Inception's space)
MAX_QUALITY_SAMPLES = 100_000


@dataclass(frozen=True)
class GenerateOptions:
    model: Path = option(None, MODEL_HELP, required=True)
    seed: int = option(0, "random seed")
    latent_dims: int | None = option(None, "latent dimensions; " + CHECK_HELP)
    max_filters: int | None = option(None, "maximum number of filters; " + CHECK_HELP)
    nsamples: int = option(64, "number of samples to generate")
    outdir: Path = option(
        None,
        "output folder for the samples (sample_*.png of an earlier run there are replaced)",
        required=True,
    )
    nimg_channels: int | None = option(None, "image channels; " + CHECK_HELP)
    batchsize: int = option(1000, "samples per forward pass")
    precision: PrecisionName = option("auto", INFERENCE_PRECISION_HELP)
    sampler: str = sampler_option()
    temperature: float = temperature_option()
    guidance: float = guidance_option()
    round_trips: int | None = round_trips_option()
    class_: str | None = option(
        None,
        "a conditional model's class, as an index or a name (--class 7, --class sneaker); "
        "all: the classes in turn, a grid row of 8 each (--nsamples 80 for 10 classes; default: "
        "classes drawn at random)",
        name="class",
        metavar="CLASS",
    )

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        check_choice("--sampler", self.sampler, SAMPLERS)
        check_drawing(self.temperature, self.guidance, self.round_trips)
        positive("--nsamples", self.nsamples, MAX_GENERATE)
        positive("--batchsize", self.batchsize)


@dataclass(frozen=True)
class EvaluateOptions:
    model: Path = option(None, MODEL_HELP, required=True)
    seed: int = option(0, "random seed")
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    split: Literal["train", "val", "test"] = option(
        "test",
        "the split to evaluate: test, train (the whole training split, the validation images "
        "among them), or val: the validation images the model's run held out of its training "
        "split (train --val_images)",
    )
    iw_samples: int = option(
        IW_SAMPLES, "importance samples per image for the NLL (0 skips the NLL)"
    )
    refine_steps: int = option(
        0,
        "semi-amortized inference: refine each image's posterior with this many gradient steps "
        "on its objective before measuring (0: the encoder's posterior, as the original)",
    )
    refine_lr: float = option(REFINE_LR, "Adam step size for --refine_steps")
    nimages: int = option(0, "evaluate only the first N (0: all)")
    batchsize: int = option(100, "images per forward pass")
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    report: Path | None = option(
        None,
        "where to write the JSON report (default: next to the model; for a shipped model, "
        "reports/MODEL/)",
    )

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        positive("--batchsize", self.batchsize)
        non_negative("--iw_samples", self.iw_samples, MAX_IW_SAMPLES)
        non_negative("--refine_steps", self.refine_steps)
        non_negative("--nimages", self.nimages)
        if not (isinstance(self.refine_lr, float) and math.isfinite(self.refine_lr)) or (
            self.refine_lr <= 0
        ):
            raise TorchVaeError(
                f"--refine_lr must be a finite number > 0 (default 0.01), got {self.refine_lr}"
            )


SCORE_SUFFIXES = (".csv", ".json")


@dataclass(frozen=True)
class ScoreOptions:
    """score: each image's anomaly scores and, given out-of-distribution images, how well
    each score picks them out (evaluation/anomaly.py)."""

    model: Path = option(None, MODEL_HELP, required=True)
    dataset: str | None = option(
        None, DATASET_HELP + ": the in-distribution images (default: the model's)"
    )
    split: Literal["train", "val", "test"] = option(
        "test",
        "the split scored, of --dataset and of an --ood dataset: test, train, or val: the "
        "validation images the model's run held out of its training split (train --val_images), "
        "to choose a threshold on without the test split (an --ood dataset's test split then)",
    )
    ood: str | None = option(
        None,
        "out-of-distribution images: folder:PATH (every image in the folder) or a dataset "
        "name (its --split)",
        metavar="DATASET",
    )
    ood_class: str | None = option(
        None,
        "a class of --dataset, by index or name: its images of --split are the "
        "out-of-distribution ones, the other classes' the in-distribution ones",
        metavar="CLASS",
    )
    iw_samples: int = option(0, "importance samples per image for iw_nll (0: no iw_nll)")
    fpr: float = option(
        0.05, "the false-positive rate whose threshold and true-positive rate are reported"
    )
    nimages: int = option(
        0, "score only the first N in-distribution and first N out-of-distribution images (0: all)"
    )
    batchsize: int = option(100, "images per forward pass")
    seed: int = option(0, "random seed of the posterior samples")
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    out: Path | None = option(
        None,
        "the scores, one row per image: FILE.csv (then the AUROC table in FILE.summary.json) "
        "or FILE.json (default: score-<dataset>-<split>.json next to the model)",
    )
    figure: Path | None = option(
        None, "the ROC curves and score histograms (PNG; default: --out with .png)"
    )

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        positive("--batchsize", self.batchsize)
        non_negative("--iw_samples", self.iw_samples, MAX_IW_SAMPLES)
        non_negative("--nimages", self.nimages)
        ok = isinstance(self.fpr, int | float) and not isinstance(self.fpr, bool)
        if not ok or not 0 < self.fpr < 1:
            raise TorchVaeError(f"--fpr must be a number above 0 and below 1, got {self.fpr!r}")
        if self.ood is not None and self.ood_class is not None:
            raise TorchVaeError(
                "pass --ood (other images) or --ood_class (a class of --dataset), not both"
            )
        if self.out is not None and self.out.suffix.lower() not in SCORE_SUFFIXES:
            raise TorchVaeError(f"--out {self.out} must end in .csv or .json")
        if self.figure is not None and self.ood is None and self.ood_class is None:
            raise TorchVaeError(
                "--figure draws the ROC of the scores against out-of-distribution images: pass "
                "--ood or --ood_class too, or leave --figure out"
            )


@dataclass(frozen=True)
class AverageOptions:
    runs: tuple[Path, ...] = option(
        (), "run folder(s) written by 'torch-vae train', of one model",
        positional=True, nargs="+", metavar="RUN", type=Path,
    )  # fmt: skip
    seed: int = option(0, "random seed")
    last: int = option(None, "average the last K epochs of each run", required=True)
    out: Path = option(None, "model folder to create", required=True)
    batchsize: int = option(500, "images per forward pass")
    data_dir: Path | None = option(None, DATA_DIR_HELP)

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        positive("--batchsize", self.batchsize)


@dataclass(frozen=True)
class SharpenOptions:
    """sharpen: the decoder fine-tuned with an adversarial term (training/sharpen.py)."""

    model: Path = option(None, MODEL_HELP, required=True)
    out: Path = option(None, "model folder to create (the samplers fitted to --model come along)",
                       required=True)  # fmt: skip
    epochs: int = option(2, "passes over the training images (about 2 minutes each for "
                            "Fashion-MNIST at 28 pixels on 2 CPU cores)")  # fmt: skip
    adversarial: float = option(
        1.0,
        "the adversarial gradient's size at the decoder's last layer, as a multiple of the "
        "squared error's (0: squared error only)",
    )
    lr: float = option(1e-4, "the decoder's learning rate (Adam)")
    disc_lr: float = option(2e-4, "the discriminator's learning rate (Adam)")
    disc_width: int = option(64, "channels of the discriminator's first layer (then 2x, 4x)")
    warmup: int = option(
        50, "first steps without the adversarial term (the decoder learns from its squared "
        "error alone, the discriminator catches up)",
    )  # fmt: skip
    batchsize: int = option(128, "images per step")
    seed: int = option(0, "random seed (the discriminator's weights, the batches)")
    precision: str = option(
        "auto", "precision of the decoder's forward pass: auto is bf16 where the device "
        "computes it natively, else fp32", choices=("auto", "fp32", "bf16"),
    )  # fmt: skip
    max_steps: int = option(0, "stop after this many steps, e.g. 20 for a quick check (0: "
                               "every step of --epochs)")  # fmt: skip
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    data_dir: Path | None = option(None, DATA_DIR_HELP)

    def __post_init__(self) -> None:
        positive("--epochs", self.epochs, 10_000)
        non_negative("--max_steps", self.max_steps, 10_000_000)
        check_number("--adversarial", self.adversarial, 0.0, False, "--adversarial 1")
        check_number("--lr", self.lr, 0.0, True, "--lr 1e-4")
        check_number("--disc_lr", self.disc_lr, 0.0, True, "--disc_lr 2e-4")
        positive("--disc_width", self.disc_width, 1024, "--disc_width 64")
        non_negative("--warmup", self.warmup, 10_000_000)
        positive("--batchsize", self.batchsize, 65_536, "--batchsize 128")
        check_seed("--seed", self.seed)


@dataclass(frozen=True)
class ExploreOptions:
    """explore: the live explorer's web server (explorer/app.py)."""

    model: Path = option(None, MODEL_HELP, required=True)
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    host: str = option(
        "127.0.0.1", "address to listen on (0.0.0.0: every interface; the explorer has no login)"
    )
    port: int = option(8000, "port to listen on (0: a free one; the address is printed)")
    nimages: int = option(0, "test images on the map and behind the KL ordering (0: all)")
    sliders: int = option(16, "latent dimensions shown as sliders, the largest KL first")
    temperature: float = temperature_option()
    guidance: float = guidance_option()
    round_trips: int | None = round_trips_option()

    def __post_init__(self) -> None:
        check_drawing(self.temperature, self.guidance, self.round_trips)
        non_negative("--nimages", self.nimages)
        positive("--sliders", self.sliders)
        non_negative("--port", self.port)
        if self.port > 65535:
            raise TorchVaeError(f"--port must be 0..65535, got {self.port}")
        if self.nimages == 1:
            raise TorchVaeError("--nimages must be 0 (all) or at least 2: the map needs two")


@dataclass(frozen=True)
class ImportOptions:
    checkpoint: Path = option(None, "the original's .pth file", positional=True)
    dataset: str = option(
        None, "the dataset it was trained on (stored with the weights)", required=True
    )
    out: Path | None = option(
        None, "output .safetensors file (default: imported/<dataset>/<name>.safetensors)"
    )
    quiet: bool = option(False, "no log lines")


# the operator sets PyTorch's ONNX exporter writes (export --opset)
MIN_OPSET, MAX_OPSET = 9, 20


@dataclass(frozen=True)
class ExportOptions:
    """export: the encoder and decoder as ONNX or TorchScript files (models/export.py)."""

    model: Path = option(None, MODEL_HELP, required=True)
    format: Literal["onnx", "torchscript"] = option(
        "onnx",
        "onnx: two .onnx files for onnxruntime (pip install 'torch-vae[onnx]'); torchscript: "
        "two torch.jit.trace files for torch.jit.load",
    )
    out: Path | None = option(
        None, "folder for the files (default: exports/<model> in the working folder)"
    )
    opset: int = option(17, f"ONNX operator set ({MIN_OPSET} to {MAX_OPSET})")
    seed: int = option(0, "random seed of the inputs the files are checked on")
    threads: int = option(0, "CPU threads for PyTorch and onnxruntime (0: PyTorch's choice)")
    quiet: bool = option(False, "no log lines")

    def __post_init__(self) -> None:
        check_choice("--format", self.format, ("onnx", "torchscript"))
        check_seed("--seed", self.seed)
        non_negative("--threads", self.threads, 4 * (os.cpu_count() or 1))
        integer_from("--opset", self.opset, MIN_OPSET, MAX_OPSET)


# train-classifier: the small classifier whose features measure sample quality
ClassifierOptions = ClassifierTraining


@dataclass(frozen=True)
class FitSamplerOptions:
    """fit-sampler: a latent density fitted to the training split's posterior means."""

    model: Path = option(None, MODEL_HELP, required=True)
    sampler: str = option(
        "gmm",
        "gaussian: one full-covariance Gaussian; gmm: a Gaussian mixture (EM); flow: a neural "
        "spline flow; diffusion: a DDPM over the latents; twostage: a second VAE with a learned "
        "decoder variance (Dai & Wipf); transformer: an autoregressive prior over a VQ-VAE's "
        "code grids; see docs/sampling.md",
        choices=kinds(),
    )
    components: int | None = option(
        None,
        "mixture components (gmm; default: 50, or a quarter of the training images "
        "where they are fewer than 200)",
    )
    steps: int = option(
        0, "training steps of flow, diffusion, twostage, transformer (0: the kind's default)"
    )
    hidden: int = option(
        0, "width of the network of flow, diffusion, twostage, transformer (0: the kind's default)"
    )
    layers: int = option(
        0, "layers of the network of flow, diffusion, twostage, transformer (0: the kind's default)"
    )
    dropout: float = option(
        0.0, "fraction of a transformer's activations dropped while it is fitted (0 to 0.9)"
    )
    precision: str = option(
        "auto",
        "precision of a transformer sampler's fit, on the CPU: auto is bf16 where the CPU "
        "computes it natively (2x as fast on a CPU with AMX), else fp32; the other kinds fit "
        "in fp32",
        choices=FIT_PRECISIONS,
    )
    store: str = option(
        "fp32",
        "precision of a transformer sampler's weights in its file: fp16 halves the file (the "
        "weights are rounded before it is scored; drawing is float32 either way)",
        choices=STORE_PRECISIONS,
    )
    overwrite: bool = option(
        False,
        "replace a sampler of this kind already fitted to these weights (without it, such a "
        "sampler is kept and the fit refused before any work)",
    )
    seed: int = option(0, "random seed of the fit (EM's k-means initialisation, the networks)")
    nscore: int = option(
        5000,
        "validation images the fitted sampler is scored on (encoder features; what --sampler "
        "auto compares); 0: no score",
    )
    nimages: int = option(0, "fit to the first N training images (0: all)")
    latent_dims: int | None = option(None, "latent dimensions; " + CHECK_HELP)
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    batchsize: int = option(500, "images per forward pass")
    data_dir: Path | None = option(None, DATA_DIR_HELP)

    def __post_init__(self) -> None:
        non_negative("--seed", self.seed, 2**32 - 1)  # scikit-learn's random_state
        check_choice("--sampler", self.sampler, kinds())
        if self.components is not None:
            positive("--components", self.components)
        non_negative("--steps", self.steps, 10_000_000)
        non_negative("--hidden", self.hidden, 4096)
        non_negative("--layers", self.layers, 16)
        check_fraction("--dropout", self.dropout, FRACTIONS["dropout"], "0.1")
        check_choice("--precision", self.precision, FIT_PRECISIONS)
        check_choice("--store", self.store, STORE_PRECISIONS)
        non_negative("--nscore", self.nscore)
        positive("--batchsize", self.batchsize)
        non_negative("--nimages", self.nimages)


@dataclass(frozen=True)
class SampleQualityOptions:
    """sample-quality: generated samples against the test split in a feature space."""

    model: Path = option(None, MODEL_HELP, required=True)
    sampler: str = sampler_option()
    temperature: float = temperature_option()
    guidance: float = guidance_option()
    round_trips: int | None = round_trips_option()
    nsamples: int = option(NSAMPLES, "samples to generate, and training images for the floor")
    seed: int = option(0, "random seed of the samples (as generate --seed)")
    k: int = option(3, "nearest neighbours that set each point's ball (precision, recall)")
    features: Literal["auto", "inception", "classifier", "encoder"] = option(
        "auto",
        "inception: Inception-v3's pool features, the FID of the literature (pip install "
        "'torch-vae[fid]'; slow on a CPU, see docs/sampling.md); classifier: the penultimate "
        "layer of --classifier; encoder: the model's own posterior means (comparable between "
        "samplers of one model only); auto: classifier where one is found for the dataset",
    )
    classifier: Path | None = option(
        None, "classifier folder (default: models/<dataset>/classifier, where it exists)"
    )
    inception: bool = option(False, "the same as --features inception")
    reference: Literal["test", "val"] = option(
        "test",
        "the images measured against: test, or val (the model's validation split, held out of "
        "its training images: what to choose a sampler or recipe on)",
    )
    reconstructions: bool = option(
        False,
        "measure the model's reconstructions of the reference images instead of samples: the "
        "best any sampler can do with this decoder",
    )
    no_floor: bool = option(False, "skip the floor (as many training images as samples)")
    class_: str | None = option(
        None,
        "a conditional model's class, as an index or a name: its samples against the "
        "reference images of that class; all: --nsamples of each class, each class against "
        "its own and all together against the whole reference (default: classes drawn at "
        "random, against the whole reference)",
        name="class",
        metavar="CLASS",
    )
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    batchsize: int = option(500, "images per forward pass")
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    report: Path | None = option(
        None,
        "where to write the JSON report (default: next to the model; for a shipped model, "
        "reports/MODEL/)",
    )

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        check_choice("--sampler", self.sampler, SAMPLERS)
        check_drawing(self.temperature, self.guidance, self.round_trips)
        positive(
            "--nsamples", self.nsamples, MAX_QUALITY_SAMPLES, "10000 (papers use 10,000-50,000)"
        )
        positive("--k", self.k)
        positive("--batchsize", self.batchsize)
        if self.nsamples <= self.k:
            raise TorchVaeError(f"--nsamples must be more than --k {self.k}, got {self.nsamples}")
        check_choice("--reference", self.reference, ("test", "val"))
        check_choice("--features", self.features, ("auto", "inception", "classifier", "encoder"))
        if self.inception and self.features not in ("auto", "inception"):
            raise TorchVaeError(f"--inception means --features inception, not {self.features}")


PICTURES_HELP = "folder for the pictures (made if missing)"
SPLIT_HELP = "the dataset split the images come from"
MAX_FRAMES = 256  # the images of an interpolation, the values of a traversal
MAX_SPAN = 1000.0  # a traversal's reach, in the prior's standard deviations


def picture_class_option(default: str) -> str | None:
    """--class of the picture commands: the class a conditional model decodes as."""
    return option(
        None,
        f"a conditional model's class to decode as, by index or name; {default}",
        name="class",
        metavar="CLASS",
    )


@dataclass(frozen=True)
class PictureOptions:
    """What the picture commands share: the model, the images and where the pictures go."""

    model: Path = option(None, MODEL_HELP, required=True)
    dataset: str | None = option(None, DATASET_HELP + " (default: the model's)")
    split: Literal["train", "test"] = option("test", SPLIT_HELP)
    data_dir: Path | None = option(None, DATA_DIR_HELP)
    outdir: Path = option(Path("explore"), PICTURES_HELP)


@dataclass(frozen=True)
class InterpolateOptions(PictureOptions):
    """interpolate: decoded codes between two images or two random codes."""

    index: tuple[int, ...] = option(
        (),
        "two images of --split by their index (default: 0 1)",
        nargs=2,
        metavar=("A", "B"),
        type=int,
    )
    images: tuple[Path, ...] = option(
        (), "two image files instead (resized like the dataset's)", nargs=2,
        metavar=("A.png", "B.png"), type=Path,
    )  # fmt: skip
    random: bool = option(False, "two codes drawn from the prior instead (see --seed)")
    method: Literal["linear", "slerp"] = option(
        "linear", "linear: the straight line; slerp: the great circle between the codes"
    )
    steps: int = option(10, "images from A to B, both included")
    seed: int = option(0, "random seed for --random")
    round_trips: int | None = round_trips_option()
    class_: str | None = picture_class_option(
        "default: the class of images A and B where they share one (each is encoded with its "
        "own); image files (encoded as it) and --random need it"
    )

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        integer_from("--steps", self.steps, 2, MAX_FRAMES)
        for i in self.index:
            non_negative("--index", i)
        given = [f for f, v in (("--random", self.random), ("--images", self.images),
                                ("--index", self.index)) if v]  # fmt: skip
        if len(given) > 1:
            raise TorchVaeError(
                f"pass one of --index, --images and --random, not {' and '.join(given)}"
            )
        check_drawing(1.0, 0.0, self.round_trips)


@dataclass(frozen=True)
class TraverseOptions(PictureOptions):
    """traverse: one latent dimension varied at a time."""

    index: int | None = option(
        None, "traverse around the posterior mean of this image of --split (default: zeros)"
    )
    ndims: int = option(16, "rows: the dimensions with the largest average KL first")
    steps: int = option(9, "values per dimension")
    span: float = option(3.0, "values from -SPAN to +SPAN (the prior's standard deviations)")
    nimages: int = option(1000, "images of --split that the average KL is measured on (0: all)")
    class_: str | None = picture_class_option(
        "default: the class of image --index (encoded with its own); the zero code needs it"
    )

    def __post_init__(self) -> None:
        positive("--ndims", self.ndims, 4096)
        integer_from("--steps", self.steps, 2, MAX_FRAMES, "values from -SPAN to +SPAN")
        non_negative("--nimages", self.nimages)
        if self.index is not None:
            non_negative("--index", self.index)
        if not (isinstance(self.span, int | float) and 0 < self.span <= MAX_SPAN):
            raise TorchVaeError(
                f"--span must be a number > 0 and at most {MAX_SPAN:g} (the prior's standard "
                f"deviations), got {self.span}"
            )


@dataclass(frozen=True)
class ManifoldOptions(PictureOptions):
    """manifold: decoded codes on a grid over the latent space."""

    grid: int = option(15, "codes per side of the grid")
    nimages: int = option(
        2000, "latent > 2: images whose principal plane the grid spans (0: all of --split)"
    )
    class_: str | None = picture_class_option("a conditional model needs it")

    def __post_init__(self) -> None:
        integer_from("--grid", self.grid, 2, 100)
        non_negative("--nimages", self.nimages)
        if self.nimages == 1:
            raise TorchVaeError("--nimages must be 0 (all) or at least 2: the principal plane "
                                "needs two images")  # fmt: skip


@dataclass(frozen=True)
class EmbedOptions(PictureOptions):
    """embed: a scatter plot of the posterior means, coloured by class."""

    method: Literal["auto", "pca", "umap"] = option(
        "auto",
        "auto: the code itself for a latent-2 model, else pca; pca: the two leading principal "
        "directions of the posterior means; umap: UMAP (needs pip install umap-learn)",
    )
    nimages: int = option(0, "plot the first N images of --split (0: all)")
    seed: int = option(0, "random seed for --method umap")

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        non_negative("--nimages", self.nimages)
        if self.nimages == 1:
            raise TorchVaeError("--nimages must be 0 (all) or at least 2")


@dataclass(frozen=True)
class PlotOptions:
    """plot: training curves of runs."""

    runs: tuple[Path, ...] = option(
        (), "run folder(s) written by 'torch-vae train' (their metrics.jsonl)",
        positional=True, nargs="+", metavar="RUN", type=Path,
    )  # fmt: skip
    out: Path = option(Path("curves.png"), "the PNG file to write")
    quiet: bool = option(False, "no log lines")
