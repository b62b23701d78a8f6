"""Ways of drawing from (or fitting) a VQ-VAE's transformer prior that torch-vae does not offer,
each scored with ``torch-vae sample-quality`` on the model's validation split (``--reference
test`` once, for what was chosen), so that the measurements in docs/results.md ("Discrete and
conditional models") can be repeated.

Drawing (``--draw``), from the prior fitted beside ``--model``:

- ``plain``: the grids as drawn (``torch-vae generate --round_trips 0``; the reference);
- ``top-k K`` / ``top-p P`` / ``min-p M``: each code drawn from the K likeliest codes, from the
  fewest codes holding probability P, or from the codes at least M times as likely as the
  likeliest (truncated sampling);
- ``late-temperature N T``: temperature 1 for the first N codes of the grid (raster order),
  T after;
- ``round-trip R``: each drawn grid decoded, encoded and quantized again, R times: as
  ``torch-vae generate --round_trips R`` draws (``TransformerPrior.round_trip``);
- ``autoguide W``: each code drawn from log p(c_i | c_<i) + W (log p(c_i | c_<i) -
  log q(c_i | c_<i)), where q is a weaker prior of the same grids (``--weak``, a folder with
  one fitted to the same model: a smaller or shorter-fitted one), then generate's one round
  trip: the autoguidance of Karras et al. (2024, "Guiding a diffusion model with a bad version
  of itself") for an autoregressive prior;
- ``resample POOL ALPHA``: POOL times as many grids drawn (with generate's round trip), and of
  them as many as asked kept, drawn without replacement with weights r(x)^ALPHA, where log
  r(x) estimates log p_data(x) / p_prior(x) of the decoded image x: a small MLP on the shipped
  classifier's features, fitted to tell the decoded grids of ``--disc-draws`` training images
  from as many draws of the prior (sampling seed 1000, not one of those scored) (importance
  resampling with a discriminator, as in Grover et al., 2019).

Fitting (``--fit-mirror OUT``): a copy of ``--model`` in OUT with a transformer prior fitted as
``fit-sampler --sampler transformer --hidden H --layers L --steps S`` fits one, except that
each batch row of an image of a ``--mirror-classes`` class is the code grid of its left-right
mirror image with probability 1/2 (the class mix stays the data's). Then score OUT with
``--draw plain --model OUT``.

Copies (``--copies``): how near the prior's draws lie to the code grids it was fitted to.
``--nsamples`` grids drawn with ``--seed`` (as drawn, and after generate's one round trip):
how many equal one of the training grids, and for the first ``--nearest`` of them, the
number of the 49 codes in which the nearest training grid differs, beside the same for as
many validation images' grids (a prior that copied its training grids would sit far below
them). Prints JSON.

    python bench/vq_prior_variants.py --model models/fashion-mnist/vqvae-28 --draw top-k 100 \
        --features inception --nsamples 2000 --seed 1
    python bench/vq_prior_variants.py --model models/fashion-mnist/vqvae-28 --draw autoguide 0.2 \
        --weak runs/vq-w128 --features inception --nsamples 2000 --seed 1
    python bench/vq_prior_variants.py --model models/fashion-mnist/vqvae-28 --draw resample 3 1 \
        --features inception --nsamples 2000 --seed 1
    python bench/vq_prior_variants.py --model models/fashion-mnist/vqvae-28 --copies \
        --nsamples 1000 --seed 0
    python bench/vq_prior_variants.py --model models/fashion-mnist/vqvae-28 \
        --fit-mirror runs/vq-mirror --hidden 256 --layers 6 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import torch_vae.cli.sample_quality as sample_quality
from torch_vae.cli.common import held_out_rows
from torch_vae.cli.main import main as cli
from torch_vae.data import load_split
from torch_vae.data.labels import load_labels
from torch_vae.errors import TorchVaeError
from torch_vae.evaluation.classifier import load_classifier
from torch_vae.evaluation.sample_quality import shipped_classifier
from torch_vae.io.files import file_sha256
from torch_vae.io.weights import resolve_weights
from torch_vae.models.base import load_model
from torch_vae.priors.base import load_sampler, sampler_path, save_sampler
from torch_vae.priors.fit import posterior_means
from torch_vae.priors.neural import train_steps
from torch_vae.priors.transformer import TransformerPrior

WAYS = {
    "plain": 0,
    "top-k": 1,
    "top-p": 1,
    "min-p": 1,
    "late-temperature": 2,
    "round-trip": 1,
    "autoguide": 1,
    "resample": 2,
}  # each way of drawing: the numbers it takes
ROUND_TRIPPED = ("round-trip", "autoguide", "resample")  # draws that make generate's round trip
SYMMETRIC = "0,2,3,4,6,8"  # Fashion-MNIST's tops, pullover, dress, coat, shirt, bag


def filtered(logits: torch.Tensor, position: int, draw: str, args: list[float]) -> torch.Tensor:
    """The logits (n, K) of the code at ``position`` as ``draw`` changes them."""
    if draw == "top-k":
        kth = logits.topk(int(args[0]), -1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if draw == "top-p":
        p, order = logits.softmax(-1).sort(-1, descending=True)
        keep = (p.cumsum(-1) - p) < args[0]  # the likeliest code is always kept
        keep = torch.zeros_like(keep).scatter(-1, order, keep)
        return logits.masked_fill(~keep, float("-inf"))
    if draw == "min-p":
        p = logits.softmax(-1)
        return logits.masked_fill(p < args[0] * p.max(-1, keepdim=True).values, float("-inf"))
    if draw == "late-temperature":
        return logits / (args[1] if position >= args[0] else 1.0)
    return logits


@torch.no_grad()
def drawn(nets: list, n: int, generator, logits_of) -> torch.Tensor:
    """``n`` flat code grids (n, L), each position drawn from ``logits_of(outputs, i)``, where
    ``outputs`` holds each of ``nets``' logits (float) for position ``i`` given the codes drawn
    before it (the keys and values of those kept, a cache per network)."""
    caches = [[[] for _ in net.blocks] for net in nets]
    token = nets[0].start(n, None)
    out = torch.empty(n, nets[0].length, dtype=torch.int64)
    for i in range(nets[0].length):
        outputs = [
            net(token, cache)[:, -1].float() for net, cache in zip(nets, caches, strict=True)
        ]
        token = torch.multinomial(logits_of(outputs, i).softmax(-1), 1, generator=generator)
        out[:, i] = token[:, 0]
    return out


def drawing(prior: TransformerPrior, draw: str, args: list[float]):
    """``prior.sample`` replaced by one that draws as ``draw`` says (a truncation or a late
    temperature)."""

    def sample(n, generator=None, labels=None):
        grids = drawn([prior.net], n, generator, lambda out, i: filtered(out[0], i, draw, args))
        return grids.view(n, *prior.grid)

    prior.sample = sample


def autoguided(prior: TransformerPrior, weak: TransformerPrior, weight: float):
    """``prior.net.draw`` replaced by autoguided drawing away from ``weak`` (``autoguide``)."""

    def guided(out, i):
        good, bad = (o.log_softmax(-1) for o in out)
        return good + weight * (good - bad)

    def draw(n, generator=None, labels=None, temperature=1.0, guidance=0.0):
        return drawn([prior.net, weak.net], n, generator, guided)

    prior.net.draw = draw


@torch.no_grad()
def decoded_features(model, clf, grids: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The classifier's features (N, F) of the decoded code grids (N, h, w)."""
    parts = [clf.features(model.decode(g).float()) for g in grids.split(batch)]
    return torch.cat(parts)


