"""torch-vae beside its peers: one Fashion-MNIST epoch, generation and reconstruction, in one run.

    python bench/peers.py                          # 3 rounds of everything (docs/benchmarks.md)
    python bench/peers.py --max-steps 20 --rounds 1 --threads 1 --out bench/work/peers-check.json

Four systems (six commands) train the same network (the original torch-vae's: ``--arch
original``, latent 8, filters up to 128, Fashion-MNIST at 64x64, batch 128, AdamW at 3e-4 with
weight decay 0.01):

- original: the original torch-vae scripts (``train.py``, ``generate.py``, ``reconstruct.py``)
  in their own environment, as ``bash ../shared/seed/make-env.sh`` builds it (--original), on
  the data that script prepares (torchvision's FashionMNIST, resized by its transform).
- pythae: pythae's ``VAE`` with the original's encoder and decoder written with torch.nn
  (``_torch_nn_networks``: PyTorch's own layers, NCHW, as a user of pythae writes them) as its
  custom networks (wrapped in its ``BaseEncoder``/``BaseDecoder``), trained by its
  ``TrainingPipeline`` (``BaseTrainer``, optimizer AdamW at 3e-4), in a virtual environment this
  script makes (--pythae-venv: ``pip install torch==2.13.0``, the local CPU wheel, then pythae;
  their versions go into the JSON). Its VAE's loss is 0.5 * SSE + KL per image (torch-vae's
  and the original's: SSE + KL), so it weights the KL term twice as much.
- plain: a plain PyTorch loop the way pytorch/examples writes one: a DataLoader (batch 128,
  shuffled) over the float32 images as an NCHW TensorDataset, the same torch.nn network, AdamW,
  SSE + KL per image, fp32, nothing else.
- plain-tv-modules (train only): the same loop on torch-vae's own encoder and decoder modules
  (``create_model("original")``'s), which carry torch-vae's layer-level speed-ups (the
  decoder's activations in channels_last, the transposed convolutions' backward without the
  bias, the one-channel last layer as a matrix product): what of torch-vae's lead is its
  layers and what its loop. (Runs before 2026-12-07 gave pythae and the plain loop these
  modules.)
- torch-vae: ``torch-vae train --dataset fashion-mnist --epochs 1 --batchsize 128
  --latent_dims 8`` with its defaults (``--precision auto``: bf16 where the CPU computes it
  natively), then ``torch-vae generate`` and ``torch-vae reconstruct --rec_testdata``.
- torch-vae-all (train only): the same command with ``--val_images 0``. By default torch-vae
  holds 5,000 training images out as its validation split, so its epoch is 55,000 images (430
  steps) against the others' 60,000 (469); with ``--val_images 0`` it trains on all 60,000 and
  measures the epoch on the 10,000 test images instead, as much work as the others' epoch and
  more. Its time is the like-for-like one, for speed and for the objective after the epoch.

Before the rounds, each environment's Python compiles the modules it imports from a source
folder (torch-vae's ``src``, the original's scripts) to bytecode, as ``pip install`` does for an
installed package: where ``PYTHONDONTWRITEBYTECODE`` is set, as on the machines the tables come
from, a source folder is otherwise compiled again by every process (0.18 s of each torch-vae
command; pythae's and the plain loop's jobs import torch-vae's modules too).

pythae and the plain loop read the same uint8 tensors as torch-vae
(``torch_vae.data.load_split("fashion-mnist", split, 64, data_dir)``), converted to float in
[0, 1] by the job (its time included). The torch.nn network makes its parameters in the order
and under the names of a torch-vae ``original`` model, so that one seed gives every system but
the original the same initial weights, and its trained weights load into torch-vae as they
are.

What is timed (every job its own process, whole command, wall seconds; outputs removed and the
disk synced before each job):

- train: one epoch (60,000 images; with --max-steps N, N batches: the original and pythae
  train on the first N * 128 images, the plain loop too, torch-vae with ``--max_steps N``),
  start to saved weights, each system's own saving included (pythae's final_model folder, the
  original's .pth, the plain loop's ``torch.save`` of its state_dict, torch-vae's run folder with
  its end-of-epoch test metrics and pictures). The "loop" rate is the epoch's own loop where the
  system reports it (the original's log, pythae's callbacks, the plain loop's clock, torch-vae's
  metrics.jsonl).
- generate --nsamples (2,000): the original's ``generate.py`` (PNGs); pythae's
  ``NormalSampler(model).sample(num_samples=N, output_dir=DIR, return_gen=False)`` after
  ``AutoModel.load_from_folder`` (PNGs, RGB, its default batch of 500); the plain loop: load the
  state_dict, decode N codes from N(0, I) in batches of 500 under no_grad, no files;
  ``torch-vae generate`` (PNGs and all.png).
- reconstruct the 10,000 test images: the original's ``reconstruct.py --rec_testdata`` (PNGs of
  pairs); pythae: ``AutoModel.load_from_folder``, ``model.eval()``, ``model.reconstruct`` in
  batches of 500 under no_grad (pythae's reconstruct decodes a sampled code and writes no
  files); the plain loop: the posterior mean decoded in batches of 500, no files;
  ``torch-vae reconstruct --rec_testdata`` (PNGs of pairs and all.png).

The test objective of each trained model is measured afterwards, untimed, by one pipeline:
the weights go into a torch-vae ``original`` model (the original's .pth by ``torch-vae
import-torch-vae``, pythae's ``final_model/model.pt`` and the plain loop's state_dict by
renaming their keys), then ``torch-vae evaluate --iw_samples 0`` (fp32): SSE + KL per image,
z sampled, on the 10,000 test images at 64x64.

Rounds alternate the systems (original, pythae, plain, plain-tv-modules, torch-vae,
torch-vae-all, then again); round r trains every system with seed r - 1 + --first-seed (one
epoch's test objective varies by several points between seeds: torch-vae's 86.1 to 96.7 over
seeds 0-2). The table gives
each system's median, the median over rounds of its time divided by torch-vae's and by
torch-vae-all's in the same round (the second compares the same 60,000 training images), and
the median test objective with its range over the seeds. Writes JSON (--out) after every job.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_info import code_version, cpu_bf16, cpu_model

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
RESULT_TAG = "PEERS_RESULT "
SYSTEMS = ("original", "pythae", "plain", "plain-tv-modules", "torch-vae", "torch-vae-all")
# systems that only train: the plain loop on torch-vae's modules, and torch-vae-all (torch-vae's
# training on the others' 60,000 images)
TRAIN_ONLY = ("plain-tv-modules", "torch-vae-all")
JOBS = ("train", "generate", "reconstruct")
BATCH, LATENT, SIZE, LR = 128, 8, 64, 3e-4  # the original's and torch-vae's defaults
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
RECON_BATCH = 500
NETWORK = {"in_channels": 1, "image_size": SIZE, "latent_dims": LATENT, "max_filters": 128}
ORIGINAL_DEFAULT = Path("/tmp/torch-vae-original/work")
TORCH_PIN = "torch==2.13.0"


# ----------------------------------------------------------------------------- child jobs
# Run as ``python bench/peers.py --job NAME SPEC``, by this machine's Python or by the pythae
# environment's; the module's top level imports the standard library only.


def _emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def _result(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    return None


def job_cmd(spec: dict) -> None:
    """Run one command and time it (wall seconds, start to exit); its output goes to a log
    file; the peak resident set of its largest process; PNG files counted afterwards."""
    env = dict(os.environ, **spec.get("env", {}))
    for key in spec.get("unset", []):
        env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.run(spec["argv"], cwd=spec.get("cwd"), env=env, capture_output=True)
    seconds = time.perf_counter() - t0
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if spec.get("log"):
        Path(spec["log"]).write_text(out)
    result: dict = {"seconds": seconds}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    if proc.returncode != 0:
        lines = [x for x in out.strip().splitlines() if x.strip()]
        result["error"] = f"exit {proc.returncode}: {lines[-1] if lines else ''}"[:300]
    inner = _result(proc.stdout.decode(errors="replace"))
    if inner:
        result.update(inner)
    m = re.search(r"time:\s*([\d.]+)s", out)  # the original's epoch log line
    if m and "loop_seconds" not in result:
        result["loop_seconds"] = float(m.group(1))
    if spec.get("count"):
        result["files"] = len(list(Path(spec["count"]).rglob("*.png")))
    _emit(result)


def job_prepare(spec: dict) -> None:
    """torch-vae's uint8 cache of both splits at 64x64 (untimed)."""
    from torch_vae.data import load_split

    n = sum(len(load_split("fashion-mnist", s, SIZE, spec["data_dir"])) for s in ("train", "test"))
    _emit({"images": n})


