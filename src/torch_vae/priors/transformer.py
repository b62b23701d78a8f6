"""An autoregressive prior over a discrete model's code grids (``transformer``): a small causal
transformer (GPT-style: pre-norm blocks of causal self-attention and an MLP, learned position
embeddings) that reads a grid's code indices in raster order and predicts each from the ones
before it, p(c) = prod_i p(c_i | c_<i), fitted by maximum likelihood to the codes of the
training images (van den Oord et al., 2017, fit a PixelCNN there; a causal transformer sees
every earlier position, where a PixelCNN's masked convolutions have a blind spot), with
dropout on the embeddings, the attention weights and each block's two outputs while it is
fitted (``dropout``; 0 by default), as GPT-2 regularises a network that outgrows its data. Sampling
draws one position after another, the keys and values of the earlier positions kept (a cache),
each draw from the caller's generator.

The first input is a start token: one for every grid, or, for a conditional model, one per
class, so that the prior draws the code grid of a given class (p(c | y)) and a sample of a
class is a grid of that class decoded as that class.

With the model it was fitted to attached (``use_model``; ``choose_sampler`` attaches it), each
drawn grid then makes ``round_trips`` round trips through the autoencoder: decoded, encoded and
quantized again. A drawn grid is a sequence of guesses, and some of its codes are ones no
image's encoding would have beside their neighbours; the encoder maps the decoded picture back
to the codes an image of it has. On the shipped Fashion-MNIST model one round trip changes about
11 of a drawn grid's 49 codes (about 6 of a validation image's); on both shipped VQ-VAEs it
lowered the Inception FID on the validation split at every seed measured (docs/sampling.md).

It is fitted on the CPU in ``info["precision"]``: bf16 (autocast, the weights and the loss in
float32) where the CPU computes bf16 natively, as training's ``--precision auto``, with the
attention computed by PyTorch's plain matrix products there (its CPU flash-attention kernel
took 20 times as long for the backward pass in bf16 as for the forward); fp32 otherwise or when
asked. Drawing and the likelihood are always float32. Its file holds the weights in float32,
or in float16 (``info["stored"]``, fit-sampler ``--store fp16``: half the bytes): the fitted
weights are then rounded to float16 before anything is measured, so that the scores recorded
are those of the weights the file holds.

``info["final_loss"]`` is the training loss in nats per code; ``info["validation"]`` holds the
sample score fit-sampler measures for every kind (of the grids as drawn).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import TorchVaeError
from ..models.base import _unwrap
from ..runtime.device import autocast_off
from ..runtime.precision import Precision, bf16_emulated
from .base import FIT_PRECISIONS, ROUND_TRIPS, STORE_PRECISIONS, register_prior
from .neural import check_hparams, train_steps

log = logging.getLogger(__name__)

HEAD_DIMS = 32  # numbers per attention head
ROUND_TRIP_BATCH = 500  # grids decoded and encoded at once in a round trip


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)); causal."""

    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.heads = max(1, width // HEAD_DIMS)
        self.drop = nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, cache: list[Tensor] | None = None) -> Tensor:
        """``x`` (B, T, W): every position attends to itself and those before it. With
        ``cache`` (the keys and values of the positions before, [] at first), ``x`` holds the
        next positions only and the cache grows by them."""
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        # causal over the positions given; a single new position sees the whole cache
        att = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.drop.p if self.training else 0.0, is_causal=t > 1
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, w)))
        return x + self.drop(self.mlp(self.norm2(x)))


