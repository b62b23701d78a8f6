"""layers.ConvTranspose2d: the same outputs and gradients as nn.ConvTranspose2d, through its own
CPU backward (bias gradient summed apart from the convolution's backward call)."""

import pytest
import torch
from torch import nn

from torch_vae.models import VAE, ModelConfig
from torch_vae.models.layers import ConvTranspose2d


def _pair(bias: bool, **geometry):
    torch.manual_seed(0)
    ours = ConvTranspose2d(6, 4, bias=bias, **geometry)
    ref = nn.ConvTranspose2d(6, 4, bias=bias, **geometry)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _grads(layer, x, autocast: bool):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.float().square().sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return y, grads


GEOMETRIES = [
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),  # the original's decoder
    dict(kernel_size=4, stride=2, padding=1),  # the DCGAN decoder
    dict(kernel_size=4),  # DCGAN's first layer, from 1x1
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("autocast", [False, True])
def test_transposed_conv_matches_pytorch_outputs_and_gradients(geometry, autocast):
    ours, ref = _pair(True, **geometry)
    x = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    y1, g1 = _grads(ours, x, autocast)
    y2, g2 = _grads(ref, x, autocast)
    assert y1.dtype == y2.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert "_TransposedConv" in type(y1.grad_fn).__name__  # the faster backward ran
    torch.testing.assert_close(y1, y2)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


def test_transposed_conv_takes_pytorchs_path_without_bias_or_gradients():
    ours, _ = _pair(False, kernel_size=3)
    y = ours(torch.randn(1, 6, 4, 4))
    assert "_TransposedConv" not in type(y.grad_fn).__name__
    ours, _ = _pair(True, kernel_size=3)
    with torch.no_grad():
        assert ours(torch.randn(1, 6, 4, 4)).grad_fn is None


def test_model_parameters_keep_their_names_with_the_faster_layer():
    names = set(VAE(ModelConfig(latent_dims=2)).state_dict())
    assert {"decoder.convs.0.weight", "decoder.convs.0.bias", "decoder.convs.2.bias"} <= names