def job_versions(spec: dict) -> None:
    """The environment's Python and packages (torch's own __version__: the build's +cpu or
    +cuXXX tag is not in its package metadata)."""
    from importlib import metadata

    import torch

    out = {"python": platform.python_version(), "executable": sys.executable}
    out["torch"] = torch.__version__
    for name in ("torchvision", "pythae", "numpy", "pydantic", *spec.get("also", [])):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    _emit(out)


def _images(data_dir: str, split: str, limit: int = 0):
    """The cache's uint8 images (N, H, W, 1) as float32 NCHW in [0, 1]."""
    import torch

    from torch_vae.data import load_split

    arr = load_split("fashion-mnist", split, SIZE, data_dir, progress=False)
    if limit:
        arr = arr[:limit]
    return torch.from_numpy(arr[...]).permute(0, 3, 1, 2).float().div(255).contiguous()


def _torch_nn_networks():
    """The original's network as a PyTorch user writes it with torch.nn (NCHW, PyTorch's own
    layers, no memory-format or other speed-ups): stride-2 3x3 convolutions 1 -> 32 -> 64 ->
    128 with batch norm and leaky ReLU, two linear maps of the flattened (128, 8, 8) features
    to the code's mean and log-variance; a linear map back to (128, 8, 8), stride-2 3x3
    transposed convolutions 128 -> 64 -> 32 -> 1 with batch norm and leaky ReLU between them
    and a sigmoid at the end. Its parameters are made in a torch-vae ``original`` model's order
    (so one seed gives both the same initial weights) under the same state_dict keys."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    widths, side = (1, 32, 64, 128), SIZE // 8

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            pairs = list(zip(widths[:-1], widths[1:], strict=True))
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in pairs)
            self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
            self.proj_mu = nn.Linear(widths[-1] * side * side, LATENT)
            self.proj_logvar = nn.Linear(widths[-1] * side * side, LATENT)

        def forward(self, x):
            for conv, norm in zip(self.convs, self.norms, strict=True):
                x = F.leaky_relu(norm(conv(x)))
            x = torch.flatten(x, 1)
            return self.proj_mu(x), self.proj_logvar(x)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            back = widths[::-1]
            self.lin = nn.Linear(LATENT, back[0] * side * side)
            self.convs = nn.ModuleList(
                nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1)
                for a, b in zip(back[:-1], back[1:], strict=True)
            )
            self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in back[1:-1])

        def forward(self, z):
            x = self.lin(z).view(-1, widths[-1], side, side)
            for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
                x = F.leaky_relu(norm(conv(x)))
            return torch.sigmoid(self.convs[-1](x))

    return Encoder, Decoder


def _plain_model(modules: str = "torch.nn"):
    """The plain loop's model: the two networks in an nn.Module of its own, whose state_dict
    keys are those of a torch-vae ``original`` model; ``modules`` "torch.nn" (the original's
    network written with torch.nn) or "torch-vae" (torch-vae's own modules)."""
    import torch
    from torch import nn

    class PlainVAE(nn.Module):
        def __init__(self):
            super().__init__()
            if modules == "torch-vae":
                from torch_vae import create_model

                net = create_model("original", **NETWORK)
                self.encoder, self.decoder = net.encoder, net.decoder
            else:
                encoder, decoder = _torch_nn_networks()
                self.encoder, self.decoder = encoder(), decoder()

        def encode(self, x):
            out = self.encoder(x)
            return (out.mu, out.logvar) if modules == "torch-vae" else out

        def forward(self, x):
            mu, logvar = self.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decoder(z), mu, logvar

    return PlainVAE()


def job_plain_train(spec: dict) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(spec["seed"])
    model = _plain_model(spec.get("modules", "torch.nn"))
    x = _images(spec["data_dir"], "train", spec["limit"])
    loader = DataLoader(TensorDataset(x), batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def loss_function(recon, x, mu, logvar):  # SSE + KL per image, the mean over the batch
        sse = F.mse_loss(recon, x, reduction="none").flatten(1).sum(1)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return (sse + kl).mean()

    model.train()
    t0, steps, total = time.perf_counter(), 0, 0.0
    for (data,) in loader:
        optimizer.zero_grad()
        recon, mu, logvar = model(data)
        loss = loss_function(recon, data, mu, logvar)
        loss.backward()
        total += loss.item()
        optimizer.step()
        steps += 1
    loop = time.perf_counter() - t0
    torch.save(model.state_dict(), spec["out"])
    _emit({"loop_seconds": loop, "steps": steps, "images": len(x), "train_loss": total / steps})


def job_plain_generate(spec: dict) -> None:
    import torch

    model = _plain_model()
    model.load_state_dict(torch.load(spec["state"], map_location="cpu", weights_only=True))
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        z = torch.randn(spec["n"], LATENT)
        n = sum(len(model.decoder(b)) for b in z.split(RECON_BATCH))
    _emit({"images": n})


def job_plain_reconstruct(spec: dict) -> None:
    import torch

    model = _plain_model()
    model.load_state_dict(torch.load(spec["state"], map_location="cpu", weights_only=True))
    model.eval()
    x = _images(spec["data_dir"], "test")
    with torch.no_grad():
        n = sum(len(model.decoder(model.encode(b)[0])) for b in x.split(RECON_BATCH))
    _emit({"images": n})


def _pythae_networks():
    """pythae's custom-network classes around the original's network written with torch.nn
    (``_torch_nn_networks``; all defined here, so that pythae's cloudpickle stores them by
    value)."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self, net):
            BaseEncoder.__init__(self)
            self.net = net

        def forward(self, x):
            mu, logvar = self.net(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self, net):
            BaseDecoder.__init__(self)
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    return Encoder, Decoder


def job_pythae_train(spec: dict) -> None:
    import torch
    from pythae.models import VAE, VAEConfig
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    Encoder, Decoder = _pythae_networks()
    encoder_net, decoder_net = _torch_nn_networks()
    torch.manual_seed(spec["seed"])  # the initial weights (pythae seeds its trainer after them)
    model = VAE(
        VAEConfig(input_dim=(1, SIZE, SIZE), latent_dim=LATENT),
        encoder=Encoder(encoder_net()),
        decoder=Decoder(decoder_net()),
    )
    config = BaseTrainerConfig(
        output_dir=spec["out"],
        num_epochs=1,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        optimizer_cls="AdamW",
        seed=spec["seed"],
    )
    stamps: dict[str, float] = {"steps": 0}

    class Clock(TrainingCallback):  # the epoch's loop: its first step's start to its last's end
        def on_train_step_begin(self, training_config, **kwargs):
            stamps["begin"] = time.perf_counter()

        def on_train_step_end(self, training_config, **kwargs):
            stamps["end"] = time.perf_counter()
            stamps["steps"] += 1

    x = _images(spec["data_dir"], "train", spec["limit"])
    TrainingPipeline(model=model, training_config=config)(train_data=x, callbacks=[Clock()])
    _emit(
        {
            "loop_seconds": stamps["end"] - stamps["begin"],
            "steps": stamps["steps"],
            "images": len(x),
        }
    )


def job_pythae_generate(spec: dict) -> None:
    from pythae.models import AutoModel
    from pythae.samplers import NormalSampler

    model = AutoModel.load_from_folder(spec["model"])
    NormalSampler(model=model).sample(
        num_samples=spec["n"], output_dir=spec["outdir"], return_gen=False
    )
    _emit({"images": spec["n"]})


def job_pythae_reconstruct(spec: dict) -> None:
    import torch
    from pythae.models import AutoModel

    model = AutoModel.load_from_folder(spec["model"])
    model.eval()
    x = _images(spec["data_dir"], "test")
    with torch.no_grad():
        n = sum(len(model.reconstruct(b)) for b in x.split(RECON_BATCH))
    _emit({"images": n})


def job_convert(spec: dict) -> None:
    """A trained state_dict (pythae's model.pt or the plain loop's) into a torch-vae model."""
    import torch

    from torch_vae import create_model

    state = torch.load(spec["state"], map_location="cpu", weights_only=True)
    if spec["kind"] == "pythae":  # {"model_state_dict": {"encoder.net.convs.0.weight": ...}}
        state = state["model_state_dict"]
        state = {re.sub(r"^(encoder|decoder)\.net\.", r"\1.", k): v for k, v in state.items()}
    model = create_model("original", **NETWORK)
    model.load_state_dict(state)  # strict: every tensor of the torch-vae model, nothing else
    model.save_pretrained(spec["out"], dataset="fashion-mnist")
    _emit({"tensors": len(state)})


CHILD_JOBS = {
    "cmd": job_cmd,
    "prepare": job_prepare,
    "versions": job_versions,
    "plain-train": job_plain_train,
    "plain-generate": job_plain_generate,
    "plain-reconstruct": job_plain_reconstruct,
    "pythae-train": job_pythae_train,
    "pythae-generate": job_pythae_generate,
    "pythae-reconstruct": job_pythae_reconstruct,
    "convert": job_convert,
}


# ----------------------------------------------------------------------------- parent


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(python: str, job: str, spec: dict, env: dict) -> dict:
    """An untimed helper job (or the ``cmd`` wrapper that times a command)."""
    argv = [python, str(Path(__file__).resolve()), "--job", job, json.dumps(spec)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    found = _result(proc.stdout)
    if found is not None and proc.returncode == 0:
        return found
    lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
    return {"error": f"{job}: exit {proc.returncode}: {lines[-1] if lines else ''}"[:300]}


def self_job(python: str, job: str, spec: dict) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--job", job, json.dumps(spec)]


def ensure_pythae(venv: Path, spec: str, log) -> tuple[str, list[str]]:
    """The pythae environment: made once (python3 -m venv; torch first, the local CPU wheel,
    so that pythae's requirement cannot pull a CUDA build; then pythae and safetensors, which
    torch-vae's modules import); returns its Python and its ``pip freeze``."""
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q"]
    if not py.exists():
        log(f"making the pythae environment {venv} (python3 -m venv; pip install)")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, TORCH_PIN], check=True)
    probe = "import torch, pythae, safetensors; print(torch.__version__)"
    done = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run([*pip, TORCH_PIN, spec, "safetensors"], check=True)
        done = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True)
    version = done.stdout.strip().splitlines()[-1]
    if not version.endswith("+cpu"):
        raise SystemExit(f"{venv}: torch {version} is not the CPU build; remove it and rerun")
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True)
    return str(py), freeze.stdout.split()


