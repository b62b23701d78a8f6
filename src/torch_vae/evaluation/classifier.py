"""A small image classifier whose penultimate layer is the feature space of the sample-quality
measures (quality.py): Fréchet distance, precision and recall, and class histograms of samples.

It sees images as the VAEs do (1 channel, [0, 1], 64x64 for Fashion-MNIST), averages them down
to at most 32x32 inside (the images were upsampled from 28x28, so nothing is lost), and runs
three 3x3 convolution stages (32, 64 and 64, 128 filters) with batch norm and ReLU, a global
average, a 128-unit feature layer and the class layer. Weights are a safetensors file with the
config in its metadata, beside a config.json that records how it was trained and its accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm import tqdm

from ..data import load_split
from ..data.labels import load_labels
from ..errors import TorchVaeError, first_line
from ..fields import check_number, check_seed, integer_from, option, positive
from ..io.files import atomic_path, write_text_atomic
from ..io.weights import save_file
from ..runtime.device import to_float

log = logging.getLogger(__name__)

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_FORMAT = "torch-vae-classifier"
WORK_SIZE = 32  # images are averaged down to at most this size before the convolutions
MAX_SHIFT = 4  # augmentation: random translations of up to this many pixels (at 64x64)


@dataclass(frozen=True)
class ClassifierConfig:
    dataset: str = "fashion-mnist"
    in_channels: int = 1
    image_size: int = 64
    num_classes: int = 10
    features: int = 128  # width of the penultimate layer: the feature space

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            raise TorchVaeError(f"not a classifier config: {str(data)[:80]}")
        return cls(**data)


@dataclass(frozen=True)
class ClassifierTraining:
    """How ``train-classifier`` trains one (its flags; ``train_classifier`` takes it)."""

    dataset: str = option("fashion-mnist", "an MNIST-style dataset with label files")
    out: Path = option(
        None, "folder to write classifier.safetensors and config.json", required=True
    )
    epochs: int = option(8, "training epochs")
    batchsize: int = option(128, "images per step")
    lr: float = option(2e-3, "AdamW learning rate (cosine decay to 0)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    image_size: int = option(64, "image size, as the VAEs see them")
    seed: int = option(0, "random seed")
    data_dir: Path | None = option(
        None, "where datasets are downloaded and cached (default: data, or $TORCH_VAE_DATA)"
    )
    overwrite: bool = option(False, "replace a classifier already in --out")

    def __post_init__(self) -> None:
        positive("--epochs", self.epochs)
        positive("--batchsize", self.batchsize)
        size_note = "the VAEs' size: 64 for Fashion-MNIST"
        integer_from("--image_size", self.image_size, 8, 1024, size_note)
        check_seed("--seed", self.seed)
        check_number("--lr", self.lr, 0, True, "--lr 2e-3")
        check_number("--weight_decay", self.weight_decay, 0, False, "--weight_decay 0.05")


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class Classifier(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> class logits; ``features`` gives the penultimate layer."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config.in_channels
        self.body = nn.Sequential(
            _conv(c, 32), nn.MaxPool2d(2), _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2),
            _conv(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, config.features), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(config.features, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, features): what the class layer sees."""
        if x.shape[-1] > WORK_SIZE:
            x = F.adaptive_avg_pool2d(x, WORK_SIZE)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def save_classifier(model: Classifier, folder: Path, record: dict) -> Path:
    """``folder/classifier.safetensors`` (config in its metadata) and ``folder/config.json``
    (the config and ``record``: how it was trained, its test accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(model.config)
    meta = {"format": CLASSIFIER_FORMAT, "config": json.dumps(config)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / CLASSIFIER_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata=meta)
    write_text_atomic(folder / "config.json", json.dumps({**config, **record}, indent=2) + "\n")
    return folder


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> Classifier:
    """A classifier from its folder or its .safetensors file, in eval mode."""
    path = Path(path)
    weights = path / CLASSIFIER_WEIGHTS if path.is_dir() else path
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise TorchVaeError(f"cannot read classifier {weights} ({exc})") from None
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise TorchVaeError(f"{weights} is not a torch-vae classifier")
    try:
        model = Classifier(ClassifierConfig.from_dict(json.loads(meta["config"])))
    except (KeyError, TypeError, ValueError, TorchVaeError) as exc:
        why = first_line(exc, with_type=not isinstance(exc, TorchVaeError))
        raise TorchVaeError(f"{weights} has a damaged config ({why}); train it "
                            "again with torch-vae train-classifier") from None  # fmt: skip
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())  # PyTorch's message spans lines
        raise TorchVaeError(f"{weights}: weights do not fit its config ({detail[:300]}); "
                            "train it again with torch-vae train-classifier") from None  # fmt: skip
    return model.to(device).eval()


def read_labels(dataset: str, split: str, data_dir: Path | None = None) -> np.ndarray:
    """The class labels (N,) of a split (data.labels), or a one-line error for a dataset
    without them."""
    labels = load_labels(dataset, split, data_dir)
    if labels is None or (labels < 0).any():
        raise TorchVaeError(f"{dataset} has no class labels to train a classifier on")
    return labels


def shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation of (B, C, H, W): each image shifted by up to MAX_SHIFT pixels (zeros
    come in) and mirrored left-right with probability 1/2."""
    b, c, h, w = x.shape
    p = F.pad(x, (MAX_SHIFT,) * 4)
    dy, dx = (torch.randint(0, 2 * MAX_SHIFT + 1, (2, b, 1), generator=gen)).unbind(0)
    rows = (dy + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(w))[:, None, :]  # (B, 1, W)
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    idx = torch.arange(b)[:, None, None]
    return torch.stack([p[idx, ch, rows, cols] for ch in range(c)], 1)


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted classes of uint8 images (N, H, W, C)."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(to_float(images[i : i + batch], device)).argmax(1).cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


