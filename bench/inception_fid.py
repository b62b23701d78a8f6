"""Inception FID of models and their samplers on Fashion-MNIST, the table of docs/results.md.

    python bench/inception_fid.py --models models/fashion-mnist/dcgan-g32 --nsamples 10000
    python bench/inception_fid.py --models M1 M2 --samplers prior gmm flow --nsamples 2000

For each model: its reconstructions of the first N test images and N samples from each sampler
(seeds --seeds; the very images ``torch-vae generate --sampler S --seed s`` writes), each
against all 10,000 test images in Inception features, as ``torch-vae sample-quality
--features inception`` measures them (images at 28x28, grey to RGB, bilinear to 299x299; the
test and training features cached in the data folder): FID, KID, precision and recall (k = 3),
and the FID of N training images (the floor at this N). A conditional model reconstructs each
test image with its class, and its samples have classes drawn uniformly (all classes mixed, as
``generate`` draws them without --class); --temperature, --guidance and --round_trips as
generate's (a transformer sampler's cells say its round trips, R=). Writes
JSON (--out; cells already there are kept unless --fresh), a PNG of the first 32 samples of
each sampler per model (--images), and prints a Markdown table with the seconds each part took
and the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from machine_info import cpu_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from torch_vae import TorchVaeError, load_model  # noqa: E402
from torch_vae.cli.options import check_drawing  # noqa: E402
from torch_vae.data.labels import labels_as  # noqa: E402
from torch_vae.evaluation.features import InceptionFeatures, split_features  # noqa: E402
from torch_vae.evaluation.sample_quality import (  # noqa: E402
    inception_space,
    make_reference,
    measure,
    reconstruct_images,
    sample_images,
)
from torch_vae.io.png import grid, save_png, stack_rows  # noqa: E402
from torch_vae.priors import choose_sampler  # noqa: E402

DATASET = "fashion-mnist"


def machine() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "gpu": gpu, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=Path, required=True)
    p.add_argument("--samplers", nargs="+", default=["prior", "gmm", "flow", "diffusion",
                                                      "twostage"])  # fmt: skip
    p.add_argument("--nsamples", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-reconstructions", action="store_true")
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--data_dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "inception-fid.json")
    p.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0, help="a transformer sampler's")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="a class-conditional transformer sampler's guidance scale")  # fmt: skip
    p.add_argument("--round_trips", type=int, default=None,
                   help="a transformer sampler's round trips through the model (default: its "
                   "default, generate's)")  # fmt: skip
    args = p.parse_args()
    try:
        check_drawing(args.temperature, args.guidance, args.round_trips)
    except TorchVaeError as exc:
        p.error(str(exc))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    results.setdefault("cells", {})
    results["machine"] = machine()
    net = InceptionFeatures(device)
    space = inception_space(DATASET, 28, device, extractor=net)
    (test, results["seconds_test_features"]) = timed(
        lambda: split_features(net, DATASET, "test", 28, args.data_dir)
    )
    ref = make_reference(space, None, 3, test)
    n = args.nsamples

    def cell(key: str, compute) -> None:
        if key in results["cells"]:
            return
        (row, seconds) = timed(compute)
        row["seconds"] = seconds
        results["cells"][key] = row
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"{key}: FID {row['fd']:.2f} KID {row['kid']:.4f} precision "
            f"{row['precision']:.3f} recall {row['recall']:.3f} ({seconds} s)",
            flush=True,
        )

    if not args.no_floor:
        cell(f"floor|{n}", lambda: measure(space, None, ref, split_features(
        net, DATASET, "train", 28, args.data_dir, n)))  # fmt: skip
    for path in args.models:
        model = load_model(path, device=device)
        pictures = []
        if not args.no_reconstructions:

            def recons(m=model):
                labels = None  # a conditional model's: each test image with its class
                if m.conditional:
                    labels = torch.from_numpy(labels_as(m.config.classes, DATASET, "test",
                                                        len(test), args.data_dir))  # fmt: skip
                images = reconstruct_images(m, DATASET, "test", args.data_dir, 500, False,
                                            labels=labels)  # fmt: skip
                return measure(space, images[:n], ref)

            cell(f"{path.name}|reconstructions|{n}", recons)
        for name in args.samplers:
            sampler = choose_sampler(path, name, model, args.temperature, args.guidance)
            if args.round_trips is not None and hasattr(sampler, "round_trips"):
                sampler.round_trips = args.round_trips  # a transformer's; the rest have none
            at = f" T={args.temperature:g}" if args.temperature != 1.0 else ""
            at += f" w={args.guidance:g}" if args.guidance else ""
            at += f" R={sampler.round_trips}" if hasattr(sampler, "round_trips") else ""
            for seed in args.seeds:
                key = f"{path.name}|{name}{at}|{n}|{seed}"
                if key in results["cells"] and seed != args.seeds[0]:
                    continue  # measured in an earlier run (the first seed's draws: the picture)
                fake = sample_images(model, sampler, n, seed)
                if seed == args.seeds[0]:
                    pictures.append(grid(fake[:32].numpy(), nrow=16))
                info = sampler.info if sampler is not None else {}
                cell(key, lambda f=fake, i=info: {
                    **measure(space, f, ref), "fit_seconds": i.get("fit_seconds"),
                    "validation": i.get("validation")})  # fmt: skip
        args.images.mkdir(parents=True, exist_ok=True)
        save_png(stack_rows(pictures), args.images / f"inception-samplers-{path.name}.png")
    print(json.dumps(results["machine"]))
    print("| cell | FID | KID | precision | recall | seconds |\n|---|---|---|---|---|---|")
    for key, r in results["cells"].items():
        print(
            f"| {key} | {r['fd']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['seconds']} |"
        )


if __name__ == "__main__":
    main()
