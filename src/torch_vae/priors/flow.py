"""A normalizing flow over the latent space (``flow``): neural spline flows (Durkan et al.,
2019: autoregressive monotonic rational-quadratic splines) from zuko, fitted by
maximum likelihood to the standardised posterior means."""

from __future__ import annotations

from torch import Tensor, nn

from .base import register_prior
from .neural import NeuralPrior


@register_prior(("flow",), rank=2)
class FlowPrior(NeuralPrior):
    kind = "flow"
    NAME = "a neural spline flow"
    DEFAULTS = {"transforms": 4, "hidden": 128, "layers": 2, "bins": 8, "steps": 4000}

    @staticmethod
    def build(dims: int, hp: dict) -> nn.Module:
        import zuko

        return zuko.flows.NSF(dims, transforms=hp["transforms"], bins=hp["bins"],
                              hidden_features=[hp["hidden"]] * hp["layers"])  # fmt: skip

    @classmethod
    def loss(cls, net, x: Tensor, gen) -> Tensor:
        return -net().log_prob(x).mean() / x.shape[1]  # nats per dimension

    @classmethod
    def draw(cls, net, n: int, gen) -> Tensor:
        """Base noise from ``gen`` through the inverse transform (seeded: zuko's own
        ``sample`` would draw from the global generator)."""
        import torch

        dist = net()
        eps = torch.randn(n, *dist.event_shape, generator=gen)
        return dist.transform.inv(eps)