def train_epoch(
    model, opt, images, labels, batch, lr, step0, total, gen, bar=None
) -> tuple[float, int]:
    """One epoch of AdamW steps on shuffled batches, the learning rate decaying as a cosine
    from ``lr`` over ``total`` steps (``bar``: a progress bar its steps advance). Returns the
    mean loss and the next step."""
    model.train()
    order = torch.randperm(len(images), generator=gen)
    loss_sum, step = 0.0, step0
    for start in range(0, len(order) - batch + 1, batch):
        if bar is not None:
            bar.update(1)
        idx = order[start : start + batch]
        x = shifted(to_float(images[idx], torch.device("cpu")), gen)
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
        loss = F.cross_entropy(model(x), labels[idx].long(), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum, step = loss_sum + loss.item(), step + 1
    return loss_sum / max(1, step - step0), step


def train_classifier(o: ClassifierTraining, progress: bool = True) -> Classifier:
    """Train on the train split, report the test accuracy after each epoch, save to ``o.out``
    with the command's options and the final test accuracy."""
    torch.manual_seed(o.seed)
    gen = torch.Generator().manual_seed(o.seed)
    size = o.image_size
    data = {
        split: (
            torch.from_numpy(load_split(o.dataset, split, size, o.data_dir, progress)),
            torch.from_numpy(read_labels(o.dataset, split, o.data_dir)),
        )
        for split in ("train", "test")
    }
    (x, y), (tx, ty) = data["train"], data["test"]
    config = ClassifierConfig(o.dataset, x.shape[3], size, int(y.max()) + 1)
    model = Classifier(config).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    total, step, history, t0 = o.epochs * (len(x) // o.batchsize), 0, [], time.time()
    log.info("training a classifier of %s parameters on %s images of %s at %dx%d: %d steps "
             "per epoch, %d epoch%s", f"{sum(p.numel() for p in model.parameters()):,}",
             f"{len(x):,}", o.dataset, size, size, len(x) // o.batchsize, o.epochs,
             "s" * (o.epochs != 1))  # fmt: skip
    for epoch in range(1, o.epochs + 1):
        with tqdm(total=len(x) // o.batchsize, desc=f"epoch {epoch}/{o.epochs}", unit="step",
                  disable=not progress, mininterval=0.5) as bar:  # fmt: skip
            loss, step = train_epoch(model, opt, x, y, o.batchsize, o.lr, step, total, gen, bar)
        acc = (predict(model, tx) == ty.long()).float().mean().item()
        history.append({"epoch": epoch, "train_loss": loss, "test_accuracy": acc,
                        "seconds": round(time.time() - t0, 1)})  # fmt: skip
        log.info("epoch %d: loss %.4f, test accuracy %.4f (%.0f s)", epoch, loss, acc,
                 time.time() - t0)  # fmt: skip
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(o).items()}
    record = {"parameters": sum(p.numel() for p in model.parameters()),
              "test_accuracy": history[-1]["test_accuracy"], "options": options,
              "torch": torch.__version__, "history": history}  # fmt: skip
    path = save_classifier(model, o.out, record)
    log.info("wrote %s (test accuracy %.4f); use it with torch-vae sample-quality --classifier "
             "%s", path, acc, o.out)  # fmt: skip
    return model
