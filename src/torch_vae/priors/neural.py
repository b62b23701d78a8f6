"""What the neural priors (flow, diffusion, two-stage) share: latents standardised by their
mean and standard deviation before the fit, a network rebuilt from the hyper-parameters in
``info``, its weights as the sampler file's tensors, and a seeded training loop with a progress
bar and its ETA."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import TorchVaeError
from ..fields import check_fraction

log = logging.getLogger(__name__)

_RESERVED = ("shift", "scale")  # the standardisation's tensors; the network's are "net.*"


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """``layers`` hidden layers of ``hidden`` SiLU units."""
    mods: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    mods.append(nn.Linear(width, outputs))
    return nn.Sequential(*mods)


class NeuralPrior:
    """A prior whose density is a network over standardised latents ``(z - shift) / scale``.

    A kind sets ``kind``, ``DEFAULTS`` (its hyper-parameters: ``hidden``, ``layers``,
    ``steps``, ...), and implements ``build(dims, hp) -> nn.Module``, ``loss(net, x, gen)``
    (the batch's mean training loss) and ``draw(net, n, gen)`` (standardised samples)."""

    kind: ClassVar[str]
    DEFAULTS: ClassVar[dict[str, Any]]
    NAME: ClassVar[str]
    LR: ClassVar[float] = 1e-3
    BATCH: ClassVar[int] = 512

    def __init__(self, net: nn.Module, shift: Tensor, scale: Tensor, info: dict):
        self.net, self.info = net.eval(), info
        self.shift, self.scale = shift.float(), scale.float()

    # --- what a kind implements
    @staticmethod
    def build(dims: int, hp: dict) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def loss(cls, net: nn.Module, x: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    @classmethod
    def draw(cls, net: nn.Module, n: int, gen: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    # --- the Prior contract
    @property
    def dims(self) -> int:
        return self.shift.shape[0]

    def describe(self) -> str:
        hp = self.info["hparams"]
        params = sum(p.numel() for p in self.net.parameters())
        return f"{self.NAME} ({params:,} parameters, {hp['steps']} steps)"

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """``n`` latents (n, d), float32 on the CPU; the same for the same generator state."""
        return self.draw(self.net, n, generator).float() * self.scale + self.shift

    def tensors(self) -> dict[str, Tensor]:
        net = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        return {**net, "shift": self.shift, "scale": self.scale}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], info: dict, path: Path):
        """The prior read back: its network rebuilt from ``info`` and its weights checked
        (names, shapes, finite numbers)."""
        try:
            shift, scale = t["shift"], t["scale"]
            dims = int(shift.shape[0])
            hp = check_hparams(cls, {**cls.DEFAULTS, **info["hparams"]})
            net = cls.build(dims, hp)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, TorchVaeError) as exc:
            raise TorchVaeError(
                f"{path} is not a {cls.kind} sampler ({exc}); fit it again"
            ) from None
        weights = {k[4:]: v for k, v in t.items() if k.startswith("net.")}
        if any(k not in _RESERVED and not k.startswith("net.") for k in t):
            raise TorchVaeError(f"{path} holds tensors a {cls.kind} sampler has not; fit it again")
        floats = [v for v in (shift, scale, *weights.values()) if v.is_floating_point()]
        if shift.shape != scale.shape or not all(v.isfinite().all() for v in floats):
            raise TorchVaeError(f"{path} holds invalid numbers; fit it again")
        try:
            net.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise TorchVaeError(f"{path} does not fit a {cls.kind} sampler ({first}); "
                                "fit it again") from None  # fmt: skip
        return cls(net, shift, scale, info)

    # --- fitting
    @classmethod
    def fit(cls, z: np.ndarray, options: dict, info: dict, progress: bool = True, labels=None):
        """Fit to latents ``z`` (N, d): standardise, then ``steps`` Adam steps on random
        batches with a cosine learning-rate decay, all seeded by ``options["seed"]``."""
        seed = int(options.get("seed", 0))
        given = {k: v for k, v in options.items() if k in cls.DEFAULTS and v}
        hp = check_hparams(cls, {**cls.DEFAULTS, **given})
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        if len(z) < 2:
            raise TorchVaeError(f"a {cls.kind} sampler needs at least 2 latents, got {len(z)}")
        if not torch.isfinite(z).all():
            raise TorchVaeError(f"the latents a {cls.kind} sampler is fitted to are not finite")
        shift, scale = z.mean(0), z.std(0).clamp_min(1e-6)
        x = (z - shift) / scale
        torch.manual_seed(seed)  # the network's initialisation
        net = cls.build(z.shape[1], hp)
        loss = train_steps(net, lambda b, g: cls.loss(net, b, g), x, int(hp["steps"]),
                           cls.BATCH, cls.LR, seed, progress, f"fitting {cls.kind}")  # fmt: skip
        info = {"kind": cls.kind, "hparams": hp, "seed": seed, "final_loss": loss, **info}
        return cls(net, shift, scale, info)


# The largest value of each hyper-parameter (a sampler file's claims are bounded before any
# network is built from them)
LIMITS = {"hidden": 4096, "layers": 16, "transforms": 32, "bins": 64, "steps": 10_000_000,
          "timesteps": 10_000, "sample_steps": 10_000, "batch": 65_536}  # fmt: skip
# Hyper-parameters that are fractions: each a number from 0 up to its bound
FRACTIONS = {"dropout": 0.9}


def check_hparams(cls, hp: dict) -> dict:
    """``hp`` with each value an integer within its bound (a fraction within its own), or a
    one-line error."""
    for key, value in hp.items():
        if key in FRACTIONS:
            check_fraction(f"{cls.kind} sampler: {key}", value, FRACTIONS[key])
            continue
        top = LIMITS.get(key, 10_000_000)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise TorchVaeError(f"{cls.kind} sampler: {key} must be an integer from 1 to {top}, "
                                f"got {value!r}")  # fmt: skip
    return hp


def train_steps(
    net: nn.Module,
    loss_fn: Callable[[Tensor, torch.Generator], Tensor],
    x: Tensor,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    progress: bool = True,
    desc: str = "fitting",
    warmup: int = 0,
) -> float:
    """``steps`` Adam steps of ``loss_fn(batch, generator)`` on batches of ``x`` drawn by a
    generator seeded with ``seed`` (the same fit for the same seed and threads), the learning
    rate rising linearly over the first ``warmup`` steps, then decaying as a cosine; the mean
    loss of the last 100 steps. A loss that is no longer finite is an error."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def rate(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    net.train()
    recent: list[float] = []
    with tqdm(range(steps), desc=desc, unit="step", disable=not progress) as bar:
        for step in bar:
            rows = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
            loss = loss_fn(x[rows], gen)
            if not torch.isfinite(loss):
                raise TorchVaeError(f"{desc}: the loss is {loss.item()} at step {step}; "
                                    "try fewer --steps or another --seed")  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
            sched.step()
            recent = (recent + [loss.item()])[-100:]
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(recent):.4f}")
    net.eval()
    return float(np.mean(recent)) if recent else float("nan")
