"""The table of commands: each one's name, help, the option dataclasses whose fields are its
flags (the model families' configs, training.TrainConfig, options.py) and the module of this
package whose ``run`` carries it out, imported only when the command runs (so that
``torch-vae --help`` and each command pay only for what they use)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..training.config import TrainConfig
from .flags import model_options, pick
from .options import (
    AverageOptions,
    ClassifierOptions,
    EmbedOptions,
    EvaluateOptions,
    ExploreOptions,
    ExportOptions,
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
    ScoreOptions,
    ServeRuntime,
    SharpenOptions,
    TraverseOptions,
)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    options: tuple[type, ...]  # the dataclasses whose fields are this command's flags
    target: str  # the module of this package whose ``run`` carries it out
    # raw: the function takes the parsed values and the names given; otherwise it takes the
    # command's own options dataclass (the last of ``options``) and, if listed, the Runtime
    raw: bool = False

    def run(self, values: dict[str, Any], given: set[str]) -> None:
        fn = importlib.import_module(f"{__package__}.{self.target}").run
        if self.raw:
            return fn(values, given)
        args = [pick(self.options[-1], values)]
        runtime = [c for c in self.options if issubclass(c, Runtime)]
        if runtime:
            args.append(pick(runtime[0], values))
        return fn(*args)


COMMANDS = {
    c.name: c
    for c in (
        Command("train", "Train a VAE", "Train a VAE with PyTorch.",
                (Runtime, TrainConfig, model_options(), RunOptions), "train", raw=True),
        Command("reconstruct", "Reconstruct dataset images",
                "Reconstruct data samples using a VAE.", (Runtime, ReconstructOptions),
                "reconstruct"),
        Command("generate", "Generate samples", "Generate samples from a VAE.",
                (Runtime, GenerateOptions), "generate"),
        Command("evaluate", "Evaluate a model on a dataset split",
                "Evaluate a VAE: objective, MSE, PSNR, KL, active units and an "
                "importance-weighted NLL with bits per dimension.",
                (Runtime, EvaluateOptions), "evaluate"),
        Command("score", "Score each image as an anomaly; ROC against other images",
                "Anomaly scores of each image of a split (negative ELBO, reconstruction error, "
                "importance-weighted NLL, and their input-complexity corrections) into a CSV or "
                "JSON file; with out-of-distribution images (--ood, --ood_class) the ROC, "
                "AUROC and threshold at --fpr of each score, and a picture (see "
                "docs/anomaly.md).",
                (Runtime, ScoreOptions), "score"),
        Command("average", "Average the weights of the last epochs of runs",
                "Average the weights saved at the end of the last K epochs of one or more runs "
                "of one model, recompute the batch-norm statistics on the training split, and "
                "write the result as a new model folder (see docs/training.md).",
                (Runtime, AverageOptions), "average"),
        Command("sharpen", "Fine-tune the decoder with an adversarial term",
                "Fine-tune a trained model's decoder on its training images with its squared "
                "error plus an adversarial term from a small patch discriminator, the encoder "
                "frozen: sharper images from the same latents, so the samplers fitted to the "
                "model come along into the new model folder (see docs/sampling.md).",
                (Runtime, SharpenOptions), "sharpen"),
        Command("explore", "Explore a model in the browser",
                "Serve the live explorer: a page (and a JSON API) where sliders, a 2-D map of "
                "the test split, random samples, interpolations and uploaded images decode "
                "as the pointer moves (see docs/explore.md).",
                (ServeRuntime, ExploreOptions), "explore"),
        Command("export", "Export the encoder and decoder as ONNX or TorchScript files",
                "Export the encoder (images -> posterior mean and log-variance) and the decoder "
                "(codes -> images) of a model as two ONNX files (or TorchScript) with a dynamic "
                "batch axis, a JSON file beside them that describes them, checked against "
                "PyTorch on random inputs (see docs/export.md).",
                (ExportOptions,), "export"),
        Command("import-torch-vae", "Convert an original torch-vae .pth checkpoint",
                "Convert a checkpoint of the original torch-vae (a bare state_dict .pth) into "
                "a torch-vae .safetensors file.", (ImportOptions,), "convert"),
        Command("train-classifier", "Train the classifier that measures sample quality",
                "Train a small CNN classifier on an MNIST-style dataset; its 128-d penultimate "
                "layer is the feature space of 'torch-vae sample-quality'.",
                (Runtime, ClassifierOptions), "train_classifier"),
        Command("fit-sampler", "Fit a latent sampler to the training posterior means",
                "Fit a prior to the posterior means of the training images (a Gaussian, a "
                "Gaussian mixture, a normalizing flow, a diffusion model or a second VAE; for a "
                "VQ-VAE, a transformer over its code grids), score it on the held-out images and "
                "save it beside the model, for generate --sampler.",
                (Runtime, FitSamplerOptions), "fit_sampler"),
        Command("sample-quality", "Measure generated samples against the test split",
                "FID (Frechet distance), KID, precision and recall (k-NN balls) of generated "
                "samples or reconstructions against the test or validation split, in "
                "Inception-v3's features, a classifier's or the model's encoder's, with the "
                "training split as the floor.",
                (Runtime, SampleQualityOptions), "sample_quality"),
        Command("interpolate", "Decode the way between two images or codes",
                "Decode the codes between two images (of the dataset, or files) or two random "
                "codes: a strip PNG and an animated GIF (see docs/explore.md).",
                (Runtime, InterpolateOptions), "interpolate"),
        Command("traverse", "Vary one latent dimension at a time",
                "Decode codes that vary one latent dimension at a time, the dimensions with the "
                "largest average KL first, inactive ones marked (see docs/explore.md).",
                (Runtime, TraverseOptions), "traverse"),
        Command("manifold", "Decode a grid over the latent space",
                "Decode a grid of codes: the prior's quantiles for a latent-2 model, else the "
                "plane of the data's two leading principal directions (see docs/explore.md).",
                (Runtime, ManifoldOptions), "manifold"),
        Command("embed", "Map the dataset's posterior means in 2-D",
                "A scatter plot of the posterior means of a split, coloured by class: the code "
                "itself for a latent-2 model, else PCA (or UMAP) (see docs/explore.md).",
                (Runtime, EmbedOptions), "embed"),
        Command("plot", "Plot the training curves of runs",
                "Training curves (loss, reconstruction, KL, held-out loss per epoch: the "
                "validation split's, or the test split's for a run without one) of one or "
                "more runs, overlaid, from their metrics.jsonl, into a PNG.",
                (PlotOptions,), "plot"),
    )
}  # fmt: skip