def fitted_logratio(o, model, prior: TransformerPrior):
    """log r(x) of ``resample`` for a batch of grids: the MLP fitted to tell decoded training
    grids (label 1) from decoded draws (label 0), on standardised classifier features."""
    clf = load_classifier(shipped_classifier("fashion-mnist")).eval()
    start = time.perf_counter()
    fake = prior.sample(o.disc_draws, torch.Generator().manual_seed(1000))
    _, _, _, codes = training_grids(o, model)
    pick = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))
    real = codes[pick[: o.disc_draws]].view(-1, *prior.grid)
    f = torch.cat([decoded_features(model, clf, real), decoded_features(model, clf, fake)])
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    mu, sd = f.mean(0), f.std(0) + 1e-3
    torch.manual_seed(0)
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(f.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 1))  # fmt: skip
    opt = torch.optim.AdamW(mlp.parameters(), 1e-3, weight_decay=1e-3)
    x = (f - mu) / sd
    for _ in range(20):
        for j in torch.randperm(len(x)).split(256):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(mlp(x[j])[:, 0], y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    mlp.eval()
    print(f"discriminator fitted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return lambda grids: mlp((decoded_features(model, clf, grids) - mu) / sd)[:, 0]


def resampled(prior: TransformerPrior, logratio, pool: int, alpha: float):
    """``prior.sample`` replaced by importance resampling from ``pool`` times the draws."""
    plain = prior.sample

    @torch.no_grad()
    def sample(n, generator=None, labels=None):
        grids = plain(n * pool, generator)
        u = torch.rand(len(grids), generator=generator).clamp_min(1e-12)
        keys = alpha * logratio(grids) - torch.log(-torch.log(u))  # Gumbel top-k
        return grids[keys.topk(n).indices]

    prior.sample = sample


def transformer_prior(model_path: Path) -> TransformerPrior:
    """The transformer prior fitted beside ``model_path``, with no model attached (its grids
    as drawn); TorchVaeError where there is none."""
    prior = load_sampler(model_path, "transformer")
    if prior is None:
        raise TorchVaeError(f"no transformer prior beside {model_path}: fit one with torch-vae "
                            f"fit-sampler --model {model_path} --sampler transformer")  # fmt: skip
    return prior


def score(o, draw: str, args: list[float]) -> dict:
    prior = transformer_prior(o.model)
    if draw == "autoguide":
        if o.weak is None:
            sys.exit("--draw autoguide W needs --weak FOLDER (a weaker prior of the same model)")
        autoguided(prior, transformer_prior(o.weak), args[0])
    elif draw == "resample":
        model = load_model(o.model)
        prior.use_model(model)  # the pool as generate draws it
        resampled(prior, fitted_logratio(o, model, prior), int(args[0]), args[1])
    elif draw not in ("plain", "round-trip"):
        drawing(prior, draw, args)

    def chosen(path, name, model, *rest, **kw):
        if draw in ROUND_TRIPPED:  # torch-vae's own round trips, through the model
            prior.use_model(model)
            prior.round_trips = int(args[0]) if draw == "round-trip" else 1
        return prior

    sample_quality.choose_sampler = chosen
    report = o.report or Path(f"vq-prior-{draw}-{'_'.join(map(str, args))}-{o.seed}.json")
    cli(["sample-quality", "--model", str(o.model), "--nsamples", str(o.nsamples), "--seed",
         str(o.seed), "--features", o.features, "--reference", o.reference, "--no_floor",
         "--report", str(report), "--data_dir", str(o.data_dir), "--quiet"])  # fmt: skip
    r = json.loads(report.read_text())["samples"]
    keys = ("fd", "kid", "precision", "recall", "class_kl")
    return {k: round(r[k], 4) for k in keys if k in r}


def training_grids(o, model):
    """The training images, the rows the prior is fitted to and those held out (the run's
    validation split), and the flat code grids (N, L) of the fitted rows' images."""
    images = load_split("fashion-mnist", "train", model.config.image_size, o.data_dir, False)
    fit, held, _ = held_out_rows(Path(o.model), len(images), o.data_dir)
    fit, held = np.asarray(fit), np.asarray(held)
    return images, fit, held, posterior_means(model, images[fit]).reshape(len(fit), -1).long()


def fit_mirror(o) -> None:
    out = Path(o.fit_mirror)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(o.model) / name, out / name)
    model = load_model(o.model)
    images, fit, held, codes = training_grids(o, model)
    labels = torch.from_numpy(load_labels("fashion-mnist", "train", o.data_dir))
    mirror = np.ascontiguousarray(images[fit][:, :, ::-1])
    mirrored = posterior_means(model, mirror).reshape(len(fit), -1).long()
    classes = torch.tensor([int(c) for c in o.mirror_classes.split(",")])
    may = torch.isin(labels[fit], classes)
    hp = {**TransformerPrior.DEFAULTS, "hidden": o.hidden, "layers": o.layers, "steps": o.steps}
    info = {"kind": "transformer", "hparams": hp, "seed": 0, "grid": list(model.latent_shape),
            "dataset": "fashion-mnist", "split": "train - validation", "n_images": len(fit),
            "latent_dims": model.config.latent_dims, "codebook_size": model.codebook_size,
            "model_sha256": file_sha256(resolve_weights(o.model)),
            "mirror": f"classes {o.mirror_classes}, probability 1/2"}  # fmt: skip
    torch.manual_seed(0)  # the network's initialisation, as fit-sampler's
    net = TransformerPrior.build(info, hp)

    def loss_fn(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        i = batch[:, 0]
        flip = may[i] & (torch.rand(len(i), generator=gen) < 0.5)
        return net.loss(torch.where(flip[:, None], mirrored[i], codes[i]), None)

    start = time.perf_counter()
    index = torch.arange(len(fit))[:, None]
    warmup = min(TransformerPrior.WARMUP, o.steps // 10)
    info["final_loss"] = train_steps(net, loss_fn, index, o.steps, hp["batch"], TransformerPrior.LR,
                                     seed=0, desc="fitting (mirror)", warmup=warmup)  # fmt: skip
    info["fit_seconds"] = round(time.perf_counter() - start, 2)
    prior = TransformerPrior(net, info)
    save_sampler(prior, sampler_path(out, "transformer"))
    grids = posterior_means(model, images[held])
    print(json.dumps({"validation_nll": prior.nll(grids), "fit_seconds": info["fit_seconds"]}))


def mean_nearest(grids: torch.Tensor, train: torch.Tensor, chunk: int = 20) -> float:
    """The mean, over the flat grids ``grids`` (n, L), of the number of codes in which the
    nearest grid of ``train`` (N, L) differs from each, to two decimals."""
    out = [(g[:, None, :] != train[None]).sum(-1).min(1).values for g in grids.split(chunk)]
    return round(torch.cat(out).float().mean().item(), 2)


def copies(o) -> dict:
    model = load_model(o.model)
    prior = transformer_prior(o.model)
    images, _, held, train = training_grids(o, model)
    val = posterior_means(model, images[held[: o.nearest]]).reshape(-1, train.shape[1])
    seen = {tuple(g) for g in train.tolist()}
    drawn = prior.sample(o.nsamples, torch.Generator().manual_seed(o.seed))
    result = {"model": str(o.model), "prior": prior.describe(), "seed": o.seed,
              "training_grids": len(train), "distinct_training_grids": len(seen),
              "nearest_of": o.nearest,
              "validation_grids_nearest_mean": mean_nearest(val, train)}  # fmt: skip
    prior.use_model(model)  # generate's default: one round trip
    prior.round_trips = 1
    for name, grids in (("as_drawn", drawn), ("round_trip", prior.round_trip(drawn))):
        flat = grids.reshape(len(grids), -1)
        result[name] = {"draws": len(flat),
                        "equal_to_a_training_grid": sum(tuple(g) in seen for g in flat.tolist()),
                        "nearest_mean": mean_nearest(flat[: o.nearest], train)}  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a VQ-VAE folder with its prior")
    p.add_argument("--draw", nargs="+", default=["plain"], metavar="WAY [ARGS]")
    p.add_argument("--features", default="classifier", choices=["classifier", "inception"])
    p.add_argument("--nsamples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reference", default="val", choices=["val", "test"],
                   help="choose on val; test once, for what was chosen")  # fmt: skip
    p.add_argument("--report", type=Path, help="sample-quality's JSON report (default: here)")
    p.add_argument("--data_dir", type=Path, default=Path("data"))
    p.add_argument("--weak", type=Path, help="--draw autoguide: the weaker prior's folder")
    p.add_argument("--disc-draws", type=int, default=16000, help="--draw resample: the draws "
                   "(and training images) the discriminator is fitted to")  # fmt: skip
    p.add_argument("--copies", action="store_true", help="the draws' nearest training grids")
    p.add_argument("--nearest", type=int, default=200, help="--copies: draws (and validation "
                   "grids) whose nearest training grid is sought")  # fmt: skip
    p.add_argument("--fit-mirror", metavar="OUT", help="fit a mirror-augmented prior in OUT")
    p.add_argument("--mirror-classes", default=SYMMETRIC)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=3000)
    o = p.parse_args(argv)
    try:
        run(o)
    except TorchVaeError as exc:
        sys.exit(f"error: {exc}")


def run(o) -> None:
    if o.fit_mirror:
        return fit_mirror(o)
    if o.copies:
        return print(json.dumps(copies(o)))
    draw, args = o.draw[0], [float(a) for a in o.draw[1:]]
    if draw not in WAYS:
        sys.exit(f"--draw must be one of {', '.join(WAYS)}, got {draw!r}")
    if len(args) != WAYS[draw]:
        sys.exit(f"--draw {draw} takes {WAYS[draw]} number(s) after it, got {len(args)}")
    scores = score(o, draw, args)
    print(json.dumps({"draw": o.draw, "features": o.features, "nsamples": o.nsamples,
                      "seed": o.seed, "reference": o.reference, **scores}))  # fmt: skip


if __name__ == "__main__":
    main()