class CodeTransformer(nn.Module):
    """Logits (B, T, K) of the next code at each of T positions of code grids read in raster
    order, given ``tokens`` (B, T): the start token (the class's, of ``starts``), then the
    codes before; ``dropout``: the fraction of activations dropped while training."""

    def __init__(
        self,
        codes: int,
        length: int,
        width: int,
        layers: int,
        starts: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.codes, self.length = codes, length
        self.embed = nn.Embedding(codes + starts, width)  # the codes, then the start token(s)
        self.position = nn.Parameter(torch.zeros(length, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codes)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: Tensor, caches: list[list[Tensor]] | None = None) -> Tensor:
        start = caches[0][0].shape[2] if caches and caches[0] else 0
        h = self.drop(self.embed(tokens) + self.position[start : start + tokens.shape[1]])
        for i, block in enumerate(self.blocks):
            h = block(h, caches[i] if caches is not None else None)
        return self.head(self.norm(h))

    def start(self, n: int, labels: Tensor | None, device=None) -> Tensor:
        """The start tokens (n, 1): the class's (``labels``, (n,)), or the one there is."""
        if labels is None:
            return torch.full((n, 1), self.codes, dtype=torch.int64, device=device)
        return (self.codes + labels.long()).reshape(n, 1).to(device)

    def loss(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """The mean negative log-likelihood per code, in nats, of code grids ``codes``
        (B, L) flattened in raster order (of the classes ``labels``)."""
        start = self.start(len(codes), labels, codes.device)
        logits = self(torch.cat([start, codes[:, :-1]], 1))
        return F.cross_entropy(logits.reshape(-1, self.codes).float(), codes.reshape(-1))

    @torch.no_grad()
    def draw(
        self,
        n: int,
        generator: torch.Generator | None,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        guidance: float = 0.0,
    ):
        """``n`` code grids (n, L), int64 (of the classes ``labels``), each position drawn
        from its conditional, the logits divided by ``temperature`` (below 1: the likelier
        codes more often), by ``generator`` in turn. ``guidance`` w > 0 (with ``labels``):
        log p(c_i | c_<i, y) + w (log p(c_i | c_<i, y) - log p(c_i | c_<i)), see
        ``_guided``."""
        if guidance and labels is not None:
            return self._guided(n, generator, labels, temperature, guidance)
        caches: list[list[Tensor]] = [[] for _ in self.blocks]
        token = self.start(n, labels)
        out = torch.empty(n, self.length, dtype=torch.int64)
        for i in range(self.length):
            probs = (self(token, caches)[:, -1].float() / temperature).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)
            out[:, i] = token[:, 0]
        return out

    def _guided(self, n, generator, labels, temperature, guidance):
        """Guided drawing without an unconditional network: every grid is read under every
        class at once, and the unconditional log p(c_i | c_<i) is the mixture over classes
        of p(c_i | c_<i, y') weighted by p(y' | c_<i), which the prefix's likelihood under
        each class gives (classes equally likely). The guidance of Ho & Salimans (2022),
        at C times the compute."""
        classes = self.embed.num_embeddings - self.codes
        caches: list[list[Tensor]] = [[] for _ in self.blocks]
        every = torch.arange(classes).repeat(n)  # grid j under class y' at row j * C + y'
        token = self.start(n * classes, every)
        prefix = torch.zeros(n, classes)  # log p(c_<i | y')
        rows = torch.arange(n)
        out = torch.empty(n, self.length, dtype=torch.int64)
        for i in range(self.length):
            logp = self(token, caches)[:, -1].float().log_softmax(-1).view(n, classes, -1)
            cond = logp[rows, labels]
            uncond = (prefix.log_softmax(-1)[..., None] + logp).logsumexp(1)
            guided = cond + guidance * (cond - uncond)
            code = torch.multinomial((guided / temperature).softmax(-1), 1, generator=generator)
            prefix += logp.gather(2, code[:, None].expand(n, classes, 1))[..., 0]
            token = code.repeat_interleave(classes, 0)
            out[:, i] = code[:, 0]
        return out


@register_prior(("transformer",), rank=0)
class TransformerPrior:
    """The ``Prior`` of the module docstring, over grids of ``grid`` (h, w) codes of a
    codebook of ``codes`` entries."""

    kind = "transformer"
    latent_kind = "discrete"  # what it is fitted to: a discrete model's code grids
    fits_in_bf16 = True  # options["precision"] is its fit's (the other kinds fit in fp32)
    stores_half = True  # options["store"]: fp16 keeps its weights in float16 in its file
    DEFAULTS = {"hidden": 128, "layers": 4, "steps": 6000, "batch": 128, "dropout": 0.0}
    LR = 1e-3
    WARMUP = 200  # steps of linear learning-rate warm-up

    def __init__(self, net: CodeTransformer, info: dict):
        self.net, self.info = net.eval(), info
        self.temperature = 1.0  # what sample divides the logits by (choose_sampler sets it)
        self.guidance = 0.0  # a conditional prior's guidance scale (choose_sampler sets it)
        self.round_trips = ROUND_TRIPS  # through the attached model (choose_sampler sets it)
        self.model: Any = None  # its own copy of the VAE it was fitted to (use_model)

    def use_model(self, model: Any) -> None:
        """Attach the model the prior was fitted to (a loaded discrete ``VAE`` of its grid,
        codebook and classes; else a one-line error): drawn grids then make ``round_trips``
        round trips through it (the module docstring). The prior keeps its own copy, on the
        CPU in float32 and in eval mode, so that a seed gives the same samples on every
        device and ``model`` itself is never touched. Without one, ``sample`` gives the grids
        as drawn."""
        model = _unwrap(model)  # under torch.compile or DistributedDataParallel
        config = getattr(model, "config", None)
        if config is None or not isinstance(model, torch.nn.Module):
            raise TorchVaeError(f"use_model takes the VAE the prior was fitted to, got "
                                f"{type(model).__name__}")  # fmt: skip
        has = (
            getattr(model, "latent_kind", None),
            tuple(getattr(model, "latent_shape", ())),
            getattr(config, "codebook_size", None),
            config.latent_dims,
            config.num_classes,
        )
        want = ("discrete", self.grid, self.info["codebook_size"], self.dims, self.classes)
        if has != want:
            raise TorchVaeError(
                f"this transformer prior draws {_grids(*want[1:])}; the model given takes "
                + (_grids(*has[1:]) if has[0] == "discrete" else f"a {has[0]} latent")
                + ": attach the model it was fitted to"
            )
        self.model = copy.deepcopy(model).to("cpu", torch.float32).eval()

    @property
    def dims(self) -> int:
        """The latent dimensions of the model it was fitted to (each code's vector's)."""
        return int(self.info["latent_dims"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.info["grid"])

    @property
    def classes(self) -> int:
        """The classes it draws grids of (0: one kind of grid, an unconditional model's)."""
        return int(self.info.get("classes", 0))

    def describe(self) -> str:
        hp = self.info["hparams"]
        params = sum(p.numel() for p in self.net.parameters())
        at = f", dropout {hp['dropout']:g}" if hp.get("dropout") else ""
        at += f", temperature {self.temperature:g}" if self.temperature != 1.0 else ""
        at += f", guidance {self.guidance:g}" if self.guidance else ""
        at += ", weights stored in float16" if self.info.get("stored") == "fp16" else ""
        trips = self.round_trips if self.model is not None else 0
        at += f", then {trips} round trip{'s' * (trips > 1)} through the model" if trips else ""
        return (f"a causal transformer over {self.grid[0]}x{self.grid[1]} code grids "
                f"({params:,} parameters, {hp['steps']} steps{at})")  # fmt: skip

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """``n`` code grids (n, h, w), int64 on the CPU, of the classes ``labels`` (n,) for a
        conditional model's prior; the same for the same generator state. With a model
        attached (``use_model``), each grid has then made ``round_trips`` round trips through
        it."""
        labels = self._classes_of(n, labels, "draws", "sample")
        with autocast_off("cpu"):  # the same grids under any --precision the caller decodes in
            grids = self.net.draw(n, generator, labels, self.temperature, self.guidance)
        return self.round_trip(grids.view(n, *self.grid), labels)

    @torch.no_grad()
    def round_trip(self, grids: Tensor, labels: Tensor | None = None) -> Tensor:
        """Code grids (N, h, w) (of the classes ``labels``, a conditional model's) after
        ``round_trips`` round trips through the attached model's copy: decoded, encoded and
        quantized again, on the CPU in float32 whatever autocast the caller is in, in batches
        of ``ROUND_TRIP_BATCH``; int64. Unchanged without a model."""
        if self.model is None or not self.round_trips:
            return grids
        grids = torch.as_tensor(grids).cpu().long()
        with autocast_off("cpu"):
            for _ in range(self.round_trips):
                starts = range(0, len(grids), ROUND_TRIP_BATCH)
                grids = torch.cat([self._there_and_back(grids, labels, i) for i in starts])
        return grids

    def _there_and_back(self, grids: Tensor, labels: Tensor | None, start: int) -> Tensor:
        """One round trip of the batch of ``grids`` from ``start``."""
        g, end = grids[start : start + ROUND_TRIP_BATCH], start + ROUND_TRIP_BATCH
        y = None if labels is None else labels[start:end].cpu()
        return self.model.encode(self.model.decode(g, y), y).indices

    @torch.no_grad()
    def nll(self, grids: Tensor, labels: Tensor | None = None, batch: int = 500) -> float:
        """The mean negative log-likelihood per code, in nats, of code grids ``grids``
        (N, h, w) (of the classes ``labels`` (N,), for a conditional prior). On held-out
        grids it says how well the prior fits; on its own draws it is its entropy (the two
        differ by more than miscalibration: docs/sampling.md)."""
        flat = torch.as_tensor(grids).reshape(len(grids), -1).long()
        lab = self._classes_of(len(flat), labels, "scores", "grid")
        total = 0.0
        for i in range(0, len(flat), batch):
            part = flat[i : i + batch]
            classes = None if lab is None else lab[i : i + batch]
            total += self.net.loss(part, classes).item() * len(part)
        return total / max(1, len(flat))

    def _classes_of(self, n: int, labels, does: str, each: str) -> Tensor | None:
        """``labels`` as ``n`` classes (int64, CPU) for a conditional prior, None for one
        kind of grid (whose classes are the decoder's alone); else a one-line error."""
        if not self.classes:
            return None
        if labels is None:
            raise TorchVaeError(f"this transformer sampler {does} the code grids of a class: "
                                f"give each {each}'s class (labels)")  # fmt: skip
        labels = torch.as_tensor(labels).cpu().long()
        bad = n and (int(labels.min()) < 0 or int(labels.max()) >= self.classes)
        if labels.shape != (n,) or bad:
            raise TorchVaeError(f"labels must be {n} classes in 0..{self.classes - 1}")
        return labels

    def tensors(self) -> dict[str, Tensor]:
        half = self.info.get("stored") == "fp16"
        return {f"net.{k}": v.half() if half and v.is_floating_point() else v
                for k, v in self.net.state_dict().items()}  # fmt: skip

    @torch.no_grad()
    def store_as(self, precision: str) -> None:
        """Keep the weights in ``precision`` in the file (``STORE_PRECISIONS``): for fp16, the
        network's weights are rounded to float16 here (and still computed with in float32),
        so that what is measured from now on is what the file will hold; where a weight is
        beyond float16's range they stay float32, with a warning (the fit is kept)."""
        _check_store(precision)
        if precision == "fp16":
            weights = [v for v in self.net.state_dict().values() if v.is_floating_point()]
            biggest = max(float(v.abs().max()) for v in weights)
            if biggest > torch.finfo(torch.float16).max:
                log.warning("a weight of %.3g is beyond float16's range: this sampler's "
                            "weights are kept in float32", biggest)  # fmt: skip
                precision = "fp32"
            else:
                for v in weights:
                    v.copy_(v.half())
        self.info["stored"] = precision

    @classmethod
    def build(cls, info: dict, hp: dict) -> CodeTransformer:
        h, w = info["grid"]
        starts = max(1, int(info.get("classes", 0)))
        return CodeTransformer(int(info["codebook_size"]), int(h) * int(w), hp["hidden"],
                               hp["layers"], starts, float(hp.get("dropout", 0.0)))  # fmt: skip

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], info: dict, path: Path):
        """The prior read back: its network rebuilt from ``info`` and its weights checked."""
        try:
            grid, codes = info["grid"], info["codebook_size"]
            classes = info.get("classes", 0)
            ok = (isinstance(grid, list) and len(grid) == 2 and all(_size(g) for g in grid)
                  and _size(codes) and _size(info["latent_dims"])
                  and (classes == 0 or _size(classes)))  # fmt: skip
            if not ok:
                raise ValueError("grid, codebook_size or latent_dims out of range")
            hp = check_hparams(cls, {**cls.DEFAULTS, **info["hparams"]})
            net = cls.build(info, hp)
        except (KeyError, TypeError, ValueError, TorchVaeError) as exc:
            raise TorchVaeError(
                f"{path} is not a {cls.kind} sampler ({exc}); fit it again"
            ) from None
        if any(not k.startswith("net.") for k in t):
            raise TorchVaeError(f"{path} holds tensors a {cls.kind} sampler has not; fit it again")
        if not all(v.isfinite().all() for v in t.values() if v.is_floating_point()):
            raise TorchVaeError(f"{path} holds invalid numbers; fit it again")
        try:
            net.load_state_dict({k[4:]: v for k, v in t.items()}, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise TorchVaeError(f"{path} does not fit a {cls.kind} sampler ({first}); "
                                "fit it again") from None  # fmt: skip
        return cls(net, info)

    @classmethod
    def fit(cls, z: np.ndarray, options: dict, info: dict, progress: bool = True, labels=None):
        """Fit to code grids ``z`` (N, h, w) of a codebook of ``info["codebook_size"]``
        codes (class by class where ``info["classes"]`` is given: ``labels``, (N,)): ``steps``
        Adam steps on random batches (warm-up, then cosine decay), seeded by
        ``options["seed"]``."""
        codes = torch.as_tensor(np.asarray(z))
        if codes.dim() != 3 or codes.is_floating_point():
            raise TorchVaeError(
                "a transformer sampler is fitted to a discrete model's code grids (--arch "
                "vqvae); for a Gaussian latent choose gmm, flow, diffusion or twostage"
            )
        if len(codes) < 2:
            raise TorchVaeError(
                f"a transformer sampler needs at least 2 code grids, got {len(codes)}"
            )
        seed = int(options.get("seed", 0))
        given = {k: v for k, v in options.items() if k in cls.DEFAULTS and v}
        hp = check_hparams(cls, {**cls.DEFAULTS, **given})
        info = {"kind": cls.kind, "hparams": hp, "seed": seed, "grid": list(codes.shape[1:]),
                **info}  # fmt: skip
        flat = codes.reshape(len(codes), -1).long()
        if int(flat.min()) < 0 or int(flat.max()) >= info["codebook_size"]:
            raise TorchVaeError("the code grids hold indices outside the codebook")
        classes = int(info.get("classes", 0))
        if classes and (labels is None or len(labels) != len(flat)):
            raise TorchVaeError("a conditional model's transformer sampler needs each grid's class")
        # each row: its class (0 without classes), then its codes; batches keep them together
        rows = torch.cat([torch.as_tensor(labels).long()[:, None] if classes
                          else torch.zeros(len(flat), 1, dtype=torch.int64), flat], 1)  # fmt: skip

        _check_store(options.get("store") or "fp32")  # before the fit, not after it
        precision = options.get("precision") or "auto"
        if precision not in FIT_PRECISIONS:
            raise TorchVaeError(f"unknown precision {precision!r} for fitting a transformer "
                                f"sampler; choose one of {FIT_PRECISIONS}")  # fmt: skip
        amp = Precision(torch.device("cpu"), precision)
        info["precision"] = amp.precision
        if amp.precision == "bf16" and bf16_emulated(torch.device("cpu")):
            log.warning("this CPU computes bf16 by emulation, slower than fp32: fitting in bf16 "
                        "as asked (--precision auto or fp32 would be faster)")  # fmt: skip

        def loss_fn(batch: Tensor, gen) -> Tensor:
            with amp.autocast(), _attention(amp.precision):
                return net.loss(batch[:, 1:], batch[:, 0] if classes else None)

        torch.manual_seed(seed)  # the network's initialisation
        net = cls.build(info, hp)
        steps = int(hp["steps"])
        loss = train_steps(net, loss_fn, rows, steps, int(hp["batch"]), cls.LR, seed, progress,
                           f"fitting {cls.kind}", warmup=min(cls.WARMUP, steps // 10))  # fmt: skip
        info["final_loss"] = loss  # nats per code, the last 100 steps' mean
        prior = cls(net, info)
        prior.store_as(options.get("store") or "fp32")
        return prior


def _check_store(precision: str) -> None:
    if precision not in STORE_PRECISIONS:
        raise TorchVaeError(f"unknown store precision {precision!r} for a transformer sampler's "
                            f"weights; choose one of {', '.join(STORE_PRECISIONS)}")  # fmt: skip


def _attention(precision: str) -> contextlib.AbstractContextManager:
    """The attention kernel for a fit in ``precision``: in bf16 the plain matrix products (on
    the CPU, the backward pass of PyTorch's flash attention in bf16 took 85 ms for a batch of
    128 grids at width 256, its forward 4 ms); in fp32 PyTorch's own choice."""
    return sdpa_kernel(SDPBackend.MATH) if precision == "bf16" else contextlib.nullcontext()


def _grids(grid, codes: int, dims: int, classes: int) -> str:
    """Words for the code grids of a model or prior: "7x7 grids of 512 16-d codes"."""
    at = f", of {classes} classes" if classes else ""
    return f"{'x'.join(map(str, grid))} grids of {codes} {dims}-d codes{at}"


def _size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**16
