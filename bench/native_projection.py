"""What the --native_size projection alone does to a trained model, without any training.

    python bench/native_projection.py MODEL [MODEL ...] --native-size 28

For each model: the objective (SSE + KL, z sampled with seed 0) on the Fashion-MNIST test split
(--nimages, default all 10,000), exactly as ``torch-vae evaluate --iw_samples 0`` computes it,
first as the model is and then with the model's decoder output projected onto the images that
upsampling from --native-size can produce (the same weights loaded into a model whose config has
``native_size`` set). Prints one line per model and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from torch_vae.data import load_split
from torch_vae.evaluation.likelihood import evaluate_model
from torch_vae.models import VAE, load_model


def objective(model: VAE, images: torch.Tensor) -> dict:
    # sigma only matters for the NLL, which is skipped here
    r = evaluate_model(model, images, torch.device("cpu"), sigma=0.1, iw_samples=0, seed=0,
                       progress=False)  # fmt: skip
    return {k: r[k] for k in ("objective", "sse", "kl", "psnr")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="run folders or .safetensors files")
    p.add_argument("--native-size", type=int, default=28)
    p.add_argument("--nimages", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--data_dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/native-projection.json"))
    args = p.parse_args(argv)
    results, tests = {}, {}  # tests: the test images at each model size, loaded once
    for path in args.models:
        model = load_model(path).eval()
        size = model.config.image_size
        if size not in tests:
            test = load_split("fashion-mnist", "test", size, args.data_dir, False)
            tests[size] = torch.from_numpy(test[: args.nimages or None])
        images = tests[size]
        projected = VAE(dataclasses.replace(model.config, native_size=args.native_size))
        projected.load_state_dict(model.state_dict())
        row = {
            "native_size_trained": model.config.native_size,
            "as_is": objective(model, images),
            "projected": objective(projected.eval(), images),
        }
        results[str(path)] = row
        a, b = row["as_is"], row["projected"]
        print(
            f"{path}: objective {a['objective']:.3f} -> {b['objective']:.3f} with the projection "
            f"(SSE {a['sse']:.3f} -> {b['sse']:.3f}, KL {a['kl']:.3f})",
            flush=True,
        )
    meta = {"native_size": args.native_size, "nimages": len(images)}
    args.out.write_text(json.dumps({"settings": meta, "models": results}, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
