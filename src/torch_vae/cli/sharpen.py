"""``torch-vae sharpen``: a model's decoder fine-tuned with an adversarial term
(training/sharpen.py), written as a new model folder with the samplers fitted to the model."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import torch

from ..errors import TorchVaeError
from ..io.files import file_sha256
from ..io.png import grid, stack_rows, to_uint8, with_title
from ..io.weights import resolve_weights
from ..models import VAE
from ..runtime.device import pick_device, to_float
from ..training.averaging import write_model_folder
from ..training.sharpen import SharpenSettings, carry_samplers, sharpen_decoder
from .common import (
    check_outdir,
    check_outside_dataset,
    held_out_rows,
    model_and_dataset,
    run_config,
    split_images,
    split_labels,
)
from .options import Runtime, SharpenOptions

log = logging.getLogger(__name__)
N_PICTURE = 16  # test images in images/sharpen.png


def run(o: SharpenOptions, runtime: Runtime) -> dict:
    if o.out.exists():
        raise TorchVaeError(f"{o.out} already exists; pass another --out (nothing was overwritten)")
    check_outdir(o.out, "--out")
    device = pick_device(runtime.device, runtime.cpu)
    model, dataset = model_and_dataset(o.model, o.dataset, runtime)
    check_outside_dataset(o.out, dataset, model.dataset, flag="--out")
    source_weights = resolve_weights(o.model)
    images = split_images(model, dataset, "train", o.data_dir, runtime)
    labels = split_labels(model, dataset, "train", o.data_dir, len(images))
    rows, _, _ = held_out_rows(o.model, len(images), o.data_dir)
    rows = rows.numpy() if rows is not None else np.arange(len(images))
    test = split_images(model, dataset, "test", o.data_dir, runtime)
    test_labels = split_labels(model, dataset, "test", o.data_dir, len(test))
    test = test[:N_PICTURE]  # the picture's images, and their classes
    test_labels = test_labels[:N_PICTURE] if test_labels is not None else None
    before = _reconstructions(model, test, test_labels, device)
    settings = SharpenSettings(o.epochs, o.adversarial, o.lr, o.disc_lr, o.disc_width, o.warmup,
                               o.batchsize, o.seed, o.precision, o.max_steps)  # fmt: skip
    log.info("sharpening the decoder of %s on %d training images", o.model, len(rows))
    start = time.perf_counter()
    records = sharpen_decoder(model, images, labels, settings, device, not runtime.quiet, rows)
    seconds = round(time.perf_counter() - start, 1)
    after = _reconstructions(model, test, test_labels, device)
    config = run_config(o.model)
    config["sharpen"] = {
        "source": str(o.model), "source_sha256": file_sha256(source_weights),
        "dataset": dataset, "n_images": len(rows), "settings": asdict(settings),
        "epochs": records, "seconds": seconds,
    }  # fmt: skip
    carried: list[str] = []
    parts = zip(
        ("test images", "reconstructed before sharpening", "reconstructed after"),
        (to_float(torch.from_numpy(test), "cpu"), before, after),
        strict=True,
    )
    picture = stack_rows([with_title(grid(to_uint8(x)), what) for what, x in parts])
    write_model_folder(o.out, model, config, {"sharpen.png": picture},
                       lambda weights: carried.extend(carry_samplers(o.model, source_weights,
                                                                     weights)))  # fmt: skip
    log.info("wrote %s in %.0f s (test images, their reconstructions before and after: "
             "%s/images/sharpen.png)%s", o.out, seconds, o.out,
             f"; samplers carried over: {', '.join(carried)}" if carried else "")  # fmt: skip
    return config["sharpen"]


def _reconstructions(model: VAE, images: np.ndarray, labels, device) -> torch.Tensor:
    """``model.reconstruct`` of ``images`` (uint8 (N, H, W, C)), on the CPU."""
    x = to_float(torch.from_numpy(images), device)
    y = labels.to(device) if labels is not None else None
    return model.reconstruct(x, y).float().cpu()
