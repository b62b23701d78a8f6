"""The exported ONNX files in onnxruntime against PyTorch: the time to encode 1,000 images and
decode their posterior means, in float32 on the CPU with the same number of threads.

    python bench/export_speed.py [--model models/fashion-mnist/dcgan-d8] --threads 1

Both run the same networks: the model's inference copy (batch norms folded, channels_last),
which PyTorch runs under inference_mode and ``torch-vae export`` writes as ONNX
(models/export.py), exported here in memory. Random images in [0, 1], --batchsize images per
call; the best of --repeats passes after one warm-up pass. Prints one line per runtime and the
largest difference between them, and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from torch_vae.models import load_model
from torch_vae.models.export import export_network, load_runner, networks


def best_time(encode, decode, batches: list[torch.Tensor], repeats: int) -> tuple[float, list]:
    """The fastest of ``repeats`` passes (after a warm-up) over ``batches``, and the images."""
    times, images = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        images = [decode(torch.as_tensor(encode(x)[0])) for x in batches]
        if i:
            times.append(time.perf_counter() - start)
    return min(times), images


def onnx_runner(net, threads: int):
    """``net`` exported to ONNX in memory, as ``torch-vae export`` writes it, in onnxruntime."""
    return load_runner(net, export_network(net, "onnx", 17), "onnx", threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/fashion-mnist/dcgan-d8"))
    p.add_argument("--nimages", type=int, default=1000)
    p.add_argument("--batchsize", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/bench/export-speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    encoder, decoder = networks(model)
    c = model.config
    images = torch.rand(args.nimages, c.in_channels, c.image_size, c.image_size,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    batches = list(images.split(args.batchsize))
    runners = {
        "pytorch": (encoder.module, decoder.module),
        "onnxruntime": [onnx_runner(n, args.threads) for n in (encoder, decoder)],
    }
    results, outputs = {}, {}
    for name, (encode, decode) in runners.items():
        with torch.inference_mode():
            seconds, out = best_time(encode, decode, batches, args.repeats)
        outputs[name] = np.concatenate([np.asarray(o[0] if isinstance(o, list) else o)
                                        for o in out])  # fmt: skip
        results[name] = {"seconds": seconds, "images_per_s": args.nimages / seconds}
        print(f"{name}: {seconds * 1000:.1f} ms for {args.nimages} images encoded and decoded "
              f"({args.nimages / seconds:,.0f} images/s)", flush=True)  # fmt: skip
    diff = float(np.abs(outputs["pytorch"] - outputs["onnxruntime"]).max())
    speedup = results["pytorch"]["seconds"] / results["onnxruntime"]["seconds"]
    print(f"onnxruntime / PyTorch: {speedup:.2f}x the speed; max abs difference {diff:.2g}")
    settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "torch": torch.__version__, "onnxruntime": _ort_version(),
                "processor": platform.processor() or platform.machine()}  # fmt: skip
    report = {"settings": settings, "results": results, "speedup": speedup, "max_abs_diff": diff}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