def truncated_original_data(src: Path, dest: Path, n: int) -> Path:
    """A copy of the original's data folder with only the first n training images (IDX files
    with their counts rewritten), for --max-steps: its train.py has no step limit."""
    raw_src, raw = src / "FashionMNIST" / "raw", dest / "FashionMNIST" / "raw"
    shutil.rmtree(dest, ignore_errors=True)
    raw.mkdir(parents=True)
    # (file, header bytes, bytes per item): 28x28 uint8 images, uint8 labels
    for name, header, item in (
        ("train-images-idx3-ubyte", 16, 784),
        ("train-labels-idx1-ubyte", 8, 1),
    ):
        data = (raw_src / name).read_bytes()
        count = min(n, int.from_bytes(data[4:8], "big"))
        (raw / name).write_bytes(
            data[:4] + count.to_bytes(4, "big") + data[8:header] + data[header:][: count * item]
        )
    for f in raw_src.glob("t10k-*"):
        (raw / f.name).symlink_to(f.resolve())
    return dest


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.work.resolve()
        self.data = (args.data_dir or self.work / "data").resolve()
        self.env = child_env(args.threads)
        self.py = sys.executable
        self.systems = [s for s in SYSTEMS if s not in args.skip]
        self.jobs = [j for j in JOBS if j not in args.skip]
        self.train_images = args.max_steps * BATCH if args.max_steps else TRAIN_IMAGES
        self.results: dict = {
            "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", *sys.argv]),
            "code": code_version(),
            "machine": {
                "cpu": cpu_model(),
                "bf16": cpu_bf16(),
                "cores": len(os.sched_getaffinity(0)),
                "python": platform.python_version(),
                "load_average_at_start": os.getloadavg(),
            },
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "envs": {},
            "runs": {
                j: {s: [] for s in self.systems if j == "train" or s not in TRAIN_ONLY}
                for j in self.jobs
            },
            "objective": {s: [] for s in self.systems},
        }

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def save(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(self.results, indent=1) + "\n")

    # -- set-up, untimed --------------------------------------------------------------------

    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        r = run_child(self.py, "prepare", {"data_dir": str(self.data)}, self.env)
        if "error" in r:
            raise SystemExit(f"preparing the Fashion-MNIST cache failed: {r['error']}")
        also = {"also": ["torch-vae"]}
        self.results["envs"]["torch-vae"] = run_child(self.py, "versions", also, self.env)
        self.results["envs"]["plain"] = self.results["envs"]["torch-vae"]
        if "original" in self.systems:
            self.setup_original()
        if "pythae" in self.systems:
            self.pythae_py, freeze = ensure_pythae(self.args.pythae_venv.resolve(),
                                                   self.args.pythae_spec, self.log)  # fmt: skip
            self.results["envs"]["pythae"] = run_child(self.pythae_py, "versions", {}, self.env)
            self.results["envs"]["pythae"]["pip_freeze"] = freeze
        self.compile_bytecode()
        for name, v in self.results["envs"].items():
            if name != "plain":
                shown = {k: v[k] for k in v if k not in ("pip_freeze", "executable")}
                self.log(f"  {name}: {shown}")

    def compile_bytecode(self) -> None:
        """Each source folder's modules compiled to bytecode by each Python that imports them
        (untimed), as an installed package's are."""
        folders = [(self.py, SRC)]
        if "pythae" in self.systems:
            folders.append((self.pythae_py, SRC))
        if "original" in self.systems:
            folders.append((self.original_py, self.args.original.resolve()))
        for python, folder in folders:
            cmd = [str(python), "-m", "compileall", "-q", str(folder)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        self.results["bytecode_compiled"] = [str(folder) for _, folder in folders]

    def setup_original(self) -> None:
        src = self.args.original.resolve()
        if not (src / "train.py").is_file():
            self.log(f"  original: no train.py in {src} (bash ../shared/seed/make-env.sh); skipped")
            self.systems.remove("original")
            for j in self.jobs:
                self.results["runs"][j].pop("original", None)
            self.results["objective"].pop("original", None)
            return
        py = self.args.original_python or src.parent / "venv" / "bin" / "python"
        self.original_py = str(py)
        data = src / "data"
        if self.args.max_steps:
            data = truncated_original_data(data, self.work / "original-data", self.train_images)
        self.original_data = data.resolve()
        env = {k: v for k, v in self.env.items() if k != "PYTHONPATH"}
        self.results["envs"]["original"] = run_child(self.original_py, "versions", {}, env)
        self.results["envs"]["original"]["scripts"] = str(src)

    # -- the jobs of one round --------------------------------------------------------------

    def spec(self, system: str, job: str, rd: Path, seed: int = 0) -> dict:
        """The command (and its output folder, removed before it runs) of one timed job; a
        training job trains with ``seed`` (each round its own: a single epoch's objective
        varies by several points from seed to seed)."""
        a, py, data = self.args, self.py, str(self.data)
        orig = self.args.original.resolve() if system == "original" else None
        cwd = rd / "original"
        pth = "models/fashion-mnist/vae_filters_0128_dims_0008_000.pth"
        model = [f"--latent_dims={LATENT}", "--max_filters=128"]
        tv = [py, "-m", "torch_vae"]
        run = rd / "torch-vae"
        if system == "original":
            if job == "train":
                shutil.rmtree(cwd, ignore_errors=True)
                cwd.mkdir(parents=True)
                (cwd / "data").symlink_to(self.original_data)
                argv = [self.original_py, str(orig / "train.py"), "--cpu",
                        f"--batchsize={BATCH}", "--epochs=1", "--dataset=fashion-mnist",
                        f"--latent_dims={LATENT}", f"--seed={seed}"]  # fmt: skip
                return {"argv": argv, "cwd": str(cwd), "unset": ["PYTHONPATH"]}
            out = cwd / ("samples" if job == "generate" else "rec")
            if job == "generate":
                argv = [self.original_py, str(orig / "generate.py"), "--cpu", f"--model={pth}",
                        *model, f"--nsamples={a.nsamples}", "--outdir=samples",
                        "--nimg_channels=1"]  # fmt: skip
            else:
                argv = [self.original_py, str(orig / "reconstruct.py"), "--cpu",
                        f"--model={pth}", "--rec_testdata", "--dataset=fashion-mnist", *model,
                        "--outdir=rec"]  # fmt: skip
            return {"argv": argv, "cwd": str(cwd), "unset": ["PYTHONPATH"], "rm": str(out),
                    "count": str(out)}  # fmt: skip
        if system == "pythae":
            final = str(self.pythae_final(rd))
            if job == "train":
                spec = {"data_dir": data, "limit": a.max_steps * BATCH, "out": str(rd / "pythae"),
                        "seed": seed}  # fmt: skip
                return {"argv": self_job(self.pythae_py, "pythae-train", spec), "rm": spec["out"]}
            if job == "generate":
                out = rd / "pythae-samples"
                spec = {"model": final, "n": a.nsamples, "outdir": str(out)}
                argv = self_job(self.pythae_py, "pythae-generate", spec)
                return {"argv": argv, "rm": str(out), "count": str(out)}
            spec = {"model": final, "data_dir": data}
            return {"argv": self_job(self.pythae_py, "pythae-reconstruct", spec)}
        if system.startswith("plain"):
            state = str(rd / f"{system}.pt")
            if job == "train":
                spec = {
                    "data_dir": data,
                    "limit": a.max_steps * BATCH,
                    "out": state,
                    "seed": seed,
                    "modules": "torch-vae" if system == "plain-tv-modules" else "torch.nn",
                }
                return {"argv": self_job(py, "plain-train", spec), "rm": state}
            if job == "generate":
                return {"argv": self_job(py, "plain-generate", {"state": state, "n": a.nsamples})}
            return {"argv": self_job(py, "plain-reconstruct", {"state": state, "data_dir": data})}
        # torch-vae, its defaults; torch-vae-all (training only) on all 60,000 images
        if job == "train":
            run = rd / system
            argv = [*tv, "train", "--dataset", "fashion-mnist", "--epochs", "1", "--batchsize",
                    str(BATCH), "--latent_dims", str(LATENT), f"--data_dir={data}",
                    f"--run_dir={run}", f"--seed={seed}"]  # fmt: skip
            if system == "torch-vae-all":
                argv.append("--val_images=0")
            if a.max_steps:
                argv.append(f"--max_steps={a.max_steps}")
            return {"argv": argv, "rm": str(run)}
        out = rd / f"torch-vae-{job}"
        if job == "generate":
            argv = [
                *tv,
                "generate",
                f"--model={run}",
                f"--nsamples={a.nsamples}",
                f"--outdir={out}",
            ]
        else:
            argv = [*tv, "reconstruct", f"--model={run}", "--rec_testdata", f"--data_dir={data}",
                    f"--outdir={out}"]  # fmt: skip
        return {"argv": argv, "rm": str(out), "count": str(out)}

    def pythae_final(self, rd: Path) -> Path:
        found = sorted((rd / "pythae").glob("*/final_model"))
        return found[-1] if found else rd / "pythae" / "missing" / "final_model"

    def timed(self, system: str, job: str, r: int, rd: Path) -> None:
        spec = self.spec(system, job, rd, seed=self.args.first_seed + r - 1)
        if spec.get("rm"):
            old = Path(spec.pop("rm"))
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        spec["log"] = str(rd / f"{system}-{job}.log")
        os.sync()  # the previous job's files are on disk before this one starts
        res = run_child(self.py, "cmd", spec, self.env)
        res["round"] = r
        res["load_average_after"] = os.getloadavg()[0]
        if job == "train" and "error" not in res:
            res.setdefault("images", self.train_images)
            if system.startswith("torch-vae"):  # by default it holds a validation split out
                last = (rd / system / "metrics.jsonl").read_text().splitlines()[-1]
                rec = json.loads(last)
                res.update(loop_seconds=rec["epoch_seconds"], steps=rec["step"],
                           images=rec["train_images"],
                           precision=json.loads((rd / system / "config.json").read_text())
                           .get("train", {}).get("precision"))  # fmt: skip
        elif "error" not in res:
            res.setdefault("images", self.args.nsamples if job == "generate" else TEST_IMAGES)
        self.results["runs"][job][system].append(res)
        shown = {k: v for k, v in res.items() if k not in ("load_average_after",)}
        self.log(f"  round {r} {job} {system}: {json.dumps(shown)}")
        self.save()

    def objective(self, system: str, r: int, rd: Path) -> None:
        """The trained model's test objective by torch-vae evaluate (untimed)."""
        cli = [self.py, "-m", "torch_vae"]
        model = rd / f"{system}-torch-vae"
        report = rd / f"{system}-evaluate.json"
        for old in (model, model.with_suffix(".safetensors"), report):
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        if system == "original":
            pth = rd / "original/models/fashion-mnist/vae_filters_0128_dims_0008_000.pth"
            model = model.with_suffix(".safetensors")
            proc = subprocess.run([*cli, "import-torch-vae", str(pth), "--dataset=fashion-mnist",
                                   f"--out={model}", "--quiet"], env=self.env,
                                  capture_output=True, text=True)  # fmt: skip
            err = proc.returncode and (proc.stderr.strip().splitlines() or ["?"])[-1]
        elif system in ("pythae", "plain", "plain-tv-modules"):
            pythae = self.pythae_final(rd) / "model.pt"
            state = pythae if system == "pythae" else rd / f"{system}.pt"
            spec = {"kind": system, "state": str(state), "out": str(model)}
            err = run_child(self.py, "convert", spec, self.env).get("error")
        else:
            model, err = rd / system, None
        if not err:
            argv = [*cli, "evaluate", f"--model={model}", "--iw_samples=0",
                    f"--data_dir={self.data}", f"--report={report}", "--quiet",
                    "--device=cpu"]  # fmt: skip
            if self.args.eval_images:
                argv.append(f"--nimages={self.args.eval_images}")
            proc = subprocess.run(argv, env=self.env, capture_output=True, text=True)
            err = proc.returncode and (proc.stderr.strip().splitlines() or ["?"])[-1]
        if err:
            res = {"round": r, "error": str(err)[:300]}
        else:
            rep = json.loads(report.read_text())
            res = {"round": r, "objective": rep["objective"], "sse": rep.get("sse"),
                   "kl": rep.get("kl"), "images": rep.get("n_images")}  # fmt: skip
        self.results["objective"][system].append(res)
        self.log(f"  round {r} test objective {system}: {json.dumps(res)}")
        self.save()

    def run(self) -> None:
        self.setup()
        for r in range(1, self.args.rounds + 1):
            rd = self.work / f"round-{r}"
            rd.mkdir(parents=True, exist_ok=True)
            for job in JOBS:
                if job not in self.jobs:
                    continue
                for system in self.systems:
                    if job == "train" or system not in TRAIN_ONLY:
                        self.timed(system, job, r, rd)
            if "train" in self.jobs:
                for system in self.systems:
                    self.objective(system, r, rd)
        self.results["machine"]["load_average_at_end"] = os.getloadavg()
        self.results["summary"] = summarize(self.results)
        self.save()


# ----------------------------------------------------------------------------- the table


def summarize(results: dict) -> dict:
    """Per job and system: median seconds, images/s, loop images/s, the median over rounds of
    seconds / torch-vae's seconds in the same round (and / torch-vae-all's, its epoch on the
    same 60,000 images as the others'), and the median test objective."""
    out: dict = {}
    for job, systems in results["runs"].items():
        ours = {x["round"]: x["seconds"] for x in systems.get("torch-vae", []) if "error" not in x}
        ours_all = {
            x["round"]: x["seconds"] for x in systems.get("torch-vae-all", []) if "error" not in x
        }
        out[job] = {}
        for system, runs in systems.items():
            ok = [x for x in runs if "error" not in x]
            s: dict = {"rounds": len(ok), "errors": [x["error"] for x in runs if "error" in x]}
            if ok:
                s["seconds"] = statistics.median(x["seconds"] for x in ok)
                s["img_per_s"] = statistics.median(x["images"] / x["seconds"] for x in ok)
                loops = [x["images"] / x["loop_seconds"] for x in ok if x.get("loop_seconds")]
                s["loop_img_per_s"] = statistics.median(loops) if loops else None
                pairs = [x["seconds"] / ours[x["round"]] for x in ok if x["round"] in ours]
                s["vs_torch_vae"] = statistics.median(pairs) if pairs else None
                pairs = [x["seconds"] / ours_all[x["round"]] for x in ok if x["round"] in ours_all]
                s["vs_torch_vae_all"] = statistics.median(pairs) if pairs else None
                s["images"] = statistics.median(x["images"] for x in ok)
                s["per_round_seconds"] = [x["seconds"] for x in ok]
            if job == "train":
                obj = [
                    x["objective"] for x in results["objective"].get(system, []) if "objective" in x
                ]
                s["objective"] = statistics.median(obj) if obj else None
                s["objective_range"] = [min(obj), max(obj)] if obj else None
            out[job][system] = s
    return out


WHAT = {
    "original": {"train": "train.py --cpu", "generate": "generate.py, PNGs",
                 "reconstruct": "reconstruct.py --rec_testdata, PNGs of pairs"},
    "pythae": {"train": "TrainingPipeline, BaseTrainer (0.5 SSE + KL)",
               "generate": "NormalSampler.sample(output_dir=...), PNGs",
               "reconstruct": "model.reconstruct (sampled z), no files"},
    "plain": {"train": "DataLoader loop, fp32, torch.nn network",
              "generate": "decoder(randn), no files", "reconstruct": "decoder(mu), no files"},
    "plain-tv-modules": {"train": "the same loop on torch-vae's encoder and decoder modules"},
    "torch-vae": {"train": "torch-vae train, defaults", "generate": "torch-vae generate, PNGs",
                  "reconstruct": "torch-vae reconstruct --rec_testdata, PNGs"},
    "torch-vae-all": {"train": "torch-vae train --val_images 0 (test split measured)"},
}  # fmt: skip


def table(results: dict) -> str:
    summary = results["summary"]
    titles = {
        "train": "train 1 epoch",
        "generate": f"generate {results['args']['nsamples']:,}",
        "reconstruct": f"reconstruct {TEST_IMAGES:,}",
    }
    lines = [
        "| job | system | what runs | seconds | images/s | loop images/s | test objective "
        "(seeds' range) | time / torch-vae's | time / torch-vae-all's | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job, systems in summary.items():
        for system, s in systems.items():
            what = WHAT[system][job]
            if system.startswith("torch-vae") and job == "train":
                precision = {x.get("precision") for x in results["runs"]["train"][system]} - {None}
                what += f" ({', '.join(sorted(precision))})" if precision else ""
            if not s["rounds"]:
                err = f"failed: {s['errors'][0]}" if s["errors"] else "not run"
                lines.append(f"| {titles[job]} | {system} | {what} | {err} | | | | | | 0 |")
                continue
            obj = s.get("objective")
            title = titles[job] + (f" ({s['images']:,.0f} images)" if job == "train" else "")
            cells = [
                title,
                system,
                what,
                f"{s['seconds']:.1f}",
                f"{s['img_per_s']:,.0f}",
                f"{s['loop_img_per_s']:,.0f}" if s.get("loop_img_per_s") else "-",
                _objective(obj, s.get("objective_range")),
                _ratio(s.get("vs_torch_vae"), system == "torch-vae"),
                _ratio(s.get("vs_torch_vae_all"), system == "torch-vae-all"),
                str(s["rounds"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(ratio: float | None, itself: bool) -> str:
    return "-" if itself or ratio is None else f"**{ratio:.2f}x**"


def _objective(median: float | None, spread: list[float] | None) -> str:
    """The median test objective over the rounds' seeds, and their range."""
    if median is None:
        return "-"
    if not spread or spread[0] == spread[1]:
        return f"{median:.2f}"
    return f"{median:.2f} ({spread[0]:.2f}-{spread[1]:.2f})"


def rounds_text(results: dict) -> str:
    """Each job's seconds round by round, and the test objectives."""
    lines = []
    for job, systems in results["summary"].items():
        cells = []
        for system, s in systems.items():
            values = [f"{x:.1f}" for x in s.get("per_round_seconds", [])]
            cells.append(f"{system} {' / '.join(values) or '-'}")
        lines.append(f"- {job}, seconds per round: " + "; ".join(cells))
    objectives = []
    for system, runs in results["objective"].items():
        values = [f"{x['objective']:.2f}" for x in runs if "objective" in x]
        objectives.append(f"{system} {' / '.join(values) or '-'}")
    if any(results["objective"].values()):
        lines.append("- test objective per round: " + "; ".join(objectives))
    return "\n".join(lines)


def versions_line(results: dict) -> str:
    parts = []
    for name in ("original", "pythae", "torch-vae"):
        v = results["envs"].get(name)
        if v and "error" not in v:
            extra = "".join(f", {k} {v[k]}" for k in ("torchvision", "pythae") if k in v)
            parts.append(f"{name}: Python {v.get('python')}, torch {v.get('torch')}{extra}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every job (3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="round r trains with seed FIRST_SEED + r - 1 (0)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=0,
                   help="train N batches instead of the epoch (0: the whole epoch); a quick "
                   "check")  # fmt: skip
    p.add_argument("--nsamples", type=int, default=2000, help="samples to generate (2000)")
    p.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help=f"comma-separated systems ({','.join(SYSTEMS)}) or jobs "
                   "(generate,reconstruct)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS for every job (0: each library's default, all "
                   "cores)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default docs/bench/peers-DATE.json)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("bench/work/peers"), help="scratch folder")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="torch-vae's data folder (default WORK/data)")  # fmt: skip
    p.add_argument("--eval-images", type=int, default=0,
                   help="test images for the objective (0: all 10,000)")  # fmt: skip
    p.add_argument("--original", type=Path, default=ORIGINAL_DEFAULT,
                   help=f"the original's scripts (make-env.sh's DIR/work; "
                   f"{ORIGINAL_DEFAULT})")  # fmt: skip
    p.add_argument("--original-python", type=Path, default=None,
                   help="the Python for them (default: ORIGINAL/../venv/bin/python)")  # fmt: skip
    p.add_argument("--pythae-venv", type=Path, default=Path("bench/work/pythae-venv"),
                   help="pythae's virtual environment, made if missing "
                   "(bench/work/pythae-venv)")  # fmt: skip
    p.add_argument("--pythae-spec", default="pythae",
                   help="what pip installs there, e.g. pythae==0.1.2 (default: the "
                   "newest)")  # fmt: skip
    args = p.parse_args(argv)
    if args.job:
        sys.path.insert(0, str(SRC))
        CHILD_JOBS[args.job](json.loads(args.spec or "{}"))
        return 0
    unknown = set(args.skip) - set(SYSTEMS) - {"generate", "reconstruct"}
    if unknown:
        p.error(f"--skip: unknown {sorted(unknown)}")
    if args.out is None:
        args.out = REPO / "docs" / "bench" / f"peers-{datetime.date.today().isoformat()}.json"
    bench = Bench(args)
    print(f"peers benchmark: {bench.systems}, {args.rounds} round(s), work folder {bench.work}")
    bench.run()
    text = table(bench.results)
    m = bench.results["machine"]
    print("\n" + text + "\n\n" + rounds_text(bench.results))
    print(
        f"\n{m['cpu']} (bf16: {m.get('bf16', 'unknown')}), {m['cores']} cores; "
        f"{versions_line(bench.results)}; load average "
        f"{m['load_average_at_start'][0]:.2f} at the start, {m['load_average_at_end'][0]:.2f} "
        f"at the end; {bench.results['date']}"
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
